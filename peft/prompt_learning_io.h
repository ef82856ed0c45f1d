// Hugging Face PEFT's adapter directory for the prompt-learning methods
// (PROMPT_TUNING, P_TUNING, PREFIX_TUNING; peft 0.21 PromptLearningConfig and
// get_peft_model_state_dict): adapter_config.json with the common fields
// (num_virtual_tokens, token_dim, num_layers, num_attention_heads,
// num_transformer_submodules = 1, inference_mode) plus the method's own, and
// adapter_model.safetensors holding one tensor, "prompt_embeddings": the
// virtual tokens' embeddings [P, hidden] (prompt and P-tuning) or the
// prefix's keys and values [P, layers · 2 · kv_heads · head_dim] (prefix
// tuning), always as computed (any reparameterisation network applied).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "model/model_config.h"
#include "peft/peft_method.h"

namespace llmft {

inline constexpr const char* kPromptEmbeddingsTensor = "prompt_embeddings";

// The fields every prompt-learning adapter_config.json has, for `model`:
// token_dim and num_attention_heads as PEFT derives them (prefix tuning of a
// grouped-query model: kv_heads · head_dim and kv_heads, PEFT #1901).
nlohmann::json prompt_learning_config_json(PeftType type, const ModelConfig& model, int64_t num_virtual_tokens,
                                           const std::string& base_model_name_or_path);

// Writes `json` as adapter_config.json and `embeddings` (host, any float
// dtype) as "prompt_embeddings" in `dtype` (default its own) into `directory`.
void write_prompt_learning_adapter(const std::filesystem::path& directory, const nlohmann::json& json,
                                   const Tensor& embeddings, std::optional<DType> dtype);

// "prompt_embeddings" of `directory`/adapter_model.safetensors as `dtype`;
// kBadInput naming the file when it is missing, has another shape than
// `expected`, or sits beside other tensors.
Tensor read_prompt_embeddings(const std::filesystem::path& directory, const Shape& expected, DType dtype);

}  // namespace llmft
