#include "trainer/trainer.h"

#include <csignal>
#include <climits>
#include <cmath>
#include <limits>
#include <span>

#include "core/clock.h"
#include "core/error.h"
#include "optim/grad_clip.h"
#include "parallel/shard.h"
#include "parallel/nccl_communicator.h"
#include "trainer/stop_signal.h"

namespace llmft::trainer {
namespace {

constexpr const char* kDropoutStream = "lora_dropout";

int64_t count_trained_tokens(const Tensor& targets) {
  const int32_t* data = targets.data<int32_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) count += data[i] >= 0 ? 1 : 0;
  return count;
}

// The loader's host batch as the model's batch on the context's device, with
// the packing information (position ids restarting per document, document
// starts bounding attention) passed through.
Batch to_model_batch(Context& context, const data::Batch& batch) {
  Batch model_batch;
  model_batch.input_ids = context.upload(batch.input_ids);
  model_batch.targets = context.upload(batch.targets);
  model_batch.position_ids = context.upload(batch.position_ids);
  model_batch.doc_start = context.upload(batch.doc_start);
  return model_batch;
}

}  // namespace

Trainer::Trainer(Context& context, config::TrainOptions options, TrainerHooks hooks)
    : context_(context), options_(std::move(options)), hooks_(std::move(hooks)) {
  // The per-category peaks reported after the first step are this run's.
  context_.allocator().reset_category_peaks();
  // precision.deterministic: the CUDA kernels sum without float atomics.
  context_.set_deterministic(options_.deterministic);
  if (!hooks_.parallel) single_process_ = parallel::ParallelContext::single_process();
  parallel_ = hooks_.parallel ? hooks_.parallel : single_process_.get();
  dp_ = &parallel_->dp();
  // What was launched decides the grid; a config that says otherwise stops
  // the run before any work.
  if (options_.tp != parallel_->tp_size())
    throw_bad_input(options_.source, ": field 'parallel.tp': ", options_.tp, ", but the process grid has tp ",
                    parallel_->tp_size());
  if (options_.dp != 0 && options_.dp != parallel_->dp_size())
    throw_bad_input(options_.source, ": field 'parallel.dp': ", options_.dp, ", but ", parallel_->world_size(),
                    " process(es) were launched (mpirun -np ", parallel_->world_size(), ") with tp ",
                    parallel_->tp_size(), ", which makes dp ", parallel_->dp_size(),
                    "; set it to that or leave it out");

  // Tensor parallelism: the model's block-level collectives take its own
  // tensors, so on CUDA they run over NCCL.
  parallel::Communicator* model_tp = nullptr;
  if (parallel_->tp_size() > 1) {
    model_tp = &parallel_->tp();
    if (context_.is_cuda()) {
      if (!parallel::nccl_communicator_built())
        throw_bad_input(options_.source, ": field 'parallel.tp': ", options_.tp,
                        " on CUDA needs NCCL, which this build of llmft lacks (rebuild with NCCL, or use tp 1)");
      device_tp_ = parallel::make_nccl_communicator(parallel_->tp(), context_, options_.timeout_s,
                                                    [grid = parallel_](int code) { grid->abort_job(code); });
      model_tp = device_tp_.get();
    }
  }
  model_ = build_training_model(context_, options_, /*for_training=*/true, model_tp);
  if (model_->peft) model_->peft->set_data_parallel_rank(dp_->rank());
  const ModelConfig& model_config = model_->model->config();
  eos_id_ = document_eos_id(options_, model_config);

  optim::AdamWConfig adamw;
  adamw.beta1 = static_cast<float>(options_.beta1);
  adamw.beta2 = static_cast<float>(options_.beta2);
  adamw.eps = static_cast<float>(options_.eps);
  adamw.weight_decay = static_cast<float>(options_.weight_decay);
  if (options_.exclude_norms_and_biases_from_decay) adamw.exclude_from_decay = optim::is_norm_or_bias;
  // AdamW runs on the context's device (ops::adamw_update), so a CUDA run keeps
  // masters and moments on the GPU and never copies weights or gradients to
  // the host. With data parallelism on CUDA the gradients are all-reduced on
  // the device by NCCL (bootstrapped over the host communicator, which keeps
  // the scalar reductions); only a communicator of host memory (a build
  // without NCCL) makes the optimizer work on host copies.
  if (context_.is_cuda() && dp_->size() > 1 && !dp_->device_memory() && parallel::nccl_communicator_built()) {
    device_dp_ = parallel::make_nccl_communicator(*dp_, context_, options_.timeout_s,
                                                  [grid = parallel_](int code) { grid->abort_job(code); });
  }
  parallel::Communicator& gradient_dp = device_dp_ ? *device_dp_ : *dp_;
  const bool host_reduction = context_.is_cuda() && dp_->size() > 1 && !gradient_dp.device_memory();
  if (hooks_.host_optimizer_copy || host_reduction) {
    MemoryCategoryScope category(MemoryCategory::kTrainableWeights);
    host_context_ = Context::cpu(context_.seed());
    for (Parameter* parameter : model_->trainable_parameters()) {
      Parameter& copy =
          host_parameters_.add(*host_context_, parameter->name, parameter->value.shape(), parameter->value.dtype());
      copy.value.copy_from(parameter->value);
      copy.shard = parameter->shard;
    }
    host_parameters_.allocate_grads(*host_context_, DType::kF32);
  }
  // Data parallelism: the optimizer's gradients move into flat buckets. On
  // the model's own gradients, each bucket's all-reduce (ZeRO-1:
  // reduce-scatter) starts as soon as the backward has completed it (the
  // model reports stages); on host copies everything is reduced after the copy.
  const bool zero1 = options_.zero1 && dp_->size() > 1;
  if (dp_->size() > 1) {
    std::vector<Parameter*> parameters = optimizer_parameters();
    std::vector<int64_t> stages;
    for (Parameter* parameter : parameters)
      stages.push_back(host_context_ ? -1 : model_->model->gradient_stage(parameter->name));
    const auto bucket_bytes = static_cast<size_t>(options_.bucket_mb * 1024.0 * 1024.0);
    buckets_ = std::make_unique<parallel::GradientBuckets>(host_context_ ? *host_context_ : context_, gradient_dp,
                                                           parameters, stages, std::max<size_t>(bucket_bytes, 1),
                                                           /*sharded=*/zero1);
    if (!host_context_)
      model_->model->set_gradient_stage_hook([this](int64_t stage) { buckets_->stage_complete(stage); });
  }
  Context& optimizer_context = host_context_ ? *host_context_ : context_;
  if (zero1) {
    zero1_ = std::make_unique<optim::Zero1Optimizer>(optimizer_context, *buckets_, adamw);
  } else {
    optimizer_ = std::make_unique<optim::AdamW>(optimizer_context, optimizer_parameters(), adamw);
  }
  {
    // As PEFT's print_trainable_parameters: whole tensors, whatever the tp layout.
    auto full_count = [](const Parameter& parameter) { return shape_numel(parameter.full_shape()); };
    int64_t trainable = 0, base = 0;
    for (const Parameter* parameter : model_->trainable_parameters()) trainable += full_count(*parameter);
    for (const Parameter* parameter : model_->model->parameters().all()) base += full_count(*parameter);
    const int64_t total = model_->peft ? base + trainable : base;
    char percent[32];
    std::snprintf(percent, sizeof percent, "%.4g", 100.0 * static_cast<double>(trainable) / static_cast<double>(total));
    say(str_cat("trainable parameters: ", trainable, " of ", total, " (", percent, "%), peft ", options_.peft));
  }
  if (options_.zero1 || parallel_->world_size() > 1) {
    // What AdamW's state costs this rank, next to the unsharded figure
    // (fp32 moments, plus fp32 masters of 16-bit values).
    int64_t unsharded = 0;
    for (Parameter* parameter : optimizer_parameters())
      unsharded += parameter->value.numel() * (parameter->value.dtype() == DType::kF32 ? 8 : 12);
    say(str_cat("optimizer state: ", format_bytes(static_cast<double>(optimizer().state_bytes())), " on this rank",
                zero1_ ? str_cat(" (ZeRO-1 over dp ", dp_->size(), "; unsharded ", format_bytes(static_cast<double>(unsharded)), ")")
                       : options_.zero1 ? std::string(" (parallel.zero1 has no effect with dp 1)") : std::string()));
  }

  optim::LrScheduleConfig schedule;
  schedule.kind = optim::parse_schedule_kind(options_.schedule_kind, options_.source + ": schedule.kind");
  schedule.base_lr = options_.lr;
  schedule.warmup_steps = options_.warmup_steps;
  schedule.total_steps = options_.total_steps;
  schedule.min_lr_ratio = options_.min_lr_ratio;
  schedule_ = std::make_unique<optim::LrSchedule>(schedule);

  // Loss scaling always for f16, on request for bf16/f32 (proto:
  // PrecisionConfig.loss_scaling); bf16 has fp32's exponent range.
  if (options_.loss_scaling || parse_float_dtype(options_.compute_dtype, "precision.compute_dtype") == DType::kF16) {
    optim::LossScalerConfig scaler;
    scaler.init_scale = options_.init_scale;
    scaler.growth_factor = options_.growth_factor;
    scaler.backoff_factor = options_.backoff_factor;
    scaler.growth_interval = options_.growth_interval;
    scaler.hysteresis = options_.hysteresis;
    scaler_ = std::make_unique<optim::LossScaler>(scaler);
  }

  if (parallel_->world_rank() == 0) {
    checkpoints_ = std::make_unique<CheckpointWriter>(
        options_.checkpoint_dir, options_.keep_last == 0 ? INT_MAX : static_cast<int>(options_.keep_last));
  }

  std::optional<std::string> resume_from;
  if (options_.resume == "latest") {
    if (latest_checkpoint(options_.checkpoint_dir)) resume_from = "latest";
  } else if (!options_.resume.empty()) {
    resume_from = options_.resume;
  }
  if (resume_from) {
    resume(*resume_from);
  } else {
    loader_ = std::make_unique<data::Loader>(
        make_loader_options(options_, model_config, eos_id_, false, dp_->rank(), dp_->size()));
  }

  if (parallel_->world_rank() == 0 && (!options_.jsonl_path.empty() || !options_.tensorboard_dir.empty())) {
    MetricsWriterOptions metrics;
    metrics.jsonl_path = options_.jsonl_path;
    metrics.tensorboard_dir = options_.tensorboard_dir;
    metrics_ = std::make_unique<MetricsWriter>(metrics);
  }
}

