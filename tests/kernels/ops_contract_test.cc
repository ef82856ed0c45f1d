// Contracts of kernels/ops.h beyond numeric accuracy: dropout's Philox-keyed
// mask, gradient statistics, and the errors that name the op, the argument and
// the offending value.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/context.h"
#include "core/error.h"
#include "core/philox.h"
#include "core/tensor.h"
#include "kernels/cpu/cpu_util.h"
#include "kernels/ops.h"

namespace llmft {
namespace {

std::vector<float> random_floats(int64_t count, uint64_t seed) {
  PhiloxGenerator generator(seed);
  std::vector<float> values(static_cast<size_t>(count));
  for (float& value : values) value = generator.next_normal();
  return values;
}

// Runs `body` and expects an llmft::Error of `kind` whose message contains every fragment.
template <typename Body>
void expect_error(Body&& body, ErrorKind kind, const std::vector<std::string>& fragments) {
  try {
    body();
    ADD_FAILURE() << "expected an llmft::Error containing \"" << fragments.front() << "\"";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), kind) << error.what();
    for (const std::string& fragment : fragments) {
      EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos)
          << "message \"" << error.what() << "\" lacks \"" << fragment << "\"";
    }
  }
}

class OpContract : public ::testing::Test {
 protected:
  std::unique_ptr<Context> context = Context::cpu(0);
};

// ---- Attention's shared prefix ------------------------------------------------------------

TEST_F(OpContract, AttentionSharedPrefixArgumentsAreChecked) {
  const Tensor q = Tensor::zeros_cpu({1, 2, 2, 4}, DType::kF32), k = Tensor::zeros_cpu({1, 2, 1, 4}, DType::kF32);
  const Tensor wrong_width = Tensor::zeros_cpu({3, 1, 8}, DType::kF32);
  const Tensor keys = Tensor::zeros_cpu({3, 1, 4}, DType::kF32), bf16_keys = Tensor::zeros_cpu({3, 1, 4}, DType::kBF16);
  Tensor out = Tensor::empty_cpu({1, 2, 2, 4}, DType::kF32), lse = Tensor::empty_cpu({1, 2, 2}, DType::kF32);
  ops::AttentionOptions options;
  options.shared_prefix.keys = &wrong_width;
  options.shared_prefix.values = &wrong_width;
  expect_error([&] { ops::attention_forward(*context, q, k, k, options, out, lse); }, ErrorKind::kRuntime,
               {"attention_forward: shared_prefix.keys: expected [positions, 1, 4]"});
  options.shared_prefix.keys = &bf16_keys;
  options.shared_prefix.values = &bf16_keys;
  expect_error([&] { ops::attention_forward(*context, q, k, k, options, out, lse); }, ErrorKind::kRuntime,
               {"shared_prefix.keys"});
  options.shared_prefix.keys = &keys;
  options.shared_prefix.values = nullptr;
  expect_error([&] { ops::attention_forward(*context, q, k, k, options, out, lse); }, ErrorKind::kRuntime,
               {"shared_prefix: keys given without values"});
  options.shared_prefix.values = &keys;
  Tensor dq = Tensor::empty_cpu(q.shape(), DType::kF32), dk = Tensor::empty_cpu(k.shape(), DType::kF32);
  Tensor dv = Tensor::empty_cpu(k.shape(), DType::kF32);
  expect_error([&] { ops::attention_backward(*context, q, q, k, k, out, lse, options, dq, dk, dv); },
               ErrorKind::kRuntime, {"attention_backward: shared_prefix: the backward needs dkeys and dvalues"});
}

// ---- Dropout --------------------------------------------------------------------------

