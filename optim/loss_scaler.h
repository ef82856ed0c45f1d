// Dynamic loss scaling (Micikevicius et al. 2018, "Mixed Precision Training"),
// matching torch.amp.GradScaler (torch/amp/grad_scaler.py, whose update is
// torch._amp_update_scale_): on an inf/NaN gradient the step is skipped, the
// scale is multiplied by backoff_factor and the growth tracker resets; after
// growth_interval consecutive finite steps the scale is multiplied by
// growth_factor (only if the result is finite) and the tracker resets.
//
// Optional hysteresis (Megatron-LM DynamicGradScaler, megatron/core/optimizer/
// grad_scaler.py): the scale backs off only after `hysteresis` overflows since
// the last growth (the counter is refilled when the scale grows). hysteresis 1
// is exactly torch's behaviour.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "core/context.h"
#include "core/tensor.h"

namespace llmft::optim {

struct LossScalerConfig {
  float init_scale = 65536.0f;  // 2^16
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int64_t growth_interval = 2000;
  int64_t hysteresis = 1;
};

// Everything needed to continue exactly after a restore.
struct LossScalerState {
  float scale = 65536.0f;
  int64_t growth_tracker = 0;      // consecutive finite steps since the last change
  int64_t hysteresis_tracker = 1;  // overflows still tolerated before backing off
};

class LossScaler {
 public:
  // kBadInput for growth_factor <= 1, backoff_factor outside (0, 1),
  // growth_interval < 1, hysteresis < 1 or a non-positive/non-finite init_scale.
  explicit LossScaler(LossScalerConfig config);

  float scale() const { return state_.scale; }
  float inv_scale() const { return 1.0f / state_.scale; }

  // Records one step's outcome and updates the scale. Returns true when the
  // optimizer step should be taken (no overflow).
  bool update(bool found_inf);
  // Checks the (still scaled) gradients with ops::gradient_stats, then update().
  bool check_and_update(Context& context, std::span<const Tensor> grads);

  const LossScalerConfig& config() const { return config_; }
  const LossScalerState& state() const { return state_; }
  // kBadInput when the state is impossible (scale not finite and positive,
  // negative trackers), naming `source` (e.g. the checkpoint file).
  void load_state(const LossScalerState& state, const std::string& source);

 private:
  LossScalerConfig config_;
  LossScalerState state_;
};

}  // namespace llmft::optim
