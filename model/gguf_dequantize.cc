// Dequantizers for the GGML block formats llama.cpp writes for llama models.
//
// Each function documents its block layout (ggml/src/ggml-common.h, block_*)
// and computes exactly what gguf-py/gguf/quants.py's dequantize_blocks computes
// in numpy: f16 scales widened exactly to f32, then each product or sum rounded
// once to f32 in the reference's order. A fused multiply-add would round once
// instead of twice and break bit-identity, so contraction is turned off here.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "model/gguf_dequantize.h"

#include <array>
#include <cstring>

#include "core/error.h"
#include "core/half.h"

namespace llmft::gguf {
namespace {

constexpr uint32_t kQK = 32;     // QK4_0, QK4_1, QK5_0, QK5_1, QK8_0 in ggml-common.h
constexpr uint32_t kQK_K = 256;  // QK_K: the super-block of the k-quants
constexpr uint32_t kKScaleSize = 12;  // K_SCALE_SIZE: packed 6-bit scales and mins of Q4_K/Q5_K

// (block size, type size) as in gguf-py/gguf/constants.py GGML_QUANT_SIZES.
constexpr GgmlTypeTraits kTraits[] = {
    {GgmlType::kF32, "F32", 1, 4, true},
    {GgmlType::kF16, "F16", 1, 2, true},
    {GgmlType::kQ4_0, "Q4_0", kQK, 2 + 16, true},
    {GgmlType::kQ4_1, "Q4_1", kQK, 2 + 2 + 16, true},
    {GgmlType::kQ5_0, "Q5_0", kQK, 2 + 4 + 16, true},
    {GgmlType::kQ5_1, "Q5_1", kQK, 2 + 2 + 4 + 16, true},
    {GgmlType::kQ8_0, "Q8_0", kQK, 2 + 32, true},
    {GgmlType::kQ8_1, "Q8_1", kQK, 4 + 4 + 32, false},
    {GgmlType::kQ2_K, "Q2_K", kQK_K, 2 + 2 + kQK_K / 16 + kQK_K / 4, false},
    {GgmlType::kQ3_K, "Q3_K", kQK_K, 2 + kQK_K / 4 + kQK_K / 8 + 12, false},
    {GgmlType::kQ4_K, "Q4_K", kQK_K, 2 + 2 + kQK_K / 2 + 12, true},
    {GgmlType::kQ5_K, "Q5_K", kQK_K, 2 + 2 + kQK_K / 2 + kQK_K / 8 + 12, true},
    {GgmlType::kQ6_K, "Q6_K", kQK_K, 2 + kQK_K / 2 + kQK_K / 4 + kQK_K / 16, true},
    {GgmlType::kQ8_K, "Q8_K", kQK_K, 4 + kQK_K + kQK_K / 8, false},
    {GgmlType::kIQ2_XXS, "IQ2_XXS", kQK_K, 2 + kQK_K / 4, false},
    {GgmlType::kIQ2_XS, "IQ2_XS", kQK_K, 2 + kQK_K / 4 + kQK_K / 32, false},
    {GgmlType::kIQ3_XXS, "IQ3_XXS", kQK_K, 2 + kQK_K / 4 + kQK_K / 8, false},
    {GgmlType::kIQ1_S, "IQ1_S", kQK_K, 2 + kQK_K / 8 + kQK_K / 16, false},
    {GgmlType::kIQ4_NL, "IQ4_NL", 32, 2 + 16, false},
    {GgmlType::kIQ3_S, "IQ3_S", kQK_K, 2 + kQK_K / 4 + kQK_K / 8 + kQK_K / 32 + 4, false},
    {GgmlType::kIQ2_S, "IQ2_S", kQK_K, 2 + kQK_K / 4 + kQK_K / 16, false},
    {GgmlType::kIQ4_XS, "IQ4_XS", kQK_K, 2 + 2 + kQK_K / 2 + kQK_K / 64, false},
    {GgmlType::kI8, "I8", 1, 1, false},
    {GgmlType::kI16, "I16", 1, 2, false},
    {GgmlType::kI32, "I32", 1, 4, false},
    {GgmlType::kI64, "I64", 1, 8, false},
    {GgmlType::kF64, "F64", 1, 8, false},
    {GgmlType::kIQ1_M, "IQ1_M", kQK_K, kQK_K / 8 + kQK_K / 16 + kQK_K / 32, false},
    {GgmlType::kBF16, "BF16", 1, 2, true},
    {GgmlType::kTQ1_0, "TQ1_0", kQK_K, 2 + 4 * 13, false},
    {GgmlType::kTQ2_0, "TQ2_0", kQK_K, 2 + 64, false},
    {GgmlType::kMXFP4, "MXFP4", 32, 1 + 16, false},
};

uint16_t load_u16(const uint8_t* bytes) {
  return static_cast<uint16_t>(bytes[0] | (bytes[1] << 8));  // GGUF is little-endian
}
float load_f16(const uint8_t* bytes) { return f16_bits_to_float(load_u16(bytes)); }
uint32_t load_u32(const uint8_t* bytes) {
  return static_cast<uint32_t>(bytes[0]) | (static_cast<uint32_t>(bytes[1]) << 8) |
         (static_cast<uint32_t>(bytes[2]) << 16) | (static_cast<uint32_t>(bytes[3]) << 24);
}

// F32: plain little-endian binary32.
void dequantize_f32(const uint8_t* bytes, float* out, size_t count) {
  for (size_t i = 0; i < count; ++i) out[i] = bits_float(load_u32(bytes + 4 * i));
}

// F16: IEEE binary16; widening to binary32 is exact (numpy astype(float32)).
void dequantize_f16(const uint8_t* bytes, float* out, size_t count) {
  for (size_t i = 0; i < count; ++i) out[i] = load_f16(bytes + 2 * i);
}

// BF16: the top 16 bits of a binary32 (gguf-py: int16 << 16 viewed as float32).
void dequantize_bf16(const uint8_t* bytes, float* out, size_t count) {
  for (size_t i = 0; i < count; ++i) out[i] = bf16_bits_to_float(load_u16(bytes + 2 * i));
}

// block_q4_0 (18 bytes, 32 weights): f16 d; uint8 qs[16]. Weight j < 16 is the
// low nibble of qs[j], weight j + 16 its high nibble; value = d * (nibble - 8).
void dequantize_q4_0(const uint8_t* block, float* out) {
  const float d = load_f16(block);
  const uint8_t* qs = block + 2;
  for (uint32_t j = 0; j < kQK / 2; ++j) {
    out[j] = d * static_cast<float>(static_cast<int>(qs[j] & 0x0F) - 8);
    out[j + kQK / 2] = d * static_cast<float>(static_cast<int>(qs[j] >> 4) - 8);
  }
}

// block_q4_1 (20 bytes, 32 weights): f16 d; f16 m; uint8 qs[16], nibbles as in
// Q4_0; value = (d * nibble) + m.
void dequantize_q4_1(const uint8_t* block, float* out) {
  const float d = load_f16(block);
  const float m = load_f16(block + 2);
  const uint8_t* qs = block + 4;
  for (uint32_t j = 0; j < kQK / 2; ++j) {
    const float low = d * static_cast<float>(qs[j] & 0x0F);
    const float high = d * static_cast<float>(qs[j] >> 4);
    out[j] = low + m;
    out[j + kQK / 2] = high + m;
  }
}

// block_q5_0 (22 bytes, 32 weights): f16 d; uint8 qh[4] (a little-endian
// uint32 whose bit j is the fifth bit of weight j); uint8 qs[16], low 4 bits
// as in Q4_0; value = d * (q - 16).
void dequantize_q5_0(const uint8_t* block, float* out) {
  const float d = load_f16(block);
  const uint32_t qh = load_u32(block + 2);
  const uint8_t* qs = block + 6;
  for (uint32_t j = 0; j < kQK / 2; ++j) {
    const int low = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int high = (qs[j] >> 4) | static_cast<int>(((qh >> (j + kQK / 2)) & 1u) << 4);
    out[j] = d * static_cast<float>(low - 16);
    out[j + kQK / 2] = d * static_cast<float>(high - 16);
  }
}

// block_q5_1 (24 bytes, 32 weights): f16 d; f16 m; uint8 qh[4]; uint8 qs[16],
// bits as in Q5_0; value = (d * q) + m.
void dequantize_q5_1(const uint8_t* block, float* out) {
  const float d = load_f16(block);
  const float m = load_f16(block + 2);
  const uint32_t qh = load_u32(block + 4);
  const uint8_t* qs = block + 8;
  for (uint32_t j = 0; j < kQK / 2; ++j) {
    const uint32_t low = (qs[j] & 0x0Fu) | (((qh >> j) & 1u) << 4);
    const uint32_t high = (qs[j] >> 4) | (((qh >> (j + kQK / 2)) & 1u) << 4);
    const float scaled_low = d * static_cast<float>(low);
    const float scaled_high = d * static_cast<float>(high);
    out[j] = scaled_low + m;
    out[j + kQK / 2] = scaled_high + m;
  }
}

// block_q8_0 (34 bytes, 32 weights): f16 d; int8 qs[32]; value = qs[j] * d.
void dequantize_q8_0(const uint8_t* block, float* out) {
  const float d = load_f16(block);
  const uint8_t* qs = block + 2;
  for (uint32_t j = 0; j < kQK; ++j) {
    int8_t q;
    std::memcpy(&q, qs + j, 1);
    out[j] = static_cast<float>(q) * d;
  }
}

// The 12 packed bytes of a Q4_K/Q5_K super-block hold eight 6-bit scales and
// eight 6-bit mins (ggml-quants.c get_scale_min_k4): for sub-block j < 4,
// scale = bytes[j] & 63 and min = bytes[j + 4] & 63; for j >= 4 the low four bits
// come from bytes[j + 4] (scale: low nibble, min: high nibble) and the top two
// from the spare top bits of bytes[j - 4] (scale) and bytes[j] (min).
void unpack_k4_scales(const uint8_t* packed, uint8_t* scales, uint8_t* mins) {
  for (int j = 0; j < 4; ++j) {
    scales[j] = packed[j] & 63;
    mins[j] = packed[j + 4] & 63;
    scales[j + 4] = static_cast<uint8_t>((packed[j + 8] & 0x0F) | ((packed[j] >> 2) & 0x30));
    mins[j + 4] = static_cast<uint8_t>((packed[j + 8] >> 4) | ((packed[j + 4] >> 2) & 0x30));
  }
}

// block_q4_K (144 bytes, 256 weights in 8 sub-blocks of 32): f16 d; f16 dmin;
// uint8 scales[12] (unpack_k4_scales); uint8 qs[128]. Sub-block 2c takes the low
// nibbles of qs[32c .. 32c+31], sub-block 2c+1 their high nibbles. With
// sub_scale = d * scale[s] and sub_min = dmin * min[s] (each rounded to f32),
// value = sub_scale * q - sub_min.
void dequantize_q4_k(const uint8_t* block, float* out) {
  const float d = load_f16(block);
  const float dmin = load_f16(block + 2);
  uint8_t scales[8], mins[8];
  unpack_k4_scales(block + 4, scales, mins);
  const uint8_t* qs = block + 4 + kKScaleSize;
  for (int chunk = 0; chunk < 4; ++chunk) {
    for (int half = 0; half < 2; ++half) {
      const int sub = 2 * chunk + half;
      const float sub_scale = d * static_cast<float>(scales[sub]);
      const float sub_min = dmin * static_cast<float>(mins[sub]);
      for (int i = 0; i < 32; ++i) {
        const uint8_t q = (qs[32 * chunk + i] >> (4 * half)) & 0x0F;
        const float scaled = sub_scale * static_cast<float>(q);
        out[32 * sub + i] = scaled - sub_min;
      }
    }
  }
}

// block_q5_K (176 bytes, 256 weights in 8 sub-blocks of 32): f16 d; f16 dmin;
// uint8 scales[12]; uint8 qh[32]; uint8 qs[128]. Low 4 bits as in Q4_K; the
// fifth bit of weight i of sub-block s is bit s of qh[i]. Value as in Q4_K.
void dequantize_q5_k(const uint8_t* block, float* out) {
  const float d = load_f16(block);
  const float dmin = load_f16(block + 2);
  uint8_t scales[8], mins[8];
  unpack_k4_scales(block + 4, scales, mins);
  const uint8_t* qh = block + 4 + kKScaleSize;
  const uint8_t* qs = qh + kQK_K / 8;
  for (int chunk = 0; chunk < 4; ++chunk) {
    for (int half = 0; half < 2; ++half) {
      const int sub = 2 * chunk + half;
      const float sub_scale = d * static_cast<float>(scales[sub]);
      const float sub_min = dmin * static_cast<float>(mins[sub]);
      for (int i = 0; i < 32; ++i) {
        const uint32_t q = ((qs[32 * chunk + i] >> (4 * half)) & 0x0Fu) | (((qh[i] >> sub) & 1u) << 4);
        const float scaled = sub_scale * static_cast<float>(q);
        out[32 * sub + i] = scaled - sub_min;
      }
    }
  }
}

// block_q6_K (210 bytes, 256 weights in 16 groups of 16): uint8 ql[128] (low 4
// bits); uint8 qh[64] (high 2 bits); int8 scales[16]; f16 d. The block is two
// halves of 128 weights; in half h, weight 32k + i (k < 4, i < 32) has low bits
// from ql[64h + 32(k % 2) + i] (low nibble for k < 2, high nibble otherwise)
// and high bits (qh[32h + i] >> 2k) & 3. With group_scale = d * scales[g]
// (g = weight / 16), value = group_scale * (q - 32).
void dequantize_q6_k(const uint8_t* block, float* out) {
  const uint8_t* ql = block;
  const uint8_t* qh = block + kQK_K / 2;
  const uint8_t* scales = qh + kQK_K / 4;
  const float d = load_f16(scales + kQK_K / 16);
  float group_scale[16];
  for (int g = 0; g < 16; ++g) {
    int8_t scale;
    std::memcpy(&scale, scales + g, 1);
    group_scale[g] = d * static_cast<float>(scale);
  }
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 4; ++k) {
      for (int i = 0; i < 32; ++i) {
        const int low = (ql[64 * h + 32 * (k % 2) + i] >> (4 * (k / 2))) & 0x0F;
        const int high = (qh[32 * h + i] >> (2 * k)) & 3;
        const int index = 128 * h + 32 * k + i;
        out[index] = group_scale[index / 16] * static_cast<float>((low | (high << 4)) - 32);
      }
    }
  }
}

}  // namespace