Trainer::~Trainer() {
  if (model_) model_->model->set_gradient_stage_hook({});
}

double Trainer::now() const { return hooks_.clock ? hooks_.clock() : steady_seconds(); }

MemoryPeaks Trainer::memory_peaks() const {
  MemoryPeaks peaks;
  const Allocator& allocator = context_.allocator();
  for (int c = 0; c < kNumMemoryCategories; ++c)
    peaks.bytes[static_cast<size_t>(c)] = static_cast<double>(allocator.category_peak(static_cast<MemoryCategory>(c)));
  peaks.total = static_cast<double>(allocator.peak_bytes_in_use());
  return peaks;
}

void Trainer::report_memory() {
  // After the first step every category has reached its steady-state peak.
  const MemoryPeaks peaks = memory_peaks();
  std::string line = str_cat("memory peak by category after step ", step_, " (", context_.device().to_string(), "):");
  ScalarValues values;
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    const auto category = static_cast<MemoryCategory>(c);
    line += str_cat(c == 0 ? " " : ", ", memory_category_name(category), " ",
                    format_bytes(peaks.bytes[static_cast<size_t>(c)]));
    values.emplace_back(str_cat("memory_peak_", memory_category_name(category), "_mib"),
                        peaks.bytes[static_cast<size_t>(c)] / (1024.0 * 1024.0));
  }
  line += str_cat("; all together ", format_bytes(peaks.total));
  values.emplace_back("memory_peak_total_mib", peaks.total / (1024.0 * 1024.0));
  say(line);
  // Into the next metrics record (the first logged step), not one of its own.
  pending_memory_values_ = std::move(values);
}

