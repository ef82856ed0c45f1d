// Dequantization of every supported GGML block type, checked two ways:
//  1. Known values: the test picks integer quants and power-of-two scales,
//     packs them per ggml-common.h's block layouts (packers written here from
//     the spec), writes a GGUF file, and expects the exact values back.
//  2. Random blocks (random scales, random bits): bit-identical to a naive
//     per-element reference written here after ggml-quants.c's
//     dequantize_row_* loops, with every intermediate forced through an f32
//     rounding as numpy (gguf-py/gguf/quants.py) does.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "model/gguf_dequantize.h"
#include "model/gguf_reader.h"
#include "tests/gguf/gguf_test_writer.h"

namespace llmft::gguf {
namespace {

using testing::GgufBuilder;
using testing::ScratchDir;

// f16 encodings of exact powers of two (normal range), and of -1.
uint16_t f16_pow2(int exponent) { return static_cast<uint16_t>((exponent + 15) << 10); }
constexpr uint16_t kF16MinusOne = 0xBC00;

void put_u16(std::vector<uint8_t>& block, size_t at, uint16_t value) {
  block[at] = static_cast<uint8_t>(value & 0xFF);
  block[at + 1] = static_cast<uint8_t>(value >> 8);
}

// Writes one tensor of `type` with `ne` = {row, rows} and reads it back.
std::vector<float> round_trip(uint32_t type, uint64_t row, uint64_t rows, const std::vector<uint8_t>& data) {
  ScratchDir scratch;
  GgufBuilder builder;
  builder.add("general.architecture", testing::string_value("llama"));
  builder.add_tensor({"t", {row, rows}, type, data});
  GgufFile file = GgufFile::open(scratch.write("t.gguf", builder.build().bytes));
  const TensorInfo& tensor = file.tensor("t");
  EXPECT_EQ(tensor.shape(), (std::vector<int64_t>{static_cast<int64_t>(rows), static_cast<int64_t>(row)}));
  EXPECT_EQ(tensor.numel, row * rows);
  return file.dequantize(tensor);
}

void expect_bits_equal(const std::vector<float>& actual, const std::vector<float>& expected, const char* what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    uint32_t a, e;
    std::memcpy(&a, &actual[i], 4);
    std::memcpy(&e, &expected[i], 4);
    ASSERT_EQ(a, e) << what << " element " << i << ": " << actual[i] << " vs reference " << expected[i];
  }
}

// ---------------------------------------------------------------------------
// 1. Known values
// ---------------------------------------------------------------------------

TEST(GgufDequantize, TypeTableMatchesGgmlQuantSizes) {
  // (type id, block size, bytes per block) from gguf-py/gguf/constants.py GGML_QUANT_SIZES.
  const uint32_t expected[][3] = {{0, 1, 4},     {1, 1, 2},     {2, 32, 18},   {3, 32, 20},  {6, 32, 22},
                                  {7, 32, 24},   {8, 32, 34},   {12, 256, 144}, {13, 256, 176},
                                  {14, 256, 210}, {30, 1, 2},   {10, 256, 84}, {11, 256, 110}};
  for (const auto& row : expected) {
    auto traits = ggml_type_traits(row[0]);
    ASSERT_TRUE(traits.has_value()) << row[0];
    EXPECT_EQ(traits->block_size, row[1]) << traits->name;
    EXPECT_EQ(traits->type_size, row[2]) << traits->name;
  }
  EXPECT_FALSE(ggml_type_traits(4).has_value());  // Q4_2, removed from ggml
  EXPECT_EQ(ggml_type_name(3), "Q4_1");
  EXPECT_EQ(ggml_type_name(77), "type 77");
}

TEST(GgufDequantize, F32F16Bf16KnownValues) {
  const std::vector<float> f32_values = {1.0f, -2.5f, 3.14159274f, 0.0f, -0.0f, 1e-30f, 65504.0f, -7.0f};
  std::vector<uint8_t> f32_bytes(f32_values.size() * 4);
  std::memcpy(f32_bytes.data(), f32_values.data(), f32_bytes.size());
  expect_bits_equal(round_trip(0, 4, 2, f32_bytes), f32_values, "F32");

  // binary16: 1.5 = 0x3E00, -0.25 = 0xB400, 65504 = 0x7BFF, 2^-24 = 0x0001 (subnormal), 2^-14 = 0x0400.
  const std::vector<uint16_t> f16_bits = {0x3E00, 0xB400, 0x7BFF, 0x0001, 0x0400, 0x0000, 0x8000, 0x3C00};
  const std::vector<float> f16_expected = {1.5f, -0.25f, 65504.0f, std::ldexp(1.0f, -24), std::ldexp(1.0f, -14),
                                           0.0f, -0.0f, 1.0f};
  std::vector<uint8_t> f16_bytes(f16_bits.size() * 2);
  for (size_t i = 0; i < f16_bits.size(); ++i) put_u16(f16_bytes, 2 * i, f16_bits[i]);
  expect_bits_equal(round_trip(1, 8, 1, f16_bytes), f16_expected, "F16");

  // bfloat16: the top half of the binary32 pattern.
  const std::vector<float> bf16_expected = {1.0f, -2.5f, 3.140625f, 0.0f};
  std::vector<uint8_t> bf16_bytes(8);
  for (size_t i = 0; i < 4; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &bf16_expected[i], 4);
    put_u16(bf16_bytes, 2 * i, static_cast<uint16_t>(bits >> 16));
  }
  expect_bits_equal(round_trip(30, 2, 2, bf16_bytes), bf16_expected, "BF16");
}

