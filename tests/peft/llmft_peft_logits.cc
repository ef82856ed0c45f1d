// llmft_peft_logits MODEL_DIR OUT_DIR TOKEN_ID...: test peer of
// tests/interop/test_peft_adapter.py. Loads MODEL_DIR (CPU, f32), attaches
// LoRA (r 8, alpha 16, rsLoRA off, all-linear, seed 1234) with every B drawn
// N(0, 0.02²) so the adapter changes the output, then writes
//   OUT_DIR/adapter/   the Hugging Face PEFT adapter,
//   OUT_DIR/merged/    the merged model directory (f32, tokenizer files copied),
//   OUT_DIR/base.f32, OUT_DIR/lora.f32   logits f32 [T, vocab] of the ids
// without and with the adapter.
//
// llmft_peft_logits --load MODEL_DIR ADAPTER_DIR OUT.f32 TOKEN_ID...: loads a
// PEFT adapter directory (made by peft itself, any type llmft reads) onto
// MODEL_DIR with llmft's load_peft_adapter and writes the adapted logits
// (eval: no dropout; prompt and P-tuning: [P + T, vocab], virtual rows first,
// as PeftModel returns them).
//
// llmft_peft_logits --method METHOD MODEL_DIR OUT_DIR TOKEN_ID...: attaches
// prompt_tuning, p_tuning, prefix_tuning or prefix_projection (5 virtual
// tokens, encoder width 16, seed 1234, llmft's own initialisation), or
// bottleneck_pfeiffer (gelu) / bottleneck_houlsby (silu) (reduction factor 8,
// random up-projections), writes
// OUT_DIR/adapter/ (the PEFT adapter) and OUT_DIR/method.f32 (the logits).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/error.h"
#include "core/philox.h"
#include "peft/adapter_io.h"
#include "peft/bottleneck.h"
#include "peft/prefix_tuning.h"
#include "peft/prompt_tuning.h"

namespace {

void write_logits(llmft::Context& context, llmft::LlamaModel& model, const std::vector<int32_t>& ids,
                  const std::filesystem::path& path) {
  llmft::Batch batch;
  batch.input_ids = llmft::Tensor::from_ints({1, static_cast<int64_t>(ids.size())}, ids);
  llmft::Tensor logits;
  model.forward(context, batch, &logits);
  const std::vector<float> values = logits.to_floats();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
  if (!out) llmft::throw_runtime(path.string(), ": write failed");
}

}  // namespace

int load_mode(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: llmft_peft_logits --load MODEL_DIR ADAPTER_DIR OUT.f32 TOKEN_ID...\n");
    return 2;
  }
  std::unique_ptr<llmft::Context> context = llmft::Context::cpu(/*seed=*/0);
  std::unique_ptr<llmft::LlamaModel> model = llmft::LlamaModel::load(*context, argv[2]);
  std::unique_ptr<llmft::PeftMethod> adapter = llmft::load_peft_adapter(*context, *model, argv[3]);
  adapter->set_training(false);
  std::vector<int32_t> ids;
  for (int i = 5; i < argc; ++i) ids.push_back(static_cast<int32_t>(std::strtol(argv[i], nullptr, 10)));
  write_logits(*context, *model, ids, argv[4]);
  return 0;
}

