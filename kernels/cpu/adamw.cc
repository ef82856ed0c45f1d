// AdamW update (kernels/ops.h adamw_update), the readable reference: one fused
// pass per parameter that reads each element of grad, master and both moments
// once and writes master, the moments and the compute-dtype value once.
// Templated on the storage types so the loop has no per-element dtype switch
// and vectorises. The build is ISO C++ (no -ffp-contract=fast), so every
// multiply and add below rounds on its own, as the CUDA twin does explicitly.
#include <cmath>

#include "kernels/adamw_scalars.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

struct AdamWArrays {
  int64_t n;
  float* master;
  float* exp_avg;
  float* exp_avg_sq;
};

// kWriteValue false: the value is the master itself (f32, shared storage).
template <typename GradT, typename ValueT, bool kWriteValue>
void fused_adamw(const GradT* grad, ValueT* value, const AdamWArrays& arrays, const kernels::AdamWScalars& s) {
  float* master = arrays.master;
  float* m = arrays.exp_avg;
  float* v = arrays.exp_avg_sq;
  const int64_t n = arrays.n;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float g = static_cast<float>(grad[i]) * s.grad_multiplier;
    // torch: param.mul_(1 - lr * weight_decay) before the Adam step.
    float p = master[i] * s.decay_factor;
    // torch's exp_avg.lerp_(grad, 1 - beta1); lerp with weight < 0.5 is self + weight * (end - self).
    const float m_new = m[i] + s.one_minus_beta1 * (g - m[i]);
    const float v_new = v[i] * s.beta2 + s.one_minus_beta2 * (g * g);
    // denom = sqrt(v) / sqrt(1 - beta2^t) + eps: eps after the square root of the corrected moment.
    const float denom = std::sqrt(v_new) / s.bias_correction2_sqrt + s.eps;
    p = p - s.step_size * (m_new / denom);
    m[i] = m_new;
    v[i] = v_new;
    master[i] = p;
    if constexpr (kWriteValue) value[i] = ValueT(p);  // round-to-nearest-even (core/half.h)
  }
}

template <typename GradT>
void dispatch_on_value(const GradT* grad, Tensor& value, bool value_is_master, const AdamWArrays& arrays,
                       const kernels::AdamWScalars& scalars) {
  if (value_is_master) {
    fused_adamw<GradT, float, false>(grad, nullptr, arrays, scalars);
    return;
  }
  switch (value.dtype()) {
    case DType::kF32: fused_adamw<GradT, float, true>(grad, value.data<float>(), arrays, scalars); break;
    case DType::kBF16: fused_adamw<GradT, bf16, true>(grad, value.data<bf16>(), arrays, scalars); break;
    default: fused_adamw<GradT, f16, true>(grad, value.data<f16>(), arrays, scalars); break;
  }
}

}  // namespace

void adamw_update(Context& context, Tensor& value, Tensor& master, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const Tensor& grad, const ops::AdamWUpdate& update) {
  constexpr std::string_view op = "adamw_update";
  require_defined_cpu(op, "value", value);
  require_defined_cpu(op, "master", master);
  require_defined_cpu(op, "exp_avg", exp_avg);
  require_defined_cpu(op, "exp_avg_sq", exp_avg_sq);
  require_defined_cpu(op, "grad", grad);
  kernels::require_adamw_update_args(op, value, master, exp_avg, exp_avg_sq, grad, update.step, update.beta1,
                                     update.beta2);
  if (value.numel() == 0) return;
  const kernels::AdamWScalars scalars = kernels::adamw_scalars(update);
  const AdamWArrays arrays{master.numel(), master.data<float>(), exp_avg.data<float>(), exp_avg_sq.data<float>()};
  const bool value_is_master = value.raw_data() == master.raw_data();
  switch (grad.dtype()) {
    case DType::kF32: dispatch_on_value(grad.data<float>(), value, value_is_master, arrays, scalars); break;
    case DType::kBF16: dispatch_on_value(grad.data<bf16>(), value, value_is_master, arrays, scalars); break;
    default: dispatch_on_value(grad.data<f16>(), value, value_is_master, arrays, scalars); break;
  }
}

}  // namespace llmft::cpu
