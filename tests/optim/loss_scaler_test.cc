// Dynamic loss scaler against torch.amp.GradScaler's update
// (tests/testdata/optim/grad_scaler.json: torch._amp_update_scale_ on CPU, from
// tests/optim/make_golden.py) and hand-worked hysteresis sequences.
#include "optim/loss_scaler.h"

#include <limits>

#include <gtest/gtest.h>

#include "tests/optim/golden.h"
#include "tests/test_util.h"

namespace llmft::optim {
namespace {

TEST(LossScaler, DefaultsAreTorchGradScalers) {
  const nlohmann::json golden = testing::load_optim_golden("grad_scaler.json");
  const LossScalerConfig config;
  EXPECT_EQ(config.init_scale, golden["defaults"]["init_scale"].get<float>());
  EXPECT_EQ(config.growth_factor, golden["defaults"]["growth_factor"].get<float>());
  EXPECT_EQ(config.backoff_factor, golden["defaults"]["backoff_factor"].get<float>());
  EXPECT_EQ(config.growth_interval, golden["defaults"]["growth_interval"].get<int64_t>());
  EXPECT_EQ(config.hysteresis, 1);
}

TEST(LossScaler, MatchesTorchScaleSequences) {
  const nlohmann::json golden = testing::load_optim_golden("grad_scaler.json");
  ASSERT_EQ(golden["cases"].size(), 3u);
  for (const auto& golden_case : golden["cases"]) {
    SCOPED_TRACE(golden_case["name"].get<std::string>());
    LossScalerConfig config;
    config.init_scale = golden_case["init_scale"].get<float>();
    config.growth_factor = golden_case["growth_factor"].get<float>();
    config.backoff_factor = golden_case["backoff_factor"].get<float>();
    config.growth_interval = golden_case["growth_interval"].get<int64_t>();
    LossScaler scaler(config);
    const auto& found_inf = golden_case["found_inf"];
    for (size_t step = 0; step < found_inf.size(); ++step) {
      const bool overflow = found_inf[step].get<int>() != 0;
      EXPECT_EQ(scaler.update(overflow), !overflow) << "step " << step;
      ASSERT_EQ(scaler.scale(), golden_case["scale_after"][step].get<float>()) << "step " << step;
      ASSERT_EQ(scaler.state().growth_tracker, golden_case["growth_tracker_after"][step].get<int64_t>())
          << "step " << step;
    }
  }
}

TEST(LossScaler, HysteresisBacksOffAfterConsecutiveOverflows) {
  // Megatron DynamicGradScaler semantics, worked by hand: hysteresis 2, interval 3.
  LossScalerConfig config;
  config.growth_interval = 3;
  config.hysteresis = 2;
  LossScaler scaler(config);
  const bool pattern[] = {true, true, true, false, false, false, true, false, true};
  const float scales[] = {65536, 32768, 16384, 16384, 16384, 32768, 32768, 32768, 16384};
  const int64_t hysteresis[] = {1, 0, 0, 0, 0, 2, 1, 1, 0};
  for (size_t step = 0; step < std::size(pattern); ++step) {
    EXPECT_EQ(scaler.update(pattern[step]), !pattern[step]) << step;
    EXPECT_EQ(scaler.scale(), scales[step]) << step;
    EXPECT_EQ(scaler.state().hysteresis_tracker, hysteresis[step]) << step;
  }
}

TEST(LossScaler, ChecksGradientsWithGradientStats) {
  auto context = Context::cpu();
  LossScaler scaler(LossScalerConfig{});
  std::vector<Tensor> grads = {Tensor::from_floats({3}, std::vector<float>{1.0f, 2.0f, 3.0f}),
                               Tensor::from_floats({2}, std::vector<float>{0.5f, 0.25f}, DType::kF16)};
  EXPECT_TRUE(scaler.check_and_update(*context, grads));
  EXPECT_EQ(scaler.scale(), 65536.0f);
  // 1e5 overflows f16: the stored gradient is +inf.
  grads[1] = Tensor::from_floats({2}, std::vector<float>{1e5f, 0.0f}, DType::kF16);
  EXPECT_FALSE(scaler.check_and_update(*context, grads));
  EXPECT_EQ(scaler.scale(), 32768.0f);
  grads[1] = Tensor::from_floats({2}, std::vector<float>{std::numeric_limits<float>::quiet_NaN(), 0.0f});
  EXPECT_FALSE(scaler.check_and_update(*context, grads));
  EXPECT_EQ(scaler.scale(), 16384.0f);
  EXPECT_EQ(scaler.inv_scale(), 1.0f / 16384.0f);
}

TEST(LossScaler, StateRoundTripsAndBadStateIsBadInput) {
  LossScalerConfig config;
  config.growth_interval = 4;
  LossScaler scaler(config);
  for (bool overflow : {false, true, false, false}) scaler.update(overflow);
  LossScaler restored(config);
  restored.load_state(scaler.state(), "ckpt/scaler.json");
  for (bool overflow : {false, false, true, false, false, false, false}) {
    EXPECT_EQ(scaler.update(overflow), restored.update(overflow));
    EXPECT_EQ(scaler.scale(), restored.scale());
    EXPECT_EQ(scaler.state().growth_tracker, restored.state().growth_tracker);
  }
  LossScalerState bad = scaler.state();
  bad.scale = std::numeric_limits<float>::infinity();
  std::string message = testing::bad_input_message([&] { restored.load_state(bad, "ckpt/scaler.json"); });
  EXPECT_NE(message.find("ckpt/scaler.json: loss_scaler.scale: expected a finite value > 0, found inf"),
            std::string::npos)
      << message;
  bad = scaler.state();
  bad.growth_tracker = 4;
  message = testing::bad_input_message([&] { restored.load_state(bad, "ckpt/scaler.json"); });
  EXPECT_NE(message.find("loss_scaler.growth_tracker: expected in [0, 4), found 4"), std::string::npos) << message;
}

TEST(LossScaler, BadConfigIsBadInput) {
  LossScalerConfig config;
  config.backoff_factor = 1.0f;
  std::string message = testing::bad_input_message([&] { LossScaler scaler(config); });
  EXPECT_NE(message.find("loss_scaler.backoff_factor: expected in (0, 1), found 1"), std::string::npos) << message;
  config = LossScalerConfig{};
  config.hysteresis = 0;
  message = testing::bad_input_message([&] { LossScaler scaler(config); });
  EXPECT_NE(message.find("loss_scaler.hysteresis: expected >= 1, found 0"), std::string::npos) << message;
}

}  // namespace
}  // namespace llmft::optim
