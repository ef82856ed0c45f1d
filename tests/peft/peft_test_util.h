// Shared by the peft tests: the tiny golden checkpoint, logits, and a
// deterministic way to make every LoRA B nonzero (B = 0 at init hides bugs).
#pragma once

#include <filesystem>
#include <vector>

#include "core/philox.h"
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "peft/adapter_io.h"
#include "peft/lora.h"
#include "tests/test_util.h"
#include "peft/peft_method.h"

namespace llmft::peft_test {

inline std::filesystem::path tiny_llama_dir() {
  return std::filesystem::path(LLMFT_SOURCE_DIR) / "tests" / "testdata" / "model" / "tiny_llama";
}

inline Batch tiny_batch() {
  Batch batch;
  batch.input_ids = Tensor::from_ints({2, 6}, std::vector<int32_t>{1, 17, 5, 42, 9, 88, 1, 4, 64, 8, 0, 33});
  batch.targets = Tensor::from_ints({2, 6}, std::vector<int32_t>{17, 5, 42, 9, 88, -100, 4, 64, 8, 0, 33, 71});
  return batch;
}

inline std::vector<float> logits_of(Context& context, LlamaModel& model, const Batch& batch) {
  Tensor logits;
  model.forward(context, batch, &logits);
  return logits.to_floats();
}

// Every B ~ stddev · N(0, 1) from Philox(seed).
inline void randomize_lora_b(LoraModel& lora, uint64_t seed, float stddev) {
  PhiloxGenerator generator(seed);
  for (Parameter* parameter : lora.parameters().all()) {
    if (!parameter->name.ends_with("lora_B.weight")) continue;
    std::vector<float> values(static_cast<size_t>(parameter->value.numel()));
    for (float& value : values) value = stddev * generator.next_normal();
    parameter->value.copy_from(Tensor::from_floats(parameter->value.shape(), values, parameter->value.dtype()));
  }
}

// Every parameter of `method`: the analytic gradient at its largest entry and
// three random ones against (L(p + h) - L(p - h)) / 2h, after one
// forward_backward of the tiny batch. A ReLU encoder wants a smaller h, so
// that p ± h stays on one side of each unit's kink. Returns how many
// coordinates were checked and the worst |analytic - numeric| / tolerance.
struct GradientCheck {
  int checked = 0;
  double worst_ratio = 0.0;
};
inline GradientCheck check_gradients(Context& context, LlamaModel& model, PeftMethod& method, float step = 1e-2f) {
  GradientCheck result;
  method.parameters().zero_grads(context);
  const Batch batch = tiny_batch();
  model.forward_backward(context, batch);
  PhiloxGenerator generator(9);
  for (Parameter* parameter : method.parameters().all()) {
    EXPECT_EQ(parameter->grad.dtype(), DType::kF32) << parameter->name;
    const std::vector<float> grad = parameter->grad.to_floats();
    float* values = parameter->value.data<float>();
    size_t largest = 0;
    for (size_t i = 0; i < grad.size(); ++i)
      if (std::fabs(grad[i]) > std::fabs(grad[largest])) largest = i;
    const double scale = std::fabs(grad[largest]);
    EXPECT_GT(scale, 1e-6) << parameter->name << " has no gradient at all";
    std::vector<size_t> coordinates = {largest};
    for (int i = 0; i < 3; ++i) coordinates.push_back(generator.next_below(grad.size()));
    for (size_t index : coordinates) {
      const float original = values[index];
      values[index] = original + step;
      const double plus = model.forward(context, batch).loss;
      values[index] = original - step;
      const double minus = model.forward(context, batch).loss;
      values[index] = original;
      const double numeric = (plus - minus) / (2.0 * step);
      // f32 loss noise / 2h: ~1e-5 at h = 1e-2, ~1e-4 at 1e-3; the h² term
      // stays below 2% of the scale.
      const double tolerance = 2e-2 * scale + 5e-7 / step;
      result.worst_ratio = std::max(result.worst_ratio, std::fabs(grad[index] - numeric) / tolerance);
      EXPECT_NEAR(grad[index], numeric, tolerance) << parameter->name << "[" << index << "] scale " << scale;
      ++result.checked;
    }
  }
  return result;
}

inline void expect_base_frozen(const LlamaModel& model) {
  for (const Parameter* parameter : model.parameters().all()) {
    EXPECT_FALSE(parameter->trainable) << parameter->name;
    EXPECT_FALSE(parameter->grad.defined()) << parameter->name;
  }
}

// A scratch adapter directory per test, and helpers to edit its
// adapter_config.json and read the one-line error loading it gives.
class AdapterDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = std::filesystem::path(::testing::TempDir()) /
                 ("llmft_adapter_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(directory_);
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }

  // load_peft_adapter of the directory onto a fresh tiny model: its error.
  std::string load_error() {
    auto fresh = LlamaModel::load(*context_, tiny_llama_dir());
    return testing::bad_input_message([&] { load_peft_adapter(*context_, *fresh, directory_); });
  }
  void edit_config(const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json json;
    {
      std::ifstream in(directory_ / "adapter_config.json");
      json = nlohmann::json::parse(in);
    }
    edit(json);
    std::ofstream(directory_ / "adapter_config.json") << json.dump();
  }

  std::unique_ptr<Context> context_ = Context::cpu(0, 2);
  std::filesystem::path directory_;
};

}  // namespace llmft::peft_test
