// One decoder block of LlamaModel: forward, the selective recomputation and
// the backward (model/llama.h), with the tensor-parallel reductions at block
// level (DESIGN.md "Tensor parallelism").
#include "kernels/ops.h"
#include "model/llama.h"
#include "model/llama_internal.h"

namespace llmft {

// ---- One decoder block ------------------------------------------------------------

void LlamaModel::block_forward(Context& context, StepState& step, int64_t layer_index, BlockActivations& a,
                               Tensor& output) {
  const Layer& layer = *layers_[static_cast<size_t>(layer_index)];
  const DType dtype = options_.compute_dtype;
  const int64_t n = step.rows, b = step.batch, t = step.time, p = step.num_prefix;
  const int64_t hidden = config_.hidden_size, heads = local_heads_;
  const int64_t kv_heads = local_kv_heads_, head_dim = config_.head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);

  // Attention half: x + o(attention(rope(q(norm(x))), rope(k(norm(x))), v(norm(x)))).
  a.attention_norm = context.empty({n, hidden}, dtype);
  a.attention_rstd = context.empty({n}, DType::kF32);
  ops::rmsnorm_forward(context, a.input, layer.input_norm->value, eps, a.attention_norm, a.attention_rstd);

  Tensor q = context.empty({n, heads * head_dim}, dtype);
  layer.q->forward(context, a.attention_norm, q);
  a.q = q.reshape({b, t, heads, head_dim});
  ops::rope_forward(context, a.q, step.positions, inv_freq_, a.q);

  // With the KV cache (b == 1), k and v are the cache rows after the p cached
  // ones, so attention below reads the whole cache in place: nothing is copied.
  Tensor k, v;
  if (step.cache != nullptr) {
    k = cache_rows(step.cache->keys[static_cast<size_t>(layer_index)], p, p + t);
    v = cache_rows(step.cache->values[static_cast<size_t>(layer_index)], p, p + t);
  } else {
    k = context.empty({n, kv_heads * head_dim}, dtype);
    v = context.empty({n, kv_heads * head_dim}, dtype);
  }
  layer.k->forward(context, a.attention_norm, k);
  layer.v->forward(context, a.attention_norm, v);
  Tensor k4 = k.reshape({b, t, kv_heads, head_dim});
  ops::rope_forward(context, k4, step.positions, inv_freq_, k4);
  if (step.cache != nullptr) {
    a.k = cache_rows(step.cache->keys[static_cast<size_t>(layer_index)], 0, p + t)
              .reshape({1, p + t, kv_heads, head_dim});
    a.v = cache_rows(step.cache->values[static_cast<size_t>(layer_index)], 0, p + t)
              .reshape({1, p + t, kv_heads, head_dim});
  } else {
    a.k = k4;
    a.v = v.reshape({b, t, kv_heads, head_dim});
    if (p > 0) {
      // Prefix tuning: this layer's P key/value positions, one copy that
      // attention reads for every sequence (ops::SharedPrefix).
      a.prefix_k = context.empty({p, kv_heads, head_dim}, dtype);
      a.prefix_v = context.empty({p, kv_heads, head_dim}, dtype);
      step.prefix_hook->forward(context, layer_index, a.prefix_k, a.prefix_v);
    }
  }
  ops::AttentionOptions attention = step.attention;
  attention.shared_prefix.keys = a.prefix_k.defined() ? &a.prefix_k : nullptr;
  attention.shared_prefix.values = a.prefix_v.defined() ? &a.prefix_v : nullptr;
  a.attention_out = context.empty({b, t, heads, head_dim}, dtype);
  a.lse = context.empty({b, heads, t}, DType::kF32);
  ops::attention_forward(context, a.q, a.k, a.v, attention, a.attention_out, a.lse);
  a.mid = context.empty({n, hidden}, dtype);
  layer.o->forward(context, a.attention_out.reshape({n, heads * head_dim}), a.mid);
  reduce_over_tensor_parallel(a.mid, "attention output all-reduce (tensor parallel)");
  add_residual(context, layer_index, BlockSite::kAttention, a.input, a.mid, a.attention_adapter_input);