void Trainer::say(const std::string& line) {
  if (!hooks_.progress || parallel_->world_rank() != 0) return;
  std::fprintf(hooks_.progress, "%s\n", line.c_str());
  std::fflush(hooks_.progress);
}

std::vector<Parameter*> Trainer::optimizer_parameters() {
  return host_context_ ? host_parameters_.all() : model_->trainable_parameters();
}

std::vector<Trainer::ShardedTensor> Trainer::checkpoint_tensors() {
  std::vector<ShardedTensor> tensors;
  for (Parameter* parameter : optimizer_parameters())
    tensors.push_back({parameter->name, parameter->value, &parameter->shard});
  return tensors;
}

std::vector<NamedTensor> Trainer::gather_full(const std::vector<ShardedTensor>& tensors) {
  std::vector<NamedTensor> full;
  for (const ShardedTensor& tensor : tensors) {
    if (!tensor.shard->sharded()) {
      full.push_back({tensor.name, tensor.tensor});
      continue;
    }
    full.push_back({tensor.name, parallel::gather_shards(parallel_->tp(), tensor.tensor, *tensor.shard,
                                                         str_cat("checkpoint gather of ", tensor.name))});
  }
  return full;
}

void Trainer::load_full(const std::vector<ShardedTensor>& tensors,
                        const std::function<void(std::span<const NamedTensor>)>& load) {
  // Unsharded tensors load in place; sharded ones through a full host copy,
  // sliced (the checkpoint holds full tensors whatever the saving layout).
  std::vector<NamedTensor> destinations;
  for (const ShardedTensor& tensor : tensors)
    destinations.push_back({tensor.name, tensor.shard->sharded()
                                             ? Tensor::empty_cpu(tensor.shard->full_shape, tensor.tensor.dtype())
                                             : tensor.tensor});
  load(destinations);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].shard->sharded()) continue;
    Tensor local = tensors[i].tensor;
    local.copy_from(parallel::take_shard(destinations[i].tensor, *tensors[i].shard, parallel_->tp_size()));
  }
}

