// Dispatch of every op in kernels/ops.h to the backend of the context's device.
#include "kernels/ops.h"

#include "kernels/cpu/cpu_ops.h"
#include "kernels/op_checks.h"
#ifdef LLMFT_WITH_CUDA
#include "kernels/cuda/cuda_ops.h"
#define LLMFT_DISPATCH(context, call) ((context).is_cuda() ? ::llmft::cuda::call : ::llmft::cpu::call)
#else
#define LLMFT_DISPATCH(context, call) ::llmft::cpu::call
#endif

namespace llmft::ops {

using kernels::require_dtype;
using kernels::require_shape;

void gemm(Context& context, const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float alpha,
          float beta) {
  LLMFT_DISPATCH(context, gemm(context, a, b, c, trans_a, trans_b, alpha, beta));
}

void linear_forward(Context& context, const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) {
  LLMFT_DISPATCH(context, linear_forward(context, x, weight, bias, y));
}

void linear_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, Tensor* dx,
                     Tensor* dweight, Tensor* dbias, bool accumulate_dx) {
  LLMFT_DISPATCH(context, linear_backward(context, dy, x, weight, dx, dweight, dbias, accumulate_dx));
}

void embedding_forward(Context& context, const Tensor& ids, const Tensor& table, Tensor& out) {
  LLMFT_DISPATCH(context, embedding_forward(context, ids, table, out));
}

void embedding_backward(Context& context, const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  LLMFT_DISPATCH(context, embedding_backward(context, ids, dout, dtable));
}

void rmsnorm_forward(Context& context, const Tensor& x, const Tensor& weight, float eps, Tensor& y, Tensor& rstd) {
  LLMFT_DISPATCH(context, rmsnorm_forward(context, x, weight, eps, y, rstd));
}

void rmsnorm_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                      Tensor& dx, Tensor* dweight) {
  LLMFT_DISPATCH(context, rmsnorm_backward(context, dy, x, weight, rstd, dx, dweight));
}

void rope_forward(Context& context, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& y) {
  LLMFT_DISPATCH(context, rope_forward(context, x, positions, inv_freq, y));
}

void rope_backward(Context& context, const Tensor& dy, const Tensor& positions, const Tensor& inv_freq, Tensor& dx) {
  LLMFT_DISPATCH(context, rope_backward(context, dy, positions, inv_freq, dx));
}

void activation_forward(Context& context, Activation kind, const Tensor& x, Tensor& y) {
  LLMFT_DISPATCH(context, activation_forward(context, kind, x, y));
}

void activation_backward(Context& context, Activation kind, const Tensor& dy, const Tensor& x, Tensor& dx) {
  LLMFT_DISPATCH(context, activation_backward(context, kind, dy, x, dx));
}

void swiglu_forward(Context& context, const Tensor& gate, const Tensor& up, Tensor& out) {
  LLMFT_DISPATCH(context, swiglu_forward(context, gate, up, out));
}

void swiglu_backward(Context& context, const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup) {
  LLMFT_DISPATCH(context, swiglu_backward(context, dout, gate, up, dgate, dup));
}

namespace {

// The shared prefix's tensors against k ([B, rows, Hkv, Dh]); checked here for both backends.
void check_shared_prefix(std::string_view op, const Tensor& k, const SharedPrefix& prefix, bool backward) {
  if (prefix.keys == nullptr) {
    if (prefix.values != nullptr || prefix.dkeys != nullptr || prefix.dvalues != nullptr)
      throw_runtime(op, ": shared_prefix: values or gradients given without keys");
    return;
  }
  if (prefix.values == nullptr) throw_runtime(op, ": shared_prefix: keys given without values");
  const Tensor& keys = *prefix.keys;
  if (keys.dim() != 3 || k.dim() != 4 || keys.size(1) != k.size(2) || keys.size(2) != k.size(3))
    throw_runtime(op, ": shared_prefix.keys: expected [positions, ", k.dim() == 4 ? k.size(2) : -1, ", ",
                  k.dim() == 4 ? k.size(3) : -1, "] (k's KV heads and head_dim), found ", keys.to_string());
  require_dtype(op, "shared_prefix.keys", keys, k.dtype());
  require_dtype(op, "shared_prefix.values", *prefix.values, k.dtype());
  require_shape(op, "shared_prefix.values", *prefix.values, keys.shape());
  if (!backward) return;
  if (prefix.dkeys == nullptr || prefix.dvalues == nullptr)
    throw_runtime(op, ": shared_prefix: the backward needs dkeys and dvalues");
  require_dtype(op, "shared_prefix.dkeys", *prefix.dkeys, DType::kF32);
  require_dtype(op, "shared_prefix.dvalues", *prefix.dvalues, DType::kF32);
  require_shape(op, "shared_prefix.dkeys", *prefix.dkeys, keys.shape());
  require_shape(op, "shared_prefix.dvalues", *prefix.dvalues, keys.shape());
}

}  // namespace

