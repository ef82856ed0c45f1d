#include "optim/loss_scaler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/ops.h"

namespace llmft::optim {

LossScaler::LossScaler(LossScalerConfig config) : config_(config) {
  if (!(config_.init_scale > 0.0f) || !std::isfinite(config_.init_scale)) {
    throw_bad_input("loss_scaler.init_scale: expected a finite value > 0, found ", config_.init_scale);
  }
  if (!(config_.growth_factor > 1.0f)) {
    throw_bad_input("loss_scaler.growth_factor: expected > 1, found ", config_.growth_factor);
  }
  if (!(config_.backoff_factor > 0.0f && config_.backoff_factor < 1.0f)) {
    throw_bad_input("loss_scaler.backoff_factor: expected in (0, 1), found ", config_.backoff_factor);
  }
  if (config_.growth_interval < 1) {
    throw_bad_input("loss_scaler.growth_interval: expected >= 1, found ", config_.growth_interval);
  }
  if (config_.hysteresis < 1) throw_bad_input("loss_scaler.hysteresis: expected >= 1, found ", config_.hysteresis);
  state_.scale = config_.init_scale;
  state_.growth_tracker = 0;
  state_.hysteresis_tracker = config_.hysteresis;
}

bool LossScaler::update(bool found_inf) {
  if (found_inf) {
    // torch: growth_tracker = 0; scale *= backoff. Megatron: back off only when
    // the hysteresis counter runs out.
    state_.growth_tracker = 0;
    state_.hysteresis_tracker = std::max<int64_t>(state_.hysteresis_tracker - 1, 0);
    if (state_.hysteresis_tracker <= 0) state_.scale = state_.scale * config_.backoff_factor;
    return false;
  }
  const int64_t successful = state_.growth_tracker + 1;
  if (successful == config_.growth_interval) {
    const float grown = state_.scale * config_.growth_factor;
    if (std::isfinite(grown)) state_.scale = grown;  // torch keeps the scale when growth would overflow
    state_.growth_tracker = 0;
    state_.hysteresis_tracker = config_.hysteresis;
  } else {
    state_.growth_tracker = successful;
  }
  return true;
}

bool LossScaler::check_and_update(Context& context, std::span<const Tensor> grads) {
  return update(!ops::gradient_stats(context, grads).all_finite);
}

void LossScaler::load_state(const LossScalerState& state, const std::string& source) {
  if (!(state.scale > 0.0f) || !std::isfinite(state.scale)) {
    throw_bad_input(source, ": loss_scaler.scale: expected a finite value > 0, found ", state.scale);
  }
  if (state.growth_tracker < 0 || state.growth_tracker >= config_.growth_interval) {
    throw_bad_input(source, ": loss_scaler.growth_tracker: expected in [0, ", config_.growth_interval,
                    "), found ", state.growth_tracker);
  }
  if (state.hysteresis_tracker < 0 || state.hysteresis_tracker > config_.hysteresis) {
    throw_bad_input(source, ": loss_scaler.hysteresis_tracker: expected in [0, ", config_.hysteresis, "], found ",
                    state.hysteresis_tracker);
  }
  state_ = state;
}

}  // namespace llmft::optim
