// The training loop: loss normalisation over gradient accumulation, resume
// bit-identity (LoRA with dropout, full fine-tuning, f16 with loss scaling),
// SIGTERM, fingerprint refusal, evaluation, and the exports.
#include "trainer/trainer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "../test_util.h"
#include "kernels/cpu/packed_gemm.h"
#include "parallel/in_process_communicator.h"
#include "parallel/parallel_context.h"
#include "peft/adapter_io.h"
#include "trainer/export.h"
#include "trainer/stop_signal.h"
#include "trainer_fixture.h"

namespace llmft::trainer {
namespace {

namespace fs = std::filesystem;
using trainer_test::random_documents;
using trainer_test::write_shard;
using trainer_test::write_tiny_model;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info->name();  // "Case/Param" for parameterised tests: one directory level
    std::replace(name.begin(), name.end(), '/', '_');
    root_ = fs::temp_directory_path() / str_cat("llmft-trainer-", ::getpid(), "-", name);
    fs::remove_all(root_);
    fs::create_directories(root_ / "data");
    write_tiny_model(root_ / "model");
    documents_ = random_documents(48, 11);
    write_shard(root_ / "data" / "train-00000-of-00002.tfrecord", {documents_.begin(), documents_.begin() + 24});
    write_shard(root_ / "data" / "train-00001-of-00002.tfrecord", {documents_.begin() + 24, documents_.end()});
    validation_ = random_documents(9, 12);
    write_shard(root_ / "data" / "valid.tfrecord", validation_);
    context_ = Context::cpu();
  }
  void TearDown() override { fs::remove_all(root_); }

  // LoRA with dropout, packed rows, shuffled shards and records, accumulation 2.
  config::TrainOptions lora_options(const std::string& run) const {
    config::TrainOptions options;
    options.source = "test";
    options.hf_dir = (root_ / "model").string();
    options.peft = "lora";
    options.lora_r = 4;
    options.lora_alpha = 8.0f;
    options.lora_dropout = 0.1f;
    options.lora_target_modules = {"all-linear"};
    options.train_files = {(root_ / "data" / "train-*-of-00002.tfrecord").string()};
    options.validation_files = {(root_ / "data" / "valid.tfrecord").string()};
    options.seq_len = 16;
    options.batch_size = 2;
    options.grad_accumulation_steps = 2;
    options.shuffle_buffer = 8;
    options.seed = 5;
    options.lr = 1e-2;
    options.schedule_kind = "cosine";
    options.warmup_steps = 2;
    options.total_steps = 8;
    options.checkpoint_dir = (root_ / run).string();
    options.log_every_n_steps = 0;
    return options;
  }
  config::TrainOptions full_options(const std::string& run) const {
    config::TrainOptions options = lora_options(run);
    options.peft = "none";
    options.lr = 1e-3;
    return options;
  }
  TrainerHooks quiet_hooks(std::vector<double>* losses = nullptr) const {
    TrainerHooks hooks;
    hooks.progress = nullptr;
    if (losses) hooks.on_step = [losses](const StepRecord& record) { losses->push_back(record.loss); };
    return hooks;
  }

  fs::path root_;
  std::vector<data::TokenExample> documents_;
  std::vector<data::TokenExample> validation_;
  std::unique_ptr<Context> context_;
};

std::vector<std::vector<uint8_t>> trainable_bytes(Trainer& trainer) {
  std::vector<std::vector<uint8_t>> result;
  for (const NamedTensor& tensor : trainer.model().trainable_tensors()) {
    const auto* begin = static_cast<const uint8_t*>(tensor.tensor.raw_data());
    result.emplace_back(begin, begin + tensor.tensor.nbytes());
  }
  return result;
}

