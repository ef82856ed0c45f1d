// One CPU training step (forward + backward, every parameter trainable) of a
// small Llama, next to the machine's OpenBLAS SGEMM rate measured in the same
// run: the ratio says how much of the GEMM ceiling the whole step reaches.
//
// Model: hidden 256, intermediate 768, 4 layers, 8 heads / 4 KV heads
// (head_dim 32), vocab 4096, untied head; batch 4 x seq 256, random weights.
//
// FLOPs per step (the PaLM / llm.c MFU convention, stated so it can be
// checked): 6 * N_matmul * tokens + 12 * L * T * (heads * head_dim) * tokens,
// where N_matmul counts the weights that take part in a matmul (q, k, v, o,
// gate, up, down of every layer and the LM head; the embedding lookup is not a
// matmul and norms are negligible), 6 = 2 (multiply-add) x 3 (forward, input
// gradient, weight gradient), and the attention term counts QK^T and PV over
// the full T x T square (forward 4·T·d, backward 8·T·d per token and layer),
// although a causal kernel needs only about half of it.
//
// usage: train_step_bench [steps]   (default 10 timed steps after 1 warm-up;
// best and median reported, since the machine may be shared)
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/bench_util.h"
#include "core/philox.h"
#include "model/llama.h"

namespace {

using llmft::bench::Clock;
using llmft::bench::seconds_since;
using llmft::bench::sgemm_gflops;

struct StepTiming {
  double best_seconds = 0.0;
  double median_seconds = 0.0;
  double loss = 0.0;
  size_t peak_bytes = 0;
};

StepTiming time_steps(llmft::Context& context, llmft::LlamaModel& model, const llmft::Batch& batch, int steps) {
  model.forward_backward(context, batch);  // warm-up: allocates gradients, faults pages in
  llmft::default_host_allocator().reset_peak();
  std::vector<double> times;
  StepTiming timing;
  for (int step = 0; step < steps; ++step) {
    model.parameters().zero_grads(context);
    Clock::time_point start = Clock::now();
    timing.loss = model.forward_backward(context, batch).loss;
    times.push_back(seconds_since(start));
  }
  const llmft::bench::BestMedian best_median = llmft::bench::best_and_median(times);
  timing.best_seconds = best_median.best;
  timing.median_seconds = best_median.median;
  timing.peak_bytes = llmft::default_host_allocator().peak_bytes_in_use();
  return timing;
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 10;
  const llmft::ModelConfig config = llmft::bench::small_llama_config("train_step_bench");
  const int64_t batch_size = 4, seq_len = 256, tokens = batch_size * seq_len;

  auto context = llmft::Context::cpu(/*seed=*/0);
  llmft::LlamaModel model(*context, config);
  model.init_random(*context, /*seed=*/1);

  llmft::PhiloxGenerator generator(2);
  std::vector<int32_t> ids(static_cast<size_t>(tokens + batch_size));
  for (int32_t& id : ids) id = static_cast<int32_t>(generator.next_below(static_cast<uint64_t>(config.vocab_size)));
  std::vector<int32_t> inputs, targets;
  for (int64_t s = 0; s < batch_size; ++s)
    for (int64_t t = 0; t < seq_len; ++t) {
      inputs.push_back(ids[static_cast<size_t>(s * (seq_len + 1) + t)]);
      targets.push_back(ids[static_cast<size_t>(s * (seq_len + 1) + t + 1)]);
    }
  llmft::Batch batch;
  batch.input_ids = llmft::Tensor::from_ints({batch_size, seq_len}, inputs);
  batch.targets = llmft::Tensor::from_ints({batch_size, seq_len}, targets);

  const double q = static_cast<double>(config.q_size()), layers = static_cast<double>(config.num_hidden_layers);
  const double matmul_params = llmft::bench::matmul_weight_count(config);
  const double step_flops = 6.0 * matmul_params * static_cast<double>(tokens) +
                            12.0 * layers * static_cast<double>(seq_len) * q * static_cast<double>(tokens);

  const int threads = omp_get_max_threads();
  // Forward alone (loss, no gradients): a third of the FLOPs.
  const double forward_flops = step_flops / 3.0;
  model.forward(*context, batch);
  std::vector<double> forward_times;
  for (int step = 0; step < steps; ++step) {
    Clock::time_point start = Clock::now();
    model.forward(*context, batch);
    forward_times.push_back(seconds_since(start));
  }
  const llmft::bench::BestMedian forward = llmft::bench::best_and_median(forward_times);

  const double sgemm_1024 = sgemm_gflops(1024, threads, /*repeats=*/30);
  const double sgemm_512 = sgemm_gflops(512, threads, /*repeats=*/30);
  StepTiming saved = time_steps(*context, model, batch, steps);
  model.set_activation_policy(llmft::ActivationPolicy::kRecompute);
  StepTiming recomputed = time_steps(*context, model, batch, steps);
  model.set_activation_policy(llmft::ActivationPolicy::kSaveAll);
  // The machine is shared: bracket the run and keep the best of each size.
  const double sgemm_1024_after = sgemm_gflops(1024, threads, /*repeats=*/30);
  const double sgemm_512_after = sgemm_gflops(512, threads, /*repeats=*/30);
  const double best_1024 = std::max(sgemm_1024, sgemm_1024_after), best_512 = std::max(sgemm_512, sgemm_512_after);
  const double ceiling = std::max(best_1024, best_512);

  std::printf("train_step_bench: Llama hidden %lld, intermediate %lld, %lld layers, %lld/%lld heads, vocab %lld; "
              "batch %lld x seq %lld; %d timed steps; %d threads\n",
              static_cast<long long>(config.hidden_size), static_cast<long long>(config.intermediate_size),
              static_cast<long long>(config.num_hidden_layers), static_cast<long long>(config.num_attention_heads),
              static_cast<long long>(config.num_key_value_heads), static_cast<long long>(config.vocab_size),
              static_cast<long long>(batch_size), static_cast<long long>(seq_len), steps, threads);
  std::printf("matmul parameters %.3fM; FLOPs per step %.2f GFLOP (6*N*tokens %.2f + attention %.2f)\n",
              matmul_params / 1e6, step_flops / 1e9, 6.0 * matmul_params * tokens / 1e9,
              (step_flops - 6.0 * matmul_params * tokens) / 1e9);
  std::printf("\n%-34s %12s %12s %12s %10s %12s\n", "", "step s (best)", "median s", "tokens/s", "GFLOP/s",
              "vs ceiling");
  std::printf("%-34s %12s %12s %12s %10.1f %12.2f\n", "OpenBLAS SGEMM 1024^3", "-", "-", "-", best_1024,
              best_1024 / ceiling);
  std::printf("%-34s %12s %12s %12s %10.1f %12.2f\n", "OpenBLAS SGEMM 512^3", "-", "-", "-", best_512,
              best_512 / ceiling);
  {
    const double gflops = forward_flops / forward.best / 1e9;
    std::printf("%-34s %12.3f %12.3f %12.0f %10.1f %12.2f\n", "llmft forward only (loss)", forward.best,
                forward.median, static_cast<double>(tokens) / forward.best, gflops, gflops / ceiling);
  }
  for (const auto& [name, timing] : {std::pair<const char*, StepTiming>{"llmft train step, save activations", saved},
                                     {"llmft train step, recompute blocks", recomputed}}) {
    const double gflops = step_flops / timing.best_seconds / 1e9;
    std::printf("%-34s %12.3f %12.3f %12.0f %10.1f %12.2f\n", name, timing.best_seconds, timing.median_seconds,
                static_cast<double>(tokens) / timing.best_seconds, gflops, gflops / ceiling);
  }
  std::printf("\npeak host memory in use during a step: save %.1f MiB, recompute %.1f MiB; loss %.4f (ln V = %.4f)\n",
              saved.peak_bytes / 1048576.0, recomputed.peak_bytes / 1048576.0, saved.loss,
              std::log(static_cast<double>(config.vocab_size)));
  std::printf("SGEMM GFLOP/s before / after the steps: 1024^3 %.1f / %.1f, 512^3 %.1f / %.1f; ceiling = the best\n",
              sgemm_1024, sgemm_1024_after, sgemm_512, sgemm_512_after);
  return 0;
}