void Trainer::copy_values_to_model() {
  if (!host_context_) return;
  std::vector<Parameter*> model_parameters = model_->trainable_parameters();
  std::vector<Parameter*> copies = host_parameters_.all();
  for (size_t i = 0; i < copies.size(); ++i) model_parameters[i]->value.copy_from(copies[i]->value);
}

std::vector<Trainer::ShardedTensor> Trainer::optimizer_tensors(bool assemble) {
  std::vector<ShardedTensor> tensors;
  if (zero1_) {
    // Full local tensors per parameter, from every dp rank's segments.
    std::vector<std::string> kinds = {"exp_avg", "exp_avg_sq"};
    if (zero1_->has_masters()) kinds.insert(kinds.begin(), "master");
    for (Parameter* parameter : optimizer_parameters())
      for (const std::string& which : kinds)
        tensors.push_back({str_cat(parameter->name, ".", which),
                           assemble ? zero1_->assemble(*dp_, *parameter, which)
                                    : Tensor::zeros_cpu(parameter->value.shape(), DType::kF32),
                           &parameter->shard, parameter, which});
    return tensors;
  }
  for (optim::AdamWParameterState& state : optimizer_->states()) {
    const std::string& name = state.parameter->name;
    const ParameterShard* shard = &state.parameter->shard;
    // An f32 value is its own master (optim/adamw.h): saved once, as trainable.
    if (state.master.raw_data() != state.parameter->value.raw_data())
      tensors.push_back({name + ".master", state.master, shard});
    tensors.push_back({name + ".exp_avg", state.exp_avg, shard});
    tensors.push_back({name + ".exp_avg_sq", state.exp_avg_sq, shard});
  }
  return tensors;
}

void Trainer::resume(const std::string& where) {
  CheckpointReader reader = CheckpointReader::open(where, options_.checkpoint_dir, model_->fingerprint);
  const CheckpointState& state = reader.state();
  const std::string source = reader.directory().string();
  load_full(checkpoint_tensors(), [&](std::span<const NamedTensor> into) { reader.load_trainable(into); });
  const std::vector<ShardedTensor> optimizer_state = optimizer_tensors(/*assemble=*/false);
  load_full(optimizer_state, [&](std::span<const NamedTensor> into) { reader.load_optimizer(into); });
  if (zero1_)
    for (const ShardedTensor& tensor : optimizer_state) zero1_->scatter(*tensor.parameter, tensor.which, tensor.tensor);
  copy_values_to_model();
  optimizer().set_step_count(state.schedule_position);
  if (scaler_) {
    optim::LossScalerState scaler_state;
    scaler_state.scale = static_cast<float>(state.loss_scale);
    scaler_state.growth_tracker = state.loss_scale_good_steps;
    scaler_state.hysteresis_tracker = state.loss_scale_hysteresis_tracker;
    scaler_->load_state(scaler_state, source + "/state.json");
  }
  if (auto dropout = state.rng.find(kDropoutStream); dropout != state.rng.end())
    dropout_micro_steps_ = dropout->second.position;
  // Each data-parallel rank continues from its own loader position; at
  // another dp the saved positions merge into one of the record stream and
  // the new ranks deal on from there (data/loader.h RedealPosition).
  const std::vector<std::string>& positions = state.data_loader_states;
  data::LoaderOptions loader_options =
      make_loader_options(options_, model_->model->config(), eos_id_, false, dp_->rank(), dp_->size());
  if (static_cast<int>(positions.size()) == dp_->size()) {
    loader_ = std::make_unique<data::Loader>(std::move(loader_options), positions[static_cast<size_t>(dp_->rank())]);
  } else {
    const data::RedealPosition merged = data::merge_loader_states(positions, source + "/state.json");
    loader_ = std::make_unique<data::Loader>(std::move(loader_options), merged);
    say(str_cat("data: the checkpoint was saved at dp ", positions.size(), ", this run has dp ", dp_->size(),
                ": every rank deals on from record ", merged.records, " of epoch ", merged.epoch,
                merged.read_ahead > 0
                    ? str_cat(" (", merged.read_ahead, " document(s) the saved ranks had read ahead are not replayed)")
                    : std::string()));
  }
  step_ = state.step;
  skipped_steps_ = state.skipped_steps;
  last_checkpoint_step_ = step_;
  resumed_from_ = reader.directory();
}

