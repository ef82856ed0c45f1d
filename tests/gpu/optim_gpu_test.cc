// The optimizer side of a CUDA training step on the device (what
// trainer/trainer.cc runs when it no longer copies weights and gradients to
// the host): optim::AdamW with masters and moments in GPU memory must give the
// CPU optimizer's bits (both run ops::adamw_update with the same host-derived
// scalars); global grad-norm clipping and the loss scaler's overflow check
// must read device gradients. The CPU optimizer itself is held against torch
// in tests/optim. Without the CUDA backend or a GPU every test skips, saying why.
#include <gtest/gtest.h>

#include <cmath>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/philox.h"
#include "core/tensor.h"
#include "optim/adamw.h"
#include "optim/grad_clip.h"
#include "optim/loss_scaler.h"
#include "tests/gpu/gpu_test_util.h"

namespace llmft {
namespace {

Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, float scale) {
  PhiloxGenerator generator(seed);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (float& value : values) value = scale * generator.next_normal();
  return Tensor::from_floats(shape, values, dtype);
}

struct ParameterSpec {
  std::string name;
  Shape shape;
  DType dtype;
};

// The same trainable parameters on one context: values from fixed seeds,
// f32 gradients (as the trainer allocates them).
struct ParameterSet {
  std::deque<Parameter> storage;
  std::vector<Parameter*> pointers;

  ParameterSet(Context& context, const std::vector<ParameterSpec>& specs) {
    uint64_t seed = 7;
    for (const ParameterSpec& spec : specs) {
      Parameter& parameter = storage.emplace_back();
      parameter.name = spec.name;
      parameter.value = context.upload(random_tensor(spec.shape, spec.dtype, seed++, 0.5f));
      if (!context.is_cuda()) parameter.value = parameter.value.clone();
      parameter.grad = context.zeros(spec.shape, DType::kF32);
      pointers.push_back(&parameter);
    }
  }

  void set_grads(uint64_t seed, float scale) {
    for (Parameter* parameter : pointers)
      parameter->grad.copy_from(random_tensor(parameter->grad.shape(), DType::kF32, seed++, scale));
  }
};

const std::vector<ParameterSpec> kSpecs = {
    {"model.layers.0.self_attn.q_proj.lora_A.weight", {8, 67}, DType::kBF16},
    {"model.layers.0.self_attn.q_proj.lora_B.weight", {67, 8}, DType::kF16},
    {"model.layers.0.input_layernorm.weight", {67}, DType::kF32},  // excluded from decay, its own master
};

void expect_same_bits(const Tensor& cpu, const Tensor& gpu, const std::string& what) {
  ASSERT_EQ(cpu.shape(), gpu.shape()) << what;
  ASSERT_EQ(cpu.dtype(), gpu.dtype()) << what;
  const std::vector<float> want = cpu.to_floats(), got = gpu.to_floats();
  int64_t mismatches = 0;
  for (size_t i = 0; i < want.size(); ++i) mismatches += float_bits(want[i]) != float_bits(got[i]);
  EXPECT_EQ(mismatches, 0) << what << ": " << mismatches << " of " << want.size() << " elements differ";
}

TEST(AdamWOnGpu, KeepsItsStateOnTheDeviceAndMatchesTheCpuOptimizerBitForBit) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Context> cpu = Context::cpu(0);
  std::unique_ptr<Context> gpu = Context::cuda(0, 0);
  ParameterSet cpu_parameters(*cpu, kSpecs), gpu_parameters(*gpu, kSpecs);
  optim::AdamWConfig config;
  config.weight_decay = 0.1f;
  config.exclude_from_decay = optim::is_norm_or_bias;
  optim::AdamW cpu_optimizer(*cpu, cpu_parameters.pointers, config);
  optim::AdamW gpu_optimizer(*gpu, gpu_parameters.pointers, config);
  for (const optim::AdamWParameterState& state : gpu_optimizer.states()) {
    EXPECT_TRUE(state.master.device().is_cuda()) << state.parameter->name;
    EXPECT_TRUE(state.exp_avg.device().is_cuda()) << state.parameter->name;
    EXPECT_TRUE(state.exp_avg_sq.device().is_cuda()) << state.parameter->name;
  }
  EXPECT_EQ(cpu_optimizer.state_bytes(), gpu_optimizer.state_bytes());
  for (int step = 1; step <= 4; ++step) {
    cpu_parameters.set_grads(100 * step, 8.0f);
    gpu_parameters.set_grads(100 * step, 8.0f);
    cpu_optimizer.step(3e-3f * step, 0.125f);  // grad_multiplier: 1 / loss scale 8
    gpu_optimizer.step(3e-3f * step, 0.125f);
  }
  gpu->synchronize();
  EXPECT_EQ(gpu_optimizer.step_count(), 4);
  for (size_t i = 0; i < kSpecs.size(); ++i) {
    const optim::AdamWParameterState& want = cpu_optimizer.states()[i];
    const optim::AdamWParameterState& got = gpu_optimizer.states()[i];
    expect_same_bits(want.parameter->value, got.parameter->value, kSpecs[i].name + " value");
    expect_same_bits(want.master, got.master, kSpecs[i].name + " master");
    expect_same_bits(want.exp_avg, got.exp_avg, kSpecs[i].name + " exp_avg");
    expect_same_bits(want.exp_avg_sq, got.exp_avg_sq, kSpecs[i].name + " exp_avg_sq");
  }
}