TEST_F(OpContract, DropoutKeepsExactlyThePhiloxMaskWithInvertedScaling) {
  const int64_t count = 100003;
  const float p = 0.3f;
  const uint64_t seed = 1234, offset = 7;  // an offset that is not a multiple of Philox's 4 words
  const std::vector<float> values = random_floats(count, 1);
  const Tensor x = Tensor::from_floats({count}, values);
  Tensor y = Tensor::empty_cpu({count}, DType::kF32);
  ops::dropout_forward(*context, x, p, seed, offset, y);
  int64_t dropped = 0, wrong = 0;
  for (int64_t i = 0; i < count; ++i) {
    const bool keep = philox_uniform_at(seed, offset + i) >= p;
    const float want = keep ? values[i] * (1.0f / (1.0f - p)) : 0.0f;
    dropped += !keep;
    wrong += std::fabs(y.data<float>()[i] - want) > 1e-6f * std::fabs(want);
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_NEAR(static_cast<double>(dropped) / count, p, 0.01);
}

TEST_F(OpContract, DropoutIsAPureFunctionOfSeedAndOffset) {
  const int64_t count = 4099;
  const Tensor x = Tensor::from_floats({count}, random_floats(count, 2));
  Tensor first = Tensor::empty_cpu({count}, DType::kF32), second = Tensor::empty_cpu({count}, DType::kF32),
         other_seed = Tensor::empty_cpu({count}, DType::kF32);
  ops::dropout_forward(*context, x, 0.5f, 9, 100, first);
  ops::dropout_forward(*context, x, 0.5f, 9, 100, second);
  ops::dropout_forward(*context, x, 0.5f, 10, 100, other_seed);
  EXPECT_EQ(first.to_floats(), second.to_floats());
  EXPECT_NE(first.to_floats(), other_seed.to_floats());
  // A window starting later in the stream sees the same mask shifted.
  Tensor shifted = Tensor::empty_cpu({count - 5}, DType::kF32);
  ops::dropout_forward(*context, x.reshape({count}).slice_rows(5, count), 0.5f, 9, 105, shifted);
  for (int64_t i = 0; i < count - 5; ++i) ASSERT_EQ(shifted.data<float>()[i], first.data<float>()[i + 5]) << i;
}

// Tensor parallelism: a column slice of a wider tensor, with its layout,
// draws exactly the mask the same columns of the whole tensor draw.
TEST_F(OpContract, DropoutOfAColumnSliceWithItsLayoutEqualsTheSliceOfTheWholeTensorsDropout) {
  const int64_t rows = 37, columns = 22, offset = 3;
  const Tensor full = Tensor::from_floats({rows, columns}, random_floats(rows * columns, 4));
  Tensor full_out = Tensor::empty_cpu({rows, columns}, DType::kF32);
  ops::dropout_forward(*context, full, 0.4f, 77, offset, full_out);
  for (const auto& [begin, width] : std::vector<std::pair<int64_t, int64_t>>{{0, 11}, {11, 11}, {5, 7}, {21, 1}}) {
    std::vector<float> slice_values;
    const std::vector<float> values = full.to_floats();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = begin; c < begin + width; ++c) slice_values.push_back(values[r * columns + c]);
    const Tensor slice = Tensor::from_floats({rows, width}, slice_values);
    Tensor out = Tensor::empty_cpu({rows, width}, DType::kF32);
    ops::dropout_forward(*context, slice, 0.4f, 77, offset, out, ops::DropoutLayout{columns, begin});
    Tensor back = Tensor::empty_cpu({rows, width}, DType::kF32);
    ops::dropout_backward(*context, slice, 0.4f, 77, offset, back, ops::DropoutLayout{columns, begin});
    const std::vector<float> expected = full_out.to_floats();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < width; ++c) {
        ASSERT_EQ(out.data<float>()[r * width + c], expected[r * columns + begin + c]) << r << ", " << c;
        ASSERT_EQ(back.data<float>()[r * width + c], expected[r * columns + begin + c]) << r << ", " << c;
      }
  }
  Tensor out = Tensor::empty_cpu({rows, 11}, DType::kF32);
  expect_error([&] { ops::dropout_forward(*context, out, 0.4f, 77, 0, out, ops::DropoutLayout{12, 5}); },
               ErrorKind::kBadInput, {"dropout_forward", "row stride 12"});
}

TEST_F(OpContract, DropoutBackwardAppliesTheForwardMask) {
  const int64_t count = 5000;
  const float p = 0.25f;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor ones = Tensor::from_floats({count}, std::vector<float>(count, 1.0f), dtype);
    Tensor mask = Tensor::empty_cpu({count}, dtype);
    ops::dropout_forward(*context, ones, p, 5, 11, mask);  // 0 or 1/(1-p)
    const std::vector<float> dy_values = random_floats(count, 3);
    Tensor dx = Tensor::empty_cpu({count}, DType::kF32);
    ops::dropout_backward(*context, Tensor::from_floats({count}, dy_values), p, 5, 11, dx);
    const std::vector<float> mask_values = mask.to_floats();
    const float kept = Tensor::from_floats({1}, std::vector<float>{1.0f / (1.0f - p)}, dtype).to_floats()[0];
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_TRUE(mask_values[i] == 0.0f || mask_values[i] == kept) << i << ": " << mask_values[i];
      const float want = mask_values[i] == 0.0f ? 0.0f : dy_values[i] / (1.0f - p);
      ASSERT_NEAR(dx.data<float>()[i], want, 1e-6 * std::fabs(want)) << i;
    }
  }
}

TEST_F(OpContract, DropoutRejectsAProbabilityOfOne) {
  Tensor x = Tensor::zeros_cpu({4}, DType::kF32);
  expect_error([&] { ops::dropout_forward(*context, x, 1.0f, 0, 0, x); }, ErrorKind::kBadInput,
               {"dropout_forward", "[0, 1)"});
}

