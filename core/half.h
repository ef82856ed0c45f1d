// bfloat16 and IEEE binary16 conversions with round-to-nearest-even, identical
// on host and device so the CPU backend reproduces the GPU's rounding exactly.
//
// bf16 is the top half of an IEEE binary32; rounding adds 0x7fff plus the lsb of
// the kept half (ties to even), and NaNs are kept quiet (payload's top bit set)
// so rounding can never turn a NaN into an infinity.
// binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits; values below 2^-14
// are subnormal, values that round to >= 65520 overflow to infinity.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LLMFT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LLMFT_HOST_DEVICE inline
#endif

namespace llmft {

LLMFT_HOST_DEVICE uint32_t float_bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  return bits;
}

LLMFT_HOST_DEVICE float bits_float(uint32_t bits) {
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

LLMFT_HOST_DEVICE uint16_t float_to_bf16_bits(float value) {
  uint32_t bits = float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN
  uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

LLMFT_HOST_DEVICE float bf16_bits_to_float(uint16_t bits) { return bits_float(static_cast<uint32_t>(bits) << 16); }

LLMFT_HOST_DEVICE uint16_t float_to_f16_bits(float value) {
  uint32_t bits = float_bits(value);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // NaN stays NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {
    // Subnormal half (or zero): value = m * 2^-24. Shift the 24-bit significand
    // into place and round to nearest even on the bits shifted out.
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal: +-0
    uint32_t exponent = abs >> 23;
    uint32_t significand = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - exponent;  // in [14, 24] for the range handled here
    uint32_t half_significand = significand >> shift;
    uint32_t remainder = significand & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1u);
    if (remainder > halfway || (remainder == halfway && (half_significand & 1u))) ++half_significand;
    return static_cast<uint16_t>(sign | half_significand);
  }
  // Normal: re-bias the exponent (127 -> 15) and round the 13 dropped bits to nearest even;
  // a carry out of the mantissa correctly bumps the exponent.
  uint32_t rebased = abs - 0x38000000u;
  uint32_t rounded = rebased + 0x0fffu + ((rebased >> 13) & 1u);
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

LLMFT_HOST_DEVICE float f16_bits_to_float(uint16_t half) {
  uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1fu;
  uint32_t mantissa = half & 0x3ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf / NaN
  if (exponent == 0) {
    if (mantissa == 0) return bits_float(sign);
    // Subnormal: m * 2^-24, exact in binary32.
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Storage types for 16-bit floats on the host. Arithmetic happens in float.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  LLMFT_HOST_DEVICE explicit bf16(float value) : bits(float_to_bf16_bits(value)) {}
  LLMFT_HOST_DEVICE explicit operator float() const { return bf16_bits_to_float(bits); }
  LLMFT_HOST_DEVICE static bf16 from_bits(uint16_t raw) {
    bf16 result;
    result.bits = raw;
    return result;
  }
};

struct f16 {
  uint16_t bits = 0;
  f16() = default;
  LLMFT_HOST_DEVICE explicit f16(float value) : bits(float_to_f16_bits(value)) {}
  LLMFT_HOST_DEVICE explicit operator float() const { return f16_bits_to_float(bits); }
  LLMFT_HOST_DEVICE static f16 from_bits(uint16_t raw) {
    f16 result;
    result.bits = raw;
    return result;
  }
};

}  // namespace llmft
