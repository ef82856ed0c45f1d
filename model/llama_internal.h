// LlamaModel's private parts shared by its translation units: llama.cc
// (construction, weights in/out, the whole step), llama_block.cc (one
// decoder block's forward, recomputation and backward) and llama_decode.cc
// (incremental decoding with the KV cache).
#pragma once

#include "model/llama.h"

namespace llmft {

inline Tensor* grad_of(Parameter* parameter) {
  return parameter != nullptr && parameter->trainable && parameter->grad.defined() ? &parameter->grad : nullptr;
}

// Rows [begin, end) of a [capacity, kv_heads, head_dim] KV-cache buffer as a
// [end - begin, kv_heads * head_dim] view.
inline Tensor cache_rows(const Tensor& buffer, int64_t begin, int64_t end) {
  return buffer.reshape({buffer.size(0), buffer.size(1) * buffer.size(2)}).slice_rows(begin, end);
}

struct LlamaModel::Layer {
  Parameter* input_norm = nullptr;
  Parameter* post_attention_norm = nullptr;
  std::unique_ptr<Linear> q, k, v, o, gate, up, down;
};

// What one forward/backward needs besides the parameters.
struct LlamaModel::StepState {
  int64_t batch = 0;
  int64_t time = 0;       // sequence length incl. prompt-tuning tokens
  int64_t rows = 0;       // batch * time
  // Key/value positions before the tokens: prefix tuning's (training and
  // evaluation, a shared prefix of attention), or the KV cache's filled rows.
  int64_t num_prefix = 0;
  Tensor positions;       // i32 [rows] on the device
  Tensor doc_start;       // i32 [rows] or undefined
  ops::AttentionOptions attention;
  // Supplies the num_prefix leading K/V of each layer (prefix tuning).
  AttentionPrefixHook* prefix_hook = nullptr;
  // Incremental decoding: the num_prefix leading K/V are the cache's filled
  // rows, and the new keys/values are written into the rows after them.
  KvCache* cache = nullptr;
};

// A block's intermediates (HF names in comments). `input` is the block input
// (the residual stream); with kRecompute only it survives the forward.
struct LlamaModel::BlockActivations {
  Tensor input;                           // [N, D]
  Tensor attention_norm, attention_rstd;  // input_layernorm(input), f32 [N]
  Tensor q, k, v;                         // [B, T, Hq, Dh] after RoPE; [B, T, Hkv, Dh] (k after RoPE;
                                          // the KV cache's [1, P + T, ...] when decoding)
  Tensor prefix_k, prefix_v;              // prefix tuning's [P, Hkv, Dh] of this layer, shared by every sequence
  Tensor attention_out, lse;              // [B, T, Hq, Dh], f32 [B, Hq, T]
  Tensor mid;                             // input + o_proj(attention_out)
  Tensor mlp_norm, mlp_rstd;              // post_attention_layernorm(mid)
  Tensor gate, up, act;                   // [N, I]; act = silu(gate) * up
  // Residual adapters' inputs x (ResidualAdapterHook), where a layer has them.
  Tensor attention_adapter_input, mlp_adapter_input;

  void release_all_but_input() {
    attention_norm = attention_rstd = q = k = v = prefix_k = prefix_v = attention_out = lse = mid = mlp_norm =
        mlp_rstd = gate = up = act = attention_adapter_input = mlp_adapter_input = Tensor();
  }
  // ActivationPolicy::kSelective: what recompute_selective rebuilds.
  void release_recomputable() { attention_norm = attention_rstd = mlp_norm = mlp_rstd = act = Tensor(); }
};

}  // namespace llmft
