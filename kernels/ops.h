// Every numeric op of llmft, as forward/backward pairs. One declaration here;
// implementations in kernels/cpu (the readable reference: OpenBLAS + OpenMP)
// and kernels/cuda (cuBLASLt + fused kernels), chosen by the context's device.
// All tensor arguments must live on the context's device.
//
// Dtype rules (DESIGN.md): storage f32, bf16 or f16; accumulation in fp32;
// norms, softmax, log-sum-exp and losses computed in fp32. Outputs are rounded
// to their own dtype with round-to-nearest-even, identically on both backends.
// Gradient outputs named "accumulated" (+=) add into what is there, so
// gradient accumulation and shared weights (tied embeddings) need no copies.
//
// Layouts: activations are row-major [tokens, features]; attention tensors are
// [batch, time, heads, head_dim], which is exactly the output of the q/k/v
// projections, so no transposes are needed.
#pragma once

#include <cstdint>
#include <span>

#include "core/context.h"
#include "core/tensor.h"

namespace llmft::ops {

// ---- GEMM -----------------------------------------------------------------
// c = alpha * op(a) @ op(b) + beta * c for each batch entry; op(x) = x or x^T.
// a: [..., M, K] ([..., K, M] if trans_a); b: [..., K, N] ([..., N, K] if
// trans_b); c: [..., M, N]. Leading (batch) dims of a, b and c are equal, or a
// 2-D a or b is shared by every batch entry. a and b share one dtype; c is f32
// or that dtype. beta == 0 ignores c's contents (NaNs included).
void gemm(Context& context, const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b,
          float alpha = 1.0f, float beta = 0.0f);

// ---- Linear (torch.nn.Linear layout: weight [out, in]) ---------------------
// y[N, out] = x[N, in] @ weight^T + bias. bias may be null. The weight may be
// stored in another float dtype than x (LlamaOptions::weights_dtype): it is
// read as stored and the product accumulates in f32 all the same (CUDA casts
// it to x's dtype in workspace for cuBLASLt, which multiplies one type).
void linear_forward(Context& context, const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y);
// dx = dy @ weight (overwritten, or accumulated when accumulate_dx);
// dweight += dy^T @ x; dbias += sum over rows of dy. Any output may be null
// (frozen weights get no gradient). dweight/dbias may be f32 or weight's dtype.
void linear_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, Tensor* dx,
                     Tensor* dweight, Tensor* dbias, bool accumulate_dx = false);

// ---- Embedding --------------------------------------------------------------
// out[n] = table[ids[n]]; ids i32 [N]; table [V, D]; out [N, D]; table and
// out may differ in float dtype (the row is converted).
// An id outside [0, V) is an error naming the position and the id.
void embedding_forward(Context& context, const Tensor& ids, const Tensor& table, Tensor& out);
// dtable[ids[n]] += dout[n] (scatter-add; repeated ids accumulate).
void embedding_backward(Context& context, const Tensor& ids, const Tensor& dout, Tensor& dtable);

// ---- RMSNorm (Zhang & Sennrich 2019; Hugging Face LlamaRMSNorm) -------------
// rstd[n] = 1 / sqrt(mean(x[n]^2) + eps) in fp32; y = weight * round(x * rstd),
// where round() is the cast to x's dtype that LlamaRMSNorm applies before the
// weight multiply. x, y: [N, D]; weight [D], of any float dtype; rstd f32 [N]
// (saved for backward).
void rmsnorm_forward(Context& context, const Tensor& x, const Tensor& weight, float eps, Tensor& y, Tensor& rstd);
// dx overwritten; dweight accumulated (may be null for a frozen norm).
void rmsnorm_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                      Tensor& dx, Tensor* dweight);