// Rows of `documents` as the loader's padded mode lays them out, built here
// independently from data/loader.h's documented label rule: the target at t
// is token t+1 when that token is trained (no loss_mask, or mask 1), else -100.
Batch padded_rows(const std::vector<data::TokenExample>& documents, size_t first, size_t count, int64_t seq_len,
                  int32_t pad_id) {
  std::vector<int32_t> ids(count * static_cast<size_t>(seq_len), pad_id), targets(ids.size(), -100);
  for (size_t row = 0; row < count; ++row) {
    const data::TokenExample& document = documents[first + row];
    for (size_t t = 0; t < document.input_ids.size(); ++t) {
      ids[row * seq_len + t] = static_cast<int32_t>(document.input_ids[t]);
      if (t + 1 < document.input_ids.size() && (document.loss_mask.empty() || document.loss_mask[t + 1] == 1))
        targets[row * seq_len + t] = static_cast<int32_t>(document.input_ids[t + 1]);
    }
  }
  Batch batch;
  batch.input_ids = Tensor::from_ints({static_cast<int64_t>(count), seq_len}, ids);
  batch.targets = Tensor::from_ints({static_cast<int64_t>(count), seq_len}, targets);
  return batch;
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

// ---- Loss normalisation (issue 9, item 6) ---------------------------------------

TEST_F(TrainerTest, AccumulationFourTimesBatchTwoGivesTheGradientAndUpdateOfBatchEight) {
  // One shard, file order, one document per row: both runs see rows 0..7 in
  // step 1 and 8..15 in step 2. Rows have different numbers of trained tokens
  // (lengths 3..22, every other one trained on its second half only).
  write_shard(root_ / "data" / "ordered.tfrecord", documents_);
  auto options_for = [&](int64_t batch_size, int64_t accumulation) {
    config::TrainOptions options = full_options(str_cat("run-", batch_size));
    options.train_files = {(root_ / "data" / "ordered.tfrecord").string()};
    options.packed = false;
    options.seq_len = 24;
    options.shuffle_buffer = 0;
    options.batch_size = batch_size;
    options.grad_accumulation_steps = accumulation;
    options.max_grad_norm = 0.0;  // compare raw gradients
    options.schedule_kind = "constant";
    options.warmup_steps = 0;
    return options;
  };
  Trainer batch_eight(*context_, options_for(8, 1), quiet_hooks());
  Trainer accumulated(*context_, options_for(2, 4), quiet_hooks());
  const StepRecord eight = batch_eight.train_step();
  const StepRecord four_by_two = accumulated.train_step();

  // Independent reference: the model's own mean over the 8 rows' trained tokens.
  auto reference = LlamaModel::load(*context_, root_ / "model");
  reference->parameters().set_trainable([](const std::string&) { return true; });
  reference->parameters().allocate_grads(*context_, DType::kF32);
  const Batch rows = padded_rows(documents_, 0, 8, 24, /*pad_id=*/2);
  const StepResult whole = reference->forward_backward(*context_, rows);
  std::vector<int64_t> tokens_per_pair;
  for (size_t pair = 0; pair < 4; ++pair) {
    int64_t count = 0;
    for (float target : padded_rows(documents_, 2 * pair, 2, 24, 2).targets.to_floats()) count += target >= 0;
    tokens_per_pair.push_back(count);
  }
  ASSERT_NE(*std::min_element(tokens_per_pair.begin(), tokens_per_pair.end()),
            *std::max_element(tokens_per_pair.begin(), tokens_per_pair.end()))
      << "micro-batches must differ in trained tokens, or a mean of means would agree";

  EXPECT_EQ(eight.trained_tokens, whole.num_target_tokens);
  EXPECT_EQ(four_by_two.trained_tokens, whole.num_target_tokens);
  EXPECT_NEAR(eight.loss, whole.loss, 1e-6);
  EXPECT_NEAR(four_by_two.loss, whole.loss, 1e-6);

  // The mean-of-means gradient a per-micro-batch normalisation would give.
  auto mean_of_means = LlamaModel::load(*context_, root_ / "model");
  mean_of_means->parameters().set_trainable([](const std::string&) { return true; });
  mean_of_means->parameters().allocate_grads(*context_, DType::kF32);
  for (size_t pair = 0; pair < 4; ++pair)
    mean_of_means->forward_backward(*context_, padded_rows(documents_, 2 * pair, 2, 24, 2), 0.25f);

  const double tolerance = 2e-6;  // fp32 sums in another order
  double worst_eight = 0.0, worst_accumulated = 0.0, mean_of_means_gap = 0.0;
  for (Parameter* expected : reference->parameters().all()) {
    const std::vector<float> want = expected->grad.to_floats();
    worst_eight = std::max(
        worst_eight,
        max_abs_difference(batch_eight.model().model->parameters().get(expected->name).grad.to_floats(), want));
    worst_accumulated = std::max(
        worst_accumulated,
        max_abs_difference(accumulated.model().model->parameters().get(expected->name).grad.to_floats(), want));
    mean_of_means_gap = std::max(
        mean_of_means_gap, max_abs_difference(mean_of_means->parameters().get(expected->name).grad.to_floats(), want));
  }
  EXPECT_LT(worst_eight, tolerance);
  EXPECT_LT(worst_accumulated, tolerance);
  EXPECT_GT(mean_of_means_gap, 100 * tolerance) << "the test could not tell the two normalisations apart";

  // A second step (rows 8..15), then the AdamW updates of both runs agree.
  batch_eight.train_step();
  accumulated.train_step();
  double worst_weight = 0.0;
  for (Parameter* parameter : batch_eight.model().trainable_parameters())
    worst_weight =
        std::max(worst_weight,
                 max_abs_difference(parameter->value.to_floats(),
                                    accumulated.model().model->parameters().get(parameter->name).value.to_floats()));
  EXPECT_LT(worst_weight, 1e-6);  // lr 1e-3: updates of ~1e-3, agreeing to fp32 rounding
}

// ---- Data parallelism through the Communicator --------------------------------

TEST_F(TrainerTest, TwoDataParallelRanksTrainLikeOneProcessWithTheirRowsTogether) {
  // Padded rows in file order; the loader deals record g to rank g % 2, so
  // ranks 0 and 1 (batch 2 each) see rows {0, 2} and {1, 3}: together the
  // single process's batch of 4, with different trained-token counts per rank.
  write_shard(root_ / "data" / "ordered.tfrecord", documents_);
  auto options_for = [&](int64_t batch_size, int64_t dp) {
    config::TrainOptions options = full_options(str_cat("dp-", dp));
    options.train_files = {(root_ / "data" / "ordered.tfrecord").string()};
    options.packed = false;
    options.seq_len = 24;
    options.shuffle_buffer = 0;
    options.batch_size = batch_size;
    options.grad_accumulation_steps = 1;
    options.dp = dp;
    return options;
  };
  Trainer single(*context_, options_for(4, 1), quiet_hooks());
  const StepRecord expected = single.train_step();

  // Ranks as threads of this process (parallel/in_process_communicator.h):
  // each builds its grid and trainer, then takes one step.
  std::shared_ptr<parallel::InProcessGroup> group = parallel::InProcessGroup::create(2);
  std::vector<std::unique_ptr<parallel::ParallelContext>> grids(2);
  std::vector<std::unique_ptr<Context>> contexts(2);
  std::vector<std::unique_ptr<Trainer>> ranks(2);
  std::vector<StepRecord> records(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank)
    threads.emplace_back([&, rank] {
      const auto r = static_cast<size_t>(rank);
      grids[r] = parallel::ParallelContext::over(group->communicator(rank));
      contexts[r] = Context::cpu();
      TrainerHooks hooks = quiet_hooks();
      hooks.parallel = grids[r].get();
      ranks[r] = std::make_unique<Trainer>(*contexts[r], options_for(2, 2), hooks);
      records[r] = ranks[r]->train_step();
    });
  for (std::thread& thread : threads) thread.join();

  for (const StepRecord& record : records) {
    EXPECT_EQ(record.trained_tokens, expected.trained_tokens);
    EXPECT_NEAR(record.loss, expected.loss, 1e-6);
  }
  double worst_grad = 0.0, worst_weight = 0.0;
  for (Parameter* parameter : single.model().trainable_parameters()) {
    Parameter& rank0 = ranks[0]->model().model->parameters().get(parameter->name);
    Parameter& rank1 = ranks[1]->model().model->parameters().get(parameter->name);
    worst_grad = std::max(worst_grad, max_abs_difference(rank0.grad.to_floats(), parameter->grad.to_floats()));
    worst_weight = std::max(worst_weight, max_abs_difference(rank0.value.to_floats(), parameter->value.to_floats()));
    EXPECT_EQ(rank0.value.to_floats(), rank1.value.to_floats()) << "ranks diverged: " << parameter->name;
  }
  EXPECT_LT(worst_grad, 2e-6);
  EXPECT_LT(worst_weight, 1e-6);

  config::TrainOptions wrong = options_for(2, 2);
  EXPECT_NE(testing::bad_input_message([&] {
              Trainer trainer(*context_, wrong, quiet_hooks());
            }).find("field 'parallel.dp': 2, but 1 process(es) were launched (mpirun -np 1) with tp 1, which makes dp 1"),
            std::string::npos);
}

// ---- Gradient checkpointing ---------------------------------------------------

// FULL and SELECTIVE (every block, or every other) change what is kept, not
// what is computed: losses and trained weights equal NONE's bit for bit, for
// LoRA with dropout (its masks are reproduced in the recomputation) and full
// fine-tuning. The control: a different dropout seed does change them.
TEST_F(TrainerTest, ActivationCheckpointingTrainsBitForBitLikeKeepingEverything) {
  for (bool lora : {true, false}) {
    auto run = [&](const std::string& mode, int64_t every, uint64_t seed) {
      const std::string name = str_cat("ckpt-", mode, every, "-", seed);
      config::TrainOptions options = lora ? lora_options(name) : full_options(name);
      options.activation_checkpointing = mode;
      options.checkpoint_every_n_layers = every;
      options.seed = seed;
      options.total_steps = 3;
      std::vector<double> losses;
      Trainer trainer(*context_, options, quiet_hooks(&losses));
      trainer.train();
      return std::make_pair(losses, trainable_bytes(trainer));
    };
    const auto none = run("none", 1, 5);
    for (const auto& [mode, every] : std::vector<std::pair<std::string, int64_t>>{
             {"full", 1}, {"selective", 1}, {"selective", 2}, {"full", 2}}) {
      const auto checkpointed = run(mode, every, 5);
      EXPECT_EQ(checkpointed.first, none.first) << mode << " every " << every << (lora ? " LoRA" : " full");
      EXPECT_TRUE(checkpointed.second == none.second) << mode << " every " << every << (lora ? " LoRA" : " full");
    }
    if (lora) {
      EXPECT_NE(run("selective", 1, 6).first, none.first) << "the control: another seed differs";
    }
  }
}

// ---- Mixed precision against fp32 --------------------------------------------

// BF16 and FP16 runs (fp32 masters, f16 with loss scaling) track the FP32
// run's loss over 200 steps, full fine-tuning and LoRA. Compared as means
// over windows of 20 steps (single steps jitter with the data), each within
// a relative tolerance sized to the format: bf16 keeps 8 significant bits
// (relative rounding 2^-9 ~ 0.2% per value, compounding through the layers
// and 200 updates), f16 keeps 11 (2^-12). Measured worst window deviations
// (printed; 2026-12-04: LoRA bf16 0.38%, f16 0.09%, full 0.03% / 0.01%) set
// the bounds with ~3x margin: bf16 1.2%, f16 0.3%.
TEST_F(TrainerTest, Bf16AndF16TrackTheFp32LossOver200Steps) {
  for (bool lora : {true, false}) {
    auto losses_of = [&](const std::string& dtype) {
      config::TrainOptions options = lora ? lora_options("mp-lora-" + dtype) : full_options("mp-full-" + dtype);
      options.compute_dtype = options.weights_dtype = dtype;
      options.lora_dropout = 0.0f;
      options.total_steps = 200;
      // The bounds were measured on the contiguous layout. Whole-document
      // layouts (PACKED, PADDED) let the fp32 LoRA run fall further (4.8 ->
      // 1.8 instead of 4.5 -> 3.0), and its f16 twin then drifts ~1% (PADDED
      // 0.65%), past the f16 bound: a precision question of its own.
      options.packed_contiguous = true;
      options.checkpoint_dir = (root_ / ("mp-" + dtype + (lora ? "-lora" : "-full"))).string();
      std::vector<double> losses;
      Trainer trainer(*context_, options, quiet_hooks(&losses));
      trainer.train();
      return losses;
    };
    const std::vector<double> fp32 = losses_of("f32");
    for (const auto& [dtype, bound] : std::vector<std::pair<std::string, double>>{{"bf16", 0.012}, {"f16", 0.003}}) {
      const std::vector<double> low = losses_of(dtype);
      ASSERT_EQ(low.size(), fp32.size());
      double worst = 0.0;
      for (size_t start = 0; start < fp32.size(); start += 20) {
        double reference = 0.0, found = 0.0;
        for (size_t i = start; i < start + 20; ++i) {
          reference += fp32[i];
          found += low[i];
        }
        worst = std::max(worst, std::abs(found - reference) / reference);
      }
      std::printf("%s %s: worst 20-step window |loss - fp32| / fp32 = %.4f (bound %.3f); fp32 loss %.3f -> %.3f\n",
                  lora ? "LoRA" : "full", dtype.c_str(), worst, bound, fp32.front(), fp32.back());
      EXPECT_LT(worst, bound) << dtype << (lora ? " LoRA" : " full");
    }
    EXPECT_LT(fp32.back(), 0.9 * fp32.front()) << "the fp32 run must learn for the comparison to mean anything";
  }
}

// ---- Base weights stored apart from the compute dtype ----------------------------

// model.weights_dtype BFLOAT16 under FLOAT32 compute: the base holds the same
// numbers as an f32 base whose values are bf16 (the CPU linears widen the
// stored weight exactly), so LoRA training repeats that run's losses with half
// the frozen weights' memory: bit for bit where 16-bit operands are widened
// for OpenBLAS like f32 ones (LLMFT_CPU_HALF_GEMM=widen, a ctest entry of its
// own), within f32 summation-order noise where the packed GEMM sums them
// (kernels/cpu/packed_gemm.h: its own blocking, not OpenBLAS's). The control,
// the unrounded f32 base, gives losses further off than that noise. The
// config's old refusal of the pair is gone.
TEST_F(TrainerTest, Bf16WeightsUnderFp32ComputeTrainLikeTheirValuesInFp32) {
  {
    auto model = LlamaModel::load(*context_, root_ / "model");
    model->save_pretrained(root_ / "model-bf16-values", DType::kBF16);
  }
  auto run = [&](const std::string& name, const fs::path& base, const std::string& weights_dtype,
                 MemoryPeaks* peaks) {
    config::TrainOptions options = lora_options(name);
    options.hf_dir = base.string();
    options.weights_dtype = weights_dtype;  // compute stays f32
    std::vector<double> losses;
    Trainer trainer(*context_, options, quiet_hooks(&losses));
    trainer.train();
    if (peaks != nullptr) *peaks = trainer.memory_peaks();
    return losses;
  };
  MemoryPeaks f32_peaks, bf16_peaks;
  const std::vector<double> f32_values = run("f32-values", root_ / "model-bf16-values", "f32", &f32_peaks);
  const std::vector<double> bf16_storage = run("bf16-storage", root_ / "model", "bf16", &bf16_peaks);
  ASSERT_EQ(f32_values.size(), 8u);
  const std::vector<double> unrounded = run("unrounded", root_ / "model", "f32", nullptr);
  if (!cpu::is_packed_path(cpu::cpu_gemm_path(DType::kF32, DType::kBF16))) {
    EXPECT_EQ(bf16_storage, f32_values);
    EXPECT_NE(unrounded, f32_values) << "the control: f32 weights differ";
  } else {
    double summation_noise = 0.0, control = 0.0;
    for (size_t step = 0; step < f32_values.size(); ++step) {
      summation_noise = std::max(summation_noise, std::fabs(bf16_storage[step] - f32_values[step]));
      control = std::max(control, std::fabs(unrounded[step] - f32_values[step]));
    }
    EXPECT_LT(summation_noise, 5e-6) << "bf16 storage against its values in f32";
    EXPECT_GT(control, 10 * summation_noise) << "the control: f32 weights differ by more than the noise";
  }
  const double frozen_f32 = f32_peaks.bytes[static_cast<size_t>(MemoryCategory::kFrozenWeights)];
  const double frozen_bf16 = bf16_peaks.bytes[static_cast<size_t>(MemoryCategory::kFrozenWeights)];
  EXPECT_NEAR(frozen_bf16 / frozen_f32, 0.5, 0.01) << frozen_bf16 << " against " << frozen_f32 << " bytes";
}

// The other pairs train and track the fp32 run (8 steps, LoRA and full
// fine-tuning; bounds as Bf16AndF16TrackTheFp32LossOver200Steps' bf16 one).
TEST_F(TrainerTest, EveryPairOfWeightsAndComputeDtypesTracksTheFp32Run) {
  for (bool lora : {true, false}) {
    auto losses_of = [&](const std::string& weights_dtype, const std::string& compute_dtype) {
      const std::string name = str_cat(lora ? "lora-" : "full-", weights_dtype, "-", compute_dtype);
      config::TrainOptions options = lora ? lora_options(name) : full_options(name);
      options.weights_dtype = weights_dtype;
      options.compute_dtype = compute_dtype;
      options.loss_scaling = compute_dtype == "f16";
      options.init_scale = 1024.0f;
      std::vector<double> losses;
      Trainer trainer(*context_, options, quiet_hooks(&losses));
      trainer.train();
      return losses;
    };
    const std::vector<double> fp32 = losses_of("f32", "f32");
    double reference = 0.0;
    for (double loss : fp32) reference += loss;
    for (const auto& [weights_dtype, compute_dtype] : std::vector<std::pair<std::string, std::string>>{
             {"bf16", "f32"}, {"f16", "f32"}, {"f32", "bf16"}, {"f32", "f16"}, {"bf16", "f16"}}) {
      const std::vector<double> losses = losses_of(weights_dtype, compute_dtype);
      ASSERT_EQ(losses.size(), fp32.size());
      double found = 0.0;
      for (double loss : losses) found += loss;
      const double deviation = std::abs(found - reference) / reference;
      std::printf("%s weights %s, compute %s: |mean loss - fp32's| / fp32's = %.4f\n", lora ? "LoRA" : "full",
                  weights_dtype.c_str(), compute_dtype.c_str(), deviation);
      EXPECT_LT(deviation, 0.012) << (lora ? "LoRA " : "full ") << weights_dtype << " weights, " << compute_dtype;
      EXPECT_LT(losses.back(), losses.front()) << "does not learn: " << weights_dtype << "/" << compute_dtype;
    }
  }
}

// ---- Export from the fp32 masters ----------------------------------------------

// A bf16 run's export is built from its fp32 AdamW masters, not from the
// bf16 copies the model computed with (which is the control: they differ).
TEST_F(TrainerTest, ExportOfABf16RunUsesTheFp32Masters) {
  for (bool lora : {true, false}) {
    config::TrainOptions options = lora ? lora_options("bf16-export-lora") : full_options("bf16-export-full");
    options.compute_dtype = options.weights_dtype = "bf16";
    options.total_steps = 3;
    Trainer trainer(*context_, options, quiet_hooks());
    trainer.train();
    std::map<std::string, std::vector<float>> masters, bf16_values;
    for (optim::AdamWParameterState& state : trainer.optimizer().states()) {
      masters[state.parameter->name] = state.master.to_floats();
      bf16_values[state.parameter->name] = state.parameter->value.to_floats();
    }
    auto exported = load_fp32_model_for_export(*context_, options, "latest");
    bool differs_from_bf16 = false;
    for (const NamedTensor& tensor : exported->trainable_tensors()) {
      ASSERT_EQ(tensor.tensor.dtype(), DType::kF32) << tensor.name;
      ASSERT_TRUE(masters.count(tensor.name)) << tensor.name;
      EXPECT_TRUE(tensor.tensor.to_floats() == masters[tensor.name]) << tensor.name << " is not its master";
      differs_from_bf16 |= tensor.tensor.to_floats() != bf16_values[tensor.name];
    }
    EXPECT_TRUE(differs_from_bf16) << "the masters equal their bf16 copies: the test cannot tell them apart";
  }
}

// ---- Overflow skipping ---------------------------------------------------------

// Loss scaling on request for bf16: an Inf injected into one gradient skips
// that step (weights, masters, moments and the schedule bit for bit as
// before it), backs the scale off, counts the skip, and training goes on.
// With hysteresis 2 (Megatron's rule) the first overflow keeps the scale and
// the second backs it off; both steps are skipped.
TEST_F(TrainerTest, AnInjectedInfSkipsTheStepUntouchedBacksTheScaleOffAndTrainingGoesOn) {
  for (int64_t hysteresis : {1, 2}) {
    config::TrainOptions options = lora_options(str_cat("overflow-", hysteresis));
    options.compute_dtype = options.weights_dtype = "bf16";
    options.loss_scaling = true;
    options.init_scale = 1024.0f;
    options.hysteresis = hysteresis;
    options.total_steps = 6;
    const std::set<int64_t> inject = hysteresis == 1 ? std::set<int64_t>{3} : std::set<int64_t>{3, 4};
    Trainer* trainer = nullptr;
    auto snapshot = [&] {
      std::vector<std::vector<float>> state;
      for (const NamedTensor& tensor : trainer->model().trainable_tensors()) state.push_back(tensor.tensor.to_floats());
      for (optim::AdamWParameterState& moments : trainer->optimizer().states())
        for (const Tensor* tensor : {&moments.master, &moments.exp_avg, &moments.exp_avg_sq})
          state.push_back(tensor->to_floats());
      return state;
    };
    std::vector<StepRecord> records;
    std::vector<std::vector<float>> before_overflow;
    std::vector<double> scales_after;
    TrainerHooks hooks = quiet_hooks();
    hooks.inspect_gradients = [&](int64_t step, const std::vector<Parameter*>& parameters) {
      if (step == *inject.begin()) before_overflow = snapshot();
      if (inject.count(step)) parameters.back()->grad.data<float>()[0] = std::numeric_limits<float>::infinity();
    };
    hooks.on_step = [&](const StepRecord& record) {
      records.push_back(record);
      scales_after.push_back(trainer->loss_scaler()->scale());
      if (record.step == *inject.rbegin()) {
        EXPECT_TRUE(snapshot() == before_overflow) << "weights or optimizer state changed by a skipped step";
      }
    };
    Trainer run(*context_, options, hooks);
    trainer = &run;
    const TrainResult result = run.train();
    EXPECT_EQ(result.final_step, 6);
    ASSERT_EQ(records.size(), 6u);
    for (const StepRecord& record : records) {
      SCOPED_TRACE(str_cat("hysteresis ", hysteresis, ", step ", record.step));
      EXPECT_EQ(record.skipped, inject.count(record.step) == 1);
      EXPECT_TRUE(std::isfinite(record.loss));
    }
    const StepRecord& last_skipped = records[static_cast<size_t>(*inject.rbegin() - 1)];
    EXPECT_EQ(last_skipped.skipped_steps, static_cast<int64_t>(inject.size()));
    EXPECT_EQ(records.back().skipped_steps, static_cast<int64_t>(inject.size()));
    // The schedule did not advance: the step after the skips runs at the lr
    // the first skipped step had.
    EXPECT_EQ(records[static_cast<size_t>(*inject.rbegin())].learning_rate,
              records[static_cast<size_t>(*inject.begin() - 1)].learning_rate);
    // Scale: 1024 until the back-off, then 512 (growth_interval 2000: no growth).
    EXPECT_EQ(scales_after[static_cast<size_t>(*inject.begin() - 1)], hysteresis == 1 ? 512.0 : 1024.0);
    EXPECT_EQ(scales_after.back(), 512.0);
    EXPECT_FALSE(before_overflow.empty());
  }
}

// ---- Resume -------------------------------------------------------------------

struct ResumeCase {
  const char* name;
  const char* peft;  // TrainOptions::peft
  const char* compute_dtype;
  const char* weights_dtype = nullptr;  // model.weights_dtype; null: the compute dtype
};

void PrintTo(const ResumeCase& resume_case, std::ostream* out) { *out << resume_case.name; }

class TrainerResumeTest : public TrainerTest, public ::testing::WithParamInterface<ResumeCase> {
 protected:
  config::TrainOptions options(const std::string& run) const {
    const std::string peft = GetParam().peft;
    config::TrainOptions result = peft == "none" ? full_options(run) : lora_options(run);
    result.peft = peft;
    if (peft == "prompt_tuning" || peft == "p_tuning") {
      result.packed = false;  // virtual tokens in front of each (padded) row
      result.num_virtual_tokens = 3;
      result.encoder_hidden_size = 8;
    }
    if (peft == "bottleneck") {
      result.bottleneck_placement = "houlsby";
      result.bottleneck_reduction_factor = 4;
      result.activation_checkpointing = "full";  // the adapters rerun in the recomputed blocks
    }
    if (peft == "prefix_tuning") {
      result.num_virtual_tokens = 2;
      result.prefix_projection = true;
      result.activation_checkpointing = "selective";  // layer 0's projection reruns in the backward
    }
    result.compute_dtype = result.weights_dtype = GetParam().compute_dtype;
    if (GetParam().weights_dtype != nullptr) result.weights_dtype = GetParam().weights_dtype;
    if (result.compute_dtype == "f16") {
      result.init_scale = 1024.0f;
      result.growth_interval = 2;  // the scale changes within the run, so its state must be restored
      result.hysteresis = 2;
    }
    return result;
  }
};

TEST_P(TrainerResumeTest, ResumedRunRepeatsTheUninterruptedLossesAndWeightsBitForBit) {
  std::vector<double> uninterrupted_losses;
  Trainer uninterrupted(*context_, options("straight"), quiet_hooks(&uninterrupted_losses));
  uninterrupted.train();
  ASSERT_EQ(uninterrupted_losses.size(), 8u);

  std::vector<double> losses;
  optim::LossScalerState saved_scaler;
  {
    Trainer first(*context_, options("interrupted"), quiet_hooks());
    for (int i = 0; i < 3; ++i) losses.push_back(first.train_step().loss);
    first.save_checkpoint();
    if (first.loss_scaler()) saved_scaler = first.loss_scaler()->state();
  }
  config::TrainOptions resumed_options = options("interrupted");
  resumed_options.resume = "latest";
  Trainer resumed(*context_, resumed_options, quiet_hooks(&losses));
  ASSERT_TRUE(resumed.resumed_from().has_value());
  EXPECT_EQ(resumed.step(), 3);
  if (resumed.loss_scaler()) {
    // Every field, straight after the restore (later growth would refill the
    // hysteresis counter and hide a lost one).
    EXPECT_EQ(resumed.loss_scaler()->state().scale, saved_scaler.scale);
    EXPECT_EQ(resumed.loss_scaler()->state().growth_tracker, saved_scaler.growth_tracker);
    EXPECT_EQ(resumed.loss_scaler()->state().hysteresis_tracker, saved_scaler.hysteresis_tracker);
  }
  resumed.train();

  ASSERT_EQ(losses.size(), uninterrupted_losses.size());
  for (size_t i = 0; i < losses.size(); ++i) EXPECT_EQ(losses[i], uninterrupted_losses[i]) << "step " << i + 1;
  EXPECT_TRUE(trainable_bytes(resumed) == trainable_bytes(uninterrupted)) << "final weights differ";
  EXPECT_EQ(resumed.optimizer().step_count(), uninterrupted.optimizer().step_count());
  if (GetParam().compute_dtype == std::string("f16")) {
    // A power-of-two scale cancels exactly, so the losses alone would not see
    // a scaler restarted from init_scale; its state must match too.
    ASSERT_NE(resumed.loss_scaler(), nullptr);
    EXPECT_EQ(resumed.loss_scaler()->state().scale, uninterrupted.loss_scaler()->state().scale);
    EXPECT_EQ(resumed.loss_scaler()->state().growth_tracker, uninterrupted.loss_scaler()->state().growth_tracker);
    EXPECT_NE(uninterrupted.loss_scaler()->state().scale, 1024.0f) << "the scale never changed";
  }
  // The losses move: a run that repeated one batch would pass the above too.
  EXPECT_NE(uninterrupted_losses.front(), uninterrupted_losses.back());
}

INSTANTIATE_TEST_SUITE_P(Runs, TrainerResumeTest,
                         ::testing::Values(ResumeCase{"LoraDropout", "lora", "f32"},
                                           ResumeCase{"FullFineTuning", "none", "f32"},
                                           ResumeCase{"FullFineTuningF16LossScaling", "none", "f16"},
                                           ResumeCase{"PromptTuning", "prompt_tuning", "f32"},
                                           ResumeCase{"PTuningBf16", "p_tuning", "bf16"},
                                           ResumeCase{"PrefixTuningProjectionSelective", "prefix_tuning", "f32"},
                                           ResumeCase{"BottleneckHoulsbyFull", "bottleneck", "f32"},
                                           // Mixed precision for the two modes with their own block-level
                                           // arithmetic: bf16 prefix K/V in attention, f16 adapters under
                                           // dynamic loss scaling.
                                           ResumeCase{"PrefixTuningProjectionSelectiveBf16", "prefix_tuning", "bf16"},
                                           ResumeCase{"BottleneckHoulsbyFullF16LossScaling", "bottleneck", "f16"},
                                           // Base weights stored apart from the compute dtype: bf16 under
                                           // fp32 compute (the masters of full fine-tuning are then the
                                           // only fp32 copy), fp32 under bf16 compute (torch.autocast's).
                                           ResumeCase{"LoraBf16WeightsF32Compute", "lora", "f32", "bf16"},
                                           ResumeCase{"FullFineTuningBf16WeightsF32Compute", "none", "f32", "bf16"},
                                           ResumeCase{"LoraF32WeightsBf16Compute", "lora", "bf16", "f32"}),
                         [](const ::testing::TestParamInfo<ResumeCase>& info) { return info.param.name; });

TEST_P(TrainerResumeTest, HostOptimizerCopiesChangeNoBitAndResumeToo) {
  // The path a CUDA context takes under data parallelism (gradients to host
  // copies, AdamW there, values back), checked on the CPU against the direct path.
  std::vector<double> direct_losses;
  Trainer direct(*context_, options("direct"), quiet_hooks(&direct_losses));
  direct.train();

  std::vector<double> losses;
  TrainerHooks hooks = quiet_hooks();
  hooks.host_optimizer_copy = true;
  {
    Trainer first(*context_, options("copied"), hooks);
    for (int i = 0; i < 3; ++i) losses.push_back(first.train_step().loss);
    first.save_checkpoint();
  }
  config::TrainOptions resumed_options = options("copied");
  resumed_options.resume = "latest";
  hooks.on_step = [&](const StepRecord& record) { losses.push_back(record.loss); };
  Trainer resumed(*context_, resumed_options, hooks);
  resumed.train();
  EXPECT_EQ(losses, direct_losses);
  EXPECT_TRUE(trainable_bytes(resumed) == trainable_bytes(direct));
}

TEST_F(TrainerTest, ResumeWithoutTheDataPositionWouldDiffer) {
  // Shows the bit-identity test can fail: the same weights and optimizer state
  // with a fresh loader give other losses.
  std::vector<double> straight;
  Trainer uninterrupted(*context_, lora_options("straight"), quiet_hooks(&straight));
  uninterrupted.train();
  {
    Trainer first(*context_, lora_options("interrupted"), quiet_hooks());
    for (int i = 0; i < 3; ++i) first.train_step();
    first.save_checkpoint();
  }
  // Rewrite state.json's loader position to the start of the data.
  const fs::path state_path = root_ / "interrupted" / "step-3" / "state.json";
  Trainer fresh(*context_, lora_options("fresh"), quiet_hooks());
  std::ifstream in(state_path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  nlohmann::json state = nlohmann::json::parse(text);
  nlohmann::json fresh_state = nlohmann::json::parse([&] {
    fresh.save_checkpoint();
    std::ifstream f(root_ / "fresh" / "step-0" / "state.json");
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }());
  state["data_loader"] = fresh_state["data_loader"];
  state["data_loader_ranks"] = fresh_state["data_loader_ranks"];
  std::ofstream(state_path) << state.dump();
  config::TrainOptions resumed_options = lora_options("interrupted");
  resumed_options.resume = "latest";
  std::vector<double> losses;
  Trainer resumed(*context_, resumed_options, quiet_hooks(&losses));
  resumed.train();
  ASSERT_EQ(losses.size(), 5u);
  EXPECT_NE(losses, std::vector<double>(straight.begin() + 3, straight.end()));
}

TEST_F(TrainerTest, SigtermCheckpointsAtTheStepBoundaryAndTheRunResumesIdentically) {
  std::vector<double> straight;
  Trainer uninterrupted(*context_, lora_options("straight"), quiet_hooks(&straight));
  uninterrupted.train();

  // A real SIGTERM to this process during step 3; the handler only sets the flag.
  std::vector<double> losses;
  TrainerHooks hooks = quiet_hooks();
  hooks.stop_requested = &install_stop_signal_handlers();
  hooks.on_step = [&](const StepRecord& record) {
    losses.push_back(record.loss);
    if (record.step == 3) std::raise(SIGTERM);
  };
  TrainResult stopped;
  {
    Trainer trainer(*context_, lora_options("interrupted"), hooks);
    stopped = trainer.train();
  }
  std::signal(SIGTERM, SIG_DFL);
  EXPECT_EQ(stopped.reason, StopReason::kStopRequested);
  EXPECT_EQ(stop_signal_number(), SIGTERM);
  EXPECT_EQ(stopped.final_step, 3);
  ASSERT_TRUE(stopped.checkpoint.has_value());
  EXPECT_EQ(stopped.checkpoint->filename(), "step-3");
  ASSERT_EQ(losses.size(), 3u);

  config::TrainOptions resumed_options = lora_options("interrupted");
  resumed_options.resume = "latest";
  Trainer resumed(*context_, resumed_options, quiet_hooks(&losses));
  resumed.train();
  EXPECT_EQ(losses, straight);
  EXPECT_TRUE(trainable_bytes(resumed) == trainable_bytes(uninterrupted));
}

TEST_F(TrainerTest, F16OverflowSkipsTheUpdateAndBacksTheScaleOff) {
  config::TrainOptions options = full_options("run");
  options.compute_dtype = options.weights_dtype = "f16";
  options.init_scale = 1073741824.0f;  // 2^30: the scaled loss gradient exceeds f16's 65504
  options.schedule_kind = "constant";  // no warmup: the first update has lr > 0
  options.warmup_steps = 0;
  Trainer trainer(*context_, options, quiet_hooks());
  const std::vector<std::vector<uint8_t>> before = trainable_bytes(trainer);
  const StepRecord overflowed = trainer.train_step();
  EXPECT_TRUE(overflowed.skipped);
  EXPECT_TRUE(std::isfinite(overflowed.loss));
  EXPECT_EQ(overflowed.loss_scale, 1073741824.0);
  EXPECT_EQ(trainer.loss_scaler()->scale(), 536870912.0f);  // backoff 0.5
  EXPECT_EQ(trainer.optimizer().step_count(), 0);
  EXPECT_TRUE(trainable_bytes(trainer) == before) << "a skipped step changed the weights";
  // The scale keeps backing off until a step fits, then updates resume.
  StepRecord record;
  for (int i = 0; i < 30 && (record = trainer.train_step()).skipped; ++i) {
  }
  EXPECT_FALSE(record.skipped);
  EXPECT_EQ(trainer.optimizer().step_count(), 1);
  EXPECT_TRUE(std::isfinite(record.grad_norm));
  EXPECT_FALSE(trainable_bytes(trainer) == before);
}

// ---- Fingerprint -----------------------------------------------------------------

TEST_F(TrainerTest, RefusesACheckpointOfAnotherPeftConfigOrModel) {
  {
    Trainer trainer(*context_, lora_options("run"), quiet_hooks());
    trainer.train_step();
    trainer.save_checkpoint();
  }
  auto resume_with = [&](config::TrainOptions options) {
    options.checkpoint_dir = (root_ / "run").string();
    options.resume = "latest";
    return testing::bad_input_message([&] { Trainer trainer(*context_, options, quiet_hooks()); });
  };
  const std::string expected = "checkpoint was written for a different model/PEFT config";

  config::TrainOptions other_rank = lora_options("run");
  other_rank.lora_r = 2;
  EXPECT_NE(resume_with(other_rank).find(expected), std::string::npos) << resume_with(other_rank);

  config::TrainOptions other_targets = lora_options("run");
  other_targets.lora_target_modules = {"q_proj", "v_proj"};
  EXPECT_NE(resume_with(other_targets).find(expected), std::string::npos);

  EXPECT_NE(resume_with(full_options("run")).find(expected), std::string::npos);

  // Another model: same shapes except the MLP width.
  ModelConfig wider = trainer_test::tiny_model_config();
  wider.intermediate_size = 64;
  {
    LlamaModel model(*context_, wider);
    model.init_random(*context_, 3);
    model.save_pretrained(root_ / "wider");
  }
  config::TrainOptions other_model = lora_options("run");
  other_model.hf_dir = (root_ / "wider").string();
  const std::string message = resume_with(other_model);
  EXPECT_NE(message.find(expected), std::string::npos) << message;
  EXPECT_NE(message.find((root_ / "run" / "step-1").string()), std::string::npos) << message;

  // The same architecture with other weights (a base model and its instruct
  // version) is another model too.
  {
    LlamaModel model(*context_, trainer_test::tiny_model_config());
    model.init_random(*context_, 8, 0.2f);
    model.save_pretrained(root_ / "same_shape");
  }
  config::TrainOptions other_weights = lora_options("run");
  other_weights.hf_dir = (root_ / "same_shape").string();
  EXPECT_NE(resume_with(other_weights).find(expected), std::string::npos);

  // Dropout is not part of the fingerprint: changing it on resume is allowed.
  config::TrainOptions other_dropout = lora_options("run");
  other_dropout.lora_dropout = 0.0f;
  other_dropout.checkpoint_dir = (root_ / "run").string();
  other_dropout.resume = "latest";
  Trainer resumed(*context_, other_dropout, quiet_hooks());
  EXPECT_EQ(resumed.step(), 1);
}

// ---- Evaluation ------------------------------------------------------------------

TEST_F(TrainerTest, EvaluationIsTheMeanOverEveryValidationTokenAndPerplexityItsExponential) {
  config::TrainOptions options = lora_options("run");
  options.packed = false;  // one validation document per row
  options.seq_len = 24;
  Trainer trainer(*context_, options, quiet_hooks());
  for (int i = 0; i < 2; ++i) trainer.train_step();
  const EvalResult result = trainer.evaluate();

  // Each document alone, summed in double (dropout is off in evaluation).
  trainer.model().set_training(false);
  double loss_sum = 0.0;
  int64_t tokens = 0;
  for (size_t i = 0; i < validation_.size(); ++i) {
    const StepResult alone = trainer.model().model->forward(*context_, padded_rows(validation_, i, 1, 24, 2));
    loss_sum += alone.loss * static_cast<double>(alone.num_target_tokens);
    tokens += alone.num_target_tokens;
  }
  EXPECT_EQ(result.trained_tokens, tokens);
  EXPECT_EQ(result.rows, static_cast<int64_t>(validation_.size()));
  EXPECT_NEAR(result.loss, loss_sum / static_cast<double>(tokens), 1e-6);
  EXPECT_DOUBLE_EQ(result.perplexity, std::exp(result.loss));
}

// Evaluation sees every token whatever the row length: the loss and token
// count at seq_len 80, 512 and 2048, packed or padded, equal the sums over
// the records evaluated one at a time, each alone in a row of its own length.
// Control: the old rule (rows cut from the concatenated stream, the last
// partial row dropped) loses tokens.
TEST_F(TrainerTest, EvaluationCountsEveryTokenAtAnySeqLenAndEqualsTheRecordsOneAtATime) {
  config::TrainOptions options = lora_options("run");
  Trainer trainer(*context_, options, quiet_hooks());
  trainer.train_step();  // LoRA B away from zero: the adapter takes part
  trainer.model().set_training(false);
  double loss_sum = 0.0;
  int64_t tokens = 0;
  for (size_t i = 0; i < validation_.size(); ++i) {
    const int64_t length = static_cast<int64_t>(validation_[i].input_ids.size());
    const StepResult alone = trainer.model().model->forward(*context_, padded_rows(validation_, i, 1, length, 2));
    loss_sum += alone.loss * static_cast<double>(alone.num_target_tokens);
    tokens += alone.num_target_tokens;
  }
  const double reference = loss_sum / static_cast<double>(tokens);
  const ModelConfig& config = trainer.model().model->config();
  for (bool packed : {true, false}) {
    for (int64_t seq_len : {80, 512, 2048}) {
      SCOPED_TRACE(str_cat(packed ? "packed" : "padded", " seq_len ", seq_len));
      config::TrainOptions eval_options = options;
      eval_options.packed = packed;
      eval_options.seq_len = seq_len;
      data::Loader loader(make_loader_options(eval_options, config, 2, /*validation=*/true));
      const EvalResult result = evaluate_loss(*context_, *trainer.model().model, loader);
      EXPECT_EQ(result.trained_tokens, tokens);
      EXPECT_EQ(result.records, static_cast<int64_t>(validation_.size()));
      EXPECT_NEAR(result.loss, reference, 1e-6 * reference);
      if (!packed) {
        EXPECT_EQ(result.rows, static_cast<int64_t>(validation_.size()));
      }
      if (packed && seq_len >= 512) {
        EXPECT_EQ(result.rows, 1);  // all nine share one row
      }
    }
  }
  data::LoaderOptions cut = make_loader_options(options, config, 2, /*validation=*/true);
  cut.mode = data::BatchMode::kPackedContiguous;
  cut.drop_remainder = true;
  cut.batch_size = 1;
  data::Loader old_rule(cut);
  EXPECT_LT(evaluate_loss(*context_, *trainer.model().model, old_rule).trained_tokens, tokens);
}

TEST(EvalSummary, NamesTokensRecordsRowsAndLongDocuments) {
  EvalResult result;
  result.loss = 0.5;
  result.perplexity = 1.64872;
  result.trained_tokens = 987;
  result.records = 40;
  result.rows = 13;
  EXPECT_EQ(format_eval_summary(result), "loss 0.5 | perplexity 1.64872 | 987 tokens | 40 records | 13 rows");
  result.long_documents = "2 of 40 records are longer than seq_len 80 (longest 90 tokens): dropped";
  EXPECT_EQ(format_eval_summary(result),
            "loss 0.5 | perplexity 1.64872 | 987 tokens | 40 records | 13 rows | 2 of 40 records are longer than "
            "seq_len 80 (longest 90 tokens): dropped");
}

TEST_F(TrainerTest, PackedRowsReachTheModelWithTheirPositionIdsAndDocumentStarts) {
  config::TrainOptions options = lora_options("run");  // packed, seq_len 16: documents share rows
  Trainer trainer(*context_, options, quiet_hooks());
  const EvalResult result = trainer.evaluate();

  data::Loader loader(make_loader_options(options, trainer.model().model->config(), 2, true));
  trainer.model().set_training(false);
  double packed_sum = 0.0, unpacked_sum = 0.0;
  int64_t tokens = 0;
  bool shared_row = false;
  while (std::optional<data::Batch> batch = loader.next()) {
    const std::vector<float> starts = batch->doc_start.to_floats();
    shared_row = shared_row || std::any_of(starts.begin(), starts.end(), [](float start) { return start > 0; });
    Batch packed{batch->input_ids, batch->targets, batch->position_ids, batch->doc_start};
    Batch unpacked{batch->input_ids, batch->targets, Tensor(), Tensor()};
    const StepResult with = trainer.model().model->forward(*context_, packed);
    const StepResult without = trainer.model().model->forward(*context_, unpacked);
    packed_sum += with.loss * static_cast<double>(with.num_target_tokens);
    unpacked_sum += without.loss * static_cast<double>(without.num_target_tokens);
    tokens += with.num_target_tokens;
  }
  ASSERT_TRUE(shared_row) << "no row holds two documents; the test would not see packing";
  EXPECT_EQ(result.trained_tokens, tokens);
  EXPECT_DOUBLE_EQ(result.loss, packed_sum / static_cast<double>(tokens));
  EXPECT_GT(std::abs(result.loss - unpacked_sum / static_cast<double>(tokens)), 1e-6)
      << "attention across documents would give the same loss";
}

TEST_F(TrainerTest, ConfigurationMistakesAreOneLineErrors) {
  config::TrainOptions too_long = lora_options("run");
  too_long.seq_len = 4096;
  too_long.batch_size = 64;
  EXPECT_NE(testing::bad_input_message([&] {
              Trainer trainer(*context_, too_long, quiet_hooks());
            }).find("do not hold one step of 64 rows of 4096 tokens"),
            std::string::npos);

  ModelConfig no_eos = trainer_test::tiny_model_config();
  no_eos.eos_token_ids.clear();
  {
    LlamaModel model(*context_, no_eos);
    model.init_random(*context_, 3);
    model.save_pretrained(root_ / "no_eos");
  }
  config::TrainOptions append = lora_options("run");
  append.hf_dir = (root_ / "no_eos").string();
  append.append_eos = true;
  EXPECT_NE(testing::bad_input_message([&] {
              Trainer trainer(*context_, append, quiet_hooks());
            }).find("no_eos/config.json: no eos_token_id, which data.append_eos needs"),
            std::string::npos);
}

TEST_F(TrainerTest, TrainOptionsComeFromTheTextConfigWithDefaults) {
  const config::TrainOptions options = config::parse_train_options(R"(
      model { hf_dir: "m" }
      peft { lora { r: 4 target_modules: "all-linear" } }
      data { train_files: "a-*.tfrecord" train_files: "b.tfrecord" batch_mode: PADDED }
      schedule { kind: LINEAR total_steps: 7 }
      precision { compute_dtype: FLOAT16 }
    )",
                                                   "run.pbtxt", {"optimizer.lr=3e-4", "model.weights_dtype=float16"});
  EXPECT_EQ(options.source, "run.pbtxt");
  EXPECT_EQ(options.hf_dir, "m");
  EXPECT_EQ(options.peft, "lora");
  EXPECT_EQ(options.lora_r, 4);
  EXPECT_EQ(options.lora_alpha, 16.0f);
  EXPECT_EQ(options.lora_target_modules, std::vector<std::string>{"all-linear"});
  EXPECT_EQ(options.train_files, (std::vector<std::string>{"a-*.tfrecord", "b.tfrecord"}));
  EXPECT_FALSE(options.packed);
  EXPECT_FALSE(options.append_eos);
  EXPECT_EQ(options.seq_len, 1024);
  EXPECT_EQ(options.lr, 3e-4);
  EXPECT_EQ(options.schedule_kind, "linear");
  EXPECT_EQ(options.total_steps, 7);
  EXPECT_EQ(options.compute_dtype, "f16");
  EXPECT_EQ(options.weights_dtype, "f16");
  EXPECT_EQ(options.keep_last, 3);
  EXPECT_EQ(options.log_every_n_steps, 10);
  EXPECT_FALSE(options.deterministic);
  EXPECT_FALSE(config::parse_train_options("model { hf_dir: \"m\" } data { train_files: \"x\" }", "full.pbtxt").lora());
  // precision.deterministic reaches the trainer's context (Context::deterministic).
  EXPECT_TRUE(config::parse_train_options("model { hf_dir: \"m\" } data { train_files: \"x\" }", "d.pbtxt",
                                          {"precision.deterministic=true"})
                  .deterministic);
  config::TrainOptions deterministic = lora_options("deterministic");
  deterministic.deterministic = true;
  Trainer trainer(*context_, deterministic, quiet_hooks());
  EXPECT_TRUE(context_->deterministic());
}

TEST_F(TrainerTest, TrainLogsLossLrGradNormTokensPerSecondAndEvalMetrics) {
  config::TrainOptions options = lora_options("run");
  options.log_every_n_steps = 2;
  options.eval_every_n_steps = 4;
  options.jsonl_path = (root_ / "metrics.jsonl").string();
  options.checkpoint_every_n_steps = 3;
  options.keep_last = 2;
  std::string progress_path = (root_ / "progress.txt").string();
  std::FILE* progress = std::fopen(progress_path.c_str(), "w");
  TrainerHooks hooks;
  hooks.progress = progress;
  {
    Trainer trainer(*context_, options, hooks);
    const TrainResult result = trainer.train();
    EXPECT_EQ(result.reason, StopReason::kFinished);
    EXPECT_EQ(result.final_step, 8);
  }
  std::fclose(progress);
  std::ifstream progress_in(progress_path);
  std::string progress_text((std::istreambuf_iterator<char>(progress_in)), std::istreambuf_iterator<char>());
  EXPECT_NE(progress_text.find("step 2/8 | loss "), std::string::npos) << progress_text;
  EXPECT_NE(progress_text.find("tok/s"), std::string::npos) << progress_text;
  EXPECT_NE(progress_text.find("eval step 4: loss "), std::string::npos) << progress_text;

  std::ifstream jsonl(options.jsonl_path);
  std::vector<nlohmann::json> records;
  for (std::string line; std::getline(jsonl, line);) records.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(records.size(), 6u);  // steps 2, 4, 6, 8 and evals at 4, 8
  EXPECT_EQ(records[0]["step"], 2);
  for (const char* key : {"loss", "lr", "grad_norm", "tokens_per_second"}) EXPECT_TRUE(records[0].contains(key)) << key;
  EXPECT_EQ(records[2]["step"], 4);
  EXPECT_TRUE(records[2].contains("eval_loss"));
  EXPECT_DOUBLE_EQ(records[2]["eval_perplexity"].get<double>(), std::exp(records[2]["eval_loss"].get<double>()));
  // Checkpoints at 3 and 6 and the end (8), the last two kept.
  EXPECT_EQ(list_checkpoints(options.checkpoint_dir).size(), 2u);
  EXPECT_EQ(latest_checkpoint(options.checkpoint_dir)->filename(), "step-8");
}

// ---- Export ----------------------------------------------------------------------

// A GGUF file is written through a temporary beside it; one a killed export
// left (its pid gone) is removed, and the file holds exactly what was written.
TEST_F(TrainerTest, GgufWriteReplacesTheFileWholeAndRemovesADeadExportsTemporary) {
  std::ofstream(root_ / ".model.gguf.tmp-999999999") << "partial";
  std::ofstream(root_ / "model.gguf") << "old";
  write_gguf_atomically([](const gguf::GgufWriter::Sink& sink) { sink("new bytes", 9); }, root_ / "model.gguf");
  std::ifstream in(root_ / "model.gguf");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "new bytes");
  EXPECT_FALSE(fs::exists(root_ / ".model.gguf.tmp-999999999"));
  EXPECT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 3)  // data, model, model.gguf
      << "a temporary was left behind";
}

