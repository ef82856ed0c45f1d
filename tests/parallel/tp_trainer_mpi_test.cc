// Tensor parallelism in the trainer, run under mpirun -np 2 (tp 2) and -np 4
// (tp 2 x dp 2) exactly as users launch jobs.
//
// 1. Against one process with the same global batch (the fixture's
//    documents are half a row each and unshuffled, so every layout's batches
//    hold the same documents): per-step losses and final trainable weights,
//    for full fine-tuning and LoRA on every linear. LoRA dropout is on where
//    the data rows are the same as the reference's: with dp 1 against one
//    process, and with dp 2 against a dp-2, tp-1 run (the masks are keyed by
//    the element's place in the whole input and by the data-parallel row,
//    not by the tp slice).
//    Tolerance: as for data parallelism (dp_trainer_mpi_test.cc): the
//    row-parallel outputs are summed in another order (~1e-7 relative per
//    op), AdamW normalises updates to ~lr, so weights after 5 steps agree to
//    ~1e-6 (bound 1e-5; LoRA's lr is ten times larger, bound 1e-4) and
//    losses to 1e-5 relative. Every step is clipped (max_grad_norm 0.05), and
//    the pre-clip norms agree to 1e-5: replicated gradients are counted once.
//    At tp 2 x dp 2 also with ZeRO-1 (AdamW state sharded over dp).
// 2. A checkpoint saved by the tp-2 run holds full tensors: a tp-1 run of the
//    same dp (one process; or dp 2 without tp) resumes it and its continued
//    losses and final weights match an uninterrupted run of that layout.
#include <atomic>
#include <cmath>
#include <fstream>

#include "nlohmann/json.hpp"
#include "trainer_mpi_fixture.h"

namespace llmft::trainer {
namespace {

using parallel::testing_support::mpi_grid;

class TensorParallelTrainer : public mpi_testing::TrainerUnderMpi {
 protected:
  // tp 2 over the world (Megatron's layout: world ranks 2d, 2d + 1 hold
  // replica d's two halves), so dp = world / 2.
  static std::unique_ptr<parallel::ParallelContext> tp2_grid() {
    parallel::Communicator& world = mpi_grid()->world();
    return parallel::ParallelContext::over(world.split(0, world.rank()), 2);
  }
  // The same data-parallel layout without tensor parallelism: world ranks
  // with equal rank % 2 form a dp-only grid (dp rank = world rank / 2, as in
  // the tp-2 grid); with dp 1, null (one process).
  static std::unique_ptr<parallel::ParallelContext> same_dp_grid() {
    parallel::Communicator& world = mpi_grid()->world();
    if (world.size() == 2) return nullptr;
    return parallel::ParallelContext::over(world.split(world.rank() % 2, world.rank()), 1);
  }

  // Small enough that every step is clipped, so a wrong global norm (a
  // replicated gradient counted twice, a shard left out) changes the update.
  static constexpr double kMaxGradNorm = 0.05;
  std::vector<double> norms_, reference_norms_;

  config::TrainOptions tp_options(bool lora, const std::string& run, parallel::ParallelContext& grid) const {
    config::TrainOptions o = options(lora, run, 2);
    o.max_grad_norm = kMaxGradNorm;
    o.tp = 2;
    o.dp = grid.dp_size();
    o.bucket_mb = 0.004;
    return o;
  }

