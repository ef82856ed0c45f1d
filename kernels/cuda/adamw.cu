// AdamW update (kernels/ops.h adamw_update) on the GPU: one grid-stride pass
// that fuses the gradient un-scaling (grad_multiplier), decoupled weight
// decay, both moment updates, the parameter step and the rounding of the fp32
// master into the compute-dtype value, so each element of the five tensors is
// read or written once per step (llm.c's llmc/adamw.cuh fuses the same way).
// The scalars come from kernels/adamw_scalars.h, shared with the CPU
// reference; every multiply and add is an explicit round-to-nearest
// intrinsic because nvcc would otherwise contract a*b+c into
// one FMA (one rounding) where the CPU rounds twice. With that, the GPU
// result has the CPU's bits (tested with tolerance 0 in tests/gpu/gpu_ops_test.cc).
// Next optimisation: 16-byte vector loads; and one multi-tensor launch for all
// parameters (LoRA has hundreds of small tensors; each launch costs a few us).
#include "kernels/adamw_scalars.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.cuh"

namespace llmft::cuda {
namespace {

constexpr int kThreads = 256;

// kWriteValue false: the value is the master itself (f32, shared storage).
template <typename GradT, typename ValueT, bool kWriteValue>
__global__ void adamw_kernel(const GradT* grad, ValueT* value, float* master, float* exp_avg, float* exp_avg_sq,
                             int64_t n, kernels::AdamWScalars s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = __fmul_rn(to_float(grad[i]), s.grad_multiplier);
    const float p = __fmul_rn(master[i], s.decay_factor);
    const float m = exp_avg[i];
    const float v = exp_avg_sq[i];
    // torch's exp_avg.lerp_(grad, 1 - beta1) = m + (1 - beta1) * (g - m).
    const float m_new = __fadd_rn(m, __fmul_rn(s.one_minus_beta1, __fadd_rn(g, -m)));
    const float v_new = __fadd_rn(__fmul_rn(v, s.beta2), __fmul_rn(s.one_minus_beta2, __fmul_rn(g, g)));
    // eps after the square root of the bias-corrected second moment, as torch.
    // Division and sqrtf are IEEE round-to-nearest without --use_fast_math (-prec-div/-prec-sqrt default on).
    const float denom = __fadd_rn(sqrtf(v_new) / s.bias_correction2_sqrt, s.eps);
    const float p_new = __fadd_rn(p, -__fmul_rn(s.step_size, m_new / denom));
    exp_avg[i] = m_new;
    exp_avg_sq[i] = v_new;
    master[i] = p_new;
    if constexpr (kWriteValue) value[i] = from_float<ValueT>(p_new);
  }
}

}  // namespace

void adamw_update(Context& context, Tensor& value, Tensor& master, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const Tensor& grad, const ops::AdamWUpdate& update) {
  constexpr std::string_view op = "adamw_update";
  require_on_context(op, "value", value, context);
  require_on_context(op, "master", master, context);
  require_on_context(op, "exp_avg", exp_avg, context);
  require_on_context(op, "exp_avg_sq", exp_avg_sq, context);
  require_on_context(op, "grad", grad, context);
  kernels::require_adamw_update_args(op, value, master, exp_avg, exp_avg_sq, grad, update.step, update.beta1,
                                     update.beta2);
  const int64_t n = value.numel();
  if (n == 0) return;
  const kernels::AdamWScalars scalars = kernels::adamw_scalars(update);
  const unsigned blocks = grid_for(context, n, kThreads);
  cudaStream_t stream = stream_of(context);
  float* master_data = master.data<float>();
  float* exp_avg_data = exp_avg.data<float>();
  float* exp_avg_sq_data = exp_avg_sq.data<float>();
  const bool value_is_master = value.raw_data() == master.raw_data();
  dispatch_float(grad.dtype(), op, [&](auto grad_tag) {
    using G = typename decltype(grad_tag)::type;
    const G* grad_data = static_cast<const G*>(grad.raw_data());
    if (value_is_master) {
      adamw_kernel<G, float, false><<<blocks, kThreads, 0, stream>>>(grad_data, nullptr, master_data, exp_avg_data,
                                                                      exp_avg_sq_data, n, scalars);
      LLMFT_CUDA_CHECK_LAUNCH();
      return;
    }
    dispatch_float(value.dtype(), op, [&](auto value_tag) {
      using V = typename decltype(value_tag)::type;
      adamw_kernel<G, V, true><<<blocks, kThreads, 0, stream>>>(grad_data, static_cast<V*>(value.raw_data()),
                                                                 master_data, exp_avg_data, exp_avg_sq_data, n,
                                                                 scalars);
      LLMFT_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace llmft::cuda
