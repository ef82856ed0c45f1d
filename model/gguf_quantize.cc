// Quantizers for the GGML block formats (see gguf_quantize.h). Each follows
// gguf-py/gguf/quants.py's quantize_blocks step by step; the block layouts are
// documented next to the dequantizers in gguf_dequantize.cc. Contraction is
// off: numpy rounds `x * id + 8.5` twice, a fused multiply-add once.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "model/gguf_quantize.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/half.h"

namespace llmft::gguf {
namespace {

constexpr uint32_t kQK = 32;

void store_u16(uint8_t* out, uint16_t value) {
  out[0] = static_cast<uint8_t>(value & 0xFF);  // GGUF is little-endian
  out[1] = static_cast<uint8_t>(value >> 8);
}
void store_f16(uint8_t* out, float value) { store_u16(out, float_to_f16_bits(value)); }

// numpy's float -> uint8 cast of a value already truncated, then clip(0, top).
// The reference casts before it clips, so 16.0 becomes 16 and then 15.
uint8_t clip_cast(float truncated, int top) {
  const int q = static_cast<int>(truncated);
  return static_cast<uint8_t>(std::clamp(q, 0, top));
}

// 1 / d, or 0 when d is 0 (np.where(d == 0, 0, 1 / d)).
float inverse_or_zero(float d) { return d == 0.0f ? 0.0f : 1.0f / d; }

// The element of largest magnitude, sign kept; the first on ties
// (abs(blocks).argmax, take_along_axis).
float signed_absmax(const float* x) {
  float best = x[0];
  for (uint32_t j = 1; j < kQK; ++j)
    if (std::fabs(x[j]) > std::fabs(best)) best = x[j];
  return best;
}

// block_q4_0: d = max / -8 (max the signed element of largest magnitude);
// q = trunc(x * (1/d) + 8.5) clipped to [0, 15]; low nibbles hold weights
// 0..15, high nibbles 16..31.
void quantize_q4_0(const float* x, uint8_t* block) {
  const float max = signed_absmax(x);
  const float d = max / -8.0f;
  const float id = inverse_or_zero(d);
  uint8_t q[kQK];
  for (uint32_t j = 0; j < kQK; ++j) {
    const float scaled = x[j] * id;
    q[j] = clip_cast(std::trunc(scaled + 8.5f), 15);
  }
  store_f16(block, d);
  for (uint32_t j = 0; j < kQK / 2; ++j) block[2 + j] = static_cast<uint8_t>(q[j] | (q[j + kQK / 2] << 4));
}

// block_q4_1: d = (max - min) / 15, m = min; q = trunc((x - min) * (1/d) + 0.5)
// clipped to [0, 15].
void quantize_q4_1(const float* x, uint8_t* block) {
  const float max = *std::max_element(x, x + kQK);
  const float min = *std::min_element(x, x + kQK);
  const float d = (max - min) / 15.0f;
  const float id = inverse_or_zero(d);
  uint8_t q[kQK];
  for (uint32_t j = 0; j < kQK; ++j) {
    const float shifted = x[j] - min;
    const float scaled = shifted * id;
    q[j] = clip_cast(std::trunc(scaled + 0.5f), 15);
  }
  store_f16(block, d);
  store_f16(block + 2, min);
  for (uint32_t j = 0; j < kQK / 2; ++j) block[4 + j] = static_cast<uint8_t>(q[j] | (q[j + kQK / 2] << 4));
}

// The fifth bits of 32 five-bit values as the little-endian uint32 qh
// (np.packbits(q >> 4, bitorder="little")).
void store_high_bits(const uint8_t* q, uint8_t* qh) {
  std::memset(qh, 0, 4);
  for (uint32_t j = 0; j < kQK; ++j) qh[j / 8] = static_cast<uint8_t>(qh[j / 8] | (((q[j] >> 4) & 1) << (j % 8)));
}

// block_q5_0: d = max / -16; q = trunc(x * (1/d) + 16.5) clipped to [0, 31].
void quantize_q5_0(const float* x, uint8_t* block) {
  const float max = signed_absmax(x);
  const float d = max / -16.0f;
  const float id = inverse_or_zero(d);
  uint8_t q[kQK];
  for (uint32_t j = 0; j < kQK; ++j) {
    const float scaled = x[j] * id;
    q[j] = clip_cast(std::trunc(scaled + 16.5f), 31);
  }
  store_f16(block, d);
  store_high_bits(q, block + 2);
  for (uint32_t j = 0; j < kQK / 2; ++j)
    block[6 + j] = static_cast<uint8_t>((q[j] & 0x0F) | (q[j + kQK / 2] << 4));
}

// block_q5_1: d = (max - min) / 31, m = min; q = trunc((x - min) * (1/d) + 0.5)
// clipped to [0, 31].
void quantize_q5_1(const float* x, uint8_t* block) {
  const float max = *std::max_element(x, x + kQK);
  const float min = *std::min_element(x, x + kQK);
  const float d = (max - min) / 31.0f;
  const float id = inverse_or_zero(d);
  uint8_t q[kQK];
  for (uint32_t j = 0; j < kQK; ++j) {
    const float shifted = x[j] - min;
    const float scaled = shifted * id;
    q[j] = clip_cast(std::trunc(scaled + 0.5f), 31);
  }
  store_f16(block, d);
  store_f16(block + 2, min);
  store_high_bits(q, block + 4);
  for (uint32_t j = 0; j < kQK / 2; ++j)
    block[8 + j] = static_cast<uint8_t>((q[j] & 0x0F) | (q[j + kQK / 2] << 4));
}

// Round half away from zero, as the reference's np_roundf: for |v| < 2^23,
// floor(a) + floor(2 * (a - floor(a))) with the sign put back.
float round_half_away(float value) {
  const float a = std::fabs(value);
  const float floored = std::floor(a);
  const float fraction = a - floored;
  const float rounded = floored + std::floor(2.0f * fraction);
  return value < 0.0f ? -rounded : value > 0.0f ? rounded : 0.0f * rounded;
}

// block_q8_0: d = max|x| / 127; q = round_half_away(x * (1/d)) as int8.
void quantize_q8_0(const float* x, uint8_t* block) {
  float amax = 0.0f;
  for (uint32_t j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = inverse_or_zero(d);
  store_f16(block, d);
  for (uint32_t j = 0; j < kQK; ++j) {
    const auto q = static_cast<int8_t>(round_half_away(x[j] * id));
    std::memcpy(block + 2 + j, &q, 1);
  }
}

struct TypeName {
  const char* name;
  GgmlType type;
};
constexpr TypeName kQuantizeTypes[] = {
    {"f32", GgmlType::kF32},   {"f16", GgmlType::kF16},   {"bf16", GgmlType::kBF16}, {"q8_0", GgmlType::kQ8_0},
    {"q4_0", GgmlType::kQ4_0}, {"q4_1", GgmlType::kQ4_1}, {"q5_0", GgmlType::kQ5_0}, {"q5_1", GgmlType::kQ5_1},
};

}  // namespace

bool can_quantize(GgmlType type) {
  for (const TypeName& entry : kQuantizeTypes)
    if (entry.type == type) return true;
  return false;
}

std::optional<GgmlType> parse_quantize_type(const std::string& name) {
  std::string lower = name;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const TypeName& entry : kQuantizeTypes)
    if (lower == entry.name) return entry.type;
  return std::nullopt;
}

const char* quantize_type_names() { return "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1"; }

void quantize_row(GgmlType type, std::span<const float> values, std::span<uint8_t> out) {
  const uint32_t type_id = static_cast<uint32_t>(type);
  const std::optional<GgmlTypeTraits> traits = ggml_type_traits(type_id);
  if (!traits || !can_quantize(type)) throw_runtime("GGUF: quantization to ", ggml_type_name(type_id), " is not supported");
  const size_t count = values.size();
  if (count % traits->block_size != 0 || count / traits->block_size * traits->type_size != out.size())
    throw_runtime("GGUF: ", traits->name, ": ", count, " elements do not fit ", out.size(), " bytes (blocks of ",
                  traits->block_size, " elements in ", traits->type_size, " bytes)");
  const float* x = values.data();
  uint8_t* dst = out.data();
  switch (type) {
    case GgmlType::kF32:
      for (size_t i = 0; i < count; ++i) {
        const uint32_t bits = float_bits(x[i]);
        for (int k = 0; k < 4; ++k) dst[4 * i + k] = static_cast<uint8_t>(bits >> (8 * k));
      }
      return;
    case GgmlType::kF16:
      for (size_t i = 0; i < count; ++i) store_f16(dst + 2 * i, x[i]);
      return;
    case GgmlType::kBF16:
      // ggml_compute_fp32_to_bf16: NaN made quiet, then round to nearest even.
      for (size_t i = 0; i < count; ++i) store_u16(dst + 2 * i, float_to_bf16_bits(x[i]));
      return;
    default: break;
  }
  void (*per_block)(const float*, uint8_t*) = nullptr;
  switch (type) {
    case GgmlType::kQ4_0: per_block = quantize_q4_0; break;
    case GgmlType::kQ4_1: per_block = quantize_q4_1; break;
    case GgmlType::kQ5_0: per_block = quantize_q5_0; break;
    case GgmlType::kQ5_1: per_block = quantize_q5_1; break;
    case GgmlType::kQ8_0: per_block = quantize_q8_0; break;
    default: throw_runtime("GGUF: quantization to ", traits->name, " is not supported");
  }
  const size_t blocks = count / traits->block_size;
  for (size_t b = 0; b < blocks; ++b) per_block(x + b * traits->block_size, dst + b * traits->type_size);
}

}  // namespace llmft::gguf
