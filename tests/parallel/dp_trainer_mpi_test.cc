// Data parallelism through MPI, run under mpirun -np 2 and -np 4 exactly as
// users launch jobs (one thread per rank).
//
// 1. DP = world size trains like one process with the same global batch:
//    every rank also runs the one-process reference itself (batch_size x
//    world rows per micro-batch) and compares per-step losses and final
//    trainable weights, for full fine-tuning and LoRA, with gradient
//    accumulation 2 and packed rows.
//    Why the two are comparable: with shuffle_buffer 0 the loader deals
//    record g of the epoch's order to rank g % dp, so the ranks' micro-batch
//    i together hold the reference's micro-batch i documents; every document
//    is exactly half a row (8 tokens, seq_len 16), so packing never cuts one
//    and doc_start keeps the two documents of a row apart: the step's
//    gradient is the same sum of per-document terms, grouped differently.
//    Tolerance: fp32 sums in another order (per-rank partial sums, then the
//    all-reduce) differ by ~1e-7 relative per step; AdamW normalises each
//    update to ~lr, so weights after 5 steps at lr 1e-3 agree to ~1e-6
//    (measured below 5e-7; bound 1e-5), losses to 1e-5 relative.
//    Every rank must end with bit-identical weights (replicas never drift).
// 2. A run stopped at step 3 by a stop request seen on rank 1 only stops
//    every rank at step 3, and its resume (per-rank shuffled loaders, LoRA
//    dropout) repeats the uninterrupted run's losses bit for bit; the
//    checkpoint holds a different loader position per rank (the control:
//    restoring rank 0's on every rank would repeat rank 0's data).
#include <atomic>
#include <cmath>
#include <fstream>
#include <limits>

#include "nlohmann/json.hpp"
#include "trainer_mpi_fixture.h"

namespace llmft::trainer {
namespace {

using parallel::testing_support::mpi_grid;
namespace fs = std::filesystem;

class DataParallelTrainer : public mpi_testing::TrainerUnderMpi {
 protected:
  void expect_same_as_one_process(bool lora) {
    parallel::ParallelContext& grid = *mpi_grid();
    const int world = grid.world_size();
    std::vector<double> reference_losses, losses;
    Trainer reference(*context_, options(lora, "reference", 2 * world), hooks(&reference_losses, nullptr));
    reference.train();
    config::TrainOptions dp_options = options(lora, "dp", 2);
    dp_options.dp = world;
    dp_options.bucket_mb = 0.004;  // ~4 KB buckets: many, most complete before the backward ends
    TrainerHooks dp_hooks = hooks(&losses, &grid);
    std::vector<StepRecord> records;
    dp_hooks.on_step = [&](const StepRecord& record) {
      losses.push_back(record.loss);
      records.push_back(record);
    };
    Trainer data_parallel(*context_, dp_options, dp_hooks);
    data_parallel.train();
    // Every trainable gradient is all-reduced once per step, in buckets that
    // start during the backward, except those holding a gradient that is
    // final only at its end (the embedding's).
    int64_t trainable_bytes = 0;
    for (Parameter* parameter : data_parallel.model().trainable_parameters())
      trainable_bytes += parameter->value.numel() * 4;
    for (const StepRecord& record : records) {
      EXPECT_EQ(record.allreduce_bytes, trainable_bytes);
      EXPECT_GT(record.buckets, 2);
      if (lora) {
        EXPECT_EQ(record.buckets_during_backward, record.buckets);  // LoRA lives in the blocks
      } else {
        EXPECT_GT(record.buckets_during_backward, 0);
        EXPECT_LT(record.buckets_during_backward, record.buckets);  // the embedding's waits for the end
      }
    }

    ASSERT_EQ(losses.size(), reference_losses.size());
    for (size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], reference_losses[i], 1e-5 * std::abs(reference_losses[i])) << "step " << i + 1;
    const double worst =
        mpi_testing::max_difference(reference.model().trainable_tensors(), data_parallel.model().trainable_tensors());
    EXPECT_LT(worst, 1e-5);
    if (grid.world_rank() == 0)
      std::printf("dp %d vs one process (%s): max |weight difference| %.3g over %zu steps\n", world,
                  lora ? "LoRA" : "full", worst, losses.size());
    // Replicas are identical bit for bit.
    const std::vector<std::string> hashes = grid.world().all_gather_strings(
        mpi_testing::weights_hash(data_parallel.model().trainable_tensors()), "hashes");
    for (const std::string& hash : hashes) EXPECT_EQ(hash, hashes[0]);
  }

