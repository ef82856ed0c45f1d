// CUDA kernels (kernels/cuda/*.cu, cuBLASLt GEMM); CUDA builds only.
// Same signatures and contracts as kernels/ops.h, which documents them;
// kernels/ops.cc dispatches to these by the context's device.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/ops.h"

namespace llmft::cuda {

void gemm(Context& context, const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float alpha,
          float beta);

void linear_forward(Context& context, const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y);
void linear_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, Tensor* dx,
                     Tensor* dweight, Tensor* dbias, bool accumulate_dx);

void embedding_forward(Context& context, const Tensor& ids, const Tensor& table, Tensor& out);
void embedding_backward(Context& context, const Tensor& ids, const Tensor& dout, Tensor& dtable);

void rmsnorm_forward(Context& context, const Tensor& x, const Tensor& weight, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                      Tensor& dx, Tensor* dweight);

void rope_forward(Context& context, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& y);
void rope_backward(Context& context, const Tensor& dy, const Tensor& positions, const Tensor& inv_freq, Tensor& dx);

void swiglu_forward(Context& context, const Tensor& gate, const Tensor& up, Tensor& out);
void swiglu_backward(Context& context, const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup);

void activation_forward(Context& context, ops::Activation kind, const Tensor& x, Tensor& y);
void activation_backward(Context& context, ops::Activation kind, const Tensor& dy, const Tensor& x, Tensor& dx);

void attention_forward(Context& context, const Tensor& q, const Tensor& k, const Tensor& v,
                       const ops::AttentionOptions& options, Tensor& out, Tensor& lse);
void attention_backward(Context& context, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const ops::AttentionOptions& options, Tensor& dq,
                        Tensor& dk, Tensor& dv);

void cross_entropy_forward(Context& context, const Tensor& logits, const Tensor& targets, Tensor& losses, Tensor& lse);
void cross_entropy_backward(Context& context, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& dloss, Tensor& dlogits);

void add(Context& context, const Tensor& a, const Tensor& b, Tensor& out);
void add_scaled(Context& context, float alpha, const Tensor& x, Tensor& y);
void scale(Context& context, Tensor& x, float alpha);
void fill(Context& context, Tensor& x, float value);
void cast(Context& context, const Tensor& src, Tensor& dst);

void dropout_forward(Context& context, const Tensor& x, float p, uint64_t seed, uint64_t offset, Tensor& y,
                     ops::DropoutLayout layout);
void dropout_backward(Context& context, const Tensor& dy, float p, uint64_t seed, uint64_t offset, Tensor& dx,
                      ops::DropoutLayout layout);

ops::GradientStats gradient_stats(Context& context, std::span<const Tensor> tensors);

void adamw_update(Context& context, Tensor& value, Tensor& master, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const Tensor& grad, const ops::AdamWUpdate& update);

}  // namespace llmft::cuda
