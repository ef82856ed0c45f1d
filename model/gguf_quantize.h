// f32 -> GGML block formats, the inverse of gguf_dequantize.h.
//
// Each quantizer reproduces gguf-py's numpy reference (gguf-py/gguf/quants.py,
// quantize_blocks; Q8_0 there is itself bit-exact with ggml-quants.c's
// quantize_row_q8_0_ref) bit for bit: the same f32 operations in the same
// order, f16 scales rounded to nearest even as numpy's astype(float16), and no
// fused multiply-add. The k-quants are not written (gguf-py has no quantizer
// for them, and llama.cpp's own is a search, not a formula).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "model/gguf_dequantize.h"

namespace llmft::gguf {

// Whether quantize_row() can write `type`.
bool can_quantize(GgmlType type);

// The type for a --type name: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1
// (case-insensitive); nullopt for any other name.
std::optional<GgmlType> parse_quantize_type(const std::string& name);
// "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1": for error messages.
const char* quantize_type_names();

// Quantizes `values` (a multiple of the type's block size) into exactly
// values.size() / block_size * type_size bytes at `out`. Throws llmft::Error
// (runtime) for a type can_quantize() rejects or sizes that do not fit.
void quantize_row(GgmlType type, std::span<const float> values, std::span<uint8_t> out);

}  // namespace llmft::gguf