// Checkpoint restore writes masters in place, then refresh_values() rounds
// them into the model's compute-dtype copies, on the device.
TEST(AdamWOnGpu, RefreshValuesRoundsRestoredMastersOnTheDevice) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Context> gpu = Context::cuda(0, 0);
  ParameterSet parameters(*gpu, kSpecs);
  optim::AdamW optimizer(*gpu, parameters.pointers, optim::AdamWConfig{});
  for (optim::AdamWParameterState& state : optimizer.states()) {
    const Tensor restored = random_tensor(state.master.shape(), DType::kF32, 55, 3.0f);
    state.master.copy_from(restored);
    optimizer.refresh_values();
    const Tensor want = random_tensor(state.master.shape(), state.parameter->value.dtype(), 55, 3.0f);
    expect_same_bits(want, state.parameter->value, state.parameter->name + " value after refresh");
  }
}

TEST(AdamWOnGpu, RejectsAGradientOnAnotherDevice) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Context> gpu = Context::cuda(0, 0);
  ParameterSet parameters(*gpu, kSpecs);
  optim::AdamW optimizer(*gpu, parameters.pointers, optim::AdamWConfig{});
  parameters.storage.front().grad = Tensor::zeros_cpu(kSpecs.front().shape, DType::kF32);
  try {
    optimizer.step(1e-3f);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("gradient of '" + kSpecs.front().name + "'"), std::string::npos)
        << error.what();
  }
  EXPECT_EQ(optimizer.step_count(), 0);  // nothing was touched
}

TEST(GradClipOnGpu, ClipsDeviceGradientsLikeTheCpu) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Context> cpu = Context::cpu(0);
  std::unique_ptr<Context> gpu = Context::cuda(0, 0);
  ParameterSet cpu_parameters(*cpu, kSpecs), gpu_parameters(*gpu, kSpecs);
  cpu_parameters.set_grads(9, 2.0f);
  gpu_parameters.set_grads(9, 2.0f);
  const optim::ClipResult want = optim::clip_grad_norm(*cpu, cpu_parameters.pointers, 1.0);
  const optim::ClipResult got = optim::clip_grad_norm(*gpu, gpu_parameters.pointers, 1.0);
  ASSERT_TRUE(want.clipped);
  EXPECT_TRUE(got.clipped);
  EXPECT_TRUE(got.all_finite);
  // Summation order differs between the backends: fp32-level agreement.
  EXPECT_NEAR(got.norm, want.norm, 1e-6 * want.norm);
  for (size_t i = 0; i < kSpecs.size(); ++i) {
    const std::vector<float> a = cpu_parameters.pointers[i]->grad.to_floats();
    const std::vector<float> b = gpu_parameters.pointers[i]->grad.to_floats();
    for (size_t j = 0; j < a.size(); ++j) ASSERT_NEAR(b[j], a[j], 1e-6f * (1.0f + std::fabs(a[j]))) << kSpecs[i].name;
  }
}

TEST(LossScalerOnGpu, SeesAnOverflowInADeviceGradientAndBacksOff) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Context> gpu = Context::cuda(0, 0);
  ParameterSet parameters(*gpu, kSpecs);
  parameters.set_grads(3, 1.0f);
  optim::LossScalerConfig config;
  config.init_scale = 1024.0f;
  config.hysteresis = 1;
  optim::LossScaler scaler(config);
  std::vector<Tensor> grads;
  for (Parameter* parameter : parameters.pointers) grads.push_back(parameter->grad);
  EXPECT_TRUE(scaler.check_and_update(*gpu, grads));
  std::vector<float> with_inf(static_cast<size_t>(grads[1].numel()), 0.5f);
  with_inf[17] = INFINITY;
  grads[1].copy_from(Tensor::from_floats(grads[1].shape(), with_inf));
  EXPECT_FALSE(scaler.check_and_update(*gpu, grads));
  EXPECT_EQ(scaler.scale(), 1024.0f * config.backoff_factor);
}

}  // namespace
}  // namespace llmft
