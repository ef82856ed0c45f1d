// `llmft export --config RUN.pbtxt [--set ...] [--checkpoint latest|DIR]
// (--merged OUT | --adapter OUT | --gguf OUT | --gguf-adapter OUT) [--type T]
// [--dtype f32|bf16|f16] [--max-shard-size 5GB]`
//
//   --merged OUT   a Hugging Face model directory: config.json,
//                  model.safetensors (sharded with model.safetensors.index.json
//                  above --max-shard-size) and the base model's tokenizer
//                  files. LoRA is merged as W + scaling·B·A in fp32, then cast
//                  (peft/adapter_io.h); full fine-tuning writes the trained
//                  weights; prompt, P- and prefix tuning cannot merge (exit 2).
//   --adapter OUT  a Hugging Face PEFT adapter (adapter_config.json +
//                  adapter_model.safetensors) of any PEFT method; AdapterHub's
//                  directory (adapter.safetensors) for bottleneck adapters.
//   --gguf OUT     the merged model as one GGUF file for llama.cpp/Ollama
//                  (model/gguf_export.h), matrices in --type (default f16).
//   --gguf-adapter OUT  the LoRA adapter as a llama.cpp adapter GGUF
//                  (model/gguf_lora_export.h) for `llama-cli --lora`, A and B
//                  in --type (default f32, as convert_lora_to_gguf.py).
// Any of them may be given at once. --dtype defaults to the run's compute dtype.
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "launch/cli_args.h"
#include "launch/commands.h"
#include "peft/peft_method.h"
#include "model/gguf_lora_export.h"
#include "model/gguf_quantize.h"
#include "trainer/checkpoint.h"
#include "trainer/export.h"
#include "config/train_options.h"
#include "trainer/training_setup.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage: llmft export --config RUN.pbtxt [--set field.path=value ...] [--checkpoint latest|DIR]\n"
    "                    (--merged OUT | --adapter OUT | --gguf OUT.gguf | --gguf-adapter OUT.gguf) [--type T]\n"
    "                    [--dtype f32|bf16|f16] [--max-shard-size 5GB]\n"
    "  --merged OUT: Hugging Face model directory (LoRA merged in fp32, or the fully fine-tuned weights),\n"
    "    sharded above --max-shard-size (bytes, or with KB/MB/GB = 10^3.. or KiB/MiB/GiB = 2^10..), with the\n"
    "    base model's tokenizer files.\n"
    "  --adapter OUT: Hugging Face PEFT adapter directory (LoRA, prompt, P- and prefix tuning), or\n"
    "  AdapterHub's for bottleneck adapters.\n"
    "  --gguf OUT.gguf: the merged model as one GGUF file (llama.cpp, Ollama) with the tokenizer and chat\n"
    "    template; --type f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1 for its matrices (default f16).\n"
    "  --gguf-adapter OUT.gguf: the LoRA adapter as a llama.cpp adapter GGUF, for\n"
    "    `llama-cli -m BASE.gguf --lora OUT.gguf` (LoRA runs only); --type f32|f16|bf16|q8_0 for A and B\n"
    "    (default f32; q8_0 keeps F16 for B, whose rows are r long). With both --gguf and --gguf-adapter,\n"
    "    --type applies to both.\n"
    "  --checkpoint: default latest (the newest step-N of checkpoint.dir).\n";

}  // namespace