// Quants of two rows of 64 weights (2 blocks each), chosen at random.
struct LegacyCase {
  std::vector<int> quants;  // one per weight
};

TEST(GgufDequantize, Q4_0Q4_1KnownValues) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> nibble(0, 15);
  const int weights = 128;
  std::vector<int> q(weights);
  for (int& v : q) v = nibble(rng);
  // Q4_0: d = 2^-2; value = (q - 8) / 4. Q4_1: d = 2^-3, m = -1; value = q / 8 - 1.
  std::vector<uint8_t> q4_0(weights / 32 * 18), q4_1(weights / 32 * 20);
  std::vector<float> expected_0(weights), expected_1(weights);
  for (int b = 0; b < weights / 32; ++b) {
    put_u16(q4_0, 18 * b, f16_pow2(-2));
    put_u16(q4_1, 20 * b, f16_pow2(-3));
    put_u16(q4_1, 20 * b + 2, kF16MinusOne);
    for (int j = 0; j < 16; ++j) {
      const uint8_t packed = static_cast<uint8_t>(q[32 * b + j] | (q[32 * b + j + 16] << 4));
      q4_0[18 * b + 2 + j] = packed;
      q4_1[20 * b + 4 + j] = packed;
    }
    for (int j = 0; j < 32; ++j) {
      expected_0[32 * b + j] = static_cast<float>(q[32 * b + j] - 8) / 4.0f;
      expected_1[32 * b + j] = static_cast<float>(q[32 * b + j]) / 8.0f - 1.0f;
    }
  }
  expect_bits_equal(round_trip(2, 64, 2, q4_0), expected_0, "Q4_0");
  expect_bits_equal(round_trip(3, 64, 2, q4_1), expected_1, "Q4_1");
}

