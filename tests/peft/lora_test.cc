// LoRA against independent references: the base model (B = 0 start), central
// finite differences of the loss (dA, dB, with and without dropout), a naive
// double-precision y = W x + scaling · B A x on a lone Linear (plain and
// rsLoRA scaling), merged weights vs the unmerged adapter, torch's Kaiming
// bound, and the allocator's byte count for frozen base weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/philox.h"
#include "kernels/ops.h"
#include "peft/lora.h"
#include "tests/peft/peft_test_util.h"
#include "tests/test_util.h"

namespace llmft {
namespace {

using peft_test::logits_of;
using peft_test::randomize_lora_b;
using peft_test::tiny_batch;
using peft_test::tiny_llama_dir;

LoraSettings all_linear(int64_t r, float alpha) {
  LoraSettings config;
  config.r = r;
  config.alpha = alpha;
  config.target_modules = {"all-linear"};
  config.seed = 11;
  return config;
}

TEST(Lora, InitialModelEqualsTheBaseExactly) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  const std::vector<float> base = logits_of(*context, *model, tiny_batch());
  LoraModel lora(*context, *model, all_linear(4, 8.0f));
  EXPECT_EQ(lora.adapters().size(), 14u);  // 7 projections x 2 layers, no lm_head
  const std::vector<float> adapted = logits_of(*context, *model, tiny_batch());
  ASSERT_EQ(base.size(), adapted.size());
  for (size_t i = 0; i < base.size(); ++i) ASSERT_EQ(base[i], adapted[i]) << i;  // B = 0: bit-identical
}

TEST(Lora, TargetsAndNames) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  LoraSettings config = all_linear(2, 4.0f);
  config.target_modules = {"v_proj", "down_proj"};
  LoraModel lora(*context, *model, config);
  EXPECT_EQ(lora.adapted_modules(),
            (std::vector<std::string>{"model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj",
                                      "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"}));
  const Parameter* a = lora.parameters().find("model.layers.0.self_attn.v_proj.lora_A.weight");
  const Parameter* b = lora.parameters().find("model.layers.0.self_attn.v_proj.lora_B.weight");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->value.shape(), (Shape{2, 64}));  // [r, in]; tiny_llama: hidden 64, 2 KV heads of 16
  EXPECT_EQ(b->value.shape(), (Shape{32, 2}));  // [out, r]
  EXPECT_EQ(lora.parameters().get("model.layers.1.mlp.down_proj.lora_A.weight").value.shape(), (Shape{2, 96}));

  config.target_modules = {"qkv_proj"};
  std::string message = testing::bad_input_message([&] { LoraModel(*context, *model, config); });
  EXPECT_NE(message.find("target_modules"), std::string::npos) << message;
  EXPECT_NE(message.find("qkv_proj"), std::string::npos) << message;
  config.target_modules = {"q_proj"};
  config.r = 0;
  message = testing::bad_input_message([&] { LoraModel(*context, *model, config); });
  EXPECT_NE(message.find("'r'"), std::string::npos) << message;
}

