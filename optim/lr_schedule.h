// Learning-rate schedules, the formulas of Hugging Face transformers'
// optimization.py (get_constant_schedule_with_warmup,
// get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup and
// get_cosine_with_min_lr_schedule_with_warmup's min_lr_rate).
//
// `step` is the number of optimizer steps already taken (0 for the first
// update), as torch's LambdaLR sees it: with warmup > 0 the first update runs
// at lr 0, exactly like a transformers run.
#pragma once

#include <cstdint>
#include <string>

namespace llmft::optim {

enum class ScheduleKind { kConstant, kLinear, kCosine };

struct LrScheduleConfig {
  ScheduleKind kind = ScheduleKind::kConstant;
  double base_lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;      // linear/cosine: the step at which decay ends
  double num_cycles = 0.5;      // cosine: 0.5 = one half-cosine from 1 to min ratio
  double min_lr_ratio = 0.0;    // cosine: floor as a fraction of base_lr
};

// Parses "constant" / "linear" / "cosine"; kBadInput naming `field` otherwise.
ScheduleKind parse_schedule_kind(const std::string& text, const std::string& field);

class LrSchedule {
 public:
  // kBadInput for negative steps, total_steps <= warmup_steps on a decaying
  // schedule, or min_lr_ratio outside [0, 1].
  explicit LrSchedule(LrScheduleConfig config);
  // The multiplier of base_lr at `step` (LambdaLR's lr_lambda).
  double factor(int64_t step) const;
  double lr(int64_t step) const { return config_.base_lr * factor(step); }
  const LrScheduleConfig& config() const { return config_; }

 private:
  LrScheduleConfig config_;
};

}  // namespace llmft::optim