int method_mode(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: llmft_peft_logits --method METHOD MODEL_DIR OUT_DIR TOKEN_ID...\n");
    return 2;
  }
  const std::string method_name = argv[2];
  std::unique_ptr<llmft::Context> context = llmft::Context::cpu(/*seed=*/0);
  std::unique_ptr<llmft::LlamaModel> model = llmft::LlamaModel::load(*context, argv[3]);
  std::unique_ptr<llmft::PeftMethod> method;
  if (method_name == "prompt_tuning" || method_name == "p_tuning") {
    llmft::PromptTuning::Config config;
    config.type = method_name == "p_tuning" ? llmft::PeftType::kPTuning : llmft::PeftType::kPromptTuning;
    config.num_virtual_tokens = 5;
    config.encoder_hidden_size = 16;
    config.seed = 1234;
    method = std::make_unique<llmft::PromptTuning>(*context, *model, config);
  } else if (method_name == "prefix_tuning" || method_name == "prefix_projection") {
    llmft::PrefixTuning::Config config;
    config.num_virtual_tokens = 5;
    config.prefix_projection = method_name == "prefix_projection";
    config.encoder_hidden_size = 16;
    config.seed = 1234;
    method = std::make_unique<llmft::PrefixTuning>(*context, *model, config);
  } else if (method_name == "bottleneck_pfeiffer" || method_name == "bottleneck_houlsby") {
    llmft::BottleneckAdapters::Config config;
    config.placement = method_name == "bottleneck_houlsby" ? llmft::BottleneckAdapters::Placement::kHoulsby
                                                           : llmft::BottleneckAdapters::Placement::kPfeiffer;
    config.reduction_factor = 8;
    config.activation = method_name == "bottleneck_houlsby" ? llmft::ops::Activation::kSilu
                                                            : llmft::ops::Activation::kGelu;
    config.seed = 1234;
    method = std::make_unique<llmft::BottleneckAdapters>(*context, *model, config);
    // The up-projections start at zero; random ones make the adapter matter.
    llmft::PhiloxGenerator generator(99);
    for (llmft::Parameter* parameter : method->parameters().all()) {
      if (parameter->name.find("adapter_up") == std::string::npos) continue;
      std::vector<float> values(static_cast<size_t>(parameter->value.numel()));
      for (float& value : values) value = 0.2f * generator.next_normal();
      parameter->value.copy_from(llmft::Tensor::from_floats(parameter->value.shape(), values));
    }
  } else {
    std::fprintf(stderr, "llmft_peft_logits: unknown method '%s'\n", method_name.c_str());
    return 2;
  }
  method->set_training(false);
  const std::filesystem::path out_dir = argv[4];
  std::filesystem::create_directories(out_dir);
  std::vector<int32_t> ids;
  for (int i = 5; i < argc; ++i) ids.push_back(static_cast<int32_t>(std::strtol(argv[i], nullptr, 10)));
  write_logits(*context, *model, ids, out_dir / "method.f32");
  method->save_adapter(out_dir / "adapter", argv[3]);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--method") {
    try {
      return method_mode(argc, argv);
    } catch (const llmft::Error& error) {
      std::fprintf(stderr, "llmft_peft_logits: error: %s\n", error.what());
      return error.exit_code();
    }
  }
  if (argc > 1 && std::string(argv[1]) == "--load") {
    try {
      return load_mode(argc, argv);
    } catch (const llmft::Error& error) {
      std::fprintf(stderr, "llmft_peft_logits: error: %s\n", error.what());
      return error.exit_code();
    }
  }
  if (argc < 4) {
    std::fprintf(stderr, "usage: llmft_peft_logits MODEL_DIR OUT_DIR TOKEN_ID...\n");
    return 2;
  }
  try {
    std::unique_ptr<llmft::Context> context = llmft::Context::cpu(/*seed=*/0);
    std::unique_ptr<llmft::LlamaModel> model = llmft::LlamaModel::load(*context, argv[1]);
    const std::filesystem::path out_dir = argv[2];
    std::filesystem::create_directories(out_dir);
    std::vector<int32_t> ids;
    for (int i = 3; i < argc; ++i) ids.push_back(static_cast<int32_t>(std::strtol(argv[i], nullptr, 10)));
    write_logits(*context, *model, ids, out_dir / "base.f32");

    llmft::LoraSettings config;
    config.r = 8;
    config.alpha = 16.0f;
    config.dropout = 0.05f;  // recorded in the config; off in eval, as in peft's model.eval()
    config.target_modules = {"all-linear"};
    config.seed = 1234;
    llmft::LoraModel lora(*context, *model, config);
    lora.set_training(false);
    llmft::PhiloxGenerator generator(99);
    for (llmft::Parameter* parameter : lora.parameters().all()) {
      if (!parameter->name.ends_with("lora_B.weight")) continue;
      std::vector<float> values(static_cast<size_t>(parameter->value.numel()));
      for (float& value : values) value = 0.02f * generator.next_normal();
      parameter->value.copy_from(llmft::Tensor::from_floats(parameter->value.shape(), values));
    }
    write_logits(*context, *model, ids, out_dir / "lora.f32");
    llmft::save_lora_adapter(lora, out_dir / "adapter", argv[1]);
    llmft::save_merged_model(lora, out_dir / "merged");
    llmft::copy_tokenizer_files(argv[1], out_dir / "merged");
    std::printf("%lld %lld\n", static_cast<long long>(ids.size()), static_cast<long long>(model->config().vocab_size));
  } catch (const llmft::Error& error) {
    std::fprintf(stderr, "llmft_peft_logits: error: %s\n", error.what());
    return error.exit_code();
  }
  return 0;
}
