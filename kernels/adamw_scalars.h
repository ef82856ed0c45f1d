// The per-step scalars of the fused AdamW update (kernels/ops.h adamw_update),
// derived once on the host and shared by the CPU and CUDA backends so both
// feed their elementwise loops the very same f32 constants: with the same
// per-element formula and no FMA contraction, the two produce identical bits.
#pragma once

#include <cmath>

#include "kernels/ops.h"

namespace llmft::kernels {

struct AdamWScalars {
  float decay_factor;  // 1 - lr * weight_decay (exactly 1 when weight_decay is 0)
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  float step_size;              // lr / (1 - beta1^t)
  float eps;
  float grad_multiplier;
};

// As torch.optim.AdamW computes them: Python floats (double), used in f32 by
// the tensor ops (torch/optim/adamw.py, _single_tensor_adamw).
inline AdamWScalars adamw_scalars(const ops::AdamWUpdate& update) {
  const double t = static_cast<double>(update.step);
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(update.beta1), t);
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(update.beta2), t);
  AdamWScalars scalars;
  scalars.decay_factor =
      static_cast<float>(1.0 - static_cast<double>(update.lr) * static_cast<double>(update.weight_decay));
  scalars.one_minus_beta1 = static_cast<float>(1.0 - static_cast<double>(update.beta1));
  scalars.beta2 = update.beta2;
  scalars.one_minus_beta2 = static_cast<float>(1.0 - static_cast<double>(update.beta2));
  scalars.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  scalars.step_size = static_cast<float>(static_cast<double>(update.lr) / bias_correction1);
  scalars.eps = update.eps;
  scalars.grad_multiplier = update.grad_multiplier;
  return scalars;
}

}  // namespace llmft::kernels
