// Whole-model backward against central finite differences of the loss, for
// every parameter tensor (its largest-gradient coordinate plus random ones),
// in f32, for an untied Llama and a tied Qwen2 (biases) with GQA, plain and
// packed batches; gradient checkpointing gives the same gradients as saving
// everything; frozen parameters get none; prefix-tuning gradients.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/philox.h"
#include "kernels/ops.h"
#include "model/llama.h"

namespace llmft {
namespace {

ModelConfig tiny_config(const std::string& architecture, bool tied) {
  nlohmann::json json = {
      {"architectures", {architecture}}, {"hidden_size", 16}, {"intermediate_size", 24},
      {"num_hidden_layers", 2},          {"num_attention_heads", 4}, {"num_key_value_heads", 2},
      {"vocab_size", 23},                {"rms_norm_eps", 1e-5},     {"tie_word_embeddings", tied},
      {"rope_theta", 100.0}};
  return ModelConfig::from_json(json, "tiny");
}

// Random weights large enough that every path matters (std 0.02 would leave
// attention uniform and the loss flat), and non-trivial norm weights/biases.
void randomize(Context& context, LlamaModel& model, uint64_t seed) {
  PhiloxGenerator generator(seed);
  for (Parameter* parameter : model.parameters().all()) {
    const bool is_norm = parameter->name.ends_with("norm.weight");
    const double fan_in = parameter->value.dim() == 2 ? static_cast<double>(parameter->value.size(1)) : 1.0;
    std::vector<float> values(static_cast<size_t>(parameter->value.numel()));
    for (float& value : values) {
      float normal = generator.next_normal();
      value = is_norm ? 1.0f + 0.2f * normal
                      : parameter->value.dim() == 1 ? 0.2f * normal : static_cast<float>(normal / std::sqrt(fan_in));
    }
    parameter->value.copy_from(Tensor::from_floats(parameter->value.shape(), values));
  }
}

Batch plain_batch() {
  Batch batch;
  batch.input_ids = Tensor::from_ints({2, 5}, std::vector<int32_t>{3, 17, 5, 22, 9, 1, 4, 4, 8, 0});
  batch.targets = Tensor::from_ints({2, 5}, std::vector<int32_t>{17, 5, 22, 9, -100, 4, -100, 8, 0, 12});
  return batch;
}

// One row holding two documents (lengths 4 and 6), as the loader packs them.
Batch packed_batch() {
  Batch batch;
  batch.input_ids = Tensor::from_ints({1, 10}, std::vector<int32_t>{3, 17, 5, 22, 1, 4, 4, 8, 0, 19});
  batch.targets = Tensor::from_ints({1, 10}, std::vector<int32_t>{17, 5, 22, -100, 4, 4, 8, 0, 19, 2});
  batch.position_ids = Tensor::from_ints({1, 10}, std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 3, 4, 5});
  batch.doc_start = Tensor::from_ints({1, 10}, std::vector<int32_t>{0, 0, 0, 0, 4, 4, 4, 4, 4, 4});
  return batch;
}

std::map<std::string, std::vector<float>> gradients(LlamaModel& model) {
  std::map<std::string, std::vector<float>> result;
  for (Parameter* parameter : model.parameters().all())
    if (parameter->grad.defined()) result[parameter->name] = parameter->grad.to_floats();
  return result;
}

// Compares the analytic gradient with (L(w + h) - L(w - h)) / 2h at the
// largest-gradient coordinate and three random ones of every tensor.
void check_gradients(Context& context, LlamaModel& model, const Batch& batch) {
  model.parameters().allocate_grads(context, DType::kF32);
  model.parameters().zero_grads(context);
  model.forward_backward(context, batch);
  PhiloxGenerator generator(7);
  const float step = 1e-2f;
  int checked = 0;
  double worst_ratio = 0.0;  // |analytic - numeric| / tolerance, printed to show the margin
  for (Parameter* parameter : model.parameters().all()) {
    std::vector<float> grad = parameter->grad.to_floats();
    float* values = parameter->value.data<float>();
    double scale = 0.0;
    size_t largest = 0;
    for (size_t i = 0; i < grad.size(); ++i) {
      scale = std::max(scale, static_cast<double>(std::fabs(grad[i])));
      if (std::fabs(grad[i]) > std::fabs(grad[largest])) largest = i;
    }
    ASSERT_GT(scale, 1e-5) << parameter->name << " has no gradient at all";
    std::vector<size_t> coordinates = {largest};
    for (int i = 0; i < 3; ++i) coordinates.push_back(generator.next_below(grad.size()));
    for (size_t index : coordinates) {
      const float original = values[index];
      values[index] = original + step;
      double plus = model.forward(context, batch).loss;
      values[index] = original - step;
      double minus = model.forward(context, batch).loss;
      values[index] = original;
      double numeric = (plus - minus) / (2.0 * step);
      // f32 loss noise / (2h) is ~1e-5; the h^2 truncation term is below
      // 1% of the tensor's gradient scale for these weights.
      const double tolerance = 1e-2 * scale + 2e-4;
      worst_ratio = std::max(worst_ratio, std::fabs(grad[index] - numeric) / tolerance);
      EXPECT_NEAR(grad[index], numeric, tolerance)
          << parameter->name << "[" << index << "] (tensor gradient scale " << scale << ")";
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int>(4 * model.parameters().size()));
  std::printf("checked %d coordinates; worst |analytic - numeric| / tolerance = %.3f\n", checked, worst_ratio);
}

struct GradientCase {
  const char* architecture;
  bool tied;
  bool packed;
};

class LlamaGradientTest : public ::testing::TestWithParam<GradientCase> {};

TEST_P(LlamaGradientTest, MatchesFiniteDifferences) {
  auto context = Context::cpu(0, 2);
  LlamaOptions options;
  options.lm_head_chunk_rows = 3;  // several LM-head chunks
  LlamaModel model(*context, tiny_config(GetParam().architecture, GetParam().tied), options);
  randomize(*context, model, 11);
  check_gradients(*context, model, GetParam().packed ? packed_batch() : plain_batch());
}

INSTANTIATE_TEST_SUITE_P(Models, LlamaGradientTest,
                         ::testing::Values(GradientCase{"LlamaForCausalLM", false, false},
                                           GradientCase{"Qwen2ForCausalLM", true, false},
                                           GradientCase{"LlamaForCausalLM", false, true}),
                         [](const auto& info) {
                           return std::string(info.param.architecture).substr(0, 5) +
                                  (info.param.tied ? "Tied" : "Untied") + (info.param.packed ? "Packed" : "Plain");
                         });

TEST(LlamaGradients, RecomputeGivesTheSameGradientsAsSaveAll) {
  auto context = Context::cpu(0, 2);
  LlamaModel model(*context, tiny_config("Qwen2ForCausalLM", false), {});
  randomize(*context, model, 5);
  model.parameters().allocate_grads(*context, DType::kF32);
  StepResult saved = model.forward_backward(*context, plain_batch());
  auto saved_gradients = gradients(model);

  model.set_activation_policy(ActivationPolicy::kRecompute);
  model.parameters().zero_grads(*context);
  StepResult recomputed = model.forward_backward(*context, plain_batch());
  EXPECT_EQ(recomputed.loss, saved.loss);
  EXPECT_EQ(gradients(model), saved_gradients);

  model.set_activation_policy(ActivationPolicy::kSaveAll);  // mixed: only layer 1 recomputes
  model.set_activation_policy(1, ActivationPolicy::kRecompute);
  model.parameters().zero_grads(*context);
  model.forward_backward(*context, plain_batch());
  EXPECT_EQ(gradients(model), saved_gradients);
}

TEST(LlamaGradients, SelectiveRecomputeGivesTheSameGradientsAsSaveAll) {
  auto context = Context::cpu(0, 2);
  for (bool packed : {false, true}) {
    LlamaModel model(*context, tiny_config("LlamaForCausalLM", false), {});
    randomize(*context, model, 7);
    model.parameters().allocate_grads(*context, DType::kF32);
    const Batch batch = packed ? packed_batch() : plain_batch();
    StepResult saved = model.forward_backward(*context, batch);
    auto saved_gradients = gradients(model);

    model.set_activation_policy(ActivationPolicy::kSelective);
    model.parameters().zero_grads(*context);
    StepResult selective = model.forward_backward(*context, batch);
    EXPECT_EQ(selective.loss, saved.loss);
    EXPECT_EQ(gradients(model), saved_gradients) << (packed ? "packed" : "plain");

    // Mixed: layer 0 selective, layer 1 full recompute.
    model.set_activation_policy(1, ActivationPolicy::kRecompute);
    model.parameters().zero_grads(*context);
    model.forward_backward(*context, batch);
    EXPECT_EQ(gradients(model), saved_gradients) << (packed ? "packed" : "plain");
  }
}

TEST(LlamaGradients, AccumulateAcrossCallsAndScale) {
  auto context = Context::cpu(0, 2);
  LlamaModel model(*context, tiny_config("LlamaForCausalLM", false), {});
  randomize(*context, model, 5);
  model.forward_backward(*context, plain_batch());
  auto once = gradients(model);
  model.forward_backward(*context, plain_batch(), /*loss_scale=*/3.0f);
  auto accumulated = gradients(model);
  for (const auto& [name, values] : once)
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_NEAR(accumulated[name][i], 4.0f * values[i], 1e-5f + 1e-5f * std::fabs(values[i])) << name;
}

TEST(LlamaGradients, FrozenParametersGetNoGradient) {
  auto context = Context::cpu(0, 2);
  LlamaModel model(*context, tiny_config("LlamaForCausalLM", false), {});
  randomize(*context, model, 5);
  model.forward_backward(*context, plain_batch());
  auto full = gradients(model);

  LlamaModel frozen(*context, tiny_config("LlamaForCausalLM", false), {});
  randomize(*context, frozen, 5);
  frozen.parameters().set_trainable([](const std::string& name) { return name.find(".mlp.") != std::string::npos; });
  frozen.forward_backward(*context, plain_batch());
  auto partial = gradients(frozen);
  EXPECT_EQ(partial.size(), 6u);  // gate/up/down of 2 layers
  for (const auto& [name, values] : partial) {
    EXPECT_NE(name.find(".mlp."), std::string::npos);
    EXPECT_EQ(values, full[name]) << name;
  }
  EXPECT_FALSE(frozen.parameters().get("model.embed_tokens.weight").grad.defined());
}

// Prefix tuning: learnable per-layer K/V prefixes; their gradient from the
// hook's backward against finite differences.
class LearnedPrefix : public AttentionPrefixHook {
 public:
  LearnedPrefix(int64_t layers, int64_t prefix, int64_t kv_heads, int64_t head_dim) : prefix_(prefix) {
    PhiloxGenerator generator(3);
    for (int64_t l = 0; l < layers; ++l) {
      std::vector<float> k(static_cast<size_t>(prefix * kv_heads * head_dim)), v(k.size());
      for (float& x : k) x = generator.next_normal();
      for (float& x : v) x = generator.next_normal();
      keys.push_back(Tensor::from_floats({prefix, kv_heads, head_dim}, k));
      values.push_back(Tensor::from_floats({prefix, kv_heads, head_dim}, v));
      dkeys.push_back(std::vector<double>(k.size()));
      dvalues.push_back(std::vector<double>(k.size()));
    }
  }
  int64_t num_prefix() const override { return prefix_; }
  void forward(Context&, int64_t layer, Tensor& k, Tensor& v) override {
    k.copy_from(keys[static_cast<size_t>(layer)]);
    v.copy_from(values[static_cast<size_t>(layer)]);
  }
  void backward(Context&, int64_t layer, const Tensor& dk, const Tensor& dv) override {
    std::vector<float> k = dk.to_floats(), v = dv.to_floats();
    auto& out_k = dkeys[static_cast<size_t>(layer)];
    auto& out_v = dvalues[static_cast<size_t>(layer)];
    EXPECT_EQ(k.size(), out_k.size()) << "one [P, kv_heads, head_dim] gradient, summed over the batch by attention";
    for (size_t i = 0; i < k.size(); ++i) {
      out_k[i] += k[i];
      out_v[i] += v[i];
    }
  }
  std::vector<Tensor> keys, values;
  std::vector<std::vector<double>> dkeys, dvalues;

 private:
  int64_t prefix_;
};

TEST(LlamaGradients, PrefixKeyValueGradientsMatchFiniteDifferences) {
  auto context = Context::cpu(0, 2);
  ModelConfig config = tiny_config("LlamaForCausalLM", false);
  LlamaModel model(*context, config, {});
  randomize(*context, model, 9);
  LearnedPrefix prefix(config.num_hidden_layers, 3, config.num_key_value_heads, config.head_dim);
  model.set_attention_prefix_hook(&prefix);
  model.parameters().set_trainable([](const std::string&) { return false; });
  Batch batch = plain_batch();
  model.forward_backward(*context, batch);
  const float step = 1e-2f;
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    for (int which = 0; which < 2; ++which) {
      Tensor& tensor = which == 0 ? prefix.keys[layer] : prefix.values[layer];
      const std::vector<double>& grad = which == 0 ? prefix.dkeys[layer] : prefix.dvalues[layer];
      for (size_t index : {size_t{0}, size_t{13}, grad.size() - 1}) {
        float* data = tensor.data<float>();
        const float original = data[index];
        data[index] = original + step;
        double plus = model.forward(*context, batch).loss;
        data[index] = original - step;
        double minus = model.forward(*context, batch).loss;
        data[index] = original;
        EXPECT_NEAR(grad[index], (plus - minus) / (2 * step), 3e-4) << "layer " << layer << " " << which << " " << index;
      }
    }
  }
}

// A full-rank "adapter" y += x @ delta^T. With it attached, the model must
// behave exactly like the model whose weight is W + delta (merged), and the
// adapter's gradient must equal the merged weight's gradient.
class DenseDeltaAdapter : public LinearAdapter {
 public:
  explicit DenseDeltaAdapter(Tensor delta) : delta(delta), grad(Tensor::zeros_cpu(delta.shape(), DType::kF32)) {}
  void forward(Context& context, const Tensor& x, Tensor& y) override {
    Tensor extra = context.empty(y.shape(), y.dtype());
    ops::linear_forward(context, x, delta, nullptr, extra);
    ops::add(context, y, extra, y);
  }
  void backward(Context& context, const Tensor& dy, const Tensor& x, Tensor* dx) override {
    ops::linear_backward(context, dy, x, delta, dx, &grad, nullptr, /*accumulate_dx=*/true);
  }
  Tensor delta, grad;
};

TEST(LlamaAdapters, AdapterActsLikeAMergedWeight) {
  auto context = Context::cpu(0, 2);
  const ModelConfig config = tiny_config("LlamaForCausalLM", false);
  const std::string target = "model.layers.1.self_attn.v_proj";
  LlamaModel with_adapter(*context, config, {});
  LlamaModel merged(*context, config, {});
  randomize(*context, with_adapter, 21);
  randomize(*context, merged, 21);

  Parameter& weight = merged.parameters().get(target + ".weight");
  PhiloxGenerator generator(4);
  std::vector<float> delta_values(static_cast<size_t>(weight.value.numel()));
  for (float& value : delta_values) value = 0.3f * generator.next_normal();
  auto adapter = std::make_shared<DenseDeltaAdapter>(Tensor::from_floats(weight.value.shape(), delta_values));
  with_adapter.find_linear(target)->add_adapter(adapter);
  std::vector<float> merged_values = weight.value.to_floats();
  for (size_t i = 0; i < merged_values.size(); ++i) merged_values[i] += delta_values[i];
  weight.value.copy_from(Tensor::from_floats(weight.value.shape(), merged_values));
  ASSERT_EQ(with_adapter.find_linear("model.layers.9.mlp.up_proj"), nullptr);

  // Base frozen, adapter trained (LoRA's setting).
  with_adapter.parameters().set_trainable([](const std::string&) { return false; });
  StepResult adapted = with_adapter.forward_backward(*context, plain_batch());
  StepResult reference = merged.forward_backward(*context, plain_batch());
  EXPECT_NEAR(adapted.loss, reference.loss, 1e-5);
  std::vector<float> adapter_grad = adapter->grad.to_floats(), merged_grad = weight.grad.to_floats();
  for (size_t i = 0; i < merged_grad.size(); ++i) ASSERT_NEAR(adapter_grad[i], merged_grad[i], 1e-5f) << i;
  EXPECT_FALSE(with_adapter.parameters().get(target + ".weight").grad.defined());
}

// Prompt tuning: learnable virtual-token embeddings; their gradient from the
// hook's backward against finite differences.
class LearnedPrompt : public PromptEmbeddingHook {
 public:
  LearnedPrompt(int64_t tokens, int64_t hidden) : grad(static_cast<size_t>(tokens * hidden)) {
    PhiloxGenerator generator(8);
    std::vector<float> values(grad.size());
    for (float& value : values) value = generator.next_normal();
    embeddings = Tensor::from_floats({tokens, hidden}, values);
  }
  int64_t num_virtual_tokens() const override { return embeddings.size(0); }
  void forward(Context&, Tensor& out) override { out.copy_from(embeddings); }
  void backward(Context&, const Tensor& d) override {
    std::vector<float> values = d.to_floats();
    for (size_t i = 0; i < values.size(); ++i) grad[i % grad.size()] += values[i];  // sum over the batch
  }
  Tensor embeddings;
  std::vector<double> grad;
};

TEST(LlamaGradients, PromptEmbeddingGradientsMatchFiniteDifferences) {
  auto context = Context::cpu(0, 2);
  ModelConfig config = tiny_config("LlamaForCausalLM", true);
  LlamaModel model(*context, config, {});
  randomize(*context, model, 13);
  LearnedPrompt prompt(2, config.hidden_size);
  model.set_prompt_embedding_hook(&prompt);
  Batch batch = plain_batch();
  StepResult result = model.forward_backward(*context, batch);
  EXPECT_EQ(result.num_target_tokens, 8);  // virtual positions carry no loss
  const float step = 1e-2f;
  float* data = prompt.embeddings.data<float>();
  for (size_t index : {size_t{0}, size_t{7}, size_t{20}, prompt.grad.size() - 1}) {
    const float original = data[index];
    data[index] = original + step;
    double plus = model.forward(*context, batch).loss;
    data[index] = original - step;
    double minus = model.forward(*context, batch).loss;
    data[index] = original;
    EXPECT_NEAR(prompt.grad[index], (plus - minus) / (2 * step), 3e-4) << index;
  }
  // The embedding table (tied head) still gets its gradient.
  EXPECT_TRUE(model.parameters().get("model.embed_tokens.weight").grad.defined());
}

// 16-bit compute (bf16 and f16 weights and activations, f32 gradients): the
// gradients must point the same way as the f32 ones (cosine > 0.999 per
// tensor) and the loss agree to about the 16-bit rounding.
TEST(LlamaGradients, SixteenBitComputeTracksF32) {
  auto context = Context::cpu(0, 2);
  const ModelConfig config = tiny_config("Qwen2ForCausalLM", false);
  LlamaModel reference(*context, config, {});
  randomize(*context, reference, 17);
  StepResult reference_result = reference.forward_backward(*context, plain_batch());
  auto reference_gradients = gradients(reference);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    LlamaOptions options;
    options.compute_dtype = dtype;
    LlamaModel model(*context, config, options);
    for (Parameter* parameter : model.parameters().all())
      parameter->value.copy_from(Tensor::from_floats(
          parameter->value.shape(), reference.parameters().get(parameter->name).value.to_floats(), dtype));
    StepResult result = model.forward_backward(*context, plain_batch());
    EXPECT_NEAR(result.loss, reference_result.loss, 3e-2 * reference_result.loss) << dtype_name(dtype);
    for (const auto& [name, expected] : reference_gradients) {
      const Parameter& parameter = model.parameters().get(name);
      ASSERT_EQ(parameter.grad.dtype(), DType::kF32);
      std::vector<float> actual = parameter.grad.to_floats();
      double dot = 0.0, norm_a = 0.0, norm_e = 0.0;
      for (size_t i = 0; i < actual.size(); ++i) {
        dot += static_cast<double>(actual[i]) * expected[i];
        norm_a += static_cast<double>(actual[i]) * actual[i];
        norm_e += static_cast<double>(expected[i]) * expected[i];
      }
      EXPECT_GT(dot / std::sqrt(norm_a * norm_e + 1e-30), 0.999) << dtype_name(dtype) << " " << name;
    }
  }
}

TEST(LlamaModel, SlidingWindowShorterThanTheSequenceIsRefused) {
  auto context = Context::cpu(0, 2);
  ModelConfig config = tiny_config("MistralForCausalLM", false);
  config.sliding_window = 4;
  LlamaModel model(*context, config, {});
  model.init_random(*context, 1);
  try {
    model.forward(*context, plain_batch());
    FAIL();
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find("exceeds the model's sliding_window (4)"), std::string::npos);
  }
}

}  // namespace
}  // namespace llmft
