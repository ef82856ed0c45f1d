#include "trainer/trainer.h"

#include <chrono>
#include <climits>
#include <cmath>
#include <limits>
#include <span>

#include "core/error.h"
#include "optim/grad_clip.h"

namespace llmft::trainer {
namespace {

constexpr const char* kDropoutStream = "lora_dropout";

double steady_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

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

Trainer::Trainer(Context& context, TrainOptions options, TrainerHooks hooks)
    : context_(context), options_(std::move(options)), hooks_(std::move(hooks)) {
  communicator_ = hooks_.communicator ? hooks_.communicator : &single_process_;
  if (options_.dp != communicator_->size())
    throw_bad_input(options_.source, ": field 'parallel.dp': ", options_.dp, ", but the run has ",
                    communicator_->size(), " process(es); set it to the mpirun -np count");

  model_ = build_training_model(context_, options_);
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
  // the host. The one exception is data parallelism over a CUDA context: the
  // communicator reduces host f32 buffers (parallel/), so the optimizer works
  // on host copies there until gradients are reduced with NCCL on the device.
  const bool host_reduction = context_.is_cuda() && communicator_->size() > 1;
  if (hooks_.host_optimizer_copy || host_reduction) {
    host_context_ = Context::cpu(context_.seed());
    for (Parameter* parameter : model_->trainable_parameters()) {
      Parameter& copy =
          host_parameters_.add(*host_context_, parameter->name, parameter->value.shape(), parameter->value.dtype());
      copy.value.copy_from(parameter->value);
    }
    host_parameters_.allocate_grads(*host_context_, DType::kF32);
  }
  optimizer_ = std::make_unique<optim::AdamW>(host_context_ ? *host_context_ : context_, optimizer_parameters(), adamw);

  optim::LrScheduleConfig schedule;
  schedule.kind = optim::parse_schedule_kind(options_.schedule_kind, options_.source + ": schedule.kind");
  schedule.base_lr = options_.lr;
  schedule.warmup_steps = options_.warmup_steps;
  schedule.total_steps = options_.total_steps;
  schedule.min_lr_ratio = options_.min_lr_ratio;
  schedule_ = std::make_unique<optim::LrSchedule>(schedule);

  // Loss scaling only for f16 (proto: PrecisionConfig); bf16 has fp32's range.
  if (parse_float_dtype(options_.compute_dtype, "precision.compute_dtype") == DType::kF16) {
    optim::LossScalerConfig scaler;
    scaler.init_scale = options_.init_scale;
    scaler.growth_factor = options_.growth_factor;
    scaler.backoff_factor = options_.backoff_factor;
    scaler.growth_interval = options_.growth_interval;
    scaler.hysteresis = options_.hysteresis;
    scaler_ = std::make_unique<optim::LossScaler>(scaler);
  }

  if (communicator_->rank() == 0) {
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
        make_loader_options(options_, model_config, eos_id_, false, communicator_->rank(), communicator_->size()));
  }