// ---- Gradient statistics -------------------------------------------------------------------

TEST_F(OpContract, GradientStatsSumsSquaresOverEveryTensor) {
  std::vector<Tensor> tensors;
  double want = 0.0;
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF32};
  const int64_t sizes[] = {300007, 17, 5000, 1};
  for (int i = 0; i < 4; ++i) {
    tensors.push_back(Tensor::from_floats({sizes[i]}, random_floats(sizes[i], 10 + i), dtypes[i]));
    for (float value : tensors.back().to_floats()) want += static_cast<double>(value) * value;
  }
  const ops::GradientStats stats = ops::gradient_stats(*context, tensors);
  EXPECT_NEAR(stats.sum_of_squares, want, 1e-6 * want);
  EXPECT_TRUE(stats.all_finite);
}

TEST_F(OpContract, GradientStatsFlagsOneInfOrNaN) {
  for (float bad : {INFINITY, -INFINITY, NAN}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      std::vector<float> values = random_floats(70001, 20);
      values[65432] = bad;
      std::vector<Tensor> tensors{Tensor::from_floats({3}, std::vector<float>{1, 2, 3}),
                                  Tensor::from_floats({70001}, values, dtype)};
      EXPECT_FALSE(ops::gradient_stats(*context, tensors).all_finite) << bad << " " << dtype_name(dtype);
    }
  }
  // A huge but finite gradient (its fp32 square overflows) is still finite.
  std::vector<Tensor> huge{Tensor::from_floats({2}, std::vector<float>{3e38f, 1.0f})};
  EXPECT_TRUE(ops::gradient_stats(*context, huge).all_finite);
}

// ---- The CPU backend's vectorisable exp ------------------------------------------------

// Every softmax, log-sum-exp and sigmoid of the CPU kernels goes through fast_exp.
TEST_F(OpContract, FastExpIsWithinTwoUlpOfExpOverTheFloatRange) {
  double worst = 0.0;
  float worst_at = 0.0f;
  for (double x = -87.0; x <= 88.72; x += 3e-4) {
    const float argument = static_cast<float>(x);
    const double want = std::exp(static_cast<double>(argument));
    const double relative = std::fabs(cpu::fast_exp(argument) - want) / want;
    if (relative > worst) {
      worst = relative;
      worst_at = argument;
    }
  }
  EXPECT_LT(worst, 2.0 * 5.96e-8) << "at x = " << worst_at;  // 2 ulp of 1.0f
  EXPECT_EQ(cpu::fast_exp(0.0f), 1.0f);
  EXPECT_EQ(cpu::fast_exp(-INFINITY), 0.0f);  // masked scores
  EXPECT_EQ(cpu::fast_exp(-200.0f), 0.0f);
  EXPECT_TRUE(std::isinf(cpu::fast_exp(89.0f)));
  EXPECT_TRUE(std::isnan(cpu::fast_exp(NAN)));
  // The vector loops (AVX2/AVX-512 clones, which contract to FMA) agree with the scalar function.
  std::vector<float> values = random_floats(1000, 30);
  std::vector<float> exps(values.size());
  const float sum = cpu::exp_shifted(values.data(), static_cast<int64_t>(values.size()), 0.5f, exps.data());
  double want_sum = 0.0;
  for (size_t i = 0; i < values.size(); ++i) {
    const float scalar = cpu::fast_exp(values[i] - 0.5f);
    ASSERT_NEAR(exps[i], scalar, 2.4e-7 * scalar) << i;
    want_sum += exps[i];
  }
  EXPECT_NEAR(sum, want_sum, 1e-5 * want_sum);
  EXPECT_EQ(cpu::max_value(values.data(), static_cast<int64_t>(values.size())),
            *std::max_element(values.begin(), values.end()));
}

// ---- Errors --------------------------------------------------------------------------------

TEST_F(OpContract, EmbeddingRejectsAnIdOutsideTheVocabulary) {
  const Tensor table = Tensor::zeros_cpu({10, 4}, DType::kF32);
  Tensor out = Tensor::empty_cpu({3, 4}, DType::kF32);
  expect_error([&] { ops::embedding_forward(*context, Tensor::from_ints({3}, std::vector<int32_t>{1, 2, 10}), table, out); },
               ErrorKind::kBadInput, {"embedding_forward", "token id 10", "position 2", "[0, 10)"});
  expect_error([&] { ops::embedding_forward(*context, Tensor::from_ints({3}, std::vector<int32_t>{-1, 2, 3}), table, out); },
               ErrorKind::kBadInput, {"token id -1", "position 0"});
  Tensor dtable = Tensor::zeros_cpu({10, 4}, DType::kF32);
  expect_error([&] {
    ops::embedding_backward(*context, Tensor::from_ints({3}, std::vector<int32_t>{0, 11, 3}), out, dtable);
  }, ErrorKind::kBadInput, {"embedding_backward", "token id 11", "position 1"});
}