StepRecord Trainer::train_step() {
  parallel_->set_step(step_ + 1);
  model_->trainable_registry().zero_grads(context_);
  model_->set_training(true);

  // 1. Every micro-batch of the step first, so the step's token count is
  // known before the first backward.
  std::vector<data::Batch> micro_batches;
  int64_t local_tokens = 0;
  std::vector<int64_t> micro_tokens;
  int64_t local_real_tokens = 0;
  for (int64_t i = 0; i < options_.grad_accumulation_steps; ++i) {
    std::optional<data::Batch> batch = loader_->next();
    if (!batch) throw_runtime("the training loader ended unexpectedly at step ", step_ + 1);
    micro_tokens.push_back(count_trained_tokens(batch->targets));
    local_tokens += micro_tokens.back();
    local_real_tokens += batch->real_tokens;
    micro_batches.push_back(std::move(*batch));
  }
  StepRecord record;
  record.step = step_ + 1;
  record.real_tokens = local_real_tokens;
  record.trained_tokens = dp_->all_reduce_sum(local_tokens, "trained-token count all-reduce");
  record.input_tokens = static_cast<int64_t>(dp_->size()) * options_.grad_accumulation_steps * options_.batch_size *
                        options_.seq_len;
  const double loss_scale = scaler_ ? scaler_->scale() : 1.0;
  record.loss_scale = loss_scale;

  // 2. Each micro-batch weighted by its share of the step's tokens (on every
  // rank), so the sum over ranks is the gradient of the step's mean. Only the
  // last micro-batch's backward communicates: its buckets' all-reduces start
  // as the backward completes them.
  double loss_sum = 0.0;
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const uint64_t dropout_step = dropout_micro_steps_++;
    if (buckets_ && !host_context_ && i + 1 == micro_batches.size()) buckets_->begin_reduction();
    if (micro_tokens[i] == 0) continue;  // contributes nothing to loss or gradient
    if (model_->peft) model_->peft->set_dropout_step(dropout_step);
    const double weight = static_cast<double>(micro_tokens[i]) / static_cast<double>(record.trained_tokens);
    StepResult result = model_->model->forward_backward(context_, to_model_batch(context_, micro_batches[i]),
                                                        static_cast<float>(loss_scale * weight));
    loss_sum += result.loss * static_cast<double>(result.num_target_tokens);
  }

  // 3. Sum of the ranks' gradients (each already divided by the global
  // count): wait for the buckets still in flight. After it every rank holds
  // the same gradients, so the non-finite check and the clipping norm below
  // agree on every rank without another reduction.
  std::vector<Parameter*> parameters = optimizer_parameters();
  if (host_context_) {
    std::vector<Parameter*> model_parameters = model_->trainable_parameters();
    for (size_t i = 0; i < parameters.size(); ++i) parameters[i]->grad.copy_from(model_parameters[i]->grad);
    if (buckets_) buckets_->begin_reduction();
  }
  if (buckets_) {
    const parallel::BucketStepStats& stats = buckets_->finish();
    record.allreduce_bytes = stats.bytes;
    record.buckets = stats.buckets;
    record.buckets_during_backward = stats.launched_during_backward;
    record.communication_seconds = stats.communication_seconds;
    record.exposed_communication_seconds = stats.exposed_seconds;
  }
  if (hooks_.inspect_gradients) hooks_.inspect_gradients(record.step, updated_parameters());
  record.skipped_steps = skipped_steps_;
  loss_sum = dp_->all_reduce_sum(loss_sum, "loss all-reduce");
  record.loss = record.trained_tokens > 0 ? loss_sum / static_cast<double>(record.trained_tokens) : 0.0;

  record.learning_rate = schedule_->lr(optimizer().step_count());
  ++step_;
  if (record.trained_tokens == 0) {
    record.skipped = true;
    say(str_cat("step ", record.step, ": no trained token in the batch (every target is -100); update skipped"));
    return record;
  }

  Context& optimizer_context = host_context_ ? *host_context_ : context_;
  const ops::GradientStats stats = global_gradient_stats(optimizer_context);
  // 4. Loss scaling: a non-finite gradient skips the update and backs the scale off.
  if (scaler_ && !scaler_->update(!stats.all_finite)) {
    record.skipped = true;
    record.skipped_steps = ++skipped_steps_;
    record.grad_norm = std::numeric_limits<double>::infinity();
    return record;
  }

  // 5. Clip (the norm measured on scaled gradients against a scaled bound),
  // then AdamW with the un-scaling fused in.
  const double max_norm = options_.max_grad_norm > 0.0 ? options_.max_grad_norm * loss_scale : 0.0;
  std::vector<Tensor> grads;
  for (Parameter* parameter : updated_parameters())
    if (parameter->grad.defined()) grads.push_back(parameter->grad);
  optim::ClipResult clip = optim::clip_with_stats(optimizer_context, grads, stats, max_norm);
  record.grad_norm = clip.norm / loss_scale;
  if (!clip.all_finite)
    throw_runtime("step ", record.step, ": non-finite gradient (loss ", record.loss,
                  "); the run diverged — resume from an earlier checkpoint with a lower optimizer.lr");
  if (zero1_) {
    zero1_->step(static_cast<float>(record.learning_rate), static_cast<float>(1.0 / loss_scale));
  } else {
    optimizer_->step(static_cast<float>(record.learning_rate), static_cast<float>(1.0 / loss_scale));
  }
  copy_values_to_model();
  return record;
}