// A = Kaiming-uniform(a = sqrt(5)): torch's bound gain · sqrt(3 / fan_in) with
// gain = sqrt(2 / (1 + 5)) is exactly 1 / sqrt(fan_in) (hand-computed).
TEST(Lora, KaimingUniformBoundAndZeroB) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  LoraModel lora(*context, *model, all_linear(16, 16.0f));
  for (Parameter* parameter : lora.parameters().all()) {
    const std::vector<float> values = parameter->value.to_floats();
    if (parameter->name.ends_with("lora_B.weight")) {
      for (float value : values) ASSERT_EQ(value, 0.0f) << parameter->name;
      continue;
    }
    const double bound = 1.0 / std::sqrt(static_cast<double>(parameter->value.size(1)));
    double sum = 0.0, sum_squares = 0.0, largest = 0.0;
    for (float value : values) {
      ASSERT_LE(std::fabs(value), bound) << parameter->name;
      sum += value;
      sum_squares += static_cast<double>(value) * value;
      largest = std::max(largest, std::fabs(static_cast<double>(value)));
    }
    const double n = static_cast<double>(values.size());  // 1024 or 1536 values
    // Uniform(-b, b): mean 0 (sd b / sqrt(3n)), variance b² / 3 (relative sd ~ 0.9 / sqrt(n) ≈ 3%).
    EXPECT_NEAR(sum / n, 0.0, 5.0 * bound / std::sqrt(3.0 * n)) << parameter->name;
    EXPECT_NEAR(sum_squares / n, bound * bound / 3.0, 0.15 * bound * bound / 3.0) << parameter->name;
    EXPECT_GT(largest, 0.98 * bound) << parameter->name;
  }
  // Different seeds give different A; the same seed the same A.
  auto other = LlamaModel::load(*context, tiny_llama_dir());
  LoraModel same(*context, *other, all_linear(16, 16.0f));
  EXPECT_EQ(same.parameters().all()[0]->value.to_floats(), lora.parameters().all()[0]->value.to_floats());
}

// y = x Wᵀ + scaling · x Aᵀ Bᵀ on a lone Linear against a naive double sum,
// for alpha / r and rsLoRA's alpha / sqrt(r).
TEST(Lora, ForwardAndScalingMatchNaiveFormula) {
  auto context = Context::cpu(0, 2);
  const int64_t in = 12, out = 7, rows = 5, rank = 4;
  const float alpha = 6.0f;
  for (bool rslora : {false, true}) {
    ParameterRegistry registry;
    PhiloxGenerator generator(rslora ? 3 : 2);
    auto random = [&](const Shape& shape) {
      std::vector<float> values(static_cast<size_t>(shape[0] * shape[1]));
      for (float& value : values) value = generator.next_normal();
      return values;
    };
    Parameter& weight = registry.add(*context, "w", {out, in}, DType::kF32);
    Parameter& a = registry.add(*context, "a", {rank, in}, DType::kF32);
    Parameter& b = registry.add(*context, "b", {out, rank}, DType::kF32);
    const std::vector<float> w_values = random({out, in}), a_values = random({rank, in}),
                             b_values = random({out, rank}), x_values = random({rows, in});
    weight.value.copy_from(Tensor::from_floats({out, in}, w_values));
    a.value.copy_from(Tensor::from_floats({rank, in}, a_values));
    b.value.copy_from(Tensor::from_floats({out, rank}, b_values));
    LoraSettings config;
    config.r = rank;
    config.alpha = alpha;
    config.use_rslora = rslora;
    const double expected_scaling = rslora ? 6.0 / 2.0 : 6.0 / 4.0;  // alpha / sqrt(4) = 3, alpha / 4 = 1.5
    EXPECT_FLOAT_EQ(config.scaling(), static_cast<float>(expected_scaling));
    Linear linear("m", &weight, nullptr);
    linear.add_adapter(std::make_shared<LoraAdapter>(linear, a, b, config.scaling(), 0.0f, 0));
    Tensor x = Tensor::from_floats({rows, in}, x_values), y = context->empty({rows, out}, DType::kF32);
    linear.forward(*context, x, y);
    const std::vector<float> got = y.to_floats();
    for (int64_t n = 0; n < rows; ++n)
      for (int64_t o = 0; o < out; ++o) {
        double base = 0.0, low_rank = 0.0;
        for (int64_t i = 0; i < in; ++i) base += static_cast<double>(w_values[o * in + i]) * x_values[n * in + i];
        for (int64_t k = 0; k < rank; ++k) {
          double hidden = 0.0;
          for (int64_t i = 0; i < in; ++i) hidden += static_cast<double>(a_values[k * in + i]) * x_values[n * in + i];
          low_rank += b_values[o * rank + k] * hidden;
        }
        EXPECT_NEAR(got[n * out + o], base + expected_scaling * low_rank, 1e-4) << "rslora " << rslora;
      }
  }
}

