// The training loop (DESIGN.md trainer/, "Data flow of one step").
//
// One optimizer step:
//   1. fetch all grad_accumulation_steps micro-batches of this rank (host
//      tensors) and count their trained tokens (targets >= 0); all-reduce the
//      count over data-parallel ranks: step_tokens;
//   2. for each micro-batch, forward_backward with
//        loss_scale = micro_tokens / step_tokens  (x the loss scaler's scale for f16)
//      so the accumulated gradient is that of the mean cross-entropy over every
//      trained token of the step on every rank, not a mean of per-micro-batch
//      means (issue 9 item 6: the gradient-accumulation bug several tools
//      shipped); LoRA dropout's step counter is step * accumulation + micro;
//   3. all-reduce (sum) the gradients over ranks;
//   4. f16 only: a non-finite gradient skips the step and backs the scale off
//      (optim/loss_scaler.h);
//   5. clip the global norm (measured un-scaled), AdamW with lr from the
//      schedule at the number of updates taken so far, un-scaling fused into
//      AdamW's grad_multiplier.
// The logged loss is the same token-weighted mean over the step.
//
// Checkpoints (trainer/checkpoint.h) hold the trainable weights, AdamW's
// masters (when they are not the f32 values themselves) and moments, the step
// and update counts, the loss scaler, the data loader's state and the LoRA
// dropout counter, so a resumed run repeats the uninterrupted run's losses and
// weights bit for bit (tests/trainer/trainer_test.cc).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "core/context.h"
#include "data/loader.h"
#include "kernels/ops.h"
#include "optim/adamw.h"
#include "optim/loss_scaler.h"
#include "optim/lr_schedule.h"
#include "optim/zero1.h"
#include "parallel/communicator.h"
#include "parallel/gradient_buckets.h"
#include "parallel/parallel_context.h"
#include "trainer/checkpoint.h"
#include "trainer/metrics.h"
#include "config/train_options.h"
#include "trainer/training_setup.h"