TEST_F(OpContract, CrossEntropyRejectsATargetOutsideTheVocabulary) {
  const Tensor logits = Tensor::zeros_cpu({3, 50}, DType::kF32);
  Tensor losses = Tensor::empty_cpu({3}, DType::kF32), lse = Tensor::empty_cpu({3}, DType::kF32);
  expect_error([&] {
    ops::cross_entropy_forward(*context, logits, Tensor::from_ints({3}, std::vector<int32_t>{0, -100, 50}), losses, lse);
  }, ErrorKind::kBadInput, {"cross_entropy_forward", "target 50", "row 2", "[0, 50)"});
}

TEST_F(OpContract, MismatchedShapesNameTheOpAndTheArgument) {
  const Tensor x = Tensor::zeros_cpu({4, 8}, DType::kF32);
  const Tensor weight = Tensor::zeros_cpu({5, 7}, DType::kF32);
  Tensor y = Tensor::empty_cpu({4, 5}, DType::kF32);
  expect_error([&] { ops::linear_forward(*context, x, weight, nullptr, y); }, ErrorKind::kRuntime,
               {"linear_forward", "x has shape [4, 8]", "expected last dimension 7"});
  Tensor c = Tensor::empty_cpu({4, 5}, DType::kF32);
  expect_error([&] { ops::gemm(*context, x, weight, c, false, true); }, ErrorKind::kRuntime,
               {"gemm", "b has shape [5, 7]"});
  const Tensor x_bf16 = Tensor::zeros_cpu({4, 7}, DType::kBF16);
  expect_error([&] { ops::gemm(*context, x_bf16, weight, c, false, true); }, ErrorKind::kRuntime,
               {"gemm", "b must have a's dtype bf16"});
  Tensor rstd = Tensor::empty_cpu({4}, DType::kF32), y8 = Tensor::empty_cpu({4, 8}, DType::kF32);
  expect_error([&] { ops::rmsnorm_forward(*context, x, Tensor::zeros_cpu({7}, DType::kF32), 1e-5f, y8, rstd); },
               ErrorKind::kRuntime, {"rmsnorm_forward", "weight has shape [7]", "expected [8]"});
  expect_error([&] { ops::add(*context, x, Tensor::zeros_cpu({3}, DType::kF32), y8); }, ErrorKind::kRuntime,
               {"add", "b has 3 elements"});
  const Tensor ids = Tensor::zeros_cpu({4}, DType::kF32);
  expect_error([&] { ops::embedding_forward(*context, ids, x, y8); }, ErrorKind::kRuntime,
               {"embedding_forward", "ids must be i32"});
  const Tensor q = Tensor::zeros_cpu({1, 4, 2, 8}, DType::kF32);
  const Tensor k = Tensor::zeros_cpu({1, 5, 1, 8}, DType::kF32);
  Tensor out = Tensor::empty_cpu({1, 4, 2, 8}, DType::kF32), attention_lse = Tensor::empty_cpu({1, 2, 4}, DType::kF32);
  expect_error([&] { ops::attention_forward(*context, q, k, k, {}, out, attention_lse); }, ErrorKind::kRuntime,
               {"attention_forward", "k has shape [1, 5, 1, 8]", "num_prefix 0"});
  const Tensor k3 = Tensor::zeros_cpu({1, 4, 3, 8}, DType::kF32);
  expect_error([&] { ops::attention_forward(*context, q, k3, k3, {}, out, attention_lse); }, ErrorKind::kRuntime,
               {"attention_forward", "multiple of kv heads (3)"});
}

TEST_F(OpContract, AttentionRejectsADocumentStartAfterItsQuery) {
  const Tensor q = Tensor::zeros_cpu({1, 4, 1, 8}, DType::kF32);
  Tensor out = Tensor::empty_cpu({1, 4, 1, 8}, DType::kF32), lse = Tensor::empty_cpu({1, 1, 4}, DType::kF32);
  const Tensor doc_start = Tensor::from_ints({4}, std::vector<int32_t>{0, 0, 3, 2});
  ops::AttentionOptions options;
  options.doc_start = &doc_start;
  expect_error([&] { ops::attention_forward(*context, q, q, q, options, out, lse); }, ErrorKind::kBadInput,
               {"attention_forward", "doc_start[2]", "= 3", "[0, 2]"});
}

}  // namespace
}  // namespace llmft