TEST_F(TrainerTest, MergedExportHasTheLogitsOfBasePlusLoraFromTheCheckpoint) {
  config::TrainOptions options = lora_options("run");
  {
    Trainer trainer(*context_, options, quiet_hooks());
    for (int i = 0; i < 4; ++i) trainer.train_step();
    trainer.save_checkpoint();
  }
  auto trained = build_training_model(*context_, options, false);
  load_checkpoint_weights(*trained, options, "latest");
  trained->set_training(false);
  std::ofstream(root_ / "model" / "tokenizer.json") << "{}";  // copied along
  // Left by killed exports: a dead pid's staging directory goes, a live
  // pid's (another export writing now: our parent stands in) and other
  // names stay.
  for (const std::string name : {".merged.tmp-999999999", ".merged.tmp-1x", ".other.tmp-999999999"})
    fs::create_directories(root_ / name / "x");
  const std::string live = str_cat(".merged.tmp-", ::getppid());
  fs::create_directories(root_ / live);
  const std::vector<std::string> copied = export_merged(*trained, options.hf_dir, root_ / "merged");
  EXPECT_FALSE(fs::exists(root_ / ".merged.tmp-999999999"));
  EXPECT_TRUE(fs::exists(root_ / ".merged.tmp-1x"));
  EXPECT_TRUE(fs::exists(root_ / ".other.tmp-999999999"));
  EXPECT_TRUE(fs::exists(root_ / live));
  EXPECT_EQ(copied, std::vector<std::string>{"tokenizer.json"});
  EXPECT_TRUE(fs::exists(root_ / "merged" / "tokenizer.json"));

  const Batch batch = padded_rows(validation_, 0, 3, 24, 2);
  Tensor lora_logits, merged_logits;
  trained->model->forward(*context_, batch, &lora_logits);
  auto merged = LlamaModel::load(*context_, root_ / "merged");
  merged->forward(*context_, batch, &merged_logits);
  // The trained B must be nonzero, or base and merged agree trivially.
  auto base = LlamaModel::load(*context_, options.hf_dir);
  Tensor base_logits;
  base->forward(*context_, batch, &base_logits);
  EXPECT_GT(max_abs_difference(base_logits.to_floats(), lora_logits.to_floats()), 1e-3);
  // fp32 merge: W + s·B·A rounded once vs the two-path sum; logits of order 1.
  EXPECT_LT(max_abs_difference(merged_logits.to_floats(), lora_logits.to_floats()), 1e-4);

  // A tiny shard limit: an index and several shards, which load back the same.
  export_merged(*trained, options.hf_dir, root_ / "sharded", std::nullopt, parse_byte_size("20KB"));
  EXPECT_TRUE(fs::exists(root_ / "sharded" / "model.safetensors.index.json"));
  int shards = 0;
  for (const auto& entry : fs::directory_iterator(root_ / "sharded"))
    shards += entry.path().filename().string().starts_with("model-0000") ? 1 : 0;
  EXPECT_GT(shards, 1);
  Tensor sharded_logits;
  LlamaModel::load(*context_, root_ / "sharded")->forward(*context_, batch, &sharded_logits);
  EXPECT_EQ(sharded_logits.to_floats(), merged_logits.to_floats());
}