  // Prompt, P- and prefix tuning, bottleneck adapters: their parameters' gradients (summed over a
  // rank's sequences by the method, then over ranks by the buckets) give the
  // one-process run's losses and weights.
  void expect_method_same_as_one_process(const std::string& peft) {
    parallel::ParallelContext& grid = *mpi_grid();
    const int world = grid.world_size();
    auto method_options = [&](const std::string& run, int64_t batch_size) {
      config::TrainOptions result = options(/*lora=*/true, run, batch_size);
      result.peft = peft;
      result.num_virtual_tokens = 3;
      result.encoder_hidden_size = 8;
      result.prefix_projection = true;
      result.bottleneck_placement = "houlsby";
      result.bottleneck_reduction_factor = 4;
      result.packed = peft == "prefix_tuning" || peft == "bottleneck";  // virtual tokens need padded rows
      return result;
    };
    std::vector<double> reference_losses, losses;
    Trainer reference(*context_, method_options("reference-" + peft, 2 * world), hooks(&reference_losses, nullptr));
    reference.train();
    config::TrainOptions dp_options = method_options("dp-" + peft, 2);
    dp_options.dp = world;
    Trainer data_parallel(*context_, dp_options, hooks(&losses, &grid));
    data_parallel.train();
    ASSERT_EQ(losses.size(), reference_losses.size());
    for (size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], reference_losses[i], 1e-5 * std::abs(reference_losses[i])) << peft << " step " << i + 1;
    const double worst =
        mpi_testing::max_difference(reference.model().trainable_tensors(), data_parallel.model().trainable_tensors());
    EXPECT_LT(worst, 1e-5) << peft;
    EXPECT_NE(reference_losses.front(), reference_losses.back()) << peft << ": nothing trained";
    if (grid.world_rank() == 0)
      std::printf("dp %d vs one process (%s): max |weight difference| %.3g over %zu steps\n", world, peft.c_str(),
                  worst, losses.size());
  }
};

TEST_F(DataParallelTrainer, PromptPPrefixTuningAndBottleneckMatchOneProcessWithTheSameGlobalBatch) {
  for (const char* peft : {"prompt_tuning", "p_tuning", "prefix_tuning", "bottleneck"})
    expect_method_same_as_one_process(peft);
}

TEST_F(DataParallelTrainer, FullFineTuningMatchesOneProcessWithTheSameGlobalBatch) {
  expect_same_as_one_process(/*lora=*/false);
}

TEST_F(DataParallelTrainer, LoraMatchesOneProcessWithTheSameGlobalBatch) { expect_same_as_one_process(/*lora=*/true); }

TEST_F(DataParallelTrainer, StopSeenByRankOneStopsEveryRankAndResumeRepeatsTheLossesBitForBit) {
  parallel::ParallelContext& grid = *mpi_grid();
  auto resumable = [&](const std::string& run) {
    config::TrainOptions o = options(/*lora=*/true, run, 2);
    o.shuffle_buffer = 16;  // per-rank shuffle buffers: each rank's position matters
    o.lora_dropout = 0.1f;
    o.total_steps = 6;
    o.resume = "latest";
    // One checkpoint directory for the job (rank 0 writes it).
    o.checkpoint_dir = (root_ / run).string();
    return o;
  };
  std::vector<double> uninterrupted;
  {
    Trainer trainer(*context_, resumable("uninterrupted"), hooks(&uninterrupted, &grid));
    trainer.train();
  }

  std::vector<double> first_part;
  std::atomic<bool> stop{false};
  TrainerHooks stopping = hooks(&first_part, &grid);
  const bool is_rank_one = grid.world_rank() == 1;
  stopping.on_step = [&](const StepRecord& record) {
    first_part.push_back(record.loss);
    if (is_rank_one && record.step == 3) stop = true;  // as if SIGTERM reached rank 1 only
  };
  stopping.stop_requested = &stop;
  TrainResult stopped;
  {
    Trainer trainer(*context_, resumable("stopped"), stopping);
    stopped = trainer.train();
  }
  EXPECT_EQ(stopped.reason, StopReason::kStopRequested);
  EXPECT_EQ(stopped.final_step, 3) << "every rank stops at the step where rank 1 saw the request";
  EXPECT_EQ(first_part.size(), 3u);

  // Each rank's loader position is in the checkpoint, and they differ.
  if (grid.world_rank() == 0) {
    std::ifstream file(root_ / "stopped" / "step-3" / "state.json");
    const nlohmann::json state = nlohmann::json::parse(file);
    ASSERT_EQ(state["data_loader_ranks"].size(), static_cast<size_t>(grid.dp_size()));
    EXPECT_NE(state["data_loader_ranks"][0], state["data_loader_ranks"][1]);
  }

  std::vector<double> second_part;
  {
    Trainer trainer(*context_, resumable("stopped"), hooks(&second_part, &grid));
    ASSERT_TRUE(trainer.resumed_from().has_value());
    trainer.train();
  }
  // One process continues the dp checkpoint too (the ranks' positions merge
  // into one of the record stream: data/loader.h RedealPosition).
  {
    config::TrainOptions alone = resumable("stopped");
    alone.batch_size = 2 * grid.dp_size();
    alone.checkpoint_dir = (root_ / str_cat("alone-rank", grid.world_rank())).string();
    alone.resume = (root_ / "stopped" / "step-3").string();
    std::vector<double> continued;
    Trainer trainer(*context_, alone, hooks(&continued, nullptr));
    ASSERT_TRUE(trainer.resumed_from().has_value());
    EXPECT_EQ(trainer.step(), 3);
    trainer.train();
    EXPECT_EQ(continued.size(), 3u);
  }

  std::vector<double> resumed = first_part;
  resumed.insert(resumed.end(), second_part.begin(), second_part.end());
  ASSERT_EQ(resumed.size(), uninterrupted.size());
  for (size_t i = 0; i < resumed.size(); ++i) EXPECT_EQ(resumed[i], uninterrupted[i]) << "step " << i + 1;
}