std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type_id) {
  for (const GgmlTypeTraits& traits : kTraits)
    if (static_cast<uint32_t>(traits.type) == type_id) return traits;
  return std::nullopt;
}

std::string ggml_type_name(uint32_t type_id) {
  std::optional<GgmlTypeTraits> traits = ggml_type_traits(type_id);
  return traits ? std::string(traits->name) : str_cat("type ", type_id);
}

void dequantize_row(GgmlType type, std::span<const uint8_t> bytes, std::span<float> out) {
  const uint32_t type_id = static_cast<uint32_t>(type);
  std::optional<GgmlTypeTraits> traits = ggml_type_traits(type_id);
  if (!traits || !traits->can_dequantize)
    throw_runtime("GGUF: dequantization of ", ggml_type_name(type_id), " tensors is not supported");
  const size_t count = out.size();
  if (count % traits->block_size != 0 || count / traits->block_size * traits->type_size != bytes.size())
    throw_runtime("GGUF: ", traits->name, ": ", count, " elements do not fit ", bytes.size(), " bytes (blocks of ",
                  traits->block_size, " elements in ", traits->type_size, " bytes)");
  const uint8_t* in = bytes.data();
  float* dst = out.data();
  const size_t blocks = count / traits->block_size;
  void (*per_block)(const uint8_t*, float*) = nullptr;
  switch (type) {
    case GgmlType::kF32: return dequantize_f32(in, dst, count);
    case GgmlType::kF16: return dequantize_f16(in, dst, count);
    case GgmlType::kBF16: return dequantize_bf16(in, dst, count);
    case GgmlType::kQ4_0: per_block = dequantize_q4_0; break;
    case GgmlType::kQ4_1: per_block = dequantize_q4_1; break;
    case GgmlType::kQ5_0: per_block = dequantize_q5_0; break;
    case GgmlType::kQ5_1: per_block = dequantize_q5_1; break;
    case GgmlType::kQ8_0: per_block = dequantize_q8_0; break;
    case GgmlType::kQ4_K: per_block = dequantize_q4_k; break;
    case GgmlType::kQ5_K: per_block = dequantize_q5_k; break;
    case GgmlType::kQ6_K: per_block = dequantize_q6_k; break;
    default: throw_runtime("GGUF: dequantization of ", traits->name, " tensors is not supported");
  }
  for (size_t b = 0; b < blocks; ++b) per_block(in + b * traits->type_size, dst + b * traits->block_size);
}

}  // namespace llmft::gguf