TEST(GgufDequantize, Q5_0Q5_1KnownValues) {
  std::mt19937 rng(2);
  std::uniform_int_distribution<int> five_bits(0, 31);
  const int weights = 96;
  std::vector<int> q(weights);
  for (int& v : q) v = five_bits(rng);
  std::vector<uint8_t> q5_0(weights / 32 * 22), q5_1(weights / 32 * 24);
  std::vector<float> expected_0(weights), expected_1(weights);
  for (int b = 0; b < weights / 32; ++b) {
    put_u16(q5_0, 22 * b, f16_pow2(-4));
    put_u16(q5_1, 24 * b, f16_pow2(-1));
    put_u16(q5_1, 24 * b + 2, kF16MinusOne);
    uint32_t high_bits = 0;  // bit j: fifth bit of weight j
    for (int j = 0; j < 32; ++j) high_bits |= static_cast<uint32_t>((q[32 * b + j] >> 4) & 1) << j;
    std::memcpy(&q5_0[22 * b + 2], &high_bits, 4);
    std::memcpy(&q5_1[24 * b + 4], &high_bits, 4);
    for (int j = 0; j < 16; ++j) {
      const uint8_t packed = static_cast<uint8_t>((q[32 * b + j] & 15) | ((q[32 * b + j + 16] & 15) << 4));
      q5_0[22 * b + 6 + j] = packed;
      q5_1[24 * b + 8 + j] = packed;
    }
    for (int j = 0; j < 32; ++j) {
      expected_0[32 * b + j] = static_cast<float>(q[32 * b + j] - 16) / 16.0f;
      expected_1[32 * b + j] = static_cast<float>(q[32 * b + j]) / 2.0f - 1.0f;
    }
  }
  expect_bits_equal(round_trip(6, 32, 3, q5_0), expected_0, "Q5_0");
  expect_bits_equal(round_trip(7, 96, 1, q5_1), expected_1, "Q5_1");
}

TEST(GgufDequantize, Q8_0KnownValues) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> byte(-128, 127);
  const int weights = 64;
  std::vector<uint8_t> data(weights / 32 * 34);
  std::vector<float> expected(weights);
  for (int b = 0; b < 2; ++b) {
    put_u16(data, 34 * b, f16_pow2(b == 0 ? -5 : 3));
    for (int j = 0; j < 32; ++j) {
      const int q = byte(rng);
      data[34 * b + 2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q));
      expected[32 * b + j] = static_cast<float>(q) * (b == 0 ? 1.0f / 32.0f : 8.0f);
    }
  }
  expect_bits_equal(round_trip(8, 32, 2, data), expected, "Q8_0");
}

// Packs eight 6-bit scales and mins the way ggml-quants.c's quantize_row_q4_K
// stores them: j < 4 in the low 6 bits of bytes j (scale) and j + 4 (min);
// j >= 4 split into a low nibble in byte j + 4 and two high bits in the spare
// top bits of bytes j - 4 (scale) and j (min).
void pack_k4_scales(const int* scales, const int* mins, uint8_t* packed) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      packed[j] = static_cast<uint8_t>(scales[j]);
      packed[j + 4] = static_cast<uint8_t>(mins[j]);
    } else {
      packed[j + 4] = static_cast<uint8_t>((scales[j] & 0xF) | ((mins[j] & 0xF) << 4));
      packed[j - 4] |= static_cast<uint8_t>((scales[j] >> 4) << 6);
      packed[j - 0] |= static_cast<uint8_t>((mins[j] >> 4) << 6);
    }
  }
}

