// GGUF (llama architecture) -> Hugging Face model directory.
//
// What llama.cpp's convert_hf_to_gguf.py did, undone:
//  - tensor names: `blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, ...
//    (transformers' integrations/ggml.py GGUF_TENSOR_MAPPING["llama"]);
//  - dimension order: GGUF lists ne[0] (the fastest dimension) first, so the
//    row-major HF shape is the reverse and the bytes need no transpose;
//  - the q/k row permutation of LlamaModel.permute (llama.cpp pairs RoPE
//    dimensions (2i, 2i+1); HF's rotate-half pairs (i, i + d/2)), inverted as
//    transformers' modeling_gguf_pytorch_utils.py reverse_permute_weights does;
//  - the weights are dequantized to f32 (then optionally rounded to bf16): a
//    quantized file gives an approximation of the original checkpoint.
// config.json comes from the `llama.*` keys, tokenizer.json and
// tokenizer_config.json from the `tokenizer.ggml.*` keys (byte-level BPE, as
// transformers' GGUF tokenizer mapping builds it for `tokenizer.ggml.model` "gpt2").
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "model/gguf_names.h"
#include "model/gguf_reader.h"
#include "model/safetensors.h"

namespace llmft::gguf {

struct ConvertOptions {
  DType dtype = DType::kF32;  // of the written weights: kF32 or kBF16
};

// Everything a Hugging Face directory holds, in memory.
struct HfModel {
  nlohmann::ordered_json config;
  nlohmann::ordered_json generation_config;
  nlohmann::ordered_json tokenizer;         // tokenizer.json
  nlohmann::ordered_json tokenizer_config;  // tokenizer_config.json
  std::vector<NamedTensor> tensors;         // HF names, HF shapes
  std::vector<std::string> notes;           // things the user should know (e.g. an unknown pre-tokenizer)
};

// Converts an open GGUF file. Throws llmft::Error (kBadInput) naming the file
// and key or tensor for anything that is not a llama model llmft can convert.
HfModel convert_gguf(const GgufFile& file, const ConvertOptions& options = {});

// Writes config.json, generation_config.json, model.safetensors,
// tokenizer.json and tokenizer_config.json into `directory` (created if needed).
void write_hf_directory(const HfModel& model, const std::filesystem::path& directory);

// --- Pieces, exposed for tests -------------------------------------------------

// The `tokenizer.ggml.pre` name of a tokenizer.json pre_tokenizer, the inverse
// of what convert_gguf builds: "gpt2" (ByteLevel with its own regex),
// "smollm" (individual Digits, then ByteLevel), "llama-bpe" or "qwen2" (their
// Split regex, then ByteLevel); nullopt for anything else.
std::optional<std::string> gguf_pre_tokenizer_name(const nlohmann::json& pre_tokenizer);

// LlamaModel.permute on a row-major [rows, columns] matrix of `heads` heads:
// GGUF row h*d + 2i + p comes from HF row h*d + p*(d/2) + i (d = rows / heads).
std::vector<float> permute_rope_rows(std::span<const float> hf_rows, int64_t rows, int64_t columns, int64_t heads);

// Undoes LlamaModel.permute on a row-major [rows, columns] matrix whose rows are
// `heads` heads of rows/heads rows each: HF row h*d + p*(d/2) + i comes from
// GGUF row h*d + 2i + p (d = rows / heads, p in {0, 1}).
std::vector<float> unpermute_rope_rows(std::span<const float> gguf_rows, int64_t rows, int64_t columns, int64_t heads);

// GPT-2's byte-to-unicode alphabet (transformers' bytes_to_unicode): the code
// point that spells `byte` in a byte-level BPE vocabulary.
char32_t byte_level_char(uint8_t byte);

// A float32 metadata value written with the fewest decimal digits that read
// back to the same float32 (1e-05, not 9.999999747378752e-06).
double shortest_float32(double value);

}  // namespace llmft::gguf