  // MLP half: mid + down(silu(gate(norm(mid))) * up(norm(mid))).
  const int64_t inter = local_intermediate_;
  a.mlp_norm = context.empty({n, hidden}, dtype);
  a.mlp_rstd = context.empty({n}, DType::kF32);
  ops::rmsnorm_forward(context, a.mid, layer.post_attention_norm->value, eps, a.mlp_norm, a.mlp_rstd);
  a.gate = context.empty({n, inter}, dtype);
  a.up = context.empty({n, inter}, dtype);
  layer.gate->forward(context, a.mlp_norm, a.gate);
  layer.up->forward(context, a.mlp_norm, a.up);
  a.act = context.empty({n, inter}, dtype);
  ops::swiglu_forward(context, a.gate, a.up, a.act);
  output = context.empty({n, hidden}, dtype);
  layer.down->forward(context, a.act, output);
  reduce_over_tensor_parallel(output, "MLP output all-reduce (tensor parallel)");
  add_residual(context, layer_index, BlockSite::kMlp, a.mid, output, a.mlp_adapter_input);
}

// sublayer = residual + sublayer (+ f(x) with a residual adapter here, x
// saved in adapter_input: the sublayer's own output or the sum).
void LlamaModel::add_residual(Context& context, int64_t layer_index, BlockSite site, const Tensor& residual,
                              Tensor& sublayer, Tensor& adapter_input) {
  const bool adapted = residual_hook_ != nullptr && residual_hook_->adapts(layer_index, site);
  auto keep_input = [&] {
    adapter_input = context.empty(sublayer.shape(), sublayer.dtype());
    adapter_input.copy_from(sublayer);
  };
  if (adapted && !residual_hook_->after_residual()) keep_input();
  ops::add(context, sublayer, residual, sublayer);
  if (!adapted) return;
  if (residual_hook_->after_residual()) keep_input();
  residual_hook_->forward(context, layer_index, site, adapter_input, sublayer);
}

// The backward of add_residual: `dstream` = dL/d(its result) is the
// residual's gradient (updated in place with a Pfeiffer adapter's input
// gradient); returns dL/d(sublayer output), `dstream` itself when no Houlsby
// adapter adds to it.
Tensor LlamaModel::residual_backward(Context& context, int64_t layer_index, BlockSite site, const Tensor& adapter_input,
                                     Tensor& dstream) {
  if (residual_hook_ == nullptr || !residual_hook_->adapts(layer_index, site)) return dstream;
  Tensor dx = context.empty(dstream.shape(), dstream.dtype());
  ops::fill(context, dx, 0.0f);
  residual_hook_->backward(context, layer_index, site, dstream, adapter_input, dx);
  if (residual_hook_->after_residual()) {
    ops::add(context, dstream, dx, dstream);  // x = r + h: both r and h see it
    return dstream;
  }
  ops::add(context, dx, dstream, dx);  // x = h: only h does
  return dx;
}

// kSelective: the norms and SwiGLU from the kept input, mid, gate and up,
// with the very ops and arguments of block_forward, so bit for bit the same.
void LlamaModel::recompute_selective(Context& context, int64_t layer_index, BlockActivations& a) {
  const Layer& layer = *layers_[static_cast<size_t>(layer_index)];
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const int64_t n = a.input.size(0), hidden = config_.hidden_size;
  const DType dtype = a.input.dtype();
  a.attention_norm = context.empty({n, hidden}, dtype);
  a.attention_rstd = context.empty({n}, DType::kF32);
  ops::rmsnorm_forward(context, a.input, layer.input_norm->value, eps, a.attention_norm, a.attention_rstd);
  a.mlp_norm = context.empty({n, hidden}, dtype);
  a.mlp_rstd = context.empty({n}, DType::kF32);
  ops::rmsnorm_forward(context, a.mid, layer.post_attention_norm->value, eps, a.mlp_norm, a.mlp_rstd);
  a.act = context.empty(a.gate.shape(), dtype);
  ops::swiglu_forward(context, a.gate, a.up, a.act);
}

