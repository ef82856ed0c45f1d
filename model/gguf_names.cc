// The llama-family tensor name table (see gguf_names.h).
#include "model/gguf_names.h"

#include <regex>

#include "core/error.h"

namespace llmft::gguf {
namespace {

struct NamePair {
  const char* gguf;
  const char* hf;
};

constexpr NamePair kTopTensors[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

// Per-layer tensors: suffixes after "blk.N." and "model.layers.N.".
constexpr NamePair kLayerTensors[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

// Maps `name` from one naming to the other: `from_top`/`to_top` pick the
// members of kTopTensors, `layer_pattern` captures (layer, suffix).
template <typename From, typename To>
std::string translate(const std::string& name, From from, To to, const std::regex& layer_pattern,
                      const char* to_layer_prefix) {
  for (const NamePair& pair : kTopTensors)
    if (name == from(pair)) return to(pair);
  std::smatch match;
  if (!std::regex_match(name, match, layer_pattern)) return "";
  for (const NamePair& pair : kLayerTensors)
    if (match[2] == from(pair)) return str_cat(to_layer_prefix, match[1].str(), ".", to(pair));
  return "";
}

const char* gguf_of(const NamePair& pair) { return pair.gguf; }
const char* hf_of(const NamePair& pair) { return pair.hf; }

}  // namespace

std::string hf_tensor_name(const std::string& gguf_name) {
  static const std::regex pattern(R"(blk\.(\d+)\.(.+))");
  return translate(gguf_name, gguf_of, hf_of, pattern, "model.layers.");
}

std::string gguf_tensor_name(const std::string& hf_name) {
  static const std::regex pattern(R"(model\.layers\.(\d+)\.(.+))");
  return translate(hf_name, hf_of, gguf_of, pattern, "blk.");
}

}  // namespace llmft::gguf