TEST_F(TrainerTest, AdapterExportRoundTripsThroughLoadLoraAdapter) {
  config::TrainOptions options = lora_options("run");
  {
    Trainer trainer(*context_, options, quiet_hooks());
    for (int i = 0; i < 2; ++i) trainer.train_step();
    trainer.save_checkpoint();
  }
  auto trained = build_training_model(*context_, options, false);
  load_checkpoint_weights(*trained, options, "latest");
  export_adapter(*trained, options.hf_dir, root_ / "adapter");

  auto base = LlamaModel::load(*context_, options.hf_dir);
  auto loaded = load_lora_adapter(*context_, *base, root_ / "adapter");
  EXPECT_EQ(loaded->config().r, 4);
  const auto& trained_lora = dynamic_cast<const LoraModel&>(*trained->peft);
  EXPECT_EQ(loaded->adapted_modules(), trained_lora.adapted_modules());
  for (const Parameter* parameter : trained_lora.parameters().all())
    EXPECT_EQ(loaded->parameters().get(parameter->name).value.to_floats(), parameter->value.to_floats())
        << parameter->name;

  auto full = build_training_model(*context_, full_options("full"), false);
  EXPECT_NE(testing::bad_input_message([&] {
              export_adapter(*full, "x", root_ / "none");
            }).find("full fine-tuning (peft none), which has no adapter"),
            std::string::npos);
}

