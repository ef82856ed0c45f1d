// The only trainer file that includes the generated llmft.pb.h (see
// train_options.h for why).
#include "config/train_options.h"

#include "core/error.h"
#include "config/train_config.h"

namespace llmft::config {
namespace {

std::string dtype_name_of(llmft::DType dtype) {
  switch (dtype) {
    case FLOAT32:
      return "f32";
    case BFLOAT16:
      return "bf16";
    case FLOAT16:
      return "f16";
    default:
      break;
  }
  throw_bad_input("unresolved dtype ", llmft::DType_Name(dtype));
}

TrainOptions convert(const TrainConfig& config, const std::string& source) {
  TrainOptions options;
  options.source = source;
  options.hf_dir = config.model().hf_dir();
  options.weights_dtype = dtype_name_of(config.model().weights_dtype());

  const PeftConfig& peft = config.peft();
  options.peft = peft.has_lora()            ? "lora"
                 : peft.has_prompt_tuning() ? "prompt_tuning"
                 : peft.has_p_tuning()      ? "p_tuning"
                 : peft.has_prefix_tuning() ? "prefix_tuning"
                 : peft.has_bottleneck()    ? "bottleneck"
                                            : "none";
  if (peft.has_bottleneck()) {
    const BottleneckConfig& bottleneck = peft.bottleneck();
    options.bottleneck_placement = bottleneck.placement() == BottleneckConfig::HOULSBY ? "houlsby" : "pfeiffer";
    options.bottleneck_size = bottleneck.bottleneck();
    options.bottleneck_reduction_factor = bottleneck.reduction_factor();
    const BottleneckConfig::NonLinearity activation = bottleneck.non_linearity();
    options.bottleneck_activation = activation == BottleneckConfig::GELU   ? "gelu"
                                    : activation == BottleneckConfig::SILU ? "silu"
                                    : activation == BottleneckConfig::TANH ? "tanh"
                                                                           : "relu";
  }
  if (peft.has_prompt_tuning()) {
    options.num_virtual_tokens = peft.prompt_tuning().num_virtual_tokens();
    const PromptTuningConfig::Init init = peft.prompt_tuning().init();
    options.prompt_init = init == PromptTuningConfig::TEXT           ? "text"
                          : init == PromptTuningConfig::SAMPLE_VOCAB ? "sample_vocab"
                                                                     : "random";
    options.prompt_init_text = peft.prompt_tuning().init_text();
  }
  if (peft.has_p_tuning()) {
    options.num_virtual_tokens = peft.p_tuning().num_virtual_tokens();
    options.encoder_hidden_size = peft.p_tuning().encoder_hidden_size();
  }
  if (peft.has_prefix_tuning()) {
    options.num_virtual_tokens = peft.prefix_tuning().num_virtual_tokens();
    options.prefix_projection = peft.prefix_tuning().prefix_projection();
    options.encoder_hidden_size = peft.prefix_tuning().encoder_hidden_size();
  }
  if (peft.has_lora()) {
    const llmft::LoraConfig& lora = config.peft().lora();
    options.lora_r = lora.r();
    options.lora_alpha = lora.alpha();
    options.lora_dropout = lora.dropout();
    options.lora_use_rslora = lora.use_rslora();
    options.lora_target_modules.assign(lora.target_modules().begin(), lora.target_modules().end());
  }

  const DataConfig& data = config.data();
  options.train_files.assign(data.train_files().begin(), data.train_files().end());
  options.validation_files.assign(data.validation_files().begin(), data.validation_files().end());
  options.seq_len = data.seq_len();
  options.batch_size = data.batch_size();
  options.grad_accumulation_steps = data.grad_accumulation_steps();
  options.packed = data.batch_mode() != PADDED;
  options.packed_contiguous = data.batch_mode() == PACKED_CONTIGUOUS;
  options.long_documents = data.long_documents() == SPLIT ? "split" : data.long_documents() == DROP ? "drop" : "truncate";
  options.pack_window = data.pack_window();
  options.shuffle_buffer = data.shuffle_buffer();
  options.seed = data.seed();
  options.input_ids_feature = data.input_ids_feature();
  options.labels_feature = data.labels_feature();
  options.loss_mask_feature = data.loss_mask_feature();
  options.skip_corrupt_records = data.skip_corrupt_records();
  options.append_eos = data.append_eos();

  const OptimizerConfig& optimizer = config.optimizer();
  options.lr = optimizer.lr();
  options.weight_decay = optimizer.weight_decay();
  options.beta1 = optimizer.beta1();
  options.beta2 = optimizer.beta2();
  options.eps = optimizer.eps();
  options.max_grad_norm = optimizer.max_grad_norm();
  options.exclude_norms_and_biases_from_decay = optimizer.exclude_norms_and_biases_from_decay();

  const ScheduleConfig& schedule = config.schedule();
  options.schedule_kind = schedule.kind() == LINEAR ? "linear" : schedule.kind() == COSINE ? "cosine" : "constant";
  options.warmup_steps = schedule.warmup_steps();
  options.min_lr_ratio = schedule.min_lr_ratio();
  options.total_steps = schedule.total_steps();

  const PrecisionConfig& precision = config.precision();
  options.compute_dtype = dtype_name_of(precision.compute_dtype());
  options.init_scale = precision.init_scale();
  options.growth_factor = precision.growth_factor();
  options.backoff_factor = precision.backoff_factor();
  options.growth_interval = precision.growth_interval();
  options.hysteresis = precision.hysteresis();
  options.loss_scaling = precision.loss_scaling();
  options.deterministic = precision.deterministic();

  const MemoryConfig& memory = config.memory();
  options.activation_checkpointing = memory.activation_checkpointing() == FULL        ? "full"
                                     : memory.activation_checkpointing() == SELECTIVE ? "selective"
                                                                                     : "none";
  options.checkpoint_every_n_layers = memory.checkpoint_every_n_layers();

  const ParallelConfig& parallel = config.parallel();
  options.dp = parallel.has_dp() ? parallel.dp() : 0;
  options.tp = parallel.tp();
  options.bucket_mb = parallel.bucket_mb();
  options.zero1 = parallel.zero1();
  options.timeout_s = parallel.timeout_s();

  const CheckpointConfig& checkpoint = config.checkpoint();
  options.checkpoint_dir = checkpoint.dir();
  options.checkpoint_every_n_steps = checkpoint.every_n_steps();
  options.keep_last = checkpoint.keep_last();
  options.resume = checkpoint.resume();

  const LoggingConfig& logging = config.logging();
  options.log_every_n_steps = logging.every_n_steps();
  options.jsonl_path = logging.jsonl_path();
  options.tensorboard_dir = logging.tensorboard_dir();
  options.eval_every_n_steps = logging.eval_every_n_steps();
  return options;
}

}  // namespace

TrainOptions load_train_options(const std::string& path, const std::vector<std::string>& overrides) {
  return convert(load_train_config(path, overrides), path);
}

TrainOptions parse_train_options(const std::string& text, const std::string& source_name,
                                 const std::vector<std::string>& overrides) {
  TrainConfig config = parse_train_config(text, source_name);
  for (const std::string& assignment : overrides) apply_override(config, assignment);
  fill_train_config_defaults(config);
  validate_train_config(config, source_name);
  return convert(config, source_name);
}

std::string resolved_train_config_text(const std::string& path, const std::vector<std::string>& overrides) {
  return train_config_to_text(load_train_config(path, overrides));
}

}  // namespace llmft::config
