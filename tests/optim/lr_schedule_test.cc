// LR schedules against values computed by hand from transformers'
// optimization.py formulas (the golden AdamW cases also check the schedules
// against transformers itself, see adamw_test.cc).
#include "optim/lr_schedule.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace llmft::optim {
namespace {

LrSchedule make(ScheduleKind kind, int64_t warmup, int64_t total, double min_ratio = 0.0) {
  LrScheduleConfig config;
  config.kind = kind;
  config.base_lr = 2.0;
  config.warmup_steps = warmup;
  config.total_steps = total;
  config.min_lr_ratio = min_ratio;
  return LrSchedule(config);
}

TEST(LrSchedule, ConstantWithWarmup) {
  const LrSchedule schedule = make(ScheduleKind::kConstant, 4, 0);
  EXPECT_DOUBLE_EQ(schedule.factor(0), 0.0);
  EXPECT_DOUBLE_EQ(schedule.factor(1), 0.25);
  EXPECT_DOUBLE_EQ(schedule.factor(3), 0.75);
  EXPECT_DOUBLE_EQ(schedule.factor(4), 1.0);
  EXPECT_DOUBLE_EQ(schedule.factor(1000), 1.0);
  EXPECT_DOUBLE_EQ(schedule.lr(2), 1.0);  // base_lr 2 * 0.5
  EXPECT_DOUBLE_EQ(make(ScheduleKind::kConstant, 0, 0).factor(0), 1.0);
}

TEST(LrSchedule, LinearWithWarmup) {
  // warmup 2, total 6: 0, 1/2, then (6 - s) / 4.
  const LrSchedule schedule = make(ScheduleKind::kLinear, 2, 6);
  const double expected[] = {0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0};
  for (int step = 0; step < 8; ++step) EXPECT_DOUBLE_EQ(schedule.factor(step), expected[step]) << step;
  EXPECT_DOUBLE_EQ(schedule.lr(3), 1.5);
}

TEST(LrSchedule, CosineWithWarmup) {
  // warmup 1, total 5: progress p = (s - 1) / 4, factor 0.5 (1 + cos(pi p)).
  const LrSchedule schedule = make(ScheduleKind::kCosine, 1, 5);
  EXPECT_DOUBLE_EQ(schedule.factor(0), 0.0);
  EXPECT_DOUBLE_EQ(schedule.factor(1), 1.0);
  EXPECT_NEAR(schedule.factor(2), 0.85355339059327373, 1e-15);  // (1 + sqrt(2)/2) / 2
  EXPECT_NEAR(schedule.factor(3), 0.5, 1e-15);
  EXPECT_NEAR(schedule.factor(4), 0.14644660940672624, 1e-15);  // (1 - sqrt(2)/2) / 2
  EXPECT_NEAR(schedule.factor(5), 0.0, 1e-15);
}

TEST(LrSchedule, CosineWithMinRatio) {
  // No warmup, total 4, floor 0.1: 0.9 * 0.5 (1 + cos(pi s / 4)) + 0.1.
  const LrSchedule schedule = make(ScheduleKind::kCosine, 0, 4, 0.1);
  EXPECT_DOUBLE_EQ(schedule.factor(0), 1.0);
  EXPECT_NEAR(schedule.factor(2), 0.55, 1e-15);
  EXPECT_NEAR(schedule.factor(4), 0.1, 1e-15);
}

TEST(LrSchedule, BadConfigIsBadInput) {
  std::string message = testing::bad_input_message([] { make(ScheduleKind::kLinear, 10, 10); });
  EXPECT_NE(message.find("schedule.total_steps: expected > warmup_steps (10), found 10"), std::string::npos)
      << message;
  message = testing::bad_input_message([] { make(ScheduleKind::kCosine, 0, 4, 1.5); });
  EXPECT_NE(message.find("schedule.min_lr_ratio: expected in [0, 1], found 1.5"), std::string::npos) << message;
  message = testing::bad_input_message([] { make(ScheduleKind::kConstant, -1, 0); });
  EXPECT_NE(message.find("schedule.warmup_steps: expected >= 0, found -1"), std::string::npos) << message;
  message = testing::bad_input_message([] { parse_schedule_kind("exponential", "run.pbtxt: schedule.kind"); });
  EXPECT_NE(message.find("run.pbtxt: schedule.kind: expected one of constant, linear, cosine; found 'exponential'"),
            std::string::npos)
      << message;
}

}  // namespace
}  // namespace llmft::optim
