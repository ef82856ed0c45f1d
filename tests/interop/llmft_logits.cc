// llmft_logits MODEL_DIR OUT.f32 TOKEN_ID...: loads a Hugging Face directory
// with llmft's LlamaModel (CPU, f32) and writes the logits of one sequence,
// f32 [T, vocab] row-major, to OUT.f32. A test peer for the interop scripts,
// which compare these logits with transformers' on the same directory (until
// `llmft generate` can print them itself).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "core/context.h"
#include "core/error.h"
#include "model/llama.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: llmft_logits MODEL_DIR OUT.f32 TOKEN_ID...\n");
    return 2;
  }
  try {
    std::unique_ptr<llmft::Context> context = llmft::Context::cpu(/*seed=*/0);
    std::unique_ptr<llmft::LlamaModel> model = llmft::LlamaModel::load(*context, argv[1]);
    std::vector<int32_t> ids;
    for (int i = 3; i < argc; ++i) ids.push_back(static_cast<int32_t>(std::strtol(argv[i], nullptr, 10)));
    llmft::Batch batch;
    batch.input_ids = llmft::Tensor::from_ints({1, static_cast<int64_t>(ids.size())}, ids);
    llmft::Tensor logits;
    model->forward(*context, batch, &logits);
    const std::vector<float> values = logits.to_floats();
    std::ofstream out(argv[2], std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
    if (!out) llmft::throw_runtime(argv[2], ": write failed");
    std::printf("%lld %lld\n", static_cast<long long>(ids.size()), static_cast<long long>(model->config().vocab_size));
  } catch (const llmft::Error& error) {
    std::fprintf(stderr, "llmft_logits: error: %s\n", error.what());
    return error.exit_code();
  }
  return 0;
}