namespace llmft::trainer {

struct StepRecord {
  int64_t step = 0;            // 1-based number of this optimizer step
  double loss = 0.0;           // mean cross-entropy over the step's trained tokens (all ranks)
  int64_t trained_tokens = 0;  // target tokens of the step (all ranks)
  int64_t input_tokens = 0;    // rows x seq_len of the step (all ranks)
  int64_t real_tokens = 0;     // of those, positions holding a document's token (this rank)
  double learning_rate = 0.0;
  double grad_norm = 0.0;   // global L2 norm before clipping, un-scaled
  bool skipped = false;     // no update: non-finite gradient (f16) or no trained token
  double loss_scale = 1.0;  // the scale the step ran with (1 without loss scaling)
  int64_t skipped_steps = 0;  // overflow-skipped steps of the run so far, this one included
  // Data parallelism (zero with one rank): this rank's gradient all-reduce.
  int64_t allreduce_bytes = 0;                 // bytes all-reduced per step
  int64_t buckets = 0;                         // gradient buckets all-reduced
  int64_t buckets_during_backward = 0;         // of those, started while the backward ran
  double communication_seconds = 0.0;         // the bucket all-reduces' own durations
  double exposed_communication_seconds = 0.0;  // waited for after the backward
};

// Peak bytes per MemoryCategory (core/allocator.h), indexed by the enum.
struct MemoryPeaks {
  std::array<double, kNumMemoryCategories> bytes{};
  double total = 0.0;  // the allocator's peak of everything together
};

struct EvalResult {
  double loss = 0.0;        // mean cross-entropy over every trained token of the validation split
  double perplexity = 0.0;  // exp(loss)
  int64_t trained_tokens = 0;
  int64_t records = 0;      // records evaluated (all ranks)
  int64_t rows = 0;         // rows holding at least one token (all ranks)
  std::string long_documents;  // data::long_documents_report, empty when no record is longer than seq_len
};

// "loss 0.5 | perplexity 1.6 | 987 tokens | 40 records | 13 rows", and the
// long-document report when there is one.
std::string format_eval_summary(const EvalResult& result);

// Mean cross-entropy of `model` (as it is: set dropout off first) over every
// batch of `loader` until it ends; with `dp`, every data-parallel rank's
// loader holds its share of the split and the sums are reduced over ranks.
EvalResult evaluate_loss(Context& context, LlamaModel& model, data::Loader& loader,
                         parallel::Communicator* dp = nullptr);

enum class StopReason { kFinished, kStopRequested };

struct TrainResult {
  StopReason reason = StopReason::kFinished;
  // kStopRequested: the signal every rank agreed on (the largest number any
  // rank received; SIGTERM when the flag was set without one).
  int stop_signal = 0;
  int64_t final_step = 0;
  std::optional<std::filesystem::path> checkpoint;  // written at the end (or on the stop request)
};

struct TrainerHooks {
  // The process grid (world, dp and tp groups); null: one process.
  parallel::ParallelContext* parallel = nullptr;
  // Progress and eval lines; null: silent.
  std::FILE* progress = stdout;
  // Polled at every step boundary (set by a SIGTERM/SIGINT handler, see
  // trainer/stop_signal.h); when it reads true on any rank, every rank
  // (agreeing through an all-reduce) checkpoints and returns at that step.
  const std::atomic<bool>* stop_requested = nullptr;
  // Called after every optimizer step (tests record the losses).
  std::function<void(const StepRecord&)> on_step;
  // Called with the step number and the optimizer's parameters once their
  // gradients are complete (summed over ranks, still loss-scaled), before
  // the non-finite check: fault injection for tests (STYLE.md 12).
  std::function<void(int64_t step, const std::vector<Parameter*>& parameters)> inspect_gradients;
  // Injectable wall clock (seconds) for tokens/s and ETA.
  std::function<double()> clock;
  // Keep the optimizer's parameters as host copies of the trainable weights:
  // gradients are copied to the host after the backward, reduced, clipped and
  // applied there, and the new values copied back. On for a CUDA context only
  // with data parallelism (the communicator reduces host buffers); otherwise
  // AdamW runs on the device (optim/adamw.h). Tests turn it on for the CPU to
  // check it changes no bit.
  bool host_optimizer_copy = false;
};

class Trainer {
 public:
  // Builds the model and PEFT, optimizer, schedule, scaler and loaders, and
  // resumes from options.resume when set ("latest" finds nothing: fresh start).
  Trainer(Context& context, config::TrainOptions options, TrainerHooks hooks = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Steps until schedule total_steps (or a stop request), with logging,
  // evaluation and checkpoints as configured; checkpoints at the end.
  TrainResult train();
  // One optimizer step (steps 1-5 above). The step's gradients stay in the
  // parameters until the next step starts (tests read them).
  StepRecord train_step();
  // Mean loss over the validation split (dropout off).
  EvalResult evaluate();
  // Writes step-<step()> into options.checkpoint_dir: every rank's loader
  // position gathered to rank 0, which writes, then a barrier so that no rank
  // goes on (or exits) before the checkpoint is complete. Collective; the
  // path is empty on ranks other than 0.
  std::filesystem::path save_checkpoint();

  int64_t step() const { return step_; }
  // Peak bytes by memory category (and all together) on the context's
  // allocator so far; printed and logged after the first step.
  MemoryPeaks memory_peaks() const;
  TrainingModel& model() { return *model_; }
  // AdamW over the trainable parameters, or over this rank's ZeRO-1 segments.
  optim::AdamW& optimizer() { return zero1_ ? zero1_->adamw() : *optimizer_; }
  // Null without loss scaling (on for f16, optional otherwise).
  const optim::LossScaler* loss_scaler() const { return scaler_.get(); }
  const config::TrainOptions& options() const { return options_; }
  // Where the run resumed from, if it did.
  const std::optional<std::filesystem::path>& resumed_from() const { return resumed_from_; }

 private:
  // A checkpointed tensor of this rank and the slice of the full tensor it is.
  struct ShardedTensor {
    std::string name;
    Tensor tensor;
    const ParameterShard* shard;
    // ZeRO-1: the parameter and AdamW tensor ("master", "exp_avg",
    // "exp_avg_sq") a host copy stands for.
    const Parameter* parameter = nullptr;
    std::string which = {};
  };
  void resume(const std::string& where);
  // Rank 0's part of save_checkpoint.
  std::filesystem::path write_checkpoint(std::vector<std::string> loader_states, std::span<const NamedTensor> trainable,
                                         std::span<const NamedTensor> optimizer_state);
  // The optimizer's tensors by checkpoint name. With ZeRO-1 they are host
  // tensors: assembled from every rank's segments when `assemble`
  // (collective), else zeros to load into (then scattered into segments).
  std::vector<ShardedTensor> optimizer_tensors(bool assemble = true);
  // The weights the optimizer updates and checkpoints hold: the model's
  // trainable parameters, or their host copies.
  std::vector<Parameter*> optimizer_parameters();
  std::vector<ShardedTensor> checkpoint_tensors();
  // Full tensors for the checkpoint: tensor-parallel slices gathered over the
  // tp group (collective), replicated tensors as they are.
  std::vector<NamedTensor> gather_full(const std::vector<ShardedTensor>& tensors);
  // `load` fills full-shape tensors; each rank keeps its slice.
  void load_full(const std::vector<ShardedTensor>& tensors,
                 const std::function<void(std::span<const NamedTensor>)>& load);
  // The sum of squares and finiteness of every gradient of the model, the
  // same on every rank of the grid.
  ops::GradientStats global_gradient_stats(Context& context);
  // This rank's gradients the optimizer reads: the parameters', or the
  // reduce-scattered ZeRO-1 segments'.
  std::vector<Parameter*> updated_parameters();
  void copy_values_to_model();
  void say(const std::string& line);
  void report_memory();
  double now() const;

  Context& context_;
  config::TrainOptions options_;
  TrainerHooks hooks_;
  std::unique_ptr<parallel::ParallelContext> single_process_;
  parallel::ParallelContext* parallel_ = nullptr;
  parallel::Communicator* dp_ = nullptr;  // parallel_->dp()
  // CUDA: NCCL over the dp group, for the gradient buckets (device memory),
  // and over the tp group, for the model's activations.
  std::unique_ptr<parallel::Communicator> device_dp_;
  std::unique_ptr<parallel::Communicator> device_tp_;
  // Data parallelism: the gradients' flat buffers and their all-reduces.
  std::unique_ptr<parallel::GradientBuckets> buckets_;

  std::unique_ptr<TrainingModel> model_;
  // host_optimizer_copy: a CPU context for the optimizer and the host copies
  // (parallel to model_->trainable_parameters()).
  std::unique_ptr<Context> host_context_;
  ParameterRegistry host_parameters_;
  int64_t eos_id_ = -1;
  std::unique_ptr<data::Loader> loader_;
  std::unique_ptr<optim::AdamW> optimizer_;          // null with ZeRO-1
  std::unique_ptr<optim::Zero1Optimizer> zero1_;     // parallel.zero1 with dp > 1
  std::unique_ptr<optim::LrSchedule> schedule_;
  std::unique_ptr<optim::LossScaler> scaler_;  // null unless compute dtype is f16
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<CheckpointWriter> checkpoints_;

  int64_t step_ = 0;  // optimizer steps completed (taken or skipped)
  // Micro-batches run so far: LoRA dropout's step counter (its masks are a
  // pure function of seed, counter and element), checkpointed as the rng
  // stream "lora_dropout".
  uint64_t dropout_micro_steps_ = 0;
  int64_t skipped_steps_ = 0;  // updates skipped for a non-finite gradient
  int64_t last_checkpoint_step_ = -1;
  // The first step's measured memory peaks, written with the next metrics record.
  ScalarValues pending_memory_values_;
  std::optional<std::filesystem::path> resumed_from_;
};

}  // namespace llmft::trainer