  if (communicator_->rank() == 0 && (!options_.jsonl_path.empty() || !options_.tensorboard_dir.empty())) {
    MetricsWriterOptions metrics;
    metrics.jsonl_path = options_.jsonl_path;
    metrics.tensorboard_dir = options_.tensorboard_dir;
    metrics_ = std::make_unique<MetricsWriter>(metrics);
  }
}

Trainer::~Trainer() = default;

double Trainer::now() const { return hooks_.clock ? hooks_.clock() : steady_seconds(); }

void Trainer::say(const std::string& line) {
  if (!hooks_.progress || communicator_->rank() != 0) return;
  std::fprintf(hooks_.progress, "%s\n", line.c_str());
  std::fflush(hooks_.progress);
}

std::vector<Parameter*> Trainer::optimizer_parameters() {
  return host_context_ ? host_parameters_.all() : model_->trainable_parameters();
}

std::vector<NamedTensor> Trainer::checkpoint_tensors() {
  std::vector<NamedTensor> tensors;
  for (Parameter* parameter : optimizer_parameters()) tensors.push_back({parameter->name, parameter->value});
  return tensors;
}

void Trainer::copy_values_to_model() {
  if (!host_context_) return;
  std::vector<Parameter*> model_parameters = model_->trainable_parameters();
  std::vector<Parameter*> copies = host_parameters_.all();
  for (size_t i = 0; i < copies.size(); ++i) model_parameters[i]->value.copy_from(copies[i]->value);
}

std::vector<NamedTensor> Trainer::optimizer_tensors() {
  std::vector<NamedTensor> tensors;
  for (optim::AdamWParameterState& state : optimizer_->states()) {
    const std::string& name = state.parameter->name;
    // An f32 value is its own master (optim/adamw.h): saved once, as trainable.
    if (state.master.raw_data() != state.parameter->value.raw_data())
      tensors.push_back({name + ".master", state.master});
    tensors.push_back({name + ".exp_avg", state.exp_avg});
    tensors.push_back({name + ".exp_avg_sq", state.exp_avg_sq});
  }
  return tensors;
}

void Trainer::resume(const std::string& where) {
  CheckpointReader reader = CheckpointReader::open(where, options_.checkpoint_dir, model_->fingerprint);
  const CheckpointState& state = reader.state();
  const std::string source = reader.directory().string();
  reader.load_trainable(checkpoint_tensors());
  reader.load_optimizer(optimizer_tensors());
  copy_values_to_model();
  optimizer_->set_step_count(state.schedule_position);
  if (scaler_) {
    optim::LossScalerState scaler_state;
    scaler_state.scale = static_cast<float>(state.loss_scale);
    scaler_state.growth_tracker = state.loss_scale_good_steps;
    scaler_state.hysteresis_tracker = state.loss_scale_hysteresis_tracker;
    scaler_->load_state(scaler_state, source + "/state.json");
  }
  if (auto dropout = state.rng.find(kDropoutStream); dropout != state.rng.end())
    dropout_micro_steps_ = dropout->second.position;
  loader_ = std::make_unique<data::Loader>(make_loader_options(options_, model_->model->config(), eos_id_, false,
                                                               communicator_->rank(), communicator_->size()),
                                           state.data_loader_state);
  step_ = state.step;
  last_checkpoint_step_ = step_;
  resumed_from_ = reader.directory();
}

StepRecord Trainer::train_step() {
  model_->trainable_registry().zero_grads(context_);
  model_->set_training(true);

  // 1. Every micro-batch of the step first, so the step's token count is
  // known before the first backward.
  std::vector<data::Batch> micro_batches;
  int64_t local_tokens = 0;
  std::vector<int64_t> micro_tokens;
  for (int64_t i = 0; i < options_.grad_accumulation_steps; ++i) {
    std::optional<data::Batch> batch = loader_->next();
    if (!batch) throw_runtime("the training loader ended unexpectedly at step ", step_ + 1);
    micro_tokens.push_back(count_trained_tokens(batch->targets));
    local_tokens += micro_tokens.back();
    micro_batches.push_back(std::move(*batch));
  }
  StepRecord record;
  record.step = step_ + 1;
  record.trained_tokens = communicator_->all_reduce_sum(local_tokens);
  record.input_tokens =
      communicator_->all_reduce_sum(options_.grad_accumulation_steps * options_.batch_size * options_.seq_len);
  const double loss_scale = scaler_ ? scaler_->scale() : 1.0;
  record.loss_scale = loss_scale;

  // 2. Each micro-batch weighted by its share of the step's tokens.
  double loss_sum = 0.0;
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const uint64_t dropout_step = dropout_micro_steps_++;
    if (micro_tokens[i] == 0) continue;  // contributes nothing to loss or gradient
    if (model_->lora) model_->lora->set_dropout_step(dropout_step);
    const double weight = static_cast<double>(micro_tokens[i]) / static_cast<double>(record.trained_tokens);
    StepResult result = model_->model->forward_backward(context_, to_model_batch(context_, micro_batches[i]),
                                                        static_cast<float>(loss_scale * weight));
    loss_sum += result.loss * static_cast<double>(result.num_target_tokens);
  }
  loss_sum = communicator_->all_reduce_sum(loss_sum);
  record.loss = record.trained_tokens > 0 ? loss_sum / static_cast<double>(record.trained_tokens) : 0.0;

  // 3. Sum of the ranks' gradients (each already divided by the global count).
  std::vector<Parameter*> parameters = optimizer_parameters();
  if (host_context_) {
    std::vector<Parameter*> model_parameters = model_->trainable_parameters();
    for (size_t i = 0; i < parameters.size(); ++i) parameters[i]->grad.copy_from(model_parameters[i]->grad);
  }
  if (communicator_->size() > 1) {
    for (Parameter* parameter : parameters) {
      if (parameter->grad.device().is_cuda() || parameter->grad.dtype() != DType::kF32)
        throw_runtime("data-parallel gradient all-reduce needs host f32 gradients, found ", parameter->grad.to_string(),
                      " for ", parameter->name);
      communicator_->all_reduce_sum(
          std::span<float>(parameter->grad.data<float>(), static_cast<size_t>(parameter->grad.numel())));
    }
  }

  record.learning_rate = schedule_->lr(optimizer_->step_count());
  ++step_;
  if (record.trained_tokens == 0) {
    record.skipped = true;
    say(str_cat("step ", record.step, ": no trained token in the batch (every target is -100); update skipped"));
    return record;
  }

