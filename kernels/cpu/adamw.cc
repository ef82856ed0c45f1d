// AdamW update (kernels/ops.h adamw_update), the readable reference: one fused
// pass per parameter that reads each element of grad, master and both moments
// once and writes master, the moments and the compute-dtype value once.
// Templated on the storage types so the loop has no per-element dtype switch
// and vectorises. The build is ISO C++ (no -ffp-contract=fast), so every
// multiply and add below rounds on its own, as the CUDA twin does explicitly.
//
// GCC does not vectorise the plain loop: with math errno on (the ISO default)
// std::sqrt is a branch to the libm call for negative inputs, and the
// vectoriser rejects control flow ("not vectorized: control flow in loop",
// -fopt-info-vec-missed). On x86 the loop is therefore written with SSE
// intrinsics, four elements at a time. Each SSE op (mul, add, sub, div, sqrt)
// is IEEE-correctly rounded like its scalar twin and the operations keep the
// scalar order, so the result is bit-identical to the scalar loop, which
// stays as the tail and as the path on other architectures.
#include <cmath>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

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
#if defined(__SSE2__)
  constexpr int64_t kLanes = 4;
  const int64_t vector_end = n / kLanes * kLanes;
  const __m128 grad_multiplier = _mm_set1_ps(s.grad_multiplier);
  const __m128 decay_factor = _mm_set1_ps(s.decay_factor);
  const __m128 one_minus_beta1 = _mm_set1_ps(s.one_minus_beta1);
  const __m128 beta2 = _mm_set1_ps(s.beta2);
  const __m128 one_minus_beta2 = _mm_set1_ps(s.one_minus_beta2);
  const __m128 bias_correction2_sqrt = _mm_set1_ps(s.bias_correction2_sqrt);
  const __m128 step_size = _mm_set1_ps(s.step_size);
  const __m128 eps = _mm_set1_ps(s.eps);
#pragma omp parallel for schedule(static) if (vector_end > 32768)
  for (int64_t i = 0; i < vector_end; i += kLanes) {
    __m128 g_raw;
    if constexpr (std::is_same_v<GradT, float>) {
      g_raw = _mm_loadu_ps(grad + i);
    } else {
      alignas(16) float widened[kLanes];
      for (int64_t lane = 0; lane < kLanes; ++lane) widened[lane] = static_cast<float>(grad[i + lane]);
      g_raw = _mm_load_ps(widened);
    }
    // Same operations in the same order as the scalar loop below.
    const __m128 g = _mm_mul_ps(g_raw, grad_multiplier);
    const __m128 p = _mm_mul_ps(_mm_loadu_ps(master + i), decay_factor);
    const __m128 m_old = _mm_loadu_ps(m + i);
    const __m128 m_new = _mm_add_ps(m_old, _mm_mul_ps(one_minus_beta1, _mm_sub_ps(g, m_old)));
    const __m128 v_new = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), beta2), _mm_mul_ps(one_minus_beta2, _mm_mul_ps(g, g)));
    const __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(v_new), bias_correction2_sqrt), eps);
    const __m128 p_new = _mm_sub_ps(p, _mm_mul_ps(step_size, _mm_div_ps(m_new, denom)));
    _mm_storeu_ps(m + i, m_new);
    _mm_storeu_ps(v + i, v_new);
    _mm_storeu_ps(master + i, p_new);
    if constexpr (kWriteValue) {
      for (int64_t lane = 0; lane < kLanes; ++lane) value[i + lane] = ValueT(master[i + lane]);
    }
  }
#else
  const int64_t vector_end = 0;
#endif
#pragma omp parallel for schedule(static) if (n - vector_end > 32768)
  for (int64_t i = vector_end; i < n; ++i) {
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
