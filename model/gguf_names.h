// Tensor names of llama-family models in GGUF files and in Hugging Face
// checkpoints: one table for both directions (reading a GGUF into a Hugging
// Face directory and writing one from it).
//
// The GGUF names are those llama.cpp's convert_hf_to_gguf.py writes
// (gguf-py/gguf/tensor_mapping.py, MODEL_TENSOR names in constants.py); the
// pairs are transformers' integrations/ggml.py GGUF_TENSOR_MAPPING["llama"]
// (Qwen2 uses the same names, with q/k/v biases).
#pragma once

#include <string>

namespace llmft::gguf {

// "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight";
// "" for a name without a counterpart.
std::string hf_tensor_name(const std::string& gguf_name);

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight";
// "" for a name without a counterpart.
std::string gguf_tensor_name(const std::string& hf_name);

}  // namespace llmft::gguf