// In: dresidual = dL/d(block output). Out: dresidual = dL/d(block input). The
// residual stream's gradient is updated in place; the activations' buffers are
// reused for their own gradients where they are dead.
void LlamaModel::block_backward(Context& context, StepState& step, int64_t layer_index, BlockActivations& a,
                                Tensor& dresidual) {
  const Layer& layer = *layers_[static_cast<size_t>(layer_index)];
  const DType dtype = options_.compute_dtype;
  const int64_t n = step.rows, b = step.batch, t = step.time, p = step.num_prefix;
  const int64_t hidden = config_.hidden_size, heads = local_heads_;
  const int64_t kv_heads = local_kv_heads_, head_dim = config_.head_dim;

  // MLP half. Under tensor parallelism dresidual is whole on every rank; the
  // input gradient of the column-parallel gate/up is this rank's share.
  Tensor dact = context.empty({n, local_intermediate_}, dtype);
  const Tensor dmlp_out = residual_backward(context, layer_index, BlockSite::kMlp, a.mlp_adapter_input, dresidual);
  layer.down->backward(context, dmlp_out, a.act, &dact);
  ops::swiglu_backward(context, dact, a.gate, a.up, a.gate, a.up);  // gate/up now hold dgate/dup
  Tensor dnorm = context.empty({n, hidden}, dtype);
  layer.gate->backward(context, a.gate, a.mlp_norm, &dnorm);
  layer.up->backward(context, a.up, a.mlp_norm, &dnorm, /*accumulate_dx=*/true);
  reduce_over_tensor_parallel(dnorm, "MLP input gradient all-reduce (tensor parallel)");
  Tensor dnorm_input = context.empty({n, hidden}, dtype);
  ops::rmsnorm_backward(context, dnorm, a.mid, layer.post_attention_norm->value, a.mlp_rstd, dnorm_input,
                        grad_of(layer.post_attention_norm));
  ops::add(context, dresidual, dnorm_input, dresidual);  // dL/dmid

  // Attention half.
  Tensor dattention = context.empty({n, heads * head_dim}, dtype);
  const Tensor dattention_out =
      residual_backward(context, layer_index, BlockSite::kAttention, a.attention_adapter_input, dresidual);
  layer.o->backward(context, dattention_out, a.attention_out.reshape({n, heads * head_dim}), &dattention);
  Tensor dq = context.empty(a.q.shape(), dtype);
  Tensor dk = context.empty(a.k.shape(), dtype);
  Tensor dv = context.empty(a.v.shape(), dtype);
  ops::AttentionOptions attention = step.attention;
  Tensor dprefix_k, dprefix_v;  // f32 [P, Hkv, Dh], summed over the batch by attention_backward
  if (p > 0) {
    dprefix_k = context.empty({p, kv_heads, head_dim}, DType::kF32);
    dprefix_v = context.empty({p, kv_heads, head_dim}, DType::kF32);
    attention.shared_prefix = {&a.prefix_k, &a.prefix_v, &dprefix_k, &dprefix_v};
  }
  ops::attention_backward(context, dattention.reshape({b, t, heads, head_dim}), a.q, a.k, a.v, a.attention_out, a.lse,
                          attention, dq, dk, dv);
  if (p > 0) step.prefix_hook->backward(context, layer_index, dprefix_k, dprefix_v);
  ops::rope_backward(context, dq, step.positions, inv_freq_, dq);
  ops::rope_backward(context, dk, step.positions, inv_freq_, dk);
  layer.q->backward(context, dq.reshape({n, heads * head_dim}), a.attention_norm, &dnorm);
  layer.k->backward(context, dk.reshape({n, kv_heads * head_dim}), a.attention_norm, &dnorm, true);
  layer.v->backward(context, dv.reshape({n, kv_heads * head_dim}), a.attention_norm, &dnorm, true);
  reduce_over_tensor_parallel(dnorm, "attention input gradient all-reduce (tensor parallel)");
  ops::rmsnorm_backward(context, dnorm, a.input, layer.input_norm->value, a.attention_rstd, dnorm_input,
                        grad_of(layer.input_norm));
  ops::add(context, dresidual, dnorm_input, dresidual);  // dL/dinput
}

}  // namespace llmft