// dA, dB against (L(p + h) - L(p - h)) / 2h on the tiny golden checkpoint, at
// each tensor's largest-gradient coordinate and three random ones. With
// dropout the mask depends only on (seed, step, element), so every forward of
// the finite difference sees the same mask as the backward.
void check_lora_gradients(float dropout) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  LoraSettings config = all_linear(4, 8.0f);
  config.dropout = dropout;
  LoraModel lora(*context, *model, config);
  randomize_lora_b(lora, 5, 0.5f);
  lora.set_dropout_step(3);
  const peft_test::GradientCheck check = peft_test::check_gradients(*context, *model, lora);
  EXPECT_EQ(check.checked, 4 * 28);
  std::printf("dropout %.2f: checked %d coordinates; worst |analytic - numeric| / tolerance = %.3f\n", dropout,
              check.checked, check.worst_ratio);
}

TEST(Lora, GradientsMatchFiniteDifferences) { check_lora_gradients(0.0f); }
TEST(Lora, GradientsWithDropoutMatchFiniteDifferences) { check_lora_gradients(0.25f); }

// Dropout changes the output in training and is off in eval.
TEST(Lora, DropoutOnlyWhileTraining) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  LoraSettings config = all_linear(4, 8.0f);
  config.dropout = 0.5f;
  LoraModel lora(*context, *model, config);
  randomize_lora_b(lora, 5, 0.5f);
  lora.set_training(false);
  const std::vector<float> eval = logits_of(*context, *model, tiny_batch());
  lora.merge(*context);
  const std::vector<float> merged = logits_of(*context, *model, tiny_batch());
  lora.unmerge(*context);
  for (size_t i = 0; i < eval.size(); ++i) ASSERT_NEAR(eval[i], merged[i], 1e-4f) << i;
  lora.set_training(true);
  const std::vector<float> train = logits_of(*context, *model, tiny_batch());
  double difference = 0.0;
  for (size_t i = 0; i < eval.size(); ++i) difference = std::max(difference, std::fabs(double(eval[i]) - train[i]));
  EXPECT_GT(difference, 1e-3);
}

// Merged (W + scaling · B A, one GEMM in fp32) against the unmerged adapter
// path (two GEMMs per forward): the same logits. Unmerge restores W; the
// merged state dict (host loop) holds the same weights as merge().
TEST(Lora, MergeMatchesAdapterAndUnmergeRestores) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  const std::vector<float> original_q =
      model->parameters().get("model.layers.0.self_attn.q_proj.weight").value.to_floats();
  LoraSettings config = all_linear(4, 8.0f);
  config.use_rslora = true;
  LoraModel lora(*context, *model, config);
  randomize_lora_b(lora, 6, 0.3f);
  const std::vector<float> base = [&] {
    auto plain = LlamaModel::load(*context, tiny_llama_dir());
    return logits_of(*context, *plain, tiny_batch());
  }();
  const std::vector<float> adapted = logits_of(*context, *model, tiny_batch());
  double change = 0.0;
  for (size_t i = 0; i < base.size(); ++i) change = std::max(change, std::fabs(double(base[i]) - adapted[i]));
  ASSERT_GT(change, 1e-2) << "random B must change the logits for the test to mean anything";

  const std::vector<NamedTensor> merged_dict = lora.merged_state_dict(DType::kF32);
  lora.merge(*context);
  EXPECT_TRUE(lora.merged());
  const std::vector<float> merged = logits_of(*context, *model, tiny_batch());
  double worst = 0.0;
  for (size_t i = 0; i < adapted.size(); ++i) worst = std::max(worst, std::fabs(double(adapted[i]) - merged[i]));
  EXPECT_LT(worst, 1e-4) << "merged vs base+LoRA logits";
  for (const NamedTensor& named : merged_dict) {
    const std::vector<float> in_model = model->parameters().get(named.name).value.to_floats();
    const std::vector<float> from_dict = named.tensor.to_floats();
    for (size_t i = 0; i < in_model.size(); ++i) ASSERT_NEAR(in_model[i], from_dict[i], 1e-6f) << named.name;
  }
  const std::string twice = testing::error_message([&] { lora.merge(*context); }, ErrorKind::kRuntime);
  EXPECT_NE(twice.find("already merged"), std::string::npos) << twice;

  lora.unmerge(*context);
  const std::vector<float> restored_q =
      model->parameters().get("model.layers.0.self_attn.q_proj.weight").value.to_floats();
  for (size_t i = 0; i < original_q.size(); ++i) ASSERT_NEAR(restored_q[i], original_q[i], 1e-6f) << i;
  const std::vector<float> again = logits_of(*context, *model, tiny_batch());
  for (size_t i = 0; i < adapted.size(); ++i) ASSERT_NEAR(again[i], adapted[i], 1e-4f) << i;
}

