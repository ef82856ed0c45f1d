// ModelConfig: the Llama-family hyper-parameters read from a Hugging Face
// config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM), with
// every field checked on the way in, and written back so transformers can load
// what llmft exports.
//
// Field names and defaults follow transformers' configuration_llama.py,
// configuration_mistral.py and configuration_qwen2.py.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"

namespace llmft {

// Position-interpolation schemes for RoPE frequencies (transformers'
// modeling_rope_utils.py). kNone: inv_freq = 1 / theta^(2i/d).
enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;
  // llama3 only:
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// config.json's "torch_dtype" name of a storage dtype: "bfloat16", "float16",
// otherwise "float32".
const char* torch_dtype_name(DType dtype);

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";  // the HF class name in "architectures"
  std::string model_type = "llama";               // "llama", "mistral", "qwen2"
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // GQA: query head h uses KV head h / (heads / kv_heads)
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  // Biases of the attention projections. Llama/Mistral's attention_bias puts a
  // bias on q, k, v and o; Qwen2 always has q/k/v biases and never an o bias.
  bool qkv_bias = false;
  bool o_bias = false;
  // Mistral/Qwen2 sliding-window attention: 0 = none. llmft attends to the
  // full causal window, so sequences longer than this are refused.
  int64_t sliding_window = 0;
  std::vector<int64_t> bos_token_ids;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";

  // Parses and validates a config.json object; `source` (the file path) leads
  // every error: "<source>: field 'hidden_size': expected ..., found ...".
  static ModelConfig from_json(const nlohmann::json& json, const std::string& source);
  // Reads <path> (a config.json file, or a directory holding one).
  static ModelConfig load(const std::filesystem::path& path);
  // A config.json object transformers' AutoConfig loads back to the same model.
  nlohmann::json to_json() const;
  // Writes to_json() to <path> (temp file + rename).
  void save(const std::filesystem::path& path) const;

  // RoPE inverse frequencies (head_dim / 2 values) after rope_scaling,
  // computed in double and rounded to float as transformers does in fp32.
  std::vector<float> rope_inv_freq() const;

  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
};

}  // namespace llmft