std::vector<Parameter*> Trainer::updated_parameters() {
  if (!zero1_) return optimizer_parameters();
  std::vector<Parameter*> views;
  for (const optim::Zero1Optimizer::Segment& segment : zero1_->segments()) views.push_back(segment.view);
  return views;
}

ops::GradientStats Trainer::global_gradient_stats(Context& context) {
  // Tensor parallelism: a sharded gradient's slices are summed over the tp
  // ranks; a replicated one is the same on every tp rank (the model reduces
  // activations, not gradients), so only tp rank 0 counts it. ZeRO-1: each
  // dp rank holds its segments of the summed gradients, summed over dp.
  const bool counts_replicated = parallel_->tp_rank() == 0;
  std::vector<Tensor> counted;
  if (zero1_) {
    for (const optim::Zero1Optimizer::Segment& segment : zero1_->segments())
      if (segment.parameter->shard.sharded() || counts_replicated) counted.push_back(segment.view->grad);
  } else {
    for (Parameter* parameter : optimizer_parameters())
      if (parameter->grad.defined() && (parameter->shard.sharded() || counts_replicated))
        counted.push_back(parameter->grad);
  }
  ops::GradientStats stats = ops::gradient_stats(context, counted);
  auto reduce = [&](parallel::Communicator& group, const char* which) {
    stats.sum_of_squares = group.all_reduce_sum(stats.sum_of_squares, str_cat("gradient norm all-reduce (", which, ")"));
    stats.all_finite =
        group.all_reduce_max(int64_t{stats.all_finite ? 0 : 1}, str_cat("non-finite gradient check (", which, ")")) == 0;
  };
  if (zero1_) reduce(*dp_, "ZeRO-1 shards");
  if (parallel_->tp_size() > 1) reduce(parallel_->tp(), "tensor parallel");
  return stats;
}

