// The packing-equivalence case shared by tests/model/packing_test.cc (CPU) and
// tests/gpu/packing_gpu_test.cc (CUDA): two documents packed into one row the
// way the loader packs them (data/loader: position ids restart at each
// document, doc_start = index of the document's first token, target -100 at
// the boundary so no token learns to predict the next document) must give each
// document the logits and gradients it gets when run alone. Every helper takes
// the Context, so the same case runs on either backend.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/philox.h"
#include "model/llama.h"
#include "peft/lora.h"

namespace llmft::packing {

// GQA (4 query heads over 2 KV heads), untied head, q/k/v biases (Qwen2-style)
// so every parameter kind gets a gradient; vocab small so logits stay cheap.
inline ModelConfig tiny_config() {
  nlohmann::json json = {{"architectures", {"Qwen2ForCausalLM"}},
                         {"hidden_size", 32},
                         {"intermediate_size", 48},
                         {"num_hidden_layers", 2},
                         {"num_attention_heads", 4},
                         {"num_key_value_heads", 2},
                         {"vocab_size", 37},
                         {"rms_norm_eps", 1e-6},
                         {"tie_word_embeddings", false},
                         {"rope_theta", 100.0}};
  return ModelConfig::from_json(json, "packing_test");
}

// Weights of scale 1/sqrt(fan_in) (not init_random's 0.02, which leaves
// attention nearly uniform, so mixing documents would barely move a logit) and
// non-trivial norm weights and biases.
inline void randomize(LlamaModel &model, uint64_t seed) {
  PhiloxGenerator generator(seed);
  for (Parameter *parameter : model.parameters().all()) {
    const bool is_norm = parameter->name.ends_with("norm.weight");
    const double fan_in = parameter->value.dim() == 2 ? static_cast<double>(parameter->value.size(1)) : 1.0;
    std::vector<float> values(static_cast<size_t>(parameter->value.numel()));
    for (float &value : values) {
      const float normal = generator.next_normal();
      value = is_norm                       ? 1.0f + 0.2f * normal
              : parameter->value.dim() == 1 ? 0.2f * normal
                                            : static_cast<float>(normal / std::sqrt(fan_in));
    }
    parameter->value.copy_from(Tensor::from_floats(parameter->value.shape(), values, parameter->value.dtype()));
  }
}

// LoRA on every projection with B drawn at random too: PEFT's B = 0 would
// leave every dA zero, and the test would then compare zeros with zeros.
inline void randomize_lora(LoraModel &lora, uint64_t seed) {
  PhiloxGenerator generator(seed);
  for (Parameter *parameter : lora.parameters().all()) {
    std::vector<float> values(static_cast<size_t>(parameter->value.numel()));
    for (float &value : values) value = 0.3f * generator.next_normal();
    parameter->value.copy_from(Tensor::from_floats(parameter->value.shape(), values, parameter->value.dtype()));
  }
}

inline LoraSettings lora_config() {
  LoraSettings config;
  config.r = 4;
  config.alpha = 8.0f;
  config.target_modules = {"all-linear"};
  config.seed = 5;
  return config;
}

// A document: its tokens and the next-token target of each (-100: no loss).
struct Document {
  std::vector<int32_t> ids;
  std::vector<int32_t> targets;
};

// Lengths 5 and 7. The first ends with -100 (in the packed row its last token
// is followed by the second document); the second ends with a real target.
inline std::vector<Document> two_documents() {
  Document first{{3, 17, 5, 22, 9}, {17, 5, 22, 9, -100}};
  Document second{{1, 30, 4, 8, 0, 19, 36}, {30, 4, 8, 0, 19, 36, 11}};
  return {first, second};
}

inline Batch solo_batch(const Document &document) {
  const int64_t length = static_cast<int64_t>(document.ids.size());
  Batch batch;
  batch.input_ids = Tensor::from_ints({1, length}, document.ids);
  batch.targets = Tensor::from_ints({1, length}, document.targets);
  return batch;
}

// One row holding every document back to back. With `with_doc_start` false the
// row is plain causal (no position restart, no doc_start): the second document
// then attends to the first, which is what the equivalence must detect.
inline Batch packed_batch(const std::vector<Document> &documents, bool with_doc_start) {
  std::vector<int32_t> ids, targets, positions, starts;
  for (const Document &document : documents) {
    const int32_t start = static_cast<int32_t>(ids.size());
    for (size_t i = 0; i < document.ids.size(); ++i) {
      ids.push_back(document.ids[i]);
      targets.push_back(document.targets[i]);
      positions.push_back(static_cast<int32_t>(i));
      starts.push_back(start);
    }
  }
  const int64_t length = static_cast<int64_t>(ids.size());
  Batch batch;
  batch.input_ids = Tensor::from_ints({1, length}, ids);
  batch.targets = Tensor::from_ints({1, length}, targets);
  if (with_doc_start) {
    batch.position_ids = Tensor::from_ints({1, length}, positions);
    batch.doc_start = Tensor::from_ints({1, length}, starts);
  }
  return batch;
}

inline int64_t count_targets(const Batch &batch) {
  int64_t count = 0;
  for (float target : batch.targets.to_floats()) count += target >= 0.0f ? 1 : 0;
  return count;
}

// Host logits [T * V] of one row.
inline std::vector<float> logits_of(Context &context, LlamaModel &model, const Batch &batch) {
  Tensor logits;
  model.forward(context, batch, &logits);
  context.synchronize();
  return logits.to_floats();
}

// Gradients of the SUM of the token losses of `batches` (each run's mean loss
// times its number of target tokens via loss_scale), accumulated over the
// batches into the gradients of `trainable`, by parameter name.
inline std::map<std::string, std::vector<float>> summed_loss_gradients(Context &context, LlamaModel &model,
                                                                       ParameterRegistry &trainable,
                                                                       const std::vector<Batch> &batches) {
  trainable.allocate_grads(context, DType::kF32);
  trainable.zero_grads(context);
  for (const Batch &batch : batches) model.forward_backward(context, batch, static_cast<float>(count_targets(batch)));
  context.synchronize();
  std::map<std::string, std::vector<float>> result;
  for (Parameter *parameter : trainable.all())
    if (parameter->grad.defined()) result[parameter->name] = parameter->grad.to_floats();
  return result;
}

// max |a - b| / max |b| over a pair of equally long vectors (1e-30 floor).
inline double relative_difference(const std::vector<float> &actual, const std::vector<float> &expected) {
  double difference = 0.0, magnitude = 1e-30;
  for (size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    difference = std::max(difference, std::fabs(static_cast<double>(actual[i]) - expected[i]));
    magnitude = std::max(magnitude, std::fabs(static_cast<double>(expected[i])));
  }
  return difference / magnitude;
}

// Positions [begin, end) of a [T * V] logits vector.
inline std::vector<float> rows(const std::vector<float> &logits, int64_t vocab, int64_t begin, int64_t end) {
  return std::vector<float>(logits.begin() + begin * vocab, logits.begin() + end * vocab);
}

}  // namespace llmft::packing