void attention_forward(Context& context, const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionOptions& options, Tensor& out, Tensor& lse) {
  check_shared_prefix("attention_forward", k, options.shared_prefix, /*backward=*/false);
  LLMFT_DISPATCH(context, attention_forward(context, q, k, v, options, out, lse));
}

void attention_backward(Context& context, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const AttentionOptions& options, Tensor& dq, Tensor& dk,
                        Tensor& dv) {
  check_shared_prefix("attention_backward", k, options.shared_prefix, /*backward=*/true);
  LLMFT_DISPATCH(context, attention_backward(context, dout, q, k, v, out, lse, options, dq, dk, dv));
}

void cross_entropy_forward(Context& context, const Tensor& logits, const Tensor& targets, Tensor& losses, Tensor& lse) {
  LLMFT_DISPATCH(context, cross_entropy_forward(context, logits, targets, losses, lse));
}

void cross_entropy_backward(Context& context, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& dloss, Tensor& dlogits) {
  LLMFT_DISPATCH(context, cross_entropy_backward(context, logits, targets, lse, dloss, dlogits));
}

void add(Context& context, const Tensor& a, const Tensor& b, Tensor& out) {
  LLMFT_DISPATCH(context, add(context, a, b, out));
}

void add_scaled(Context& context, float alpha, const Tensor& x, Tensor& y) {
  LLMFT_DISPATCH(context, add_scaled(context, alpha, x, y));
}

void scale(Context& context, Tensor& x, float alpha) { LLMFT_DISPATCH(context, scale(context, x, alpha)); }

void fill(Context& context, Tensor& x, float value) { LLMFT_DISPATCH(context, fill(context, x, value)); }

void cast(Context& context, const Tensor& src, Tensor& dst) { LLMFT_DISPATCH(context, cast(context, src, dst)); }

namespace {

// A layout's slice must lie inside its rows; checked here for both backends.
void check_dropout_layout(std::string_view op, const Tensor& x, const DropoutLayout& layout) {
  const int64_t columns = x.dim() == 0 ? 1 : x.size(-1);
  if (!layout.contiguous(columns) && layout.row_stride < layout.column_offset + columns)
    throw_bad_input(op, ": dropout layout row stride ", layout.row_stride, " < column offset ", layout.column_offset,
                    " + ", columns, " columns");
}

}  // namespace

void dropout_forward(Context& context, const Tensor& x, float p, uint64_t seed, uint64_t offset, Tensor& y,
                     DropoutLayout layout) {
  check_dropout_layout("dropout_forward", x, layout);
  LLMFT_DISPATCH(context, dropout_forward(context, x, p, seed, offset, y, layout));
}

void dropout_backward(Context& context, const Tensor& dy, float p, uint64_t seed, uint64_t offset, Tensor& dx,
                      DropoutLayout layout) {
  check_dropout_layout("dropout_backward", dy, layout);
  LLMFT_DISPATCH(context, dropout_backward(context, dy, p, seed, offset, dx, layout));
}

GradientStats gradient_stats(Context& context, std::span<const Tensor> tensors) {
  return LLMFT_DISPATCH(context, gradient_stats(context, tensors));
}

void adamw_update(Context& context, Tensor& value, Tensor& master, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const Tensor& grad, const AdamWUpdate& update) {
  LLMFT_DISPATCH(context, adamw_update(context, value, master, exp_avg, exp_avg_sq, grad, update));
}

}  // namespace llmft::ops
