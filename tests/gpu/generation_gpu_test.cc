// KV-cache decoding on the CUDA backend (`llmft generate --device cuda`): the
// cache buffers live on the GPU, each step's keys/values are projected into
// their rows in place, and growth copies rows device to device. At every step
// the GPU's logits equal the CPU's (the CPU path is held against full
// recomputation by tests/model/generation_test.cc), with a cache that starts
// too small and doubles, and greedy generate() picks the same tokens. Without
// a GPU or without the CUDA backend every test skips, saying why.
//
// Tolerance: 1e-4 of the largest logit, the whole-model f32 CUDA-vs-CPU
// tolerance of tests/gpu/packing_gpu_test.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "model/generation.h"
#include "tests/gpu/gpu_test_util.h"

namespace llmft {
namespace {

constexpr double kCrossBackendTolerance = 1e-4;

std::filesystem::path testdata(const std::string& name) {
  return std::filesystem::path(LLMFT_SOURCE_DIR) / "tests/testdata/model" / name;
}

double relative_difference(const std::vector<float>& actual, const std::vector<float>& expected) {
  double difference = 0.0, magnitude = 1e-30;
  for (size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    difference = std::max(difference, std::fabs(static_cast<double>(actual[i]) - expected[i]));
    magnitude = std::max(magnitude, std::fabs(static_cast<double>(expected[i])));
  }
  return difference / magnitude;
}

class GenerationGpuTest : public ::testing::TestWithParam<const char*> {};

TEST_P(GenerationGpuTest, CachedStepsMatchTheCpuWhileTheCacheGrows) {
  SKIP_WITHOUT_CUDA();
  Context& cuda = cuda_context();
  auto cpu = Context::cpu(0, 2);
  auto gpu_model = LlamaModel::load(cuda, testdata(GetParam()));
  auto cpu_model = LlamaModel::load(*cpu, testdata(GetParam()));
  const int32_t vocab = static_cast<int32_t>(cpu_model->config().vocab_size);
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 20; ++i) ids.push_back((i * 37 + 11) % vocab);
  KvCache gpu_cache, cpu_cache;  // no reservation: 3 rows, then 6, 12, 24
  double worst = 0.0;
  for (size_t begin = 0; begin < ids.size();) {
    const size_t count = begin == 0 ? 3 : 1;  // a 3-token prefill, then one token per step
    const std::span<const int32_t> step = std::span(ids).subspan(begin, count);
    const std::vector<float> gpu_logits = gpu_model->forward_incremental(cuda, step, gpu_cache).to_floats();
    const std::vector<float> cpu_logits = cpu_model->forward_incremental(*cpu, step, cpu_cache).to_floats();
    worst = std::max(worst, relative_difference(gpu_logits, cpu_logits));
    EXPECT_LE(relative_difference(gpu_logits, cpu_logits), kCrossBackendTolerance) << "position " << begin;
    begin += count;
  }
  EXPECT_EQ(gpu_cache.num_rows, static_cast<int64_t>(ids.size()));
  EXPECT_EQ(gpu_cache.capacity(), 24);
  EXPECT_FALSE(gpu_cache.keys.front().device().is_cpu());
  std::printf("%s: CUDA vs CPU cached logits over %zu positions, worst %.2e (tolerance %.0e)\n", GetParam(), ids.size(),
              worst, kCrossBackendTolerance);
}

TEST_P(GenerationGpuTest, GreedyGenerationPicksTheCpuTokens) {
  SKIP_WITHOUT_CUDA();
  Context& cuda = cuda_context();
  auto cpu = Context::cpu(0, 2);
  auto gpu_model = LlamaModel::load(cuda, testdata(GetParam()));
  auto cpu_model = LlamaModel::load(*cpu, testdata(GetParam()));
  const std::vector<int32_t> prompt = {1, 17, 42, 5, 77};
  GenerationOptions options;
  options.max_new_tokens = 12;
  EXPECT_EQ(generate(cuda, *gpu_model, prompt, options).tokens, generate(*cpu, *cpu_model, prompt, options).tokens);
}

INSTANTIATE_TEST_SUITE_P(Models, GenerationGpuTest, ::testing::Values("tiny_llama", "tiny_qwen2"));

}  // namespace
}  // namespace llmft
