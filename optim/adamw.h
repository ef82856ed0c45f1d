// AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"),
// matching torch.optim.AdamW's `_single_tensor_adamw` (torch/optim/adamw.py):
//   p   *= 1 - lr * wd                    (decoupled decay, before the Adam step)
//   m    = m + (1 - b1) * (g - m)         (torch: exp_avg.lerp_(grad, 1 - b1))
//   v    = b2 * v + (1 - b2) * g * g
//   p   -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// eps is added after the square root of the bias-corrected second moment.
//
// Precision (DESIGN.md "Precision"): every trainable parameter has an fp32
// master and fp32 moments; the model's copy (value, in its compute dtype f32,
// bf16 or f16) is rewritten from the master after each step with
// round-to-nearest-even (core/half.h). When the value is already f32 it IS the
// master (shared storage): a second fp32 copy would add memory, not precision.
// Frozen parameters (Parameter::trainable == false) get no state at all.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/tensor.h"
#include "model/parameters.h"

namespace llmft::optim {

struct AdamWConfig {
  // torch.optim.AdamW defaults.
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 1e-2f;
  // Parameters for which this returns true get no weight decay (commonly norms
  // and biases, see is_norm_or_bias). Empty: every parameter decays.
  std::function<bool(const std::string& name)> exclude_from_decay;
};

// The usual exclusion: RMSNorm/LayerNorm weights ("...norm.weight",
// "model.norm.weight") and biases ("....bias").
bool is_norm_or_bias(const std::string& name);

// Optimizer state of one trainable parameter; what a checkpoint saves.
struct AdamWParameterState {
  Parameter* parameter = nullptr;  // owned by the registry
  bool decay = true;
  Tensor master;      // f32, the parameter's shape (shares the value's storage when that is f32)
  Tensor exp_avg;     // f32 first moment m
  Tensor exp_avg_sq;  // f32 second moment v
};

class AdamW {
 public:
  // `parameters` usually ParameterRegistry::all(); frozen ones are skipped.
  // Masters start as the values converted to f32; moments start at zero.
  // Values and gradients live on the context's device, and so does the state:
  // the update is ops::adamw_update (kernels/cpu/adamw.cc, kernels/cuda/adamw.cu).
  AdamW(Context& context, const std::vector<Parameter*>& parameters, AdamWConfig config);

  // One update of every trainable parameter with learning rate `lr`, reading
  // grad * grad_multiplier (e.g. 1/loss_scale, fusing the un-scaling into the
  // update). Increments step_count() first, as torch does (t starts at 1).
  // Throws kBadInput when a trainable parameter has no gradient or the
  // gradient's shape differs from the value's.
  void step(float lr, float grad_multiplier = 1.0f);

  const AdamWConfig& config() const { return config_; }
  int64_t step_count() const { return step_count_; }
  // For checkpoint restore together with the state tensors below.
  void set_step_count(int64_t step_count);

  // One entry per trainable parameter, in registry order. The tensors may be
  // read (checkpoint save) or overwritten in place (restore); after writing a
  // master call refresh_values() so the model's copies follow.
  std::vector<AdamWParameterState>& states() { return states_; }
  const std::vector<AdamWParameterState>& states() const { return states_; }
  void refresh_values();

  // Bytes of optimizer state this object allocated (masters that alias the
  // value are not counted).
  size_t state_bytes() const;

 private:
  Context& context_;
  AdamWConfig config_;
  int64_t step_count_ = 0;
  std::vector<AdamWParameterState> states_;
};

}  // namespace llmft::optim