// ZeRO-1 (optim/zero1.h) against plain data parallelism at the same dp:
// the same per-step losses and final weights (the update is the same
// element-wise AdamW; only the gradient sums may run in another order:
// reduce-scatter instead of all-reduce, so the plain-DP tolerance applies),
// with about 1/dp of the optimizer state per rank; full fine-tuning in f32
// (moments only: masters are the values) and LoRA in bf16 (fp32 masters).
// Then its checkpoint (full tensors by name) resumes with and without ZeRO-1
// and the continued losses match an uninterrupted run.
TEST_F(DataParallelTrainer, Zero1MatchesPlainDataParallelWithAboutOneOverDpOfTheOptimizerState) {
  parallel::ParallelContext& grid = *mpi_grid();
  const int dp = grid.world_size();
  for (const bool lora : {false, true}) {
    auto run_options = [&](const std::string& run, bool zero1) {
      config::TrainOptions o = options(lora, run, 2);
      o.dp = dp;
      o.zero1 = zero1;
      o.bucket_mb = 0.004;
      o.max_grad_norm = 0.05;  // every step clipped: the global norm from the shards decides the update
      if (lora) o.compute_dtype = o.weights_dtype = "bf16";
      return o;
    };
    std::vector<double> plain_losses, sharded_losses, plain_norms, sharded_norms;
    Trainer plain(*context_, run_options("plain", false), hooks(&plain_losses, &grid, &plain_norms));
    plain.train();
    Trainer sharded(*context_, run_options("zero1", true), hooks(&sharded_losses, &grid, &sharded_norms));
    sharded.train();
    const std::string what = str_cat(lora ? "LoRA bf16" : "full f32", " ZeRO-1 at dp ", dp);
    ASSERT_EQ(sharded_losses.size(), plain_losses.size());
    for (size_t i = 0; i < plain_losses.size(); ++i)
      EXPECT_NEAR(sharded_losses[i], plain_losses[i], 1e-5 * std::abs(plain_losses[i])) << what << ": step " << i + 1;
    for (size_t i = 0; i < plain_norms.size(); ++i) {
      EXPECT_GT(plain_norms[i], 0.05) << what << ": step " << i + 1 << " was not clipped";
      EXPECT_NEAR(sharded_norms[i], plain_norms[i], 1e-5 * plain_norms[i]) << what << ": grad norm, step " << i + 1;
    }
    const double worst =
        mpi_testing::max_difference(plain.model().trainable_tensors(), sharded.model().trainable_tensors());
    // bf16 weights: one bf16 step (2^-8 relative) of a ~0.1 weight may flip.
    EXPECT_LT(worst, lora ? 1e-3 : 1e-5) << what;
    const std::vector<std::string> hashes = grid.world().all_gather_strings(
        mpi_testing::weights_hash(sharded.model().trainable_tensors()), "hashes");
    for (const std::string& hash : hashes) EXPECT_EQ(hash, hashes[0]) << what << ": replicas differ";
    // Optimizer memory: at most 1/dp + 5% of the unsharded state.
    const double unsharded = static_cast<double>(plain.optimizer().state_bytes());
    const double per_rank = static_cast<double>(sharded.optimizer().state_bytes());
    const double worst_rank = static_cast<double>(grid.world().all_reduce_max(static_cast<int64_t>(per_rank), "bytes"));
    EXPECT_LE(worst_rank, (1.0 / dp + 0.05) * unsharded) << what;
    EXPECT_GT(per_rank, 0.0) << what;
    if (grid.world_rank() == 0)
      std::printf("%s: max |weight difference| %.3g; optimizer state %.0f of %.0f bytes per rank (%.3f)\n",
                  what.c_str(), worst, worst_rank, unsharded, worst_rank / unsharded);
  }

  // Resume: saved by a ZeRO-1 run at step 3, continued with and without it.
  auto resumable = [&](const std::string& run, bool zero1) {
    config::TrainOptions o = options(/*lora=*/true, run, 2);
    o.dp = dp;
    o.zero1 = zero1;
    o.bucket_mb = 0.004;
    o.total_steps = 6;
    o.checkpoint_dir = (root_ / run).string();
    return o;
  };
  std::vector<double> uninterrupted;
  {
    Trainer trainer(*context_, resumable("zero1-uninterrupted", true), hooks(&uninterrupted, &grid));
    trainer.train();
  }
  std::vector<double> first_part;
  std::atomic<bool> stop{false};
  TrainerHooks stopping = hooks(&first_part, &grid);
  stopping.on_step = [&](const StepRecord& record) {
    first_part.push_back(record.loss);
    if (record.step == 3) stop = true;
  };
  stopping.stop_requested = &stop;
  {
    Trainer trainer(*context_, resumable("zero1-saved", true), stopping);
    trainer.train();
  }
  for (const bool zero1 : {true, false}) {
    config::TrainOptions o = resumable(str_cat("zero1-resumed-", zero1), zero1);
    o.resume = (root_ / "zero1-saved" / "step-3").string();
    std::vector<double> second_part;
    Trainer trainer(*context_, o, hooks(&second_part, &grid));
    trainer.train();
    std::vector<double> losses = first_part;
    losses.insert(losses.end(), second_part.begin(), second_part.end());
    ASSERT_EQ(losses.size(), uninterrupted.size());
    for (size_t i = 0; i < losses.size(); ++i) {
      if (zero1) {
        EXPECT_EQ(losses[i], uninterrupted[i]) << "resumed with ZeRO-1: step " << i + 1;  // the same run, bit for bit
      } else {
        EXPECT_NEAR(losses[i], uninterrupted[i], 1e-5 * std::abs(uninterrupted[i])) << "resumed without: step " << i + 1;
      }
    }
  }
}

