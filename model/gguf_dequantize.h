// GGML tensor element types (the `type` field of a GGUF tensor) and their
// dequantization to f32.
//
// Type ids and (block size, bytes per block) are those of llama.cpp's
// gguf-py/gguf/constants.py (GGMLQuantizationType, GGML_QUANT_SIZES); the block
// layouts are ggml/src/ggml-common.h's block_* structs, documented next to each
// dequantizer in gguf_dequantize.cc. Dequantization reproduces gguf-py's numpy
// reference (gguf-py/gguf/quants.py, dequantize_blocks) bit for bit: f16 scales
// are widened to f32 exactly and every product and sum is one f32 rounding in the
// reference's order (no fused multiply-add).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace llmft::gguf {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

// Storage geometry of one type: `block_size` consecutive elements of a row are
// stored in `type_size` bytes (1 element in 4 bytes for F32, 32 in 20 for Q4_1).
struct GgmlTypeTraits {
  GgmlType type;
  const char* name;      // as llama.cpp prints it: "Q4_1", "BF16"
  uint32_t block_size;   // elements per block
  uint32_t type_size;    // bytes per block
  bool can_dequantize;   // dequantize_row() supports it
};

// The traits of a type id read from a file, or nullopt for an id llama.cpp
// does not define (or no longer defines, like the removed Q4_2 = 4).
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type_id);
std::string ggml_type_name(uint32_t type_id);  // "Q4_1", or "type 77" when unknown

// Dequantizes `count` elements (a multiple of the type's block size) stored at
// `bytes` (exactly count / block_size * type_size of them) into `out`.
// Throws llmft::Error (runtime) for a type without a dequantizer or a size
// that does not fit; callers validate sizes against the file before this.
void dequantize_row(GgmlType type, std::span<const uint8_t> bytes, std::span<float> out);

}  // namespace llmft::gguf
