// Argument checks shared by every backend of kernels/ops.h, so the CPU and
// CUDA backends reject the same calls with the same words: each names the op
// and the argument and says what was expected. Device placement is checked by
// each backend itself (kernels/cpu/cpu_util.h, kernels/cuda/cuda_util.h).
//
// Wrong shapes or dtypes at an op boundary are programming errors inside llmft
// (kRuntime); values that come from the user's data (token ids, targets) are
// reported by the ops themselves as kBadInput.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "core/tensor.h"

namespace llmft::kernels {

inline void require_float(std::string_view op, std::string_view arg, const Tensor& tensor) {
  if (!is_floating(tensor.dtype())) {
    throw_runtime(op, ": ", arg, " must be f32, bf16 or f16, found ", tensor.to_string());
  }
}

inline void require_dtype(std::string_view op, std::string_view arg, const Tensor& tensor, DType expected) {
  if (tensor.dtype() != expected) {
    throw_runtime(op, ": ", arg, " must be ", dtype_name(expected), ", found ", tensor.to_string());
  }
}

inline void require_shape(std::string_view op, std::string_view arg, const Tensor& tensor, const Shape& expected) {
  if (tensor.shape() != expected) {
    throw_runtime(op, ": ", arg, " has shape ", shape_to_string(tensor.shape()), ", expected ",
                  shape_to_string(expected));
  }
}

// Same number of elements (elementwise ops accept any view shape).
inline void require_numel(std::string_view op, std::string_view arg, const Tensor& tensor, int64_t expected) {
  if (tensor.numel() != expected) {
    throw_runtime(op, ": ", arg, " has ", tensor.numel(), " elements (shape ", shape_to_string(tensor.shape()),
                  "), expected ", expected);
  }
}

inline void require_last_dim(std::string_view op, std::string_view arg, const Tensor& tensor, int64_t expected) {
  if (tensor.dim() == 0 || tensor.size(-1) != expected) {
    throw_runtime(op, ": ", arg, " has shape ", shape_to_string(tensor.shape()), ", expected last dimension ",
                  expected);
  }
}

// adamw_update (kernels/ops.h): dtypes, element counts and hyperparameters.
// Call after the backend's device checks.
inline void require_adamw_update_args(std::string_view op, const Tensor& value, const Tensor& master,
                                      const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& grad,
                                      int64_t step, float beta1, float beta2) {
  require_float(op, "value", value);
  require_float(op, "grad", grad);
  require_dtype(op, "master", master, DType::kF32);
  require_dtype(op, "exp_avg", exp_avg, DType::kF32);
  require_dtype(op, "exp_avg_sq", exp_avg_sq, DType::kF32);
  require_numel(op, "master", master, value.numel());
  require_numel(op, "exp_avg", exp_avg, value.numel());
  require_numel(op, "exp_avg_sq", exp_avg_sq, value.numel());
  require_numel(op, "grad", grad, value.numel());
  if (step < 1) throw_runtime(op, ": step must be >= 1 (the count after incrementing), found ", step);
  if (!(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f)) {
    throw_runtime(op, ": betas must lie in [0, 1), found (", beta1, ", ", beta2, ")");
  }
}

}  // namespace llmft::kernels