EvalResult evaluate_loss(Context& context, LlamaModel& model, data::Loader& loader, parallel::Communicator* dp) {
  EvalResult result;
  double loss_sum = 0.0;
  while (std::optional<data::Batch> batch = loader.next()) {
    result.records += batch->records;
    result.rows += batch->rows_with_tokens;
    // Every rank runs every batch (ranks whose share ended get rows of
    // padding), but a batch without a trained token adds nothing: its mean
    // is 0/0.
    StepResult step = model.forward(context, to_model_batch(context, *batch));
    if (step.num_target_tokens == 0) continue;
    loss_sum += step.loss * static_cast<double>(step.num_target_tokens);
    result.trained_tokens += step.num_target_tokens;
  }
  if (dp && dp->size() > 1) {
    loss_sum = dp->all_reduce_sum(loss_sum, "evaluation loss all-reduce");
    result.trained_tokens = dp->all_reduce_sum(result.trained_tokens, "evaluation token-count all-reduce");
    result.records = dp->all_reduce_sum(result.records, "evaluation record-count all-reduce");
    result.rows = dp->all_reduce_sum(result.rows, "evaluation row-count all-reduce");
  }
  result.long_documents = data::long_documents_report(loader.stats(), loader.options());
  if (result.trained_tokens == 0)
    throw_bad_input("validation data: no trained token (every target is -100): ",
                    loader.files().empty() ? std::string("no files") : loader.files().front());
  result.loss = loss_sum / static_cast<double>(result.trained_tokens);
  result.perplexity = std::exp(result.loss);
  return result;
}

std::string format_eval_summary(const EvalResult& result) {
  std::string line = str_cat("loss ", result.loss, " | perplexity ", result.perplexity, " | ", result.trained_tokens,
                             " tokens | ", result.records, " records | ", result.rows, " rows");
  if (!result.long_documents.empty()) line += " | " + result.long_documents;
  return line;
}

EvalResult Trainer::evaluate() {
  model_->set_training(false);
  // The validation split is dealt over the data-parallel ranks like the
  // training split (record g to rank g % dp) and the sums reduced.
  data::Loader loader(
      make_loader_options(options_, model_->model->config(), eos_id_, true, dp_->rank(), dp_->size()));
  EvalResult result = evaluate_loss(context_, *model_->model, loader, dp_);
  model_->set_training(true);
  return result;
}

std::filesystem::path Trainer::save_checkpoint() {
  last_checkpoint_step_ = step_;
  // Every data-parallel rank's loader position, so that a dp > 1 run resumes
  // exactly; the weights and moments are replicated, rank 0's are written.
  std::vector<std::string> loader_states = dp_->all_gather_strings(loader_->state(), "loader-state all-gather");
  // Full tensors (tensor-parallel slices gathered), so any layout resumes it.
  const std::vector<NamedTensor> trainable = gather_full(checkpoint_tensors());
  const std::vector<NamedTensor> optimizer_state = gather_full(optimizer_tensors());
  std::filesystem::path written;
  if (checkpoints_) written = write_checkpoint(std::move(loader_states), trainable, optimizer_state);
  parallel_->world().barrier("checkpoint barrier");
  return written;
}

std::filesystem::path Trainer::write_checkpoint(std::vector<std::string> loader_states,
                                               std::span<const NamedTensor> trainable,
                                               std::span<const NamedTensor> optimizer_state) {
  CheckpointState state;
  state.step = step_;
  state.schedule_position = optimizer().step_count();
  if (scaler_) {
    state.loss_scale = scaler_->state().scale;
    state.loss_scale_good_steps = scaler_->state().growth_tracker;
    state.loss_scale_hysteresis_tracker = scaler_->state().hysteresis_tracker;
  }
  state.data_loader_states = std::move(loader_states);
  state.skipped_steps = skipped_steps_;
  state.rng[kDropoutStream] = {options_.seed, dropout_micro_steps_};
  state.fingerprint = model_->fingerprint;
  return checkpoints_->write(state, trainable, optimizer_state);
}

