// AdamW against torch.optim.AdamW trajectories (tests/testdata/optim/adamw.json,
// made by tests/optim/make_golden.py), against a naive double-precision AdamW
// written here for the 16-bit compute-dtype paths, and its state accounting.
#include "optim/adamw.h"

#include <cmath>
#include <deque>

#include <gtest/gtest.h>

#include "tests/test_util.h"
#include "core/half.h"
#include "tests/optim/golden.h"
#include "kernels/ops.h"
#include "optim/lr_schedule.h"

namespace llmft::optim {
namespace {

using testing::expect_close;
using testing::json_floats;
using testing::json_shape;

Parameter make_parameter(const std::string& name, const Shape& shape, const std::vector<float>& init, DType dtype,
                         bool trainable = true) {
  Parameter parameter;
  parameter.name = name;
  parameter.value = Tensor::from_floats(shape, init, dtype);
  parameter.trainable = trainable;
  if (trainable) parameter.grad = Tensor::zeros_cpu(shape, DType::kF32);
  return parameter;
}

void set_grad(Parameter& parameter, const std::vector<float>& values) {
  ASSERT_EQ(static_cast<int64_t>(values.size()), parameter.grad.numel());
  std::copy(values.begin(), values.end(), parameter.grad.data<float>());
}

LrScheduleConfig schedule_from_json(const nlohmann::json& golden) {
  LrScheduleConfig config;
  config.kind = parse_schedule_kind(golden["schedule"]["kind"].get<std::string>(), "schedule.kind");
  config.base_lr = golden["base_lr"].get<double>();
  config.warmup_steps = golden["schedule"]["warmup_steps"].get<int64_t>();
  config.total_steps = golden["schedule"]["total_steps"].get<int64_t>();
  return config;
}

TEST(AdamW, MatchesTorchGoldenTrajectories) {
  const nlohmann::json golden = testing::load_optim_golden("adamw.json");
  ASSERT_EQ(golden["_generated_by"], "tests/optim/make_golden.py");
  ASSERT_EQ(golden["cases"].size(), 3u);
  for (const auto& golden_case : golden["cases"]) {
    const std::string case_name = golden_case["name"].get<std::string>();
    SCOPED_TRACE(case_name);
    std::deque<Parameter> parameters;
    std::vector<Parameter*> pointers;
    for (const auto& entry : golden_case["parameters"]) {
      parameters.push_back(make_parameter(entry["name"], json_shape(entry["shape"]), json_floats(entry["init"]),
                                          DType::kF32));
      pointers.push_back(&parameters.back());
    }
    AdamWConfig config;
    config.beta1 = golden_case["betas"][0].get<float>();
    config.beta2 = golden_case["betas"][1].get<float>();
    config.eps = golden_case["eps"].get<float>();
    config.weight_decay = golden_case["weight_decay"].get<float>();
    config.exclude_from_decay = is_norm_or_bias;
    auto context = Context::cpu();
    AdamW optimizer(*context, pointers, config);
    // The predicate picks exactly the parameters the script put in the no-decay group.
    for (size_t p = 0; p < pointers.size(); ++p) {
      EXPECT_EQ(optimizer.states()[p].decay, golden_case["parameters"][p]["decay"].get<bool>()) << pointers[p]->name;
    }
    const LrSchedule schedule(schedule_from_json(golden_case));
    const auto& lrs = golden_case["lrs"];
    for (size_t step = 0; step < lrs.size(); ++step) {
      // transformers' schedule (through LambdaLR) gave this step's lr.
      const double lr = schedule.lr(static_cast<int64_t>(step));
      EXPECT_NEAR(lr, lrs[step].get<double>(), 1e-12) << "lr of step " << step;
      for (size_t p = 0; p < pointers.size(); ++p) {
        set_grad(*pointers[p], json_floats(golden_case["parameters"][p]["grads"][step]));
      }
      optimizer.step(static_cast<float>(lrs[step].get<double>()));
      EXPECT_EQ(optimizer.step_count(), static_cast<int64_t>(step + 1));
      for (size_t p = 0; p < pointers.size(); ++p) {
        expect_close(pointers[p]->value.to_floats(), json_floats(golden_case["parameters"][p]["after_step"][step]),
                     1e-6, 1e-8, str_cat(pointers[p]->name, " after step ", step + 1));
      }
    }
  }
}

// A plain double-precision AdamW written from the paper's/torch's formulas,
// independent of the fused loop under test.
struct ReferenceAdamW {
  std::vector<double> p, m, v;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.01;
  int t = 0;
  void step(double lr, const std::vector<float>& g) {
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1.0 - lr * wd;
      m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
      const double m_hat = m[i] / (1.0 - std::pow(beta1, t));
      const double v_hat = v[i] / (1.0 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

std::vector<float> pattern(int64_t n, float phase, float amplitude) {
  std::vector<float> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) values[static_cast<size_t>(i)] = amplitude * std::sin(0.37f * static_cast<float>(i) + phase);
  return values;
}

void check_16bit_compute_copy(DType dtype) {
  const int64_t n = 300;
  std::deque<Parameter> parameters;
  parameters.push_back(make_parameter("w", {n}, pattern(n, 0.1f, 1.5f), dtype));
  Parameter& w = parameters.back();
  auto context = Context::cpu();
  AdamWConfig config;
  config.weight_decay = 0.01f;
  AdamW optimizer(*context, {&w}, config);
  ASSERT_EQ(optimizer.states().size(), 1u);
  const Tensor& master = optimizer.states()[0].master;
  ASSERT_EQ(master.dtype(), DType::kF32);
  ASSERT_NE(master.raw_data(), w.value.raw_data());
  ReferenceAdamW reference;
  const std::vector<float> init = w.value.to_floats();  // the rounded start: the master begins there
  reference.p.assign(init.begin(), init.end());
  reference.m.assign(static_cast<size_t>(n), 0.0);
  reference.v.assign(static_cast<size_t>(n), 0.0);
  for (int step = 0; step < 8; ++step) {
    const std::vector<float> grad = pattern(n, 0.5f * static_cast<float>(step), 0.01f + 0.2f * static_cast<float>(step));
    set_grad(w, grad);
    const float lr = 1e-3f * static_cast<float>(step + 1);
    optimizer.step(lr);
    reference.step(lr, grad);
    const float* master_data = master.data<float>();
    const uint16_t* value_bits = static_cast<const uint16_t*>(w.value.raw_data());
    for (int64_t i = 0; i < n; ++i) {
      // The compute copy is the round-to-nearest-even of the f32 master.
      const uint16_t expected_bits =
          dtype == DType::kBF16 ? float_to_bf16_bits(master_data[i]) : float_to_f16_bits(master_data[i]);
      ASSERT_EQ(value_bits[i], expected_bits) << "step " << step << " element " << i;
      // The master keeps full fp32 precision: per-step changes of ~1e-3 that
      // a 16-bit master would round away still accumulate.
      ASSERT_NEAR(master_data[i], reference.p[static_cast<size_t>(i)], 1e-6 * std::abs(reference.p[static_cast<size_t>(i)]) + 1e-7)
          << "step " << step << " element " << i;
    }
  }
}

TEST(AdamW, Bf16ComputeCopyIsRoundedMaster) { check_16bit_compute_copy(DType::kBF16); }
TEST(AdamW, F16ComputeCopyIsRoundedMaster) { check_16bit_compute_copy(DType::kF16); }

TEST(AdamW, FrozenParametersGetNoState) {
  auto context = Context::cpu();
  Allocator& allocator = context->allocator();
  std::deque<Parameter> parameters;
  auto add = [&](const std::string& name, const Shape& shape, DType dtype, bool trainable) -> Parameter* {
    Parameter parameter;
    parameter.name = name;
    parameter.value = context->zeros(shape, dtype);
    parameter.trainable = trainable;
    if (trainable) parameter.grad = context->zeros(shape, DType::kF32);
    parameters.push_back(std::move(parameter));
    return &parameters.back();
  };
  std::vector<Parameter*> all = {add("base.weight", {256, 256}, DType::kBF16, false),
                                 add("lora_A.weight", {8, 256}, DType::kBF16, true),
                                 add("lora_B.weight", {256, 8}, DType::kF32, true),
                                 add("base2.weight", {128, 128}, DType::kF32, false)};
  const size_t before = allocator.bytes_in_use();
  {
    AdamW optimizer(*context, all, AdamWConfig{});
    const size_t allocated = allocator.bytes_in_use() - before;
    // bf16 trainable: master + two moments in f32; f32 trainable: the value is
    // the master, so only two moments. Frozen: nothing.
    const size_t expected = 3 * 8 * 256 * sizeof(float) + 2 * 256 * 8 * sizeof(float);
    EXPECT_EQ(allocated, expected);
    EXPECT_EQ(optimizer.state_bytes(), expected);
    ASSERT_EQ(optimizer.states().size(), 2u);
    EXPECT_EQ(optimizer.states()[0].parameter->name, "lora_A.weight");
    EXPECT_EQ(optimizer.states()[1].parameter->name, "lora_B.weight");
    // A frozen parameter is untouched by a step, even with decay on.
    const std::vector<float> base_before = all[0]->value.to_floats();
    ops::fill(*context, all[1]->grad, 0.5f);
    ops::fill(*context, all[2]->grad, 0.5f);
    optimizer.step(1e-2f);
    EXPECT_EQ(all[0]->value.to_floats(), base_before);
  }
  EXPECT_EQ(allocator.bytes_in_use(), before);
}

TEST(AdamW, RestoredStateContinuesBitIdentically) {
  const int64_t n = 50;
  auto context = Context::cpu();
  auto grad_at = [&](int step) { return pattern(n, 0.3f * static_cast<float>(step), 0.5f); };
  std::deque<Parameter> run;
  run.push_back(make_parameter("layer.weight", {5, 10}, pattern(n, 1.0f, 1.0f), DType::kBF16));
  AdamW optimizer(*context, {&run.back()}, AdamWConfig{});
  for (int step = 0; step < 3; ++step) {
    set_grad(run.back(), grad_at(step));
    optimizer.step(1e-2f);
  }
  // "Checkpoint": step count, master and moments.
  const int64_t saved_step = optimizer.step_count();
  const Tensor saved_master = optimizer.states()[0].master.clone();
  const Tensor saved_m = optimizer.states()[0].exp_avg.clone();
  const Tensor saved_v = optimizer.states()[0].exp_avg_sq.clone();
  for (int step = 3; step < 5; ++step) {
    set_grad(run.back(), grad_at(step));
    optimizer.step(1e-2f);
  }

  std::deque<Parameter> resumed;
  resumed.push_back(make_parameter("layer.weight", {5, 10}, std::vector<float>(n, 7.0f), DType::kBF16));
  AdamW restored(*context, {&resumed.back()}, AdamWConfig{});
  restored.set_step_count(saved_step);
  restored.states()[0].master.copy_from(saved_master);
  restored.states()[0].exp_avg.copy_from(saved_m);
  restored.states()[0].exp_avg_sq.copy_from(saved_v);
  restored.refresh_values();
  for (int step = 3; step < 5; ++step) {
    set_grad(resumed.back(), grad_at(step));
    restored.step(1e-2f);
  }
  const std::vector<float> a = optimizer.states()[0].master.to_floats();
  const std::vector<float> b = restored.states()[0].master.to_floats();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(float_bits(a[i]), float_bits(b[i])) << i;
  EXPECT_EQ(run.back().value.to_floats(), resumed.back().value.to_floats());
}

TEST(AdamW, GradMultiplierUnscalesInsideTheUpdate) {
  const int64_t n = 40;
  std::deque<Parameter> parameters;
  parameters.push_back(make_parameter("a", {n}, pattern(n, 0.2f, 1.0f), DType::kF32));
  parameters.push_back(make_parameter("b", {n}, pattern(n, 0.2f, 1.0f), DType::kF32));
  auto context = Context::cpu();
  AdamW plain(*context, {&parameters[0]}, AdamWConfig{});
  AdamW scaled(*context, {&parameters[1]}, AdamWConfig{});
  for (int step = 0; step < 3; ++step) {
    std::vector<float> grad = pattern(n, static_cast<float>(step), 0.1f);
    set_grad(parameters[0], grad);
    for (float& g : grad) g *= 1024.0f;  // power of two: the unscaled gradient is exact
    set_grad(parameters[1], grad);
    plain.step(1e-2f);
    scaled.step(1e-2f, 1.0f / 1024.0f);
  }
  EXPECT_EQ(parameters[0].value.to_floats(), parameters[1].value.to_floats());
}

TEST(AdamW, Bf16AndF16GradientsReadExactly) {
  // Gradients stored in 16 bits are widened exactly: the same values given as
  // f32 must produce bit-identical updates.
  const int64_t n = 33;
  for (DType grad_dtype : {DType::kBF16, DType::kF16}) {
    std::deque<Parameter> parameters;
    parameters.push_back(make_parameter("a", {n}, pattern(n, 0.4f, 1.0f), DType::kF32));
    parameters.push_back(make_parameter("b", {n}, pattern(n, 0.4f, 1.0f), DType::kF32));
    auto context = Context::cpu();
    AdamW wide(*context, {&parameters[0]}, AdamWConfig{});
    AdamW narrow(*context, {&parameters[1]}, AdamWConfig{});
    for (int step = 0; step < 3; ++step) {
      const Tensor grad16 = Tensor::from_floats({n}, pattern(n, static_cast<float>(step), 0.3f), grad_dtype);
      set_grad(parameters[0], grad16.to_floats());
      parameters[1].grad = grad16;
      wide.step(1e-2f);
      narrow.step(1e-2f);
    }
    EXPECT_EQ(parameters[0].value.to_floats(), parameters[1].value.to_floats()) << dtype_name(grad_dtype);
  }
}

TEST(AdamW, MissingOrMismatchedGradientIsBadInput) {
  auto context = Context::cpu();
  std::deque<Parameter> parameters;
  parameters.push_back(make_parameter("model.layers.0.mlp.up_proj.weight", {4, 4}, std::vector<float>(16, 1.0f),
                                      DType::kF32));
  AdamW optimizer(*context, {&parameters.back()}, AdamWConfig{});
  parameters.back().grad = Tensor();
  std::string message = testing::bad_input_message([&] { optimizer.step(1e-3f); });
  EXPECT_NE(message.find("'model.layers.0.mlp.up_proj.weight' has no gradient"), std::string::npos) << message;
  parameters.back().grad = Tensor::zeros_cpu({4, 5}, DType::kF32);
  message = testing::bad_input_message([&] { optimizer.step(1e-3f); });
  EXPECT_NE(message.find("gradient f32[4, 5]"), std::string::npos) << message;
  EXPECT_NE(message.find("does not match value f32[4, 4]"), std::string::npos) << message;
  EXPECT_EQ(optimizer.step_count(), 0) << "a rejected step must not count";
  EXPECT_EQ(parameters.back().value.to_floats(), std::vector<float>(16, 1.0f));
}

TEST(AdamW, BadHyperparametersAreBadInput) {
  auto context = Context::cpu();
  AdamWConfig config;
  config.beta2 = 1.0f;
  std::string message = testing::bad_input_message([&] { AdamW(*context, {}, config); });
  EXPECT_NE(message.find("betas must lie in [0, 1), found (0.9, 1)"), std::string::npos) << message;
  config = AdamWConfig{};
  config.weight_decay = -0.1f;
  message = testing::bad_input_message([&] { AdamW(*context, {}, config); });
  EXPECT_NE(message.find("optimizer.weight_decay: expected >= 0, found -0.1"), std::string::npos) << message;
}

TEST(AdamW, NormAndBiasPredicate) {
  EXPECT_TRUE(is_norm_or_bias("model.norm.weight"));
  EXPECT_TRUE(is_norm_or_bias("model.layers.3.input_layernorm.weight"));
  EXPECT_TRUE(is_norm_or_bias("model.layers.3.post_attention_layernorm.weight"));
  EXPECT_TRUE(is_norm_or_bias("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_FALSE(is_norm_or_bias("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(is_norm_or_bias("model.embed_tokens.weight"));
  EXPECT_FALSE(is_norm_or_bias("lm_head.weight"));
}

}  // namespace
}  // namespace llmft::optim
