// The training configuration as plain C++ values, for the trainer, `llmft
// eval` and `llmft export`.
//
// proto/llmft.proto (TrainConfig) stays the single source of truth for
// fields, defaults and ranges; this is its resolved form after
// config/train_config.h has parsed, applied --set overrides, filled defaults
// and validated. The indirection exists because the generated llmft.pb.h
// declares llmft::DType, which collides with core's llmft::DType: no
// translation unit can include both, so only train_options.cc sees the
// proto, and this header uses standard types only. (peft's LoRA struct is
// LoraSettings, not LoraConfig, for the same reason: see peft/lora.h.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llmft::config {

// Names of DType values as used here: "f32", "bf16", "f16".
struct TrainOptions {
  std::string source;  // the config file (or "<text>") that errors name

  // model
  std::string hf_dir;
  std::string weights_dtype = "f32";

  // peft: "none" (full fine-tuning), "lora", "prompt_tuning", "p_tuning",
  // "prefix_tuning", "bottleneck"; each method's fields below (the others keep defaults)
  std::string peft = "none";
  bool lora() const { return peft == "lora"; }
  int64_t lora_r = 8;
  float lora_alpha = 16.0f;
  float lora_dropout = 0.0f;
  bool lora_use_rslora = false;
  std::vector<std::string> lora_target_modules = {"q_proj", "v_proj"};
  int64_t num_virtual_tokens = 20;        // prompt_tuning, p_tuning, prefix_tuning
  std::string prompt_init = "random";     // prompt_tuning: "random", "text", "sample_vocab"
  std::string prompt_init_text;           // prompt_tuning with "text"
  int64_t encoder_hidden_size = 0;        // p_tuning, prefix_tuning with projection; 0: hidden_size
  bool prefix_projection = false;         // prefix_tuning
  std::string bottleneck_placement = "pfeiffer";  // bottleneck: "pfeiffer" or "houlsby"
  int64_t bottleneck_size = 0;                    // 0: hidden_size / reduction factor
  int64_t bottleneck_reduction_factor = 16;
  std::string bottleneck_activation = "relu";     // "relu", "gelu", "silu", "tanh"

  // data
  std::vector<std::string> train_files;
  std::vector<std::string> validation_files;
  int64_t seq_len = 1024;
  int64_t batch_size = 8;
  int64_t grad_accumulation_steps = 1;
  bool packed = true;              // PACKED or PACKED_CONTIGUOUS; false: PADDED
  bool packed_contiguous = false;  // with packed: concatenate and cut (PACKED_CONTIGUOUS)
  std::string long_documents = "truncate";  // "truncate", "split", "drop"
  int64_t pack_window = 1024;
  int64_t shuffle_buffer = 1024;
  uint64_t seed = 0;
  std::string input_ids_feature = "input_ids";
  std::string labels_feature = "labels";
  std::string loss_mask_feature = "loss_mask";
  bool skip_corrupt_records = false;
  bool append_eos = false;

  // optimizer
  double lr = 1e-4;
  double weight_decay = 0.01;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double max_grad_norm = 1.0;
  bool exclude_norms_and_biases_from_decay = true;

  // schedule
  std::string schedule_kind = "constant";  // "constant", "linear", "cosine"
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;
  int64_t total_steps = 1000;

  // precision
  std::string compute_dtype = "f32";
  float init_scale = 65536.0f;
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int64_t growth_interval = 2000;
  int64_t hysteresis = 1;
  bool loss_scaling = false;  // dynamic loss scaling (resolved: on for f16)
  bool deterministic = false;  // CUDA kernels without float atomics (Context::deterministic)

  // memory: gradient checkpointing "none", "full" or "selective" of blocks
  // 0, k, 2k, ... (k = checkpoint_every_n_layers)
  std::string activation_checkpointing = "none";
  int64_t checkpoint_every_n_layers = 1;

  // parallel
  int64_t dp = 0;  // 0: the launched world size / tp
  int64_t tp = 1;
  double bucket_mb = 25.0;
  bool zero1 = false;  // parallel.zero1: AdamW state sharded over dp (optim/zero1.h)
  double timeout_s = 600.0;

  // checkpoint
  std::string checkpoint_dir = "checkpoints";
  int64_t checkpoint_every_n_steps = 0;
  int64_t keep_last = 3;  // 0: keep all
  std::string resume;     // "", "latest" or a checkpoint directory

  // logging
  int64_t log_every_n_steps = 10;
  std::string jsonl_path;
  std::string tensorboard_dir;
  int64_t eval_every_n_steps = 0;
};

// load_train_config (read, --set overrides, defaults, validation),
// then the conversion. Errors are launch's one-line kBadInput errors.
TrainOptions load_train_options(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from text (tests); `source_name` leads errors.
TrainOptions parse_train_options(const std::string& text, const std::string& source_name,
                                 const std::vector<std::string>& overrides = {});
// The resolved configuration of `path` in Protobuf text format, every default
// written out (`llmft train --check`).
std::string resolved_train_config_text(const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace llmft::config