TrainResult Trainer::train() {
  TrainResult result;
  const int64_t total_steps = options_.total_steps;
  if (resumed_from_) say(str_cat("resumed from ", resumed_from_->string(), " at step ", step_, "/", total_steps));
  if (const std::string report = data::long_documents_report(loader_->stats(), loader_->options()); !report.empty())
    say("training data: " + report);
  const int64_t first_step = step_;
  const double start_time = now();
  double window_start = start_time;
  double window_loss_sum = 0.0;
  int64_t window_trained = 0;
  int64_t window_input = 0;
  int64_t window_real = 0;  // this rank's
  double window_communication = 0.0, window_exposed = 0.0;  // data parallelism: gradient all-reduce seconds
  int64_t window_steps = 0;
  std::optional<double> last_grad_norm;

  while (step_ < total_steps) {
    // A signal may reach one rank only (or each at a different moment):
    // every rank stops at the step where any rank saw it.
    int64_t stop_here = 0;
    if (hooks_.stop_requested && hooks_.stop_requested->load())
      stop_here = stop_signal_number() > 0 ? stop_signal_number() : SIGTERM;
    if (const int64_t agreed = parallel_->world().all_reduce_max(stop_here, "stop-signal agreement"); agreed != 0) {
      result.reason = StopReason::kStopRequested;
      result.stop_signal = static_cast<int>(agreed);
      break;
    }
    const StepRecord record = train_step();
    if (step_ == first_step + 1) report_memory();
    if (hooks_.on_step) hooks_.on_step(record);
    window_loss_sum += record.loss * static_cast<double>(record.trained_tokens);
    window_trained += record.trained_tokens;
    window_input += record.input_tokens;
    window_real += record.real_tokens;
    window_communication += record.communication_seconds;
    window_exposed += record.exposed_communication_seconds;
    ++window_steps;
    if (!record.skipped) last_grad_norm = record.grad_norm;

    const bool log_now =
        options_.log_every_n_steps > 0 && (step_ % options_.log_every_n_steps == 0 || step_ == total_steps);
    if (log_now) {
      const double time = now();
      const double window_seconds = time - window_start;
      ProgressLine line;
      line.step = step_;
      line.total_steps = total_steps;
      // The token-weighted mean over the steps since the last line.
      line.loss = window_trained > 0 ? window_loss_sum / static_cast<double>(window_trained) : 0.0;
      line.learning_rate = record.learning_rate;
      line.grad_norm = last_grad_norm;
      line.tokens_per_second = window_seconds > 0 ? static_cast<double>(window_input) / window_seconds : 0.0;
      // Every rank reaches this line at the same step: one reduction per line.
      const int64_t real_tokens = dp_->all_reduce_sum(window_real, "packing-efficiency all-reduce");
      line.packing_efficiency = window_input > 0 ? static_cast<double>(real_tokens) / static_cast<double>(window_input)
                                                 : 0.0;
      const double seconds_per_step = (time - start_time) / static_cast<double>(step_ - first_step);
      line.eta_seconds = seconds_per_step * static_cast<double>(total_steps - step_);
      if (buckets_ && window_communication > 0.0)
        line.communication_hidden = parallel::hidden_fraction(window_communication, window_exposed);
      if (scaler_) {
        line.loss_scale = scaler_->scale();
        line.skipped_steps = skipped_steps_;
      }
      say(format_progress_line(line));
      if (metrics_) {
        ScalarValues values = {{"loss", line.loss},
                               {"lr", line.learning_rate},
                               {"grad_norm", last_grad_norm.value_or(0.0)},
                               {"tokens_per_second", line.tokens_per_second},
                               {"packing_efficiency", *line.packing_efficiency}};
        if (buckets_) {
          const double steps = static_cast<double>(window_steps);
          values.emplace_back("allreduce_ms", 1e3 * window_communication / steps);
          values.emplace_back("exposed_allreduce_ms", 1e3 * window_exposed / steps);
        }
        if (scaler_) {
          values.emplace_back("loss_scale", scaler_->scale());
          values.emplace_back("skipped_steps", static_cast<double>(skipped_steps_));
        }
        values.insert(values.end(), pending_memory_values_.begin(), pending_memory_values_.end());
        pending_memory_values_.clear();
        metrics_->log_scalars(step_, values);
      }
      window_start = time;
      window_loss_sum = 0.0;
      window_trained = 0;
      window_input = 0;
      window_real = 0;
      window_communication = window_exposed = 0.0;
      window_steps = 0;
    }
    if (options_.eval_every_n_steps > 0 && step_ % options_.eval_every_n_steps == 0) {
      const EvalResult eval = evaluate();
      say(str_cat("eval step ", step_, ": ", format_eval_summary(eval)));
      if (metrics_) metrics_->log_scalars(step_, {{"eval_loss", eval.loss}, {"eval_perplexity", eval.perplexity}});
    }
    if (options_.checkpoint_every_n_steps > 0 && step_ % options_.checkpoint_every_n_steps == 0) {
      std::filesystem::path written = save_checkpoint();
      if (!written.empty()) say(str_cat("checkpoint ", written.string()));
    }
  }
  if (step_ > first_step && last_checkpoint_step_ != step_) {
    std::filesystem::path written = save_checkpoint();
    if (!written.empty()) {
      say(str_cat("checkpoint ", written.string()));
      result.checkpoint = written;
    }
  } else if (last_checkpoint_step_ == step_ && step_ > first_step) {
    result.checkpoint = latest_checkpoint(options_.checkpoint_dir);
  }
  if (metrics_) metrics_->close();
  result.final_step = step_;
  return result;
}

}  // namespace llmft::trainer
