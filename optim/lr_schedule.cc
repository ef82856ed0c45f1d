#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace llmft::optim {

ScheduleKind parse_schedule_kind(const std::string& text, const std::string& field) {
  if (text == "constant") return ScheduleKind::kConstant;
  if (text == "linear") return ScheduleKind::kLinear;
  if (text == "cosine") return ScheduleKind::kCosine;
  throw_bad_input(field, ": expected one of constant, linear, cosine; found '", text, "'");
}

LrSchedule::LrSchedule(LrScheduleConfig config) : config_(config) {
  if (config_.warmup_steps < 0) throw_bad_input("schedule.warmup_steps: expected >= 0, found ", config_.warmup_steps);
  if (config_.kind != ScheduleKind::kConstant && config_.total_steps <= config_.warmup_steps) {
    throw_bad_input("schedule.total_steps: expected > warmup_steps (", config_.warmup_steps, "), found ",
                    config_.total_steps);
  }
  if (!(config_.min_lr_ratio >= 0.0 && config_.min_lr_ratio <= 1.0)) {
    throw_bad_input("schedule.min_lr_ratio: expected in [0, 1], found ", config_.min_lr_ratio);
  }
  if (!(config_.base_lr >= 0.0) || !std::isfinite(config_.base_lr)) {
    throw_bad_input("optimizer.lr: expected a finite value >= 0, found ", config_.base_lr);
  }
}

double LrSchedule::factor(int64_t step) const {
  const double warmup = static_cast<double>(config_.warmup_steps);
  const double s = static_cast<double>(step);
  // transformers: float(current_step) / float(max(1, num_warmup_steps)).
  if (step < config_.warmup_steps) return s / std::max(1.0, warmup);
  const double decay_steps = std::max(1.0, static_cast<double>(config_.total_steps) - warmup);
  switch (config_.kind) {
    case ScheduleKind::kConstant: return 1.0;
    case ScheduleKind::kLinear:
      return std::max(0.0, (static_cast<double>(config_.total_steps) - s) / decay_steps);
    case ScheduleKind::kCosine: {
      const double progress = (s - warmup) / decay_steps;
      const double cosine = std::max(
          0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * config_.num_cycles * 2.0 * progress)));
      // get_cosine_with_min_lr_schedule_with_warmup: factor * (1 - min) + min.
      return cosine * (1.0 - config_.min_lr_ratio) + config_.min_lr_ratio;
    }
  }
  return 1.0;
}

}  // namespace llmft::optim
