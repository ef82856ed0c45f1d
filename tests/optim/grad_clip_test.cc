// Global grad-norm clipping against torch.nn.utils.clip_grad_norm_
// (tests/testdata/optim/clip_grad_norm.json from tests/optim/make_golden.py).
#include "optim/grad_clip.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "tests/optim/golden.h"

namespace llmft::optim {
namespace {

TEST(ClipGradNorm, MatchesTorchGolden) {
  const nlohmann::json golden = testing::load_optim_golden("clip_grad_norm.json");
  ASSERT_EQ(golden["cases"].size(), 3u);
  auto context = Context::cpu();
  for (const auto& golden_case : golden["cases"]) {
    SCOPED_TRACE(golden_case["name"].get<std::string>());
    std::vector<Tensor> grads;
    for (size_t i = 0; i < golden_case["shapes"].size(); ++i) {
      grads.push_back(Tensor::from_floats(testing::json_shape(golden_case["shapes"][i]),
                                          testing::json_floats(golden_case["grads"][i])));
    }
    const double max_norm = golden_case["max_norm"].get<double>();
    const ClipResult result = clip_grad_norm(*context, grads, max_norm);
    const double torch_norm = golden_case["total_norm"].get<double>();
    EXPECT_NEAR(result.norm, torch_norm, 1e-6 * torch_norm);
    EXPECT_TRUE(result.all_finite);
    EXPECT_EQ(result.clipped, max_norm < torch_norm);
    for (size_t i = 0; i < grads.size(); ++i) {
      testing::expect_close(grads[i].to_floats(), testing::json_floats(golden_case["clipped_grads"][i]), 1e-6, 1e-9,
                            str_cat("grad ", i));
    }
  }
}

TEST(ClipGradNorm, ParametersOverloadSkipsFrozenAndNonFiniteIsLeftAlone) {
  auto context = Context::cpu();
  Parameter trainable{"a", Tensor::from_floats({2}, std::vector<float>{3.0f, 4.0f}),
                      Tensor::from_floats({2}, std::vector<float>{3.0f, 4.0f}), true};
  Parameter frozen{"b", Tensor::from_floats({1}, std::vector<float>{0.0f}),
                   Tensor::from_floats({1}, std::vector<float>{100.0f}), false};
  ClipResult result = clip_grad_norm(*context, {&trainable, &frozen}, 1.0);
  EXPECT_DOUBLE_EQ(result.norm, 5.0);  // the frozen parameter's stale gradient is not counted
  EXPECT_TRUE(result.clipped);
  const float coefficient = static_cast<float>(1.0 / (5.0 + 1e-6));
  EXPECT_FLOAT_EQ(trainable.grad.to_floats()[0], 3.0f * coefficient);
  EXPECT_EQ(frozen.grad.to_floats()[0], 100.0f);

  trainable.grad.data<float>()[1] = std::numeric_limits<float>::infinity();
  result = clip_grad_norm(*context, {&trainable}, 1.0);
  EXPECT_FALSE(result.all_finite);
  EXPECT_TRUE(std::isinf(result.norm));
  EXPECT_FALSE(result.clipped);
  EXPECT_TRUE(std::isinf(trainable.grad.to_floats()[1]));
}

}  // namespace
}  // namespace llmft::optim