// ---- RoPE (Su et al. 2021), Hugging Face rotate-half convention --------------
// Dimension i pairs with i + head_dim/2 (not Meta's interleaved pairs):
// y[i] = x[i] cos(p f_i) - x[i + h] sin(p f_i); y[i + h] = x[i + h] cos(p f_i) + x[i] sin(p f_i)
// with p = positions[n] and f = inv_freq (fp32 [head_dim/2], computed by the
// model from rope_theta and rope_scaling). x, y: [N, heads, head_dim] (or
// [B, T, heads, head_dim] with N = B*T); positions i32 [N]. y may alias x.
void rope_forward(Context& context, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& y);
// The transpose of the rotation (rotation by -p f). dx may alias dy.
void rope_backward(Context& context, const Tensor& dy, const Tensor& positions, const Tensor& inv_freq, Tensor& dx);

// ---- SwiGLU (Shazeer 2020): out = silu(gate) * up --------------------------------
void swiglu_forward(Context& context, const Tensor& gate, const Tensor& up, Tensor& out);
// dgate, dup overwritten (may alias gate/up when those are no longer needed).
void swiglu_backward(Context& context, const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup);

// ---- Pointwise activations of small networks (PEFT encoders and adapters) ------
// relu(x) = max(x, 0); tanh; silu(x) = x sigmoid(x); gelu(x) = x Phi(x) with
// the exact erf form (torch.nn.GELU(), transformers' "gelu").
enum class Activation { kRelu, kTanh, kSilu, kGelu };
// y = f(x); y may alias x.
void activation_forward(Context& context, Activation kind, const Tensor& x, Tensor& y);
// dx = dy f'(x) (relu'(0) = 0, as torch); dx may alias dy or x.
void activation_backward(Context& context, Activation kind, const Tensor& dy, const Tensor& x, Tensor& dx);

// ---- Causal self-attention with grouped-query heads --------------------------------
// Key/value positions shared by every sequence of the batch (prefix tuning,
// Li & Liang 2021): read from their own [S, Hkv, Dh] tensors (k's dtype), so a
// batch of B sequences needs no B copies of them in k and v.
struct SharedPrefix {
  const Tensor* keys = nullptr;    // null: no shared prefix (S = 0)
  const Tensor* values = nullptr;  // with keys
  // Backward only, both set with `keys`: f32 [S, Hkv, Dh], overwritten with
  // the gradient summed over the batch (in batch order, so deterministic).
  Tensor* dkeys = nullptr;
  Tensor* dvalues = nullptr;
};
struct AttentionOptions {
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(head_dim)
  // Leading key/value positions of k and v visible to every query: the KV
  // cache during generation (with prefix tuning, its prefix rows too).
  int64_t num_prefix = 0;
  // Optional i32 [B*T]: with packed sequences, query t attends only to keys
  // P + [doc_start[t], t] (its own document) besides the prefix. Null means 0.
  const Tensor* doc_start = nullptr;
  SharedPrefix shared_prefix;
};
// q: [B, T, Hq, Dh]; k, v: [B, P + T, Hkv, Dh] with Hq a multiple of Hkv (query
// head h uses KV head h / (Hq / Hkv)); out: [B, T, Hq, Dh]; lse: f32 [B, Hq, T],
// the log-sum-exp of each query's scaled scores, saved for the backward.
// The keys of sequence b are the S shared positions followed by k[b]'s P + T:
// query t sees the shared ones, k's [0, P) and P + [doc_start(t), t]. Online
// softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022): the
// [T, T] score matrix is never materialised on the GPU.
void attention_forward(Context& context, const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionOptions& options, Tensor& out, Tensor& lse);
// dq, dk, dv overwritten (shapes of q, k, v), and the shared prefix's
// gradients when options.shared_prefix has them.
void attention_backward(Context& context, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const AttentionOptions& options, Tensor& dq, Tensor& dk,
                        Tensor& dv);

// ---- Softmax cross-entropy --------------------------------------------------------
// For each row n with targets[n] >= 0: lse[n] = log sum_v exp(logits[n, v]) and
// losses[n] = lse[n] - logits[n, targets[n]]; rows with targets[n] < 0 (ignore
// index, e.g. -100, or masked prompt tokens) get loss 0. logits [N, V] any float
// dtype; targets i32 [N]; losses, lse f32 [N]. A target >= V is an error.
// The reduction over V runs in chunks with an online max, so V may be large.
void cross_entropy_forward(Context& context, const Tensor& logits, const Tensor& targets, Tensor& losses,
                           Tensor& lse);
