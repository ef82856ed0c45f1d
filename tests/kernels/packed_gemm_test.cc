// The packed GEMM (kernels/cpu/packed_gemm.h) against a double-precision
// product of the same stored values: every pair of operand dtypes, both
// transposes, shapes across its tile, depth, row and column blocks, padded
// leading dimensions, alpha and beta (beta = 0 must not read C), and one or
// two threads (which must give identical bits); the same for the bf16 pair
// tile (kernels/cpu/bf16_dot_gemm.h) under its VDPBF16PS emulation, with
// hand-computed sums for the instruction's order of additions and its
// denormal handling, and natively where the CPU has AVX512_BF16.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/dtype.h"
#include "core/half.h"
#include "core/philox.h"
#include "kernels/cpu/packed_gemm.h"

namespace llmft::cpu {
namespace {

// A stored matrix of `rows` x `columns` (leading dimension `ld`) in `dtype`,
// with its values widened back to double for the reference.
struct StoredMatrix {
  DType dtype;
  int64_t rows, columns, ld;
  std::vector<float> f32;
  std::vector<uint16_t> half;
  std::vector<double> values;  // what the stored bits mean, row-major with ld

  const void* data() const {
    return dtype == DType::kF32 ? static_cast<const void*>(f32.data()) : static_cast<const void*>(half.data());
  }
};

StoredMatrix make_matrix(DType dtype, int64_t rows, int64_t columns, int64_t ld, uint64_t seed) {
  StoredMatrix matrix{dtype, rows, columns, ld, {}, {}, {}};
  const int64_t size = std::max<int64_t>(rows * ld, 1);
  matrix.values.assign(size, 0.0);
  if (dtype == DType::kF32) matrix.f32.assign(size, 0.0f);
  else matrix.half.assign(size, 0);
  for (int64_t index = 0; index < size; ++index) {
    const float drawn = philox_uniform_at(seed, index) * 2.0f - 1.0f;
    if (dtype == DType::kF32) {
      matrix.f32[index] = drawn;
      matrix.values[index] = drawn;
    } else if (dtype == DType::kBF16) {
      matrix.half[index] = float_to_bf16_bits(drawn);
      matrix.values[index] = bf16_bits_to_float(matrix.half[index]);
    } else {
      matrix.half[index] = float_to_f16_bits(drawn);
      matrix.values[index] = f16_bits_to_float(matrix.half[index]);
    }
  }
  return matrix;
}

struct Case {
  int64_t m, n, k;
  bool trans_a, trans_b;
  DType a_dtype, b_dtype;
  float alpha, beta;
  int64_t padding;  // extra elements per stored row
};

std::string describe(const Case& c) {
  return "m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
         " trans_a=" + std::to_string(c.trans_a) + " trans_b=" + std::to_string(c.trans_b) + " a " +
         std::string(dtype_name(c.a_dtype)) + " b " + std::string(dtype_name(c.b_dtype)) +
         " alpha=" + std::to_string(c.alpha) + " beta=" + std::to_string(c.beta) +
         " padding=" + std::to_string(c.padding);
}

// Runs one case on `threads` threads and checks it against the double
// reference within f32 summation's bound (k + 2 roundings of at most 2^-24
// of the sum of magnitudes). Returns C for the thread-invariance check.
std::vector<float> check_case(const Case& c, int threads, CpuGemmPath path = CpuGemmPath::kPackedF32) {
  SCOPED_TRACE(describe(c) + " threads=" + std::to_string(threads) + " path " + cpu_gemm_path_name(path));
  const int64_t a_rows = c.trans_a ? c.k : c.m, a_columns = c.trans_a ? c.m : c.k;
  const int64_t b_rows = c.trans_b ? c.n : c.k, b_columns = c.trans_b ? c.k : c.n;
  const StoredMatrix a = make_matrix(c.a_dtype, a_rows, a_columns, a_columns + c.padding, 11);
  const StoredMatrix b = make_matrix(c.b_dtype, b_rows, b_columns, b_columns + c.padding, 12);
  const int64_t ldc = c.n + c.padding;
  const StoredMatrix c_start = make_matrix(DType::kF32, c.m, c.n, ldc, 13);
  std::vector<float> result = c_start.f32;
  if (c.beta == 0.0f) {  // beta = 0 must not read C: NaN there would show
    for (int64_t row = 0; row < c.m; ++row)
      for (int64_t column = 0; column < c.n; ++column)
        result[row * ldc + column] = std::numeric_limits<float>::quiet_NaN();
  }
  std::vector<float> scratch(packed_gemm_scratch_floats(path, c.m, c.n, c.k, threads) + 1);
  packed_gemm(path, c.m, c.n, c.k, c.alpha, {a.data(), a.dtype, a.ld, c.trans_a}, {b.data(), b.dtype, b.ld, c.trans_b},
              c.beta, result.data(), ldc, scratch.data(), threads);
  int64_t failures = 0;
  for (int64_t row = 0; row < c.m; ++row) {
    for (int64_t column = 0; column < c.n; ++column) {
      double sum = 0.0, magnitude = 0.0;
      for (int64_t kk = 0; kk < c.k; ++kk) {
        const double x = c.trans_a ? a.values[kk * a.ld + row] : a.values[row * a.ld + kk];
        const double y = c.trans_b ? b.values[column * b.ld + kk] : b.values[kk * b.ld + column];
        sum += x * y;
        magnitude += std::fabs(x * y);
      }
      const double start = c_start.values[row * ldc + column];
      const double expected = c.alpha * sum + (c.beta == 0.0f ? 0.0 : c.beta * start);
      const double bound =
          (c.k + 2) * std::ldexp(1.0, -24) * (std::fabs(c.alpha) * magnitude + std::fabs(c.beta * start)) + 1e-30;
      const double got = result[row * ldc + column];
      if (!(std::fabs(got - expected) <= bound) && failures++ < 5) {
        ADD_FAILURE() << "C[" << row << ", " << column << "] = " << got << ", expected " << expected << " within "
                      << bound;
      }
    }
  }
  // The padding after each row of C is never written.
  for (int64_t row = 0; row < c.m; ++row)
    for (int64_t column = c.n; column < ldc; ++column)
      if (result[row * ldc + column] != c_start.f32[row * ldc + column] && failures++ < 5)
        ADD_FAILURE() << "C's padding at [" << row << ", " << column << "] was written";
  EXPECT_EQ(failures, 0);
  return result;
}

class PackedGemm : public ::testing::Test {
 protected:
  void SetUp() override {
    // The kernel needs AVX2, FMA and F16C (x86-64-v3); every CI machine of
    // this project has them, and the test says so rather than skip.
    ASSERT_TRUE(packed_gemm_supported()) << "this CPU lacks AVX2/FMA/F16C, which the packed GEMM needs";
  }
};

TEST_F(PackedGemm, EveryDtypePairAndTransposeMatchesTheDoubleProduct) {
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kF16};
  for (DType a_dtype : dtypes)
    for (DType b_dtype : dtypes)
      for (bool trans_a : {false, true})
        for (bool trans_b : {false, true}) {
          // Whole tiles, ragged tiles and a depth of two blocks.
          check_case({12, 32, 64, trans_a, trans_b, a_dtype, b_dtype, 1.0f, 0.0f, 0}, 1);
          check_case({13, 37, 300, trans_a, trans_b, a_dtype, b_dtype, 0.5f, 2.0f, 3}, 1);
        }
}

TEST_F(PackedGemm, ShapesAcrossEveryBlockBoundary) {
  const Case cases[] = {
      {1, 1, 1, false, true, DType::kBF16, DType::kBF16, 1.0f, 0.0f, 0},
      {5, 15, 7, false, true, DType::kBF16, DType::kBF16, 1.0f, 1.0f, 1},        // smaller than one tile
      {200, 40, 33, false, true, DType::kBF16, DType::kF32, 1.0f, 0.0f, 0},      // rows past the 96-row block
      {7, 3100, 20, false, false, DType::kBF16, DType::kBF16, 1.0f, 0.0f, 0},    // columns past the 3072 block
      {9, 20, 577, true, false, DType::kF16, DType::kBF16, -1.5f, 0.25f, 2},     // three depth blocks
      {4, 5, 0, false, false, DType::kBF16, DType::kBF16, 1.0f, 0.5f, 0},        // empty sum: C = beta C
  };
  for (const Case& c : cases) check_case(c, 1);
}

TEST_F(PackedGemm, ThreadsSplitTheWorkWithoutChangingABit) {
  const Case cases[] = {
      {300, 70, 129, false, true, DType::kBF16, DType::kBF16, 1.0f, 0.0f, 0},  // row bands
      {40, 500, 129, true, false, DType::kF16, DType::kF32, 1.0f, 1.0f, 1},    // column bands
  };
  for (const Case& c : cases) {
    const std::vector<float> one = check_case(c, 1);
    const std::vector<float> two = check_case(c, 2);
    ASSERT_EQ(one.size(), two.size());
    for (size_t index = 0; index < one.size(); ++index) {
      if (std::isnan(one[index]) && std::isnan(two[index])) continue;
      ASSERT_EQ(one[index], two[index]) << describe(c) << " at element " << index;
    }
  }
}

TEST_F(PackedGemm, RejectsAnOperandThatIsNotAFloat) {
  std::vector<int32_t> integers(4, 1);
  std::vector<float> floats(4, 1.0f), c(4, 0.0f);
  std::vector<float> scratch(packed_gemm_scratch_floats(CpuGemmPath::kPackedF32, 2, 2, 2, 1) + 1);
  try {
    packed_gemm(CpuGemmPath::kPackedF32, 2, 2, 2, 1.0f, {integers.data(), DType::kI32, 2, false},
                {floats.data(), DType::kF32, 2, false}, 0.0f, c.data(), 2, scratch.data(), 1);
    FAIL() << "expected an error";
  } catch (const std::exception& error) {
    EXPECT_NE(std::string(error.what()).find("must be f32, bf16 or f16, found i32"), std::string::npos)
        << error.what();
  }
}

// ---- The bf16 pair tile ---------------------------------------------------------

TEST(Bf16DotEmulated, EveryTransposeMatchesTheDoubleProduct) {
  for (bool trans_a : {false, true})
    for (bool trans_b : {false, true}) {
      // Whole 12 x 32 tiles, ragged tiles with an odd depth of two blocks, a
      // single element, and beta with padding.
      check_case({12, 32, 64, trans_a, trans_b, DType::kBF16, DType::kBF16, 1.0f, 0.0f, 0}, 1,
                 CpuGemmPath::kPackedBf16DotEmulated);
      check_case({13, 37, 301, trans_a, trans_b, DType::kBF16, DType::kBF16, 0.5f, 2.0f, 3}, 1,
                 CpuGemmPath::kPackedBf16DotEmulated);
      check_case({1, 1, 1, trans_a, trans_b, DType::kBF16, DType::kBF16, 1.0f, 0.0f, 0}, 1,
                 CpuGemmPath::kPackedBf16DotEmulated);
      check_case({5, 15, 7, trans_a, trans_b, DType::kBF16, DType::kBF16, -1.0f, 1.0f, 1}, 1,
                 CpuGemmPath::kPackedBf16DotEmulated);
    }
}

TEST(Bf16DotEmulated, ShapesAcrossEveryBlockBoundary) {
  const Case cases[] = {
      {200, 40, 33, false, true, DType::kBF16, DType::kBF16, 1.0f, 0.0f, 0},    // rows past the 192-row block
      {7, 3100, 20, false, false, DType::kBF16, DType::kBF16, 1.0f, 0.0f, 0},   // columns past the 3072 block
      {9, 20, 577, true, false, DType::kBF16, DType::kBF16, -1.5f, 0.25f, 2},   // three depth blocks, the last odd
      {24, 64, 512, false, true, DType::kBF16, DType::kBF16, 1.0f, 1.0f, 0},    // two whole depth blocks
      {4, 5, 0, false, false, DType::kBF16, DType::kBF16, 1.0f, 0.5f, 0},       // empty sum: C = beta C
  };
  for (const Case& c : cases) check_case(c, 1, CpuGemmPath::kPackedBf16DotEmulated);
}

TEST(Bf16DotEmulated, ThreadsSplitTheWorkWithoutChangingABit) {
  const Case cases[] = {
      {300, 70, 129, false, true, DType::kBF16, DType::kBF16, 1.0f, 0.0f, 0},  // row bands
      {40, 500, 129, true, false, DType::kBF16, DType::kBF16, 1.0f, 1.0f, 1},  // column bands
  };
  for (const Case& c : cases) {
    const std::vector<float> one = check_case(c, 1, CpuGemmPath::kPackedBf16DotEmulated);
    const std::vector<float> two = check_case(c, 2, CpuGemmPath::kPackedBf16DotEmulated);
    ASSERT_EQ(one.size(), two.size());
    for (size_t index = 0; index < one.size(); ++index) {
      if (std::isnan(one[index]) && std::isnan(two[index])) continue;
      ASSERT_EQ(one[index], two[index]) << describe(c) << " at element " << index;
    }
  }
}

// C[0, 0] = sum over k of a[k] * b[k] for one row and one column, by `path`.
float dot_by(CpuGemmPath path, const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<uint16_t> a_bits, b_bits;
  for (float value : a) a_bits.push_back(float_to_bf16_bits(value));
  for (float value : b) b_bits.push_back(float_to_bf16_bits(value));
  const int64_t k = static_cast<int64_t>(a.size());
  std::vector<float> scratch(packed_gemm_scratch_floats(path, 1, 1, k, 1) + 1);
  float c = 0.0f;
  packed_gemm(path, 1, 1, k, 1.0f, {a_bits.data(), DType::kBF16, k, false}, {b_bits.data(), DType::kBF16, 1, false},
              0.0f, &c, 1, scratch.data(), 1);
  return c;
}

// VDPBF16PS adds a pair's two products one at a time, the odd k first, each
// addition rounded to f32 (Intel SDM, VDPBF16PS). Products 0, 2^24, -1, 1 in
// k order: the pair tile sums 2^24, then + 1 (a tie, rounding back to 2^24),
// then - 1, giving 2^24 - 1; the f32 tile adds in k order and gives 2^24.
TEST(Bf16DotEmulated, AddsEachPairOddKFirstRoundingEachAddition) {
  const std::vector<float> a = {0.0f, 4096.0f, -1.0f, 1.0f}, b = {0.0f, 4096.0f, 1.0f, 1.0f};
  EXPECT_EQ(dot_by(CpuGemmPath::kPackedBf16DotEmulated, a, b), 16777215.0f);
  EXPECT_EQ(dot_by(CpuGemmPath::kPackedF32, a, b), 16777216.0f);
}

// VDPBF16PS reads bf16 denormals as zero and flushes denormal sums to zero
// (DAZ, FTZ); the f32 tile keeps both.
TEST(Bf16DotEmulated, ReadsAndWritesDenormalsAsZero) {
  const float denormal = bf16_bits_to_float(0x0001);  // 2^-133
  EXPECT_EQ(dot_by(CpuGemmPath::kPackedBf16DotEmulated, {denormal}, {0x1p100f}), 0.0f);
  EXPECT_EQ(dot_by(CpuGemmPath::kPackedF32, {denormal}, {0x1p100f}), 0x1p-33f);
  EXPECT_EQ(dot_by(CpuGemmPath::kPackedBf16DotEmulated, {0x1p-70f}, {0x1p-70f}), 0.0f);
  EXPECT_EQ(dot_by(CpuGemmPath::kPackedF32, {0x1p-70f}, {0x1p-70f}), 0x1p-140f);
}

TEST(Bf16DotEmulated, RejectsOperandsThatAreNotBothBf16) {
  std::vector<uint16_t> half(4, 0x3c00);
  std::vector<float> floats(4, 1.0f), c(4, 0.0f);
  std::vector<float> scratch(packed_gemm_scratch_floats(CpuGemmPath::kPackedBf16DotEmulated, 2, 2, 2, 1) + 1);
  try {
    packed_gemm(CpuGemmPath::kPackedBf16DotEmulated, 2, 2, 2, 1.0f, {half.data(), DType::kF16, 2, false},
                {floats.data(), DType::kF32, 2, false}, 0.0f, c.data(), 2, scratch.data(), 1);
    FAIL() << "expected an error";
  } catch (const std::exception& error) {
    EXPECT_NE(std::string(error.what()).find("bf16dot-emulated path needs bf16 operands, found a f16 and b f32"),
              std::string::npos)
        << error.what();
  }
}

// The native tile where the CPU has AVX512_BF16: the same cases against the
// double product, and the emulation agreeing with it. Elsewhere the path is
// refused with the reason, and the default never takes it.
TEST(Bf16Dot, NativeTileMatchesTheDoubleProductWhereTheCpuHasIt) {
  const Case cases[] = {
      {13, 37, 301, false, true, DType::kBF16, DType::kBF16, 0.5f, 2.0f, 3},
      {200, 40, 33, true, false, DType::kBF16, DType::kBF16, 1.0f, 0.0f, 0},
      {300, 70, 129, false, false, DType::kBF16, DType::kBF16, 1.0f, 1.0f, 1},
  };
  if (!bf16_dot_supported()) {
    EXPECT_NE(cpu_gemm_path(DType::kBF16, DType::kBF16), CpuGemmPath::kPackedBf16Dot);
    std::vector<uint16_t> half(4, 0x3f80);
    std::vector<float> c(4, 0.0f), scratch(packed_gemm_scratch_floats(CpuGemmPath::kPackedBf16Dot, 2, 2, 2, 1) + 1);
    try {
      packed_gemm(CpuGemmPath::kPackedBf16Dot, 2, 2, 2, 1.0f, {half.data(), DType::kBF16, 2, false},
                  {half.data(), DType::kBF16, 2, false}, 0.0f, c.data(), 2, scratch.data(), 1);
      FAIL() << "expected an error: this CPU has no AVX512_BF16";
    } catch (const std::exception& error) {
      EXPECT_NE(std::string(error.what()).find("AVX512_BF16"), std::string::npos) << error.what();
    }
    return;
  }
  for (const Case& c : cases) {
    const std::vector<float> native = check_case(c, 2, CpuGemmPath::kPackedBf16Dot);
    const std::vector<float> emulated = check_case(c, 2, CpuGemmPath::kPackedBf16DotEmulated);
    double largest = 0.0;
    for (size_t index = 0; index < native.size(); ++index)
      if (!std::isnan(native[index])) largest = std::max(largest, double{std::fabs(native[index] - emulated[index])});
    EXPECT_LE(largest, 1e-4) << describe(c) << ": native against emulated";
    std::printf("native VDPBF16PS against its emulation, %s: largest difference %g\n", describe(c).c_str(), largest);
  }
}

}  // namespace
}  // namespace llmft::cpu