  void expect_same_run(const std::vector<double>& expected_losses, const std::vector<NamedTensor>& expected_weights,
                       const std::vector<double>& losses, Trainer& trainer, parallel::ParallelContext& grid,
                       const std::string& what, double tolerance) {
    ASSERT_EQ(losses.size(), expected_losses.size()) << what;
    ASSERT_EQ(norms_.size(), reference_norms_.size()) << what;
    for (size_t i = 0; i < norms_.size(); ++i) {
      EXPECT_GT(reference_norms_[i], kMaxGradNorm) << what << ": step " << i + 1 << " was not clipped";
      EXPECT_NEAR(norms_[i], reference_norms_[i], 1e-5 * reference_norms_[i]) << what << ": grad norm, step " << i + 1;
    }
    for (size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], expected_losses[i], 1e-5 * std::abs(expected_losses[i])) << what << ": step " << i + 1;
    const std::vector<NamedTensor> found = mpi_testing::full_trainable(trainer, &grid);
    const double worst = mpi_testing::max_difference(expected_weights, found);
    EXPECT_LT(worst, tolerance) << what;
    if (grid.world_rank() == 0)
      std::printf("%s: max |weight difference| %.3g over %zu steps\n", what.c_str(), worst, losses.size());
    // Every rank ends with the same full model, bit for bit.
    const std::vector<std::string> hashes =
        grid.world().all_gather_strings(mpi_testing::weights_hash(found), "weight hashes");
    for (const std::string& hash : hashes) EXPECT_EQ(hash, hashes[0]) << what;
  }

