// bf16 / f16 round-to-nearest-even conversions against known bit patterns and
// against independent references (the compiler's _Float16 conversion; an exact
// nearest-candidate search in double for bf16).
#include <cmath>
#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

#include "core/half.h"
#include "core/philox.h"

namespace llmft {
namespace {

uint16_t bf16_of_bits(uint32_t bits) { return float_to_bf16_bits(bits_float(bits)); }
uint16_t f16_of(float value) { return float_to_f16_bits(value); }

TEST(Bf16, KnownBitPatterns) {
  EXPECT_EQ(bf16_of_bits(0x3f800000u), 0x3f80);  // 1.0
  EXPECT_EQ(bf16_of_bits(0xbf800000u), 0xbf80);  // -1.0
  EXPECT_EQ(bf16_of_bits(0x3f808000u), 0x3f80);  // tie, kept lsb even (down)
  EXPECT_EQ(bf16_of_bits(0x3f818000u), 0x3f82);  // tie, rounds up to even
  EXPECT_EQ(bf16_of_bits(0x3f808001u), 0x3f81);  // just above the tie
  EXPECT_EQ(bf16_of_bits(0x3f807fffu), 0x3f80);  // just below the tie
  EXPECT_EQ(bf16_of_bits(0x7f800000u), 0x7f80);  // +inf
  EXPECT_EQ(bf16_of_bits(0xff800000u), 0xff80);  // -inf
  EXPECT_EQ(bf16_of_bits(0x7f7fffffu), 0x7f80);  // FLT_MAX overflows to inf
  EXPECT_EQ(bf16_of_bits(0x00010000u), 0x0001);  // float subnormal kept exactly
  EXPECT_EQ(bf16_of_bits(0x00008000u), 0x0000);  // subnormal tie to even zero
  EXPECT_EQ(bf16_of_bits(0x80000000u), 0x8000);  // -0
}

TEST(Bf16, NaNStaysQuietNaN) {
  for (uint32_t bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0x7f80ffffu}) {
    uint16_t half = bf16_of_bits(bits);
    EXPECT_TRUE(std::isnan(bf16_bits_to_float(half))) << std::hex << bits;
    EXPECT_EQ(half & 0x8000u, (bits >> 16) & 0x8000u);
  }
}

// Independent reference: the nearest bf16 by exhaustive comparison of the two
// neighbours in double, ties to the even mantissa.
uint16_t reference_bf16(float value) {
  uint32_t bits = float_bits(value);
  uint16_t down = static_cast<uint16_t>(bits >> 16);
  uint16_t up = static_cast<uint16_t>(down + 1);
  double low = bf16_bits_to_float(down), high = bf16_bits_to_float(up);
  if ((up & 0x7fffu) == 0x7f80u) high = std::ldexp(1.0, 128) * (value < 0 ? -1 : 1);  // inf as 2^128
  double distance_low = std::fabs(value - low), distance_high = std::fabs(high - value);
  if (distance_low < distance_high) return down;
  if (distance_high < distance_low) return up;
  return (down & 1u) ? up : down;
}

TEST(Bf16, MatchesReferenceOnRandomFloats) {
  PhiloxGenerator generator(1234);
  for (int i = 0; i < 200000; ++i) {
    uint32_t bits = generator.next_u32();
    float value = bits_float(bits);
    if (std::isnan(value) || std::isinf(value)) continue;
    ASSERT_EQ(float_to_bf16_bits(value), reference_bf16(value)) << std::hex << bits;
  }
}

TEST(Bf16, RoundTripsEveryPattern) {
  for (uint32_t half = 0; half <= 0xffffu; ++half) {
    float value = bf16_bits_to_float(static_cast<uint16_t>(half));
    if (std::isnan(value)) continue;
    ASSERT_EQ(float_to_bf16_bits(value), half) << std::hex << half;
  }
}

TEST(F16, KnownBitPatterns) {
  EXPECT_EQ(f16_of(1.0f), 0x3c00);
  EXPECT_EQ(f16_of(-2.0f), 0xc000);
  EXPECT_EQ(f16_of(65504.0f), 0x7bff);    // largest finite
  EXPECT_EQ(f16_of(65519.0f), 0x7bff);    // below the overflow tie
  EXPECT_EQ(f16_of(65520.0f), 0x7c00);    // tie at the top rounds to inf
  EXPECT_EQ(f16_of(1e6f), 0x7c00);        // overflow
  EXPECT_EQ(f16_of(-1e6f), 0xfc00);
  EXPECT_EQ(f16_of(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f16_of(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f16_of(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24: even (0)
  EXPECT_EQ(f16_of(std::ldexp(3.0f, -26)), 0x0001);  // 0.75 * 2^-24 rounds up
  EXPECT_EQ(f16_of(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 * 2^-24: tie to even (2)
  EXPECT_EQ(f16_of(1e-8f), 0x0000);       // underflow to zero
  EXPECT_EQ(f16_of(1.0f + std::ldexp(1.0f, -10)), 0x3c01);
  EXPECT_EQ(f16_of(1.0f + std::ldexp(1.0f, -11)), 0x3c00);        // tie, even
  EXPECT_EQ(f16_of(1.0f + std::ldexp(3.0f, -11)), 0x3c02);        // tie, even (up)
  EXPECT_EQ(f16_of(0.1f), 0x2e66);
  EXPECT_EQ(f16_of(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f16_of(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(f16_bits_to_float(f16_of(std::nanf("")))));
  EXPECT_FLOAT_EQ(f16_bits_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_FLOAT_EQ(f16_bits_to_float(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_bits_to_float(0x7c00), std::numeric_limits<float>::infinity());
}

TEST(F16, MatchesCompilerConversionOnRandomFloats) {
  // The compiler's _Float16 conversion (IEEE round-to-nearest-even) is an
  // independent implementation.
  PhiloxGenerator generator(99);
  for (int i = 0; i < 200000; ++i) {
    uint32_t bits = generator.next_u32();
    // Concentrate on the binary16 range: exponents 100..145.
    bits = (bits & 0x807fffffu) | ((100u + (bits >> 23) % 46u) << 23);
    float value = bits_float(bits);
    _Float16 reference = static_cast<_Float16>(value);
    uint16_t reference_bits;
    memcpy(&reference_bits, &reference, 2);
    ASSERT_EQ(float_to_f16_bits(value), reference_bits) << std::hex << bits;
  }
}

TEST(F16, DecodesEveryPatternLikeTheCompiler) {
  for (uint32_t half = 0; half <= 0xffffu; ++half) {
    uint16_t raw = static_cast<uint16_t>(half);
    _Float16 reference;
    memcpy(&reference, &raw, 2);
    float expected = static_cast<float>(reference);
    float actual = f16_bits_to_float(raw);
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(actual));
      continue;
    }
    ASSERT_EQ(float_bits(actual), float_bits(expected)) << std::hex << half;
    ASSERT_EQ(float_to_f16_bits(actual), raw) << std::hex << half;
  }
}

}  // namespace
}  // namespace llmft