// With ZeRO-1 only one rank holds a given summed gradient element: an Inf
// there (injected into rank 1's first segment at step 2) must still skip the
// step on every rank, with loss scaling backing off everywhere.
TEST_F(DataParallelTrainer, Zero1AnInfInOneRanksShardSkipsTheStepOnEveryRank) {
  parallel::ParallelContext& grid = *mpi_grid();
  config::TrainOptions o = options(/*lora=*/true, "zero1-inf", 2);
  o.dp = grid.world_size();
  o.zero1 = true;
  o.loss_scaling = true;
  o.bucket_mb = 0.004;
  std::vector<StepRecord> records;
  TrainerHooks h = hooks(nullptr, &grid);
  h.on_step = [&](const StepRecord& record) { records.push_back(record); };
  const bool injector = grid.world_rank() == 1;
  h.inspect_gradients = [&](int64_t step, const std::vector<Parameter*>& updated) {
    if (!injector || step != 2) return;
    ASSERT_FALSE(updated.empty());
    Tensor grad = updated.front()->grad;
    std::vector<float> values = grad.to_floats();
    values[0] = std::numeric_limits<float>::infinity();
    grad.copy_from(Tensor::from_floats(grad.shape(), values));
  };
  Trainer trainer(*context_, o, h);
  trainer.train();
  ASSERT_EQ(records.size(), 5u);
  for (const StepRecord& record : records) EXPECT_EQ(record.skipped, record.step == 2) << "step " << record.step;
  EXPECT_EQ(records.back().skipped_steps, 1);
  EXPECT_LT(records[2].loss_scale, records[1].loss_scale) << "the scale backs off after the skipped step";
  const std::vector<std::string> hashes = grid.world().all_gather_strings(
      mpi_testing::weights_hash(trainer.model().trainable_tensors()), "hashes");
  for (const std::string& hash : hashes) EXPECT_EQ(hash, hashes[0]) << "replicas differ";
}

TEST_F(DataParallelTrainer, AConfigWhoseDpDisagreesWithTheLaunchStopsBeforeAnyWork) {
  parallel::ParallelContext& grid = *mpi_grid();
  config::TrainOptions wrong = options(false, "wrong", 2);
  wrong.dp = grid.world_size() + 1;
  std::vector<double> losses;
  try {
    Trainer trainer(*context_, wrong, hooks(&losses, &grid));
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find(str_cat("field 'parallel.dp': ", grid.world_size() + 1, ", but ",
                                                     grid.world_size(), " process(es) were launched")),
              std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace llmft::trainer

int main(int argc, char** argv) { return llmft::parallel::testing_support::run_mpi_tests(argc, argv); }