// Frozen base: no gradient buffer and no trainable flag on any base weight.
// The allocator's byte count after a training step grows by exactly the LoRA
// values and their fp32 gradients; a full fine-tuning run (control) would
// have grown by the whole model's size.
TEST(Lora, BaseWeightsAreFrozenWithoutGradientBuffers) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  const size_t before = context->allocator().bytes_in_use();
  LoraModel lora(*context, *model, all_linear(4, 8.0f));
  model->forward_backward(*context, tiny_batch());
  const size_t after = context->allocator().bytes_in_use();
  size_t lora_bytes = 0;
  for (const Parameter* parameter : lora.parameters().all()) {
    EXPECT_TRUE(parameter->trainable);
    ASSERT_TRUE(parameter->grad.defined()) << parameter->name;
    lora_bytes += parameter->value.nbytes() + parameter->grad.nbytes();
  }
  for (const Parameter* parameter : model->parameters().all()) {
    EXPECT_FALSE(parameter->trainable) << parameter->name;
    EXPECT_FALSE(parameter->grad.defined()) << parameter->name;
  }
  EXPECT_EQ(after - before, lora_bytes);
  EXPECT_EQ(lora_bytes, 2u * 4u * static_cast<size_t>(lora.parameters().num_elements()));

  auto full = LlamaModel::load(*context, tiny_llama_dir());
  const size_t full_before = context->allocator().bytes_in_use();
  full->forward_backward(*context, tiny_batch());
  EXPECT_EQ(context->allocator().bytes_in_use() - full_before,
            4u * static_cast<size_t>(full->parameters().num_elements()));
}

// With gradient checkpointing each block's forward (and so each adapter's,
// dropout mask included) runs again in the backward: same LoRA gradients.
TEST(Lora, RecomputedBlocksGiveTheSameGradients) {
  auto context = Context::cpu(0, 2);
  std::vector<std::vector<float>> results[2];
  for (ActivationPolicy policy : {ActivationPolicy::kSaveAll, ActivationPolicy::kRecompute}) {
    LlamaOptions options;
    options.activation_policy = policy;
    auto model = LlamaModel::load(*context, tiny_llama_dir(), options);
    LoraSettings config = all_linear(4, 8.0f);
    config.dropout = 0.25f;
    LoraModel lora(*context, *model, config);
    randomize_lora_b(lora, 5, 0.5f);
    lora.set_dropout_step(7);
    model->forward_backward(*context, tiny_batch());
    for (const Parameter* parameter : lora.parameters().all())
      results[policy == ActivationPolicy::kRecompute].push_back(parameter->grad.to_floats());
  }
  ASSERT_EQ(results[0].size(), results[1].size());
  for (size_t t = 0; t < results[0].size(); ++t)
    for (size_t i = 0; i < results[0][t].size(); ++i) ASSERT_NEAR(results[0][t][i], results[1][t][i], 1e-6f) << t;
}

