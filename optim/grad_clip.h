// Global gradient-norm clipping, as torch.nn.utils.clip_grad_norm_ (norm_type 2):
// total = sqrt(sum of squares over every gradient); when
// coef = max_norm / (total + 1e-6) is below 1, every gradient is multiplied by it.
#pragma once

#include <span>
#include <vector>

#include "core/context.h"
#include "core/tensor.h"
#include "kernels/ops.h"
#include "model/parameters.h"

namespace llmft::optim {

struct ClipResult {
  double norm = 0.0;       // the pre-clip global L2 norm (inf/NaN when any gradient is)
  bool all_finite = true;  // from ops::gradient_stats
  bool clipped = false;
};

// max_norm <= 0 only measures. Unlike torch, non-finite gradients are left
// untouched (torch would multiply them by 0 or NaN): a step with them is
// skipped anyway (LossScaler), and the caller can log the norm.
ClipResult clip_grad_norm(Context& context, std::span<Tensor> grads, double max_norm);
// With loss scaling, clip after un-scaling (torch: scaler.unscale_ before
// clip_grad_norm_), or pass max_norm * scale and read norm / scale: the two
// differ only by the 1e-6 guard. AdamW::step's grad_multiplier then un-scales.
// The gradients of the trainable parameters that have one.
ClipResult clip_grad_norm(Context& context, const std::vector<Parameter*>& parameters, double max_norm);
// The clipping step alone, from statistics the caller gathered over every
// gradient of the model (sharded over tensor-parallel ranks, or optimizer
// shards: summed over the group, replicated tensors counted once): scales
// `grads` (this rank's) by the coefficient of the global norm.
ClipResult clip_with_stats(Context& context, std::span<Tensor> grads, const ops::GradientStats& global,
                           double max_norm);

}  // namespace llmft::optim