TEST_F(TrainerTest, FullFineTuningMergedExportWritesTheTrainedWeights) {
  config::TrainOptions options = full_options("run");
  {
    Trainer trainer(*context_, options, quiet_hooks());
    for (int i = 0; i < 2; ++i) trainer.train_step();
    trainer.save_checkpoint();
  }
  auto trained = build_training_model(*context_, options, false);
  load_checkpoint_weights(*trained, options, "latest");
  export_merged(*trained, options.hf_dir, root_ / "merged", DType::kBF16);
  auto loaded = LlamaModel::load(*context_, root_ / "merged");
  auto base = LlamaModel::load(*context_, options.hf_dir);
  for (Parameter* parameter : trained->model->parameters().all()) {
    // bf16 on disk: each weight is the trained one rounded to 8 mantissa bits.
    const std::vector<float> want =
        Tensor::from_floats(parameter->value.shape(), parameter->value.to_floats(), DType::kBF16).to_floats();
    EXPECT_EQ(loaded->parameters().get(parameter->name).value.to_floats(), want) << parameter->name;
  }
  EXPECT_GT(max_abs_difference(base->parameters().get("model.layers.0.mlp.up_proj.weight").value.to_floats(),
                               trained->model->parameters().get("model.layers.0.mlp.up_proj.weight").value.to_floats()),
            1e-4);
}

TEST(ParseByteSize, DecimalAndBinaryUnits) {
  EXPECT_EQ(parse_byte_size("5GB"), 5'000'000'000ull);
  EXPECT_EQ(parse_byte_size("500MB"), 500'000'000ull);
  EXPECT_EQ(parse_byte_size("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_byte_size("20kb"), 20'000ull);
  EXPECT_EQ(parse_byte_size("1000"), 1000ull);
  EXPECT_EQ(testing::bad_input_message([] { parse_byte_size("5 parsecs"); }),
            "--max-shard-size '5 parsecs' is not a size (e.g. 5GB, 500MB, 2GiB, 1000000)");
  EXPECT_NE(testing::bad_input_message([] { parse_byte_size("0"); }).find("is not a size"), std::string::npos);
}

}  // namespace
}  // namespace llmft::trainer
