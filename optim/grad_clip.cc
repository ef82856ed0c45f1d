#include "optim/grad_clip.h"

#include <cmath>
#include <limits>

#include "kernels/ops.h"

namespace llmft::optim {

ClipResult clip_grad_norm(Context& context, std::span<Tensor> grads, double max_norm) {
  const ops::GradientStats stats = ops::gradient_stats(context, std::span<const Tensor>(grads.data(), grads.size()));
  return clip_with_stats(context, grads, stats, max_norm);
}

ClipResult clip_with_stats(Context& context, std::span<Tensor> grads, const ops::GradientStats& stats,
                           double max_norm) {
  ClipResult result;
  result.all_finite = stats.all_finite;
  result.norm = stats.all_finite ? std::sqrt(stats.sum_of_squares) : std::numeric_limits<double>::infinity();
  if (!stats.all_finite || max_norm <= 0.0) return result;
  // torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1.
  const double coefficient = max_norm / (result.norm + 1e-6);
  if (coefficient < 1.0) {
    for (Tensor& grad : grads) ops::scale(context, grad, static_cast<float>(coefficient));
    result.clipped = true;
  }
  return result;
}

ClipResult clip_grad_norm(Context& context, const std::vector<Parameter*>& parameters, double max_norm) {
  std::vector<Tensor> grads;
  for (Parameter* parameter : parameters) {
    if (parameter->trainable && parameter->grad.defined()) grads.push_back(parameter->grad);
  }
  // The handles share storage with the parameters' gradients: scaling them scales those.
  return clip_grad_norm(context, std::span<Tensor>(grads), max_norm);
}

}  // namespace llmft::optim