  Context& optimizer_context = host_context_ ? *host_context_ : context_;
  // 4. f16: a non-finite gradient skips the update and backs the scale off.
  if (scaler_) {
    std::vector<Tensor> grads;
    for (Parameter* parameter : parameters) grads.push_back(parameter->grad);
    if (!scaler_->check_and_update(optimizer_context, grads)) {
      record.skipped = true;
      record.grad_norm = std::numeric_limits<double>::infinity();
      return record;
    }
  }

  // 5. Clip (the norm measured on scaled gradients against a scaled bound),
  // then AdamW with the un-scaling fused in.
  const double max_norm = options_.max_grad_norm > 0.0 ? options_.max_grad_norm * loss_scale : 0.0;
  optim::ClipResult clip = optim::clip_grad_norm(optimizer_context, parameters, max_norm);
  record.grad_norm = clip.norm / loss_scale;
  if (!clip.all_finite)
    throw_runtime("step ", record.step, ": non-finite gradient (loss ", record.loss,
                  "); the run diverged — resume from an earlier checkpoint with a lower optimizer.lr");
  optimizer_->step(static_cast<float>(record.learning_rate), static_cast<float>(1.0 / loss_scale));
  copy_values_to_model();
  return record;
}

EvalResult evaluate_loss(Context& context, LlamaModel& model, data::Loader& loader) {
  EvalResult result;
  double loss_sum = 0.0;
  while (std::optional<data::Batch> batch = loader.next()) {
    StepResult step = model.forward(context, to_model_batch(context, *batch));
    loss_sum += step.loss * static_cast<double>(step.num_target_tokens);
    result.trained_tokens += step.num_target_tokens;
    result.rows += batch->input_ids.size(0);
  }
  if (result.trained_tokens == 0)
    throw_bad_input(
        "validation data: no trained token (every target is -100, or no complete row of seq_len "
        "tokens): ",
        loader.files().empty() ? std::string("no files") : loader.files().front());
  result.loss = loss_sum / static_cast<double>(result.trained_tokens);
  result.perplexity = std::exp(result.loss);
  return result;
}

EvalResult Trainer::evaluate() {
  model_->set_training(false);
  data::Loader loader(make_loader_options(options_, model_->model->config(), eos_id_, true));
  EvalResult result = evaluate_loss(context_, *model_->model, loader);
  model_->set_training(true);
  return result;
}

std::filesystem::path Trainer::save_checkpoint() {
  last_checkpoint_step_ = step_;
  if (!checkpoints_) return {};
  CheckpointState state;
  state.step = step_;
  state.schedule_position = optimizer_->step_count();
  if (scaler_) {
    state.loss_scale = scaler_->state().scale;
    state.loss_scale_good_steps = scaler_->state().growth_tracker;
    state.loss_scale_hysteresis_tracker = scaler_->state().hysteresis_tracker;
  }
  state.data_loader_state = loader_->state();
  state.rng[kDropoutStream] = {options_.seed, dropout_micro_steps_};
  state.fingerprint = model_->fingerprint;
  return checkpoints_->write(state, checkpoint_tensors(), optimizer_tensors());
}

TrainResult Trainer::train() {
  TrainResult result;
  const int64_t total_steps = options_.total_steps;
  if (resumed_from_) say(str_cat("resumed from ", resumed_from_->string(), " at step ", step_, "/", total_steps));
  const int64_t first_step = step_;
  const double start_time = now();
  double window_start = start_time;
  double window_loss_sum = 0.0;
  int64_t window_trained = 0;
  int64_t window_input = 0;
  std::optional<double> last_grad_norm;

  while (step_ < total_steps) {
    if (hooks_.stop_requested && hooks_.stop_requested->load()) {
      result.reason = StopReason::kStopRequested;
      break;
    }
    const StepRecord record = train_step();
    if (hooks_.on_step) hooks_.on_step(record);
    window_loss_sum += record.loss * static_cast<double>(record.trained_tokens);
    window_trained += record.trained_tokens;
    window_input += record.input_tokens;
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
      const double seconds_per_step = (time - start_time) / static_cast<double>(step_ - first_step);
      line.eta_seconds = seconds_per_step * static_cast<double>(total_steps - step_);
      say(format_progress_line(line));
      if (metrics_) {
        ScalarValues values = {{"loss", line.loss},
                               {"lr", line.learning_rate},
                               {"grad_norm", last_grad_norm.value_or(0.0)},
                               {"tokens_per_second", line.tokens_per_second}};
        if (scaler_) values.emplace_back("loss_scale", record.loss_scale);
        metrics_->log_scalars(step_, values);
      }
      window_start = time;
      window_loss_sum = 0.0;
      window_trained = 0;
      window_input = 0;
    }
    if (options_.eval_every_n_steps > 0 && step_ % options_.eval_every_n_steps == 0) {
      const EvalResult eval = evaluate();
      say(str_cat("eval step ", step_, ": loss ", eval.loss, " | perplexity ", eval.perplexity, " | ",
                  eval.trained_tokens, " tokens"));
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
