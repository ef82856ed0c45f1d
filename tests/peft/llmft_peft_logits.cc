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
// PEFT adapter directory (made by peft itself) onto MODEL_DIR with llmft's
// load_lora_adapter and writes the base+LoRA logits (eval: no dropout).
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
  std::unique_ptr<llmft::LoraModel> lora = llmft::load_lora_adapter(*context, *model, argv[3]);
  lora->set_training(false);
  std::vector<int32_t> ids;
  for (int i = 5; i < argc; ++i) ids.push_back(static_cast<int32_t>(std::strtol(argv[i], nullptr, 10)));
  write_logits(*context, *model, ids, argv[4]);
  return 0;
}

int main(int argc, char** argv) {
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

    llmft::LoraConfig config;
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