// bf16 weights and activations: LoRA parameters in bf16 with fp32 gradients
// close to the f32 model's; merging (fp32 sum, one cast) stays close to the
// adapter path.
TEST(Lora, Bf16ComputeKeepsFp32GradientsAndMerges) {
  auto context = Context::cpu(0, 2);
  std::vector<std::vector<float>> grads[2];
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    LlamaOptions options;
    options.compute_dtype = dtype;
    auto model = LlamaModel::load(*context, tiny_llama_dir(), options);
    LoraModel lora(*context, *model, all_linear(4, 8.0f));
    randomize_lora_b(lora, 5, 0.5f);
    model->forward_backward(*context, tiny_batch());
    for (const Parameter* parameter : lora.parameters().all()) {
      EXPECT_EQ(parameter->value.dtype(), dtype);
      EXPECT_EQ(parameter->grad.dtype(), DType::kF32);
      grads[dtype == DType::kBF16].push_back(parameter->grad.to_floats());
    }
    if (dtype != DType::kBF16) continue;
    const std::vector<float> adapted = logits_of(*context, *model, tiny_batch());
    lora.merge(*context);
    const std::vector<float> merged = logits_of(*context, *model, tiny_batch());
    double worst = 0.0, largest = 0.0;
    for (size_t i = 0; i < adapted.size(); ++i) {
      worst = std::max(worst, std::fabs(double(adapted[i]) - merged[i]));
      largest = std::max(largest, std::fabs(double(adapted[i])));
    }
    EXPECT_LT(worst, 0.05 * largest + 0.02) << "bf16 merged vs adapter logits (largest " << largest << ")";
  }
  // Relative L2 error per tensor: bf16's 2^-8 rounding of every weight and
  // activation on the way (measured up to 6.3% here); a wrong gradient is ~100%.
  double worst_relative = 0.0;
  for (size_t t = 0; t < grads[0].size(); ++t) {
    double norm = 0.0, error = 0.0;
    for (size_t i = 0; i < grads[0][t].size(); ++i) {
      norm += double(grads[0][t][i]) * grads[0][t][i];
      error += (double(grads[0][t][i]) - grads[1][t][i]) * (double(grads[0][t][i]) - grads[1][t][i]);
    }
    worst_relative = std::max(worst_relative, std::sqrt(error / norm));
    EXPECT_LT(std::sqrt(error / norm), 0.1) << "tensor " << t << ": bf16 gradients far from f32 ones";
  }
  std::printf("bf16 vs f32 LoRA gradients: worst relative L2 error %.3f\n", worst_relative);
}

// End to end: plain SGD on the LoRA parameters alone lowers the loss on a
// batch, and the base weights stay bit-identical.
TEST(Lora, SgdOnLoraParametersLowersTheLossAndLeavesTheBase) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  std::vector<std::vector<float>> base_before;
  for (const Parameter* parameter : model->parameters().all()) base_before.push_back(parameter->value.to_floats());
  LoraModel lora(*context, *model, all_linear(4, 8.0f));
  const Batch batch = tiny_batch();
  const double initial = model->forward(*context, batch).loss;
  for (int step = 0; step < 30; ++step) {
    lora.parameters().zero_grads(*context);
    model->forward_backward(*context, batch);
    for (Parameter* parameter : lora.parameters().all())
      ops::add_scaled(*context, -0.5f, parameter->grad, parameter->value);
  }
  const double final_loss = model->forward(*context, batch).loss;
  std::printf("loss %.4f -> %.4f after 30 SGD steps on LoRA only\n", initial, final_loss);
  EXPECT_LT(final_loss, 0.8 * initial);
  size_t index = 0;
  for (const Parameter* parameter : model->parameters().all())
    EXPECT_EQ(parameter->value.to_floats(), base_before[index++]) << parameter->name;
}

}  // namespace
}  // namespace llmft