TEST(GgufDequantize, Q4_KQ5_KKnownValues) {
  std::mt19937 rng(4);
  std::uniform_int_distribution<int> six_bits(0, 63), four_bits(0, 15), five_bits(0, 31);
  const int blocks = 3;
  std::vector<uint8_t> q4k(blocks * 144, 0), q5k(blocks * 176, 0);
  std::vector<float> expected_4(blocks * 256), expected_5(blocks * 256);
  for (int b = 0; b < blocks; ++b) {
    int scales[8], mins[8];
    for (int s = 0; s < 8; ++s) scales[s] = six_bits(rng), mins[s] = six_bits(rng);
    // d = 2^-6, dmin = 2^-7: value = d * scale * q - dmin * min, exact in f32.
    uint8_t* block4 = &q4k[144 * b];
    uint8_t* block5 = &q5k[176 * b];
    for (uint8_t* block : {block4, block5}) {
      block[0] = f16_pow2(-6) & 0xFF, block[1] = f16_pow2(-6) >> 8;
      block[2] = f16_pow2(-7) & 0xFF, block[3] = f16_pow2(-7) >> 8;
      pack_k4_scales(scales, mins, block + 4);
    }
    // Weights go in 4 chunks of 64: the first 32 of a chunk in the low nibbles of
    // 32 bytes, the next 32 in their high nibbles (the loop in dequantize_row_q4_K).
    for (int chunk = 0; chunk < 4; ++chunk) {
      for (int l = 0; l < 32; ++l) {
        const int low4 = four_bits(rng), high4 = four_bits(rng);
        block4[16 + 32 * chunk + l] = static_cast<uint8_t>(low4 | (high4 << 4));
        expected_4[256 * b + 64 * chunk + l] = static_cast<float>(scales[2 * chunk] * low4) / 64.0f -
                                               static_cast<float>(mins[2 * chunk]) / 128.0f;
        expected_4[256 * b + 64 * chunk + 32 + l] = static_cast<float>(scales[2 * chunk + 1] * high4) / 64.0f -
                                                    static_cast<float>(mins[2 * chunk + 1]) / 128.0f;
        const int low5 = five_bits(rng), high5 = five_bits(rng);
        block5[48 + 32 * chunk + l] = static_cast<uint8_t>((low5 & 15) | ((high5 & 15) << 4));
        // Fifth bits: sub-block s = 2 * chunk (+1) uses bit s of qh[l].
        block5[16 + l] |= static_cast<uint8_t>(((low5 >> 4) << (2 * chunk)) | ((high5 >> 4) << (2 * chunk + 1)));
        expected_5[256 * b + 64 * chunk + l] = static_cast<float>(scales[2 * chunk] * low5) / 64.0f -
                                               static_cast<float>(mins[2 * chunk]) / 128.0f;
        expected_5[256 * b + 64 * chunk + 32 + l] = static_cast<float>(scales[2 * chunk + 1] * high5) / 64.0f -
                                                    static_cast<float>(mins[2 * chunk + 1]) / 128.0f;
      }
    }
  }
  expect_bits_equal(round_trip(12, 256, 3, q4k), expected_4, "Q4_K");
  expect_bits_equal(round_trip(13, 768, 1, q5k), expected_5, "Q5_K");
}

TEST(GgufDequantize, Q6_KKnownValues) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> six_bits(-32, 31), scale_dist(-128, 127);
  const int blocks = 2;
  std::vector<uint8_t> data(blocks * 210, 0);
  std::vector<float> expected(blocks * 256);
  for (int b = 0; b < blocks; ++b) {
    uint8_t* block = &data[210 * b];
    uint8_t* ql = block;
    uint8_t* qh = block + 128;
    int8_t scales[16];
    for (int g = 0; g < 16; ++g) {
      scales[g] = static_cast<int8_t>(scale_dist(rng));
      block[192 + g] = static_cast<uint8_t>(scales[g]);
    }
    block[208] = f16_pow2(-8) & 0xFF, block[209] = f16_pow2(-8) >> 8;
    std::vector<int> q(256);
    for (int& v : q) v = six_bits(rng);
    // dequantize_row_q6_K: per 128-weight half, y[l + 32k] for k = 0..3 takes
    // ql[l] / ql[l + 32] (low nibble for k < 2, high for k >= 2) and bits 2k of qh[l].
    for (int half = 0; half < 2; ++half) {
      for (int l = 0; l < 32; ++l) {
        const int u0 = q[128 * half + l] + 32, u1 = q[128 * half + l + 32] + 32;
        const int u2 = q[128 * half + l + 64] + 32, u3 = q[128 * half + l + 96] + 32;
        ql[64 * half + l] = static_cast<uint8_t>((u0 & 15) | ((u2 & 15) << 4));
        ql[64 * half + l + 32] = static_cast<uint8_t>((u1 & 15) | ((u3 & 15) << 4));
        qh[32 * half + l] = static_cast<uint8_t>((u0 >> 4) | ((u1 >> 4) << 2) | ((u2 >> 4) << 4) | ((u3 >> 4) << 6));
      }
    }
    // (d * scale) * q: a negative scale times q = 0 is -0, as in the reference.
    for (int i = 0; i < 256; ++i)
      expected[256 * b + i] = static_cast<float>(scales[i / 16]) / 256.0f * static_cast<float>(q[i]);
  }
  expect_bits_equal(round_trip(14, 256, 2, data), expected, "Q6_K");
}