  // The tp-2 run against a reference without tensor parallelism.
  void expect_same_as_without_tp(bool lora, float dropout, bool against_one_process, bool zero1 = false) {
    std::unique_ptr<parallel::ParallelContext> grid = tp2_grid();
    std::unique_ptr<parallel::ParallelContext> reference_grid = against_one_process ? nullptr : same_dp_grid();
    std::vector<double> reference_losses, losses;
    norms_.clear();
    reference_norms_.clear();
    config::TrainOptions reference_options =
        options(lora, "reference", reference_grid ? 2 : 2 * static_cast<int64_t>(grid->dp_size()));
    reference_options.lora_dropout = dropout;
    reference_options.max_grad_norm = kMaxGradNorm;
    Trainer reference(*context_, reference_options, hooks(&reference_losses, reference_grid.get(), &reference_norms_));
    reference.train();
    const std::vector<NamedTensor> expected = reference.model().trainable_tensors();

    config::TrainOptions tp_run = tp_options(lora, "tp", *grid);
    tp_run.lora_dropout = dropout;
    tp_run.zero1 = zero1;
    Trainer tensor_parallel(*context_, tp_run, hooks(&losses, grid.get(), &norms_));
    // Each rank holds half of every sharded matrix.
    int64_t sharded = 0;
    for (Parameter* parameter : tensor_parallel.model().trainable_parameters())
      if (parameter->shard.sharded()) {
        ++sharded;
        EXPECT_EQ(parameter->value.numel() * 2, shape_numel(parameter->shard.full_shape)) << parameter->name;
      }
    EXPECT_GT(sharded, 0);
    tensor_parallel.train();
    // LoRA trains at lr 1e-2, ten times full fine-tuning's: ten times the bound.
    expect_same_run(reference_losses, expected, losses, tensor_parallel, *grid,
                    str_cat(lora ? "LoRA" : "full", " dropout ", dropout, ", tp 2 x dp ", grid->dp_size(),
                            zero1 ? " with ZeRO-1" : "", " vs ", reference_grid ? "dp 2 without tp" : "one process"),
                    lora ? 1e-4 : 1e-5);
  }
};

TEST_F(TensorParallelTrainer, FullFineTuningMatchesOneProcess) {
  expect_same_as_without_tp(/*lora=*/false, 0.0f, /*against_one_process=*/true);
  // tp 2 x dp 2: ZeRO-1 over the dp ranks of each tp slice too.
  if (mpi_grid()->world_size() == 4)
    expect_same_as_without_tp(/*lora=*/false, 0.0f, /*against_one_process=*/true, /*zero1=*/true);
}

TEST_F(TensorParallelTrainer, LoraOnEveryLinearWithDropoutMatchesOneProcessAndTheSameDpWithoutTp) {
  if (mpi_grid()->world_size() == 2) {
    // dp 1: the rows are the one process's, dropout on.
    expect_same_as_without_tp(/*lora=*/true, 0.1f, /*against_one_process=*/true);
  } else {
    // dp 2: one process holds the same documents in other rows (no dropout),
    // dp 2 without tp the same rows (dropout on).
    expect_same_as_without_tp(/*lora=*/true, 0.0f, /*against_one_process=*/true);
    expect_same_as_without_tp(/*lora=*/true, 0.1f, /*against_one_process=*/false);
  }
}

TEST_F(TensorParallelTrainer, ACheckpointOfTheTp2RunResumesWithoutTpAndMatchesAnUninterruptedRun) {
  auto resumable = [&](const std::string& run) {
    config::TrainOptions o = options(/*lora=*/true, run, 2);
    o.lora_dropout = 0.1f;
    o.total_steps = 6;
    return o;
  };
  // The new layout: tp 1, same dp.
  std::unique_ptr<parallel::ParallelContext> new_layout = same_dp_grid();
  const int64_t reference_batch = new_layout ? 2 : 2 * (mpi_grid()->world_size() / 2);
  std::vector<double> uninterrupted;
  std::vector<NamedTensor> uninterrupted_weights;
  {
    config::TrainOptions o = resumable("uninterrupted");
    o.batch_size = reference_batch;
    Trainer trainer(*context_, o, hooks(&uninterrupted, new_layout.get()));
    trainer.train();
    uninterrupted_weights = trainer.model().trainable_tensors();
  }

  // tp 2: stopped after step 3 (a stop request, as SIGTERM), checkpointed.
  std::unique_ptr<parallel::ParallelContext> grid = tp2_grid();
  std::vector<double> first_part;
  std::atomic<bool> stop{false};
  TrainerHooks stopping = hooks(&first_part, grid.get());
  stopping.on_step = [&](const StepRecord& record) {
    first_part.push_back(record.loss);
    if (record.step == 3) stop = true;
  };
  stopping.stop_requested = &stop;
  config::TrainOptions saved = resumable("saved");
  saved.tp = 2;
  saved.dp = grid->dp_size();
  saved.checkpoint_dir = (root_ / "tp-saved").string();  // one directory for the job: world rank 0 writes
  {
    Trainer trainer(*context_, saved, stopping);
    EXPECT_EQ(trainer.train().final_step, 3);
  }
  // The files hold full tensors: a q_proj LoRA B of the full out features.
  if (mpi_grid()->world_rank() == 0) {
    const SafetensorsFile file = SafetensorsFile::open(root_ / "tp-saved" / "step-3" / "trainable.safetensors");
    EXPECT_EQ(file.entry("model.layers.0.self_attn.q_proj.lora_B.weight").shape, (Shape{32, 4}));
    EXPECT_EQ(file.entry("model.layers.0.mlp.down_proj.lora_A.weight").shape, (Shape{4, 48}));
  }
  mpi_grid()->world().barrier("checkpoint written");

  std::vector<double> second_part;
  config::TrainOptions resumed = resumable("resumed");
  resumed.batch_size = reference_batch;
  resumed.resume = (root_ / "tp-saved" / "step-3").string();
  if (new_layout) resumed.checkpoint_dir = (root_ / str_cat("resumed-half", mpi_grid()->world_rank() % 2)).string();
  Trainer trainer(*context_, resumed, hooks(&second_part, new_layout.get()));
  ASSERT_TRUE(trainer.resumed_from().has_value());
  trainer.train();
  std::vector<double> losses = first_part;
  losses.insert(losses.end(), second_part.begin(), second_part.end());
  ASSERT_EQ(losses.size(), uninterrupted.size());
  for (size_t i = 0; i < losses.size(); ++i)
    EXPECT_NEAR(losses[i], uninterrupted[i], 1e-5 * std::abs(uninterrupted[i])) << "step " << i + 1;
  const double worst = mpi_testing::max_difference(uninterrupted_weights, trainer.model().trainable_tensors());
  EXPECT_LT(worst, 1e-4);  // LoRA at lr 1e-2, as above
  if (mpi_grid()->world_rank() == 0)
    std::printf("saved at tp 2, resumed at tp 1 (dp %d): max |weight difference| %.3g\n",
                new_layout ? new_layout->dp_size() : 1, worst);
}

// A checkpoint of the tp 2 run (dp world / 2) resumed at another dp: by one
// process (tp 1 x dp 1) and by every rank as dp = world (tp 1). Padded rows
// and no shuffle buffer, so no saved rank had read a document ahead and the
// merged position is exact: the continued losses and final weights match an
// uninterrupted run of the new layout (same global batch of 4 rows). No
// dropout: another dp puts the documents in other rows.
TEST_F(TensorParallelTrainer, ACheckpointOfTheTp2RunResumesAtAnotherDataParallelSize) {
  parallel::Communicator& world = mpi_grid()->world();
  auto run_options = [&](const std::string& run, int64_t batch_size) {
    config::TrainOptions o = options(/*lora=*/true, run, batch_size);
    o.packed = false;  // PADDED: one document per row, nothing planned ahead
    o.total_steps = 6;
    return o;
  };
  std::unique_ptr<parallel::ParallelContext> grid = tp2_grid();
  const int64_t global_rows = 4;
  {
    config::TrainOptions saved = run_options("saved", global_rows / grid->dp_size());
    saved.tp = 2;
    saved.dp = grid->dp_size();
    saved.checkpoint_dir = (root_ / "tp-dp-saved").string();
    std::vector<double> unused;
    std::atomic<bool> stop{false};
    TrainerHooks stopping = hooks(&unused, grid.get());
    stopping.on_step = [&](const StepRecord& record) { stop = record.step == 3; };
    stopping.stop_requested = &stop;  // the schedule is the 6-step one's
    Trainer trainer(*context_, saved, stopping);
    EXPECT_EQ(trainer.train().final_step, 3);
  }
  world.barrier("checkpoint written");
  const std::string checkpoint = (root_ / "tp-dp-saved" / "step-3").string();

  // The new layouts: one process, and dp = world without tp.
  std::unique_ptr<parallel::ParallelContext> data_parallel = parallel::ParallelContext::over(world.split(0, world.rank()), 1);
  for (parallel::ParallelContext* layout : {static_cast<parallel::ParallelContext*>(nullptr), data_parallel.get()}) {
    const int dp = layout ? layout->dp_size() : 1;
    const std::string name = str_cat("dp", dp, "-rank", layout ? 0 : world.rank());
    std::vector<double> uninterrupted, continued;
    config::TrainOptions straight = run_options(str_cat("straight-", name), global_rows / dp);
    Trainer reference(*context_, straight, hooks(&uninterrupted, layout));
    reference.train();
    config::TrainOptions resumed = run_options(str_cat("resumed-", name), global_rows / dp);
    resumed.resume = checkpoint;
    Trainer trainer(*context_, resumed, hooks(&continued, layout));
    ASSERT_TRUE(trainer.resumed_from().has_value());
    trainer.train();
    ASSERT_EQ(continued.size(), 3u);
    for (size_t i = 0; i < continued.size(); ++i)
      EXPECT_NEAR(continued[i], uninterrupted[i + 3], 1e-5 * std::abs(uninterrupted[i + 3]))
          << "dp " << dp << ": step " << i + 4;
    const double worst =
        mpi_testing::max_difference(reference.model().trainable_tensors(), trainer.model().trainable_tensors());
    EXPECT_LT(worst, 1e-4) << "dp " << dp;  // LoRA at lr 1e-2, as above
    if (world.rank() == 0)
      std::printf("saved at tp 2 x dp %d, resumed at tp 1 x dp %d: max |weight difference| %.3g\n", grid->dp_size(),
                  dp, worst);
  }
}

}  // namespace
}  // namespace llmft::trainer

int main(int argc, char** argv) { return llmft::parallel::testing_support::run_mpi_tests(argc, argv); }
