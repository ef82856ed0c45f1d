#include "model/generation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_depth.h"
#include "core/philox.h"

namespace llmft {

int32_t argmax(std::span<const float> logits) {
  LLMFT_CHECK(!logits.empty(), "argmax of no logits");
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

Sampler::Sampler(const SamplingOptions& options) : options_(options) {
  if (!std::isfinite(options.temperature))
    throw_bad_input("sampling: temperature must be finite, found ", options.temperature);
  if (options.top_k < 0) throw_bad_input("sampling: top_k must be >= 0, found ", options.top_k);
  if (!(options.top_p > 0.0f && options.top_p <= 1.0f))
    throw_bad_input("sampling: top_p must be in (0, 1], found ", options.top_p);
}

std::vector<Sampler::Candidate> Sampler::candidates(std::span<const float> logits) const {
  LLMFT_CHECK(!logits.empty(), "sampling from no logits");
  std::vector<int32_t> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  // Most likely first; ties by id so the order (and the draw) is deterministic.
  auto more_likely = [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  };
  size_t keep = order.size();
  if (options_.top_k > 0) keep = std::min(keep, static_cast<size_t>(options_.top_k));
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(), more_likely);
  order.resize(keep);

  // Softmax of logits / temperature over the kept tokens, in double.
  const double temperature = options_.temperature > 0.0f ? options_.temperature : 1.0;
  const double top = logits[static_cast<size_t>(order.front())] / temperature;
  std::vector<Candidate> result;
  result.reserve(keep);
  double total = 0.0;
  for (int32_t id : order) {
    const double weight = std::exp(logits[static_cast<size_t>(id)] / temperature - top);
    result.push_back({id, weight});
    total += weight;
  }
  for (Candidate& candidate : result) candidate.probability /= total;

  // Top-p (Holtzman et al. 2020): the shortest most-likely-first prefix whose
  // mass reaches top_p; always at least one token.
  if (options_.top_p < 1.0f) {
    double mass = 0.0;
    size_t nucleus = 0;
    while (nucleus < result.size()) {
      mass += result[nucleus].probability;
      ++nucleus;
      if (mass >= options_.top_p) break;
    }
    result.resize(nucleus);
    for (Candidate& candidate : result) candidate.probability /= mass;
  }
  return result;
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (greedy()) return argmax(logits);
  const std::vector<Candidate> kept = candidates(logits);
  const double draw = philox_uniform_at(options_.seed, draws_++);
  double cumulative = 0.0;
  for (const Candidate& candidate : kept) {
    cumulative += candidate.probability;
    if (draw < cumulative) return candidate.id;
  }
  return kept.back().id;  // draw within round-off of 1
}

GenerationResult generate(Context& context, LlamaModel& model, std::span<const int32_t> prompt,
                          const GenerationOptions& options, const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) throw_bad_input("generate: the prompt has no tokens");
  if (options.max_new_tokens < 0)
    throw_bad_input("generate: max_new_tokens must be >= 0, found ", options.max_new_tokens);
  Sampler sampler(options.sampling);
  GenerationResult result;
  KvCache cache;
  // Room for every position up front, so no decode step reallocates the cache.
  cache.reserved_positions = static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
  std::vector<int32_t> next(prompt.begin(), prompt.end());  // the prefill, then one token per step
  const auto start = std::chrono::steady_clock::now();
  auto prefill_end = start;
  while (static_cast<int64_t>(result.tokens.size()) < options.max_new_tokens) {
    Tensor logits = model.forward_incremental(context, next, cache);
    // Read in place on the host (f32 CPU logits are the model's own buffer).
    if (!logits.device().is_cpu()) logits = logits.to(default_host_allocator());
    const int32_t token =
        sampler.sample(std::span<const float>(logits.data<float>(), static_cast<size_t>(logits.numel())));
    if (result.tokens.empty()) prefill_end = std::chrono::steady_clock::now();
    result.tokens.push_back(token);
    if (on_token) on_token(token);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end()) {
      result.stopped = true;
      break;
    }
    next.assign(1, token);
  }
  const auto end = std::chrono::steady_clock::now();
  result.prefill_seconds = std::chrono::duration<double>(prefill_end - start).count();
  result.decode_seconds = std::chrono::duration<double>(end - prefill_end).count();
  return result;
}

namespace {

void add_eos_ids(const std::filesystem::path& file, std::vector<int32_t>& ids) {
  if (!std::filesystem::exists(file)) return;
  std::ifstream in(file);
  nlohmann::json json = parse_json(in, file.string(), /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) throw_bad_input(file.string(), ": not a JSON object");
  if (!json.contains("eos_token_id") || json["eos_token_id"].is_null()) return;
  const nlohmann::json& field = json["eos_token_id"];
  auto add = [&](const nlohmann::json& value) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > INT32_MAX)
      throw_bad_input(file.string(), ": eos_token_id: expected a non-negative integer or a list of them, found ",
                      value.dump());
    const int32_t id = value.get<int32_t>();
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  if (field.is_array()) {
    for (const nlohmann::json& value : field) add(value);
  } else {
    add(field);
  }
}

}  // namespace

std::vector<int32_t> read_eos_token_ids(const std::filesystem::path& model_directory) {
  std::vector<int32_t> ids;
  add_eos_ids(model_directory / "generation_config.json", ids);
  add_eos_ids(model_directory / "config.json", ids);
  return ids;
}

}  // namespace llmft