// ---------------------------------------------------------------------------
// 2. Random blocks against a naive reference (ggml-quants.c loop structure)
// ---------------------------------------------------------------------------

float f32_round(float value) {
  volatile float rounded = value;  // one f32 rounding per step, as numpy does
  return rounded;
}

// Reference binary16 -> binary32 (finite values only: the random scales below are finite).
float reference_f16(const uint8_t* bytes) {
  const unsigned bits = bytes[0] | (bytes[1] << 8);
  const int exponent = (bits >> 10) & 0x1F;
  const int mantissa = bits & 0x3FF;
  double magnitude = exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024 + mantissa, exponent - 25);
  return static_cast<float>((bits & 0x8000) ? -magnitude : magnitude);
}

std::vector<float> reference_dequantize(uint32_t type, const std::vector<uint8_t>& data) {
  std::vector<float> y;
  auto block_loop = [&](size_t type_size, auto&& per_block) {
    for (size_t at = 0; at < data.size(); at += type_size) per_block(&data[at]);
  };
  switch (type) {
    case 2:  // Q4_0
      block_loop(18, [&](const uint8_t* x) {
        const float d = reference_f16(x);
        float out[32];
        for (int j = 0; j < 16; ++j) {
          out[j] = f32_round(static_cast<float>((x[2 + j] & 0x0F) - 8) * d);
          out[j + 16] = f32_round(static_cast<float>((x[2 + j] >> 4) - 8) * d);
        }
        y.insert(y.end(), out, out + 32);
      });
      break;
    case 3:  // Q4_1
      block_loop(20, [&](const uint8_t* x) {
        const float d = reference_f16(x), m = reference_f16(x + 2);
        float out[32];
        for (int j = 0; j < 16; ++j) {
          out[j] = f32_round(f32_round(static_cast<float>(x[4 + j] & 0x0F) * d) + m);
          out[j + 16] = f32_round(f32_round(static_cast<float>(x[4 + j] >> 4) * d) + m);
        }
        y.insert(y.end(), out, out + 32);
      });
      break;
    case 6:  // Q5_0
    case 7:  // Q5_1
      block_loop(type == 6 ? 22 : 24, [&](const uint8_t* x) {
        const float d = reference_f16(x);
        const float m = type == 7 ? reference_f16(x + 2) : 0.0f;
        const uint8_t* qh_bytes = x + (type == 6 ? 2 : 4);
        const uint32_t qh = qh_bytes[0] | (qh_bytes[1] << 8) | (qh_bytes[2] << 16) | (static_cast<uint32_t>(qh_bytes[3]) << 24);
        const uint8_t* qs = qh_bytes + 4;
        float out[32];
        for (int j = 0; j < 16; ++j) {
          const int xh_0 = ((qh >> j) << 4) & 0x10;
          const int xh_1 = (qh >> (j + 12)) & 0x10;
          const int x0 = (qs[j] & 0x0F) | xh_0, x1 = (qs[j] >> 4) | xh_1;
          if (type == 6) {
            out[j] = f32_round(static_cast<float>(x0 - 16) * d);
            out[j + 16] = f32_round(static_cast<float>(x1 - 16) * d);
          } else {
            out[j] = f32_round(f32_round(static_cast<float>(x0) * d) + m);
            out[j + 16] = f32_round(f32_round(static_cast<float>(x1) * d) + m);
          }
        }
        y.insert(y.end(), out, out + 32);
      });
      break;
    case 8:  // Q8_0
      block_loop(34, [&](const uint8_t* x) {
        const float d = reference_f16(x);
        for (int j = 0; j < 32; ++j) y.push_back(f32_round(static_cast<float>(static_cast<int8_t>(x[2 + j])) * d));
      });
      break;
    case 12:  // Q4_K
    case 13:  // Q5_K
      block_loop(type == 12 ? 144 : 176, [&](const uint8_t* x) {
        const float d = reference_f16(x), dmin = reference_f16(x + 2);
        const uint8_t* scales = x + 4;
        const uint8_t* qh = x + 16;
        const uint8_t* q = x + (type == 12 ? 16 : 48);
        // get_scale_min_k4 from ggml-quants.c.
        auto scale_min = [&](int j, int& sc, int& mn) {
          if (j < 4) {
            sc = scales[j] & 63, mn = scales[j + 4] & 63;
          } else {
            sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
            mn = (scales[j + 4] >> 4) | ((scales[j - 0] >> 6) << 4);
          }
        };
        int is = 0;
        unsigned u1 = 1, u2 = 2;
        for (int j = 0; j < 256; j += 64) {
          int sc, mn;
          scale_min(is + 0, sc, mn);
          const float d1 = f32_round(d * static_cast<float>(sc)), m1 = f32_round(dmin * static_cast<float>(mn));
          scale_min(is + 1, sc, mn);
          const float d2 = f32_round(d * static_cast<float>(sc)), m2 = f32_round(dmin * static_cast<float>(mn));
          for (int l = 0; l < 32; ++l) {
            const int value = (q[l] & 0xF) + (type == 13 && (qh[l] & u1) ? 16 : 0);
            y.push_back(f32_round(f32_round(d1 * static_cast<float>(value)) - m1));
          }
          for (int l = 0; l < 32; ++l) {
            const int value = (q[l] >> 4) + (type == 13 && (qh[l] & u2) ? 16 : 0);
            y.push_back(f32_round(f32_round(d2 * static_cast<float>(value)) - m2));
          }
          q += 32;
          is += 2;
          u1 <<= 2;
          u2 <<= 2;
        }
      });
      break;
    case 14:  // Q6_K
      block_loop(210, [&](const uint8_t* x) {
        const uint8_t* ql = x;
        const uint8_t* qh = x + 128;
        const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
        const float d = reference_f16(x + 208);
        float out[256];
        float* o = out;
        for (int n = 0; n < 256; n += 128) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = static_cast<int8_t>((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = static_cast<int8_t>((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            o[l + 0] = f32_round(f32_round(d * static_cast<float>(sc[is + 0])) * static_cast<float>(q1));
            o[l + 32] = f32_round(f32_round(d * static_cast<float>(sc[is + 2])) * static_cast<float>(q2));
            o[l + 64] = f32_round(f32_round(d * static_cast<float>(sc[is + 4])) * static_cast<float>(q3));
            o[l + 96] = f32_round(f32_round(d * static_cast<float>(sc[is + 6])) * static_cast<float>(q4));
          }
          o += 128;
          ql += 64;
          qh += 32;
          sc += 8;
        }
        y.insert(y.end(), out, out + 256);
      });
      break;
    default: ADD_FAILURE() << "no reference for type " << type;
  }
  return y;
}

// Random blocks whose f16 fields (at `f16_offsets` in each block) are random
// finite values, including subnormals; every other byte is random.
std::vector<uint8_t> random_blocks(std::mt19937& rng, size_t blocks, size_t type_size, std::vector<size_t> f16_offsets) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> exponent(0, 30);
  std::vector<uint8_t> data(blocks * type_size);
  for (uint8_t& v : data) v = static_cast<uint8_t>(byte(rng));
  for (size_t b = 0; b < blocks; ++b) {
    for (size_t offset : f16_offsets) {
      const uint16_t bits = static_cast<uint16_t>(((byte(rng) & 1) << 15) | (exponent(rng) << 10) | (byte(rng) << 2) |
                                                  (byte(rng) & 3));
      put_u16(data, b * type_size + offset, bits);
    }
  }
  return data;
}

TEST(GgufDequantize, RandomBlocksMatchNaiveReferenceBitForBit) {
  std::mt19937 rng(6);
  struct Case {
    uint32_t type;
    uint64_t block_size, type_size;
    std::vector<size_t> f16_offsets;
  };
  const Case cases[] = {{2, 32, 18, {0}},        {3, 32, 20, {0, 2}},       {6, 32, 22, {0}},
                        {7, 32, 24, {0, 2}},     {8, 32, 34, {0}},          {12, 256, 144, {0, 2}},
                        {13, 256, 176, {0, 2}},  {14, 256, 210, {208}}};
  for (const Case& c : cases) {
    const uint64_t row_blocks = 4, rows = 8;
    std::vector<uint8_t> data = random_blocks(rng, row_blocks * rows, c.type_size, c.f16_offsets);
    std::vector<float> actual = round_trip(c.type, row_blocks * c.block_size, rows, data);
    expect_bits_equal(actual, reference_dequantize(c.type, data), ggml_type_name(c.type).c_str());
  }
}

TEST(GgufDequantize, RandomF16AndBf16BitsIncludingInfAndNan) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> half(0, 0xFFFF);
  std::vector<uint8_t> data(2 * 4096);
  for (size_t i = 0; i < 4096; ++i) put_u16(data, 2 * i, static_cast<uint16_t>(half(rng)));
  put_u16(data, 0, 0x7C00);  // +inf
  put_u16(data, 2, 0xFE01);  // NaN with payload
  std::vector<float> f16 = round_trip(1, 4096, 1, data);
  std::vector<float> bf16 = round_trip(30, 2048, 2, data);
  for (size_t i = 0; i < 4096; ++i) {
    const unsigned bits = data[2 * i] | (data[2 * i + 1] << 8);
    uint32_t bf16_bits;
    std::memcpy(&bf16_bits, &bf16[i], 4);
    EXPECT_EQ(bf16_bits, bits << 16) << i;
    const int exponent = (bits >> 10) & 0x1F;
    if (exponent == 0x1F) {
      uint32_t f16_bits;
      std::memcpy(&f16_bits, &f16[i], 4);
      // inf/NaN: sign, all-ones exponent, payload shifted up (numpy's half -> float).
      EXPECT_EQ(f16_bits, ((bits & 0x8000u) << 16) | 0x7F800000u | ((bits & 0x3FFu) << 13)) << i;
    } else {
      ASSERT_EQ(f16[i], reference_f16(&data[2 * i])) << i;
    }
  }
}

TEST(GgufDequantize, UnsupportedTypeIsAClearError) {
  ScratchDir scratch;
  GgufBuilder builder;
  builder.add_tensor({"blk.0.ffn_up.weight", {256, 1}, 10 /* Q2_K */, std::vector<uint8_t>(84)});
  GgufFile file = GgufFile::open(scratch.write("q2k.gguf", builder.build().bytes));
  try {
    file.dequantize(file.tensor("blk.0.ffn_up.weight"));
    FAIL() << "Q2_K dequantized";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find("tensor 'blk.0.ffn_up.weight': type Q2_K cannot be dequantized"),
              std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace llmft::gguf