// dlogits[n] = dloss[n] * (softmax(logits[n]) - onehot(targets[n])); zero for
// ignored rows. dloss f32 [N]. dlogits may alias logits (the fused in-place
// form the model uses so a chunk of logits never needs a second buffer).
void cross_entropy_backward(Context& context, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& dloss, Tensor& dlogits);

// ---- Elementwise -------------------------------------------------------------
void add(Context& context, const Tensor& a, const Tensor& b, Tensor& out);  // out = a + b; out may alias a or b
void add_scaled(Context& context, float alpha, const Tensor& x, Tensor& y);  // y += alpha * x (x, y any float dtypes)
void scale(Context& context, Tensor& x, float alpha);                        // x *= alpha
void fill(Context& context, Tensor& x, float value);
// dst = src converted (float<->float with round-to-nearest-even; i32<->i64).
void cast(Context& context, const Tensor& src, Tensor& dst);

// ---- Dropout (Srivastava et al. 2014), inverted scaling ------------------------------
// Element i is kept when philox_uniform_at(seed, offset + i) >= p and scaled by
// 1 / (1 - p). The mask is a pure function of (seed, offset, i): the backward
// and a recomputed forward regenerate it instead of storing it.
//
// With a DropoutLayout, x is a column slice of a wider tensor (the input of a
// row-parallel LoRA under tensor parallelism, DESIGN.md "Anything random is
// keyed by global element offsets"): element (row, column) of x, with x seen
// as [rows, columns], draws number offset + row * row_stride + column_offset +
// column, which is the number the same element of the full tensor draws.
struct DropoutLayout {
  int64_t row_stride = 0;  // 0: x's own column count (x is the whole tensor)
  int64_t column_offset = 0;
  bool contiguous(int64_t columns) const { return (row_stride == 0 || row_stride == columns) && column_offset == 0; }
};
void dropout_forward(Context& context, const Tensor& x, float p, uint64_t seed, uint64_t offset, Tensor& y,
                     DropoutLayout layout = {});
void dropout_backward(Context& context, const Tensor& dy, float p, uint64_t seed, uint64_t offset, Tensor& dx,
                      DropoutLayout layout = {});

// ---- Gradient statistics ------------------------------------------------------
// One pass over every tensor: sum of squares (fp32 per element, accumulated in
// double across blocks) and whether every element is finite. Drives global
// grad-norm clipping and the loss scaler's overflow check.
struct GradientStats {
  double sum_of_squares = 0.0;
  bool all_finite = true;
};
GradientStats gradient_stats(Context& context, std::span<const Tensor> tensors);

// ---- AdamW update (Loshchilov & Hutter 2019), torch.optim.AdamW semantics ------------
// One fused elementwise pass per parameter (optim/adamw.h documents the step):
//   g = grad * grad_multiplier;  p = master * (1 - lr * weight_decay)
//   exp_avg    = exp_avg + (1 - beta1) * (g - exp_avg)
//   exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
//   master     = p - lr / (1 - beta1^step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps)
//   value      = round(master) in value's dtype (round-to-nearest-even)
// master, exp_avg, exp_avg_sq: f32; value and grad: f32, bf16 or f16; all with
// the same number of elements. An f32 value may share master's storage (then
// it is not written twice). step >= 1 (the count after incrementing, as torch).
// Pass weight_decay 0 for parameters excluded from decay. The scalars are
// derived on the host in double, as torch does with Python floats, and both
// backends give the same bits.
struct AdamWUpdate {
  float lr = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;
  float grad_multiplier = 1.0f;  // e.g. 1 / loss_scale: un-scaling fused into the update
};
void adamw_update(Context& context, Tensor& value, Tensor& master, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const Tensor& grad, const AdamWUpdate& update);

}  // namespace llmft::ops
