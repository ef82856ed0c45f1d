// The trainer on a CUDA context, where the model, the gradients and AdamW's
// masters and moments all stay in GPU memory (trainer/trainer.cc): the run
// follows the CPU trainer's losses and weights, and a checkpoint written from
// device tensors restores them bit for bit. The GPU is not bit-identical to
// the CPU (summation order, atomics in the attention backward's dQ), so the
// comparison with the CPU is within a tolerance; the restore is exact.
// Without the CUDA backend or a GPU every test skips, saying why.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/trainer/trainer_fixture.h"
#include "trainer/trainer.h"

namespace llmft::trainer {
namespace {

namespace fs = std::filesystem;

class TrainerGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_CUDA();
    root_ = fs::temp_directory_path() /
            str_cat("llmft-trainer-gpu-", ::getpid(), "-", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "data");
    trainer_test::write_tiny_model(root_ / "model");
    const std::vector<data::TokenExample> documents = trainer_test::random_documents(48, 11);
    trainer_test::write_shard(root_ / "data" / "train.tfrecord", documents);
    cpu_ = Context::cpu();
    gpu_ = Context::cuda(0);
  }
  void TearDown() override {
    if (!root_.empty()) fs::remove_all(root_);
  }

  // LoRA without dropout (dropout masks are the same on both backends, but
  // keeping it out makes a mismatch easier to read), accumulation 2.
  config::TrainOptions options(const std::string& run, bool lora) const {
    config::TrainOptions options;
    options.source = "test";
    options.hf_dir = (root_ / "model").string();
    options.peft = lora ? "lora" : "none";
    options.lora_r = 4;
    options.lora_alpha = 8.0f;
    options.lora_dropout = 0.0f;
    options.lora_target_modules = {"all-linear"};
    options.train_files = {(root_ / "data" / "train.tfrecord").string()};
    options.seq_len = 16;
    options.batch_size = 2;
    options.grad_accumulation_steps = 2;
    options.shuffle_buffer = 8;
    options.seed = 5;
    options.lr = lora ? 1e-2 : 1e-3;
    options.max_grad_norm = 1.0;
    options.schedule_kind = "cosine";
    options.warmup_steps = 2;
    options.total_steps = 8;
    options.checkpoint_dir = (root_ / run).string();
    options.log_every_n_steps = 0;
    return options;
  }
  static TrainerHooks hooks(std::vector<double>* losses) {
    TrainerHooks result;
    result.progress = nullptr;
    result.on_step = [losses](const StepRecord& record) { losses->push_back(record.loss); };
    return result;
  }

  fs::path root_;
  std::unique_ptr<Context> cpu_, gpu_;
};

TEST_F(TrainerGpuTest, RunsFollowTheCpuRunsAndKeepTheOptimizerStateOnTheGpu) {
  for (bool lora : {true, false}) {
    SCOPED_TRACE(lora ? "LoRA" : "full fine-tuning");
    std::vector<double> cpu_losses, gpu_losses;
    Trainer on_cpu(*cpu_, options(lora ? "cpu-lora" : "cpu-full", lora), hooks(&cpu_losses));
    Trainer on_gpu(*gpu_, options(lora ? "gpu-lora" : "gpu-full", lora), hooks(&gpu_losses));
    for (const optim::AdamWParameterState& state : on_gpu.optimizer().states()) {
      ASSERT_TRUE(state.exp_avg.device().is_cuda()) << state.parameter->name;
      ASSERT_TRUE(state.parameter->value.device().is_cuda()) << state.parameter->name;
    }
    on_cpu.train();
    on_gpu.train();
    ASSERT_EQ(gpu_losses.size(), cpu_losses.size());
    // f32 everywhere: the backends differ by fp32 summation order, compounded
    // over 8 steps, and Adam's normalised step amplifies differences in tiny
    // gradients; the bounds are loose for that, tight enough to catch a wrong update.
    for (size_t i = 0; i < cpu_losses.size(); ++i)
      EXPECT_NEAR(gpu_losses[i], cpu_losses[i], 1e-3 * std::fabs(cpu_losses[i])) << "step " << i + 1;
    EXPECT_NE(cpu_losses.front(), cpu_losses.back());
    const std::vector<NamedTensor> want = on_cpu.model().trainable_tensors();
    const std::vector<NamedTensor> got = on_gpu.model().trainable_tensors();
    ASSERT_EQ(want.size(), got.size());
    for (size_t t = 0; t < want.size(); ++t) {
      const std::vector<float> a = want[t].tensor.to_floats(), b = got[t].tensor.to_floats();
      double max_difference = 0.0, magnitude = 0.0;
      for (size_t i = 0; i < a.size(); ++i) {
        max_difference = std::max(max_difference, static_cast<double>(std::fabs(a[i] - b[i])));
        magnitude = std::max(magnitude, static_cast<double>(std::fabs(a[i])));
      }
      EXPECT_LE(max_difference, 1e-2 * std::max(magnitude, 1e-6)) << want[t].name;
    }
  }
}

TEST_F(TrainerGpuTest, CheckpointOfDeviceStateRestoresItBitForBit) {
  std::vector<double> losses;
  Trainer first(*gpu_, options("run", true), hooks(&losses));
  for (int i = 0; i < 3; ++i) first.train_step();
  first.save_checkpoint();
  config::TrainOptions resumed_options = options("run", true);
  resumed_options.resume = "latest";
  Trainer resumed(*gpu_, resumed_options, hooks(&losses));
  ASSERT_TRUE(resumed.resumed_from().has_value());
  EXPECT_EQ(resumed.optimizer().step_count(), first.optimizer().step_count());
  const auto& want = first.optimizer().states();
  const auto& got = resumed.optimizer().states();
  ASSERT_EQ(want.size(), got.size());
  auto same_bits = [](const Tensor& a, const Tensor& b) {
    const std::vector<float> x = a.to_floats(), y = b.to_floats();
    for (size_t i = 0; i < x.size(); ++i)
      if (float_bits(x[i]) != float_bits(y[i])) return false;
    return x.size() == y.size();
  };
  for (size_t i = 0; i < want.size(); ++i) {
    const std::string& name = want[i].parameter->name;
    EXPECT_TRUE(got[i].master.device().is_cuda()) << name;
    EXPECT_TRUE(same_bits(want[i].parameter->value, got[i].parameter->value)) << name << " value";
    EXPECT_TRUE(same_bits(want[i].master, got[i].master)) << name << " master";
    EXPECT_TRUE(same_bits(want[i].exp_avg, got[i].exp_avg)) << name << " exp_avg";
    EXPECT_TRUE(same_bits(want[i].exp_avg_sq, got[i].exp_avg_sq)) << name << " exp_avg_sq";
  }
  // And the resumed run goes on training.
  resumed.train();
  EXPECT_EQ(resumed.step(), 8);
}

}  // namespace
}  // namespace llmft::trainer
