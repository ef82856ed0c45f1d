// Pieces the training benchmarks share, so their figures are measured and
// counted the same way: wall-clock timing, best and median of repeated runs,
// the SplitMix64 token batch the PyTorch peer reproduces, the matmul weight
// count N of the FLOP formulas, and the OpenBLAS SGEMM rate used as the CPU
// ceiling.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/llama.h"
#include "model/model_config.h"

namespace llmft::bench {

using Clock = std::chrono::steady_clock;

// A command-line number of a benchmark: the whole of `value` must parse and
// lie in [minimum, +inf), else one line "<bench>: <flag>: expected ..., found
// '<value>'" on stderr and exit 2 (std::atoi would turn "abc" into 0).
inline double parse_number(const char* bench, const std::string& flag, const std::string& value, double minimum,
                           bool integer) {
  char* end = nullptr;
  const double number = value.empty() ? 0.0 : std::strtod(value.c_str(), &end);
  const bool whole = !value.empty() && *end == '\0' &&
                     (!integer || number == static_cast<double>(static_cast<int64_t>(number)));
  if (!whole || !(number >= minimum)) {
    std::fprintf(stderr, "%s: %s: expected %s >= %g, found '%s'\n", bench, flag.c_str(),
                 integer ? "an integer" : "a number", minimum, value.c_str());
    std::exit(2);
  }
  return number;
}

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Best (the machine's capability when nothing else runs) and median (the
// typical step) of repeated timings.
struct BestMedian {
  double best = 0.0;
  double median = 0.0;
};

inline BestMedian best_and_median(std::vector<double> seconds) {
  std::sort(seconds.begin(), seconds.end());
  return {seconds.front(), seconds[seconds.size() / 2]};
}

// SplitMix64 (Steele et al. 2014) of the position index: the same ids in C++
// and in Python's 64-bit integer arithmetic (peft_peer.py token_ids).
inline uint64_t splitmix64(uint64_t value) {
  value += 0x9E3779B97F4A7C15ull;
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ull;
  value = (value ^ (value >> 27)) * 0x94D049BB133111EBull;
  return value ^ (value >> 31);
}

// Token ids SplitMix64(i) mod vocab for i = first, first + 1, ... over
// B x (T + 1) positions, sequence s taking positions first + s(T+1) ..
// first + s(T+1)+T; inputs are the first T, targets the last T (peft_peer.py
// and ddp_peer.py compute the same ids). Host tensors.
inline Batch splitmix_batch(int64_t batch_size, int64_t seq_len, int64_t vocab_size, int64_t first = 0) {
  std::vector<int32_t> inputs, targets;
  for (int64_t s = 0; s < batch_size; ++s)
    for (int64_t t = 0; t < seq_len; ++t) {
      const uint64_t position = static_cast<uint64_t>(first + s * (seq_len + 1) + t);
      inputs.push_back(static_cast<int32_t>(splitmix64(position) % static_cast<uint64_t>(vocab_size)));
      targets.push_back(static_cast<int32_t>(splitmix64(position + 1) % static_cast<uint64_t>(vocab_size)));
    }
  Batch batch;
  batch.input_ids = Tensor::from_ints({batch_size, seq_len}, inputs);
  batch.targets = Tensor::from_ints({batch_size, seq_len}, targets);
  return batch;
}

// The "small" model of train_step_bench and lora_train_bench (small-lora,
// small-full; peft_peer.py builds the same): Llama hidden 256, intermediate
// 768, 4 layers, 8 heads / 4 KV heads (head_dim 32), vocab 4096, untied head,
// positions up to 256. `source` names the program in config errors.
inline ModelConfig small_llama_config(const std::string& source) {
  const nlohmann::json json = {{"architectures", {"LlamaForCausalLM"}},
                               {"hidden_size", 256},
                               {"intermediate_size", 768},
                               {"num_hidden_layers", 4},
                               {"num_attention_heads", 8},
                               {"num_key_value_heads", 4},
                               {"vocab_size", 4096},
                               {"max_position_embeddings", 256}};
  return ModelConfig::from_json(json, source);
}

// N of the FLOP formulas: the weights that take part in a matmul (q, k, v, o,
// gate, up, down of every layer and the LM head; the embedding is a lookup and
// norms are negligible).
inline double matmul_weight_count(const ModelConfig& config) {
  const double d = static_cast<double>(config.hidden_size), inter = static_cast<double>(config.intermediate_size);
  const double q = static_cast<double>(config.q_size()), kv = static_cast<double>(config.kv_size());
  const double layers = static_cast<double>(config.num_hidden_layers);
  return layers * (d * (q + 2 * kv) + q * d + 3 * d * inter) + static_cast<double>(config.vocab_size) * d;
}

// Best-of-`repeats` OpenBLAS SGEMM rate in GFLOP/s for n^3 (2·n^3 FLOPs per
// call) on `threads` threads of OpenBLAS's own pool. Best-of: the machine may
// be shared, and the ceiling is what it can do when nothing else runs. The CPU
// kernels pin OpenBLAS to one thread and split GEMMs over OpenMP themselves
// (kernels/cpu/cpu_util.cc), so the pinning is restored afterwards.
inline double sgemm_gflops(int n, int threads, int repeats) {
  const int previous_threads = openblas_get_num_threads();
  openblas_set_num_threads(threads);
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size(), 0.0f);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  double best = 1e30;
  for (int repeat = 0; repeat < repeats; ++repeat) {
    const Clock::time_point start = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(),
                n);
    best = std::min(best, seconds_since(start));
  }
  openblas_set_num_threads(previous_threads);
  return 2.0 * n * n * static_cast<double>(n) / best / 1e9;
}

}  // namespace llmft::bench