int run_export(std::span<char*> args) {
  ConfigArgs config;
  std::optional<std::string> merged_dir, adapter_dir, dtype_name, gguf_path, gguf_adapter_path, gguf_type_name;
  std::string checkpoint = "latest";
  uint64_t max_shard_bytes = kDefaultMaxShardBytes;
  for (ArgCursor cursor("export", args); cursor.next();) {
    const std::string_view arg = cursor.arg();
    if (config.take(cursor)) continue;
    if (arg == "--checkpoint") {
      checkpoint = cursor.value();
    } else if (arg == "--merged") {
      merged_dir = cursor.value();
    } else if (arg == "--adapter") {
      adapter_dir = cursor.value();
    } else if (arg == "--gguf") {
      gguf_path = cursor.value();
    } else if (arg == "--gguf-adapter") {
      gguf_adapter_path = cursor.value();
    } else if (arg == "--type") {
      gguf_type_name = cursor.value();
    } else if (arg == "--dtype") {
      dtype_name = cursor.value();
    } else if (arg == "--max-shard-size") {
      max_shard_bytes = trainer::parse_byte_size(cursor.value());
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      throw_bad_input("export: unexpected argument '", arg, "'; see llmft export --help");
    }
  }
  if (!config.path) throw_bad_input("export: --config is required; see llmft export --help");
  if (!merged_dir && !adapter_dir && !gguf_path && !gguf_adapter_path)
    throw_bad_input("export: give --merged OUT, --adapter OUT, --gguf OUT.gguf and/or --gguf-adapter OUT.gguf");
  if (gguf_type_name && !gguf_path && !gguf_adapter_path)
    throw_bad_input("export: --type applies to --gguf OUT.gguf and --gguf-adapter OUT.gguf only");
  gguf::GgufExportOptions gguf_options;
  gguf::GgufLoraExportOptions gguf_adapter_options;
  if (gguf_type_name) {
    const std::optional<gguf::GgmlType> type = gguf::parse_quantize_type(*gguf_type_name);
    if (!type)
      throw_bad_input("export: --type: '", *gguf_type_name, "' is not supported (expected one of ",
                      gguf_path ? gguf::quantize_type_names() : gguf::lora_type_names(),
                      "; the k-quants are not written)");
    if (gguf_adapter_path && !gguf::can_write_lora_type(*type))
      throw_bad_input("export: --type: '", *gguf_type_name, "' is not supported for --gguf-adapter (expected one of ",
                      gguf::lora_type_names(), ", the types llama.cpp's convert_lora_to_gguf.py writes)");
    gguf_options.type = *type;
    gguf_adapter_options.type = *type;
  }
  const config::TrainOptions options = config::load_train_options(*config.path, config.overrides);
  if (adapter_dir && options.peft == "none")
    throw_bad_input("export: --adapter: ", *config.path,
                    " is a full fine-tuning run (peft none), which has no adapter; use --merged OUT or --gguf "
                    "OUT.gguf for the trained weights");
  if (gguf_adapter_path && !options.lora())
    throw_bad_input("export: --gguf-adapter: ", *config.path,
                    options.peft == "none" ? std::string(" is a full fine-tuning run (peft none), which has no adapter; "
                                                         "use --merged OUT or --gguf OUT.gguf for the trained weights")
                                           : str_cat(" trains peft.", options.peft,
                                                     "; llama.cpp's adapter GGUF holds LoRA only (use --adapter OUT)"));
  // Refused before anything is loaded, with the reason the method itself gives.
  const std::optional<PeftType> peft_type = peft_type_of_option(options.peft);
  if ((merged_dir || gguf_path) && peft_type && !unmergeable_reason(*peft_type).empty())
    throw_bad_input("export: ", merged_dir ? "--merged" : "--gguf", ": ", *config.path, " trains peft.", options.peft,
                    ", which cannot be merged into the base weights (", unmergeable_reason(*peft_type),
                    "); use --adapter OUT");
  std::optional<DType> dtype;
  if (dtype_name) dtype = trainer::parse_float_dtype(*dtype_name, "export: --dtype");
  if (checkpoint == "latest" && !trainer::latest_checkpoint(options.checkpoint_dir))
    throw_bad_input("export: ", options.checkpoint_dir,
                    ": no checkpoint (step-<N> directory) to export; train first or pass --checkpoint DIR");

  // Exported from fp32 (the masters of a bf16/f16 run), stored in --dtype,
  // by default the run's compute dtype.
  if (!dtype) dtype = trainer::parse_float_dtype(options.compute_dtype, "precision.compute_dtype");
  auto context = Context::cpu(options.seed);
  std::filesystem::path source;
  auto model = trainer::load_fp32_model_for_export(*context, options, checkpoint, &source);
  if (merged_dir) {
    const std::vector<std::string> copied =
        trainer::export_merged(*model, options.hf_dir, *merged_dir, dtype, max_shard_bytes);
    std::string copied_list;
    for (const std::string& name : copied) copied_list += (copied_list.empty() ? "" : ", ") + name;
    std::printf("merged model of %s written to %s (tokenizer files: %s)\n", source.string().c_str(),
                merged_dir->c_str(), copied.empty() ? "none found in the base directory" : copied_list.c_str());
  }
  if (gguf_path) {
    gguf_options.name = std::filesystem::path(options.hf_dir).filename().string();
    for (const std::string& note : trainer::export_gguf(*model, options.hf_dir, *gguf_path, gguf_options))
      std::printf("export: note: %s\n", note.c_str());
    std::printf("GGUF (%s) of %s written to %s\n", gguf::ggml_type_name(static_cast<uint32_t>(gguf_options.type)).c_str(),
                source.string().c_str(), gguf_path->c_str());
  }
  if (gguf_adapter_path) {
    gguf_adapter_options.name = std::filesystem::path(options.hf_dir).filename().string() + " LoRA";
    for (const std::string& note :
         trainer::export_gguf_adapter(*model, options.hf_dir, *gguf_adapter_path, gguf_adapter_options))
      std::printf("export: note: %s\n", note.c_str());
    std::printf("LoRA adapter GGUF (%s) of %s written to %s (llama-cli -m BASE.gguf --lora %s)\n",
                gguf::ggml_type_name(static_cast<uint32_t>(gguf_adapter_options.type)).c_str(),
                source.string().c_str(), gguf_adapter_path->c_str(), gguf_adapter_path->c_str());
  }
  if (adapter_dir) {
    trainer::export_adapter(*model, options.hf_dir, *adapter_dir, dtype);
    std::printf("%s adapter of %s written to %s\n", std::string(peft_type_name(model->peft->type())).c_str(),
                source.string().c_str(), adapter_dir->c_str());
  }
  return 0;
}

}  // namespace llmft::launch
