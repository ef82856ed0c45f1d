// Autoregressive generation with the KV cache: the prompt is run once
// (prefill), then one token at a time reuses every earlier position's cached
// keys/values (LlamaModel::forward_incremental). Sampling follows transformers'
// logits processors in their order (generation/logits_process.py):
// temperature, then top-k, then top-p; temperature 0 is greedy decoding.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <vector>

#include "core/context.h"
#include "model/llama.h"

namespace llmft {

struct SamplingOptions {
  float temperature = 0.0f;  // 0 (or below): greedy, the argmax
  int64_t top_k = 0;         // keep the k most likely tokens; 0 keeps all; 1 is greedy
  float top_p = 1.0f;        // keep the smallest set of most likely tokens whose mass reaches top_p
  uint64_t seed = 0;         // Philox stream of the draws: same seed, same tokens
};

// Picks tokens from logits. Draw i uses element i of the Philox stream keyed by
// the seed, so a generation is reproducible from (seed, prompt) alone.
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);  // throws kBadInput for out-of-range options
  int32_t sample(std::span<const float> logits);
  bool greedy() const { return options_.temperature <= 0.0f || options_.top_k == 1; }

  // The candidates after temperature, top-k and top-p, most likely first, with
  // their renormalised probabilities (double). Exposed for tests.
  struct Candidate {
    int32_t id;
    double probability;
  };
  std::vector<Candidate> candidates(std::span<const float> logits) const;

 private:
  SamplingOptions options_;
  uint64_t draws_ = 0;
};

// Index of the largest logit; the first one on ties (torch.argmax).
int32_t argmax(std::span<const float> logits);

struct GenerationOptions {
  int64_t max_new_tokens = 256;
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;  // EOS and end-of-turn ids; the stop token is kept in the output
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids, the stop token included when one was hit
  bool stopped = false;         // true when a stop id ended generation, false at max_new_tokens
  // Wall time of the prefill (the prompt's forward and the first token's
  // choice) and of the decode steps after it (one token each: tokens.size() - 1
  // of them), so callers can report prompt and generated tokens per second.
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  int64_t decode_steps() const { return tokens.empty() ? 0 : static_cast<int64_t>(tokens.size()) - 1; }
};

// Generates after `prompt`; on_token (when set) is called with each new id as
// soon as it is chosen, for streaming.
GenerationResult generate(Context& context, LlamaModel& model, std::span<const int32_t> prompt,
                          const GenerationOptions& options, const std::function<void(int32_t)>& on_token = nullptr);

// The end-of-sequence ids a model directory declares: eos_token_id (an int or
// a list) of generation_config.json, and of config.json, deduplicated. Throws
// kBadInput naming the file and field when one is malformed.
std::vector<int32_t> read_eos_token_ids(const std::filesystem::path& model_directory);

}  // namespace llmft
