// `llmft inspect MODEL_DIR [--seq-len N] [--batch-size N] [--lora-rank R]`:
// what a Hugging Face checkpoint directory holds and what training it costs.
// `llmft inspect [MODEL_DIR] --config run.pbtxt [--set k=v ...] [--dp N] [--threads N]`:
// the same, with the run's memory per rank by category (frozen weights,
// trainable weights and masters, optimizer state, gradients, activations;
// trainer/memory_estimate.h) for its batch, sequence length, precision, PEFT
// method, activation checkpointing and tp/dp/ZeRO-1; a run prints the
// measured figures after its first step. Reads config.json and the
// safetensors headers only (no weights are loaded), so it is instant even
// for large models.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <vector>
#include <string>
#include <string_view>

#include "core/error.h"
#include "launch/cli_args.h"
#include "launch/commands.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "trainer/memory_estimate.h"
#include "trainer/metrics.h"
#include "config/train_options.h"

namespace llmft::launch {
namespace {

struct InspectArgs {
  std::string model_dir;
  int64_t seq_len = 2048;
  int64_t batch_size = 1;
  int64_t lora_rank = 8;
  std::string config;                  // a run config: its memory estimate
  std::vector<std::string> overrides;  // --set
  int64_t dp = 0;                      // 0: the config's parallel.dp, else 1
  int64_t threads = 0;                 // CPU threads per rank, as `llmft train --threads`
};

InspectArgs parse_args(std::span<char*> args) {
  InspectArgs parsed;
  for (ArgCursor cursor("inspect", args); cursor.next();) {
    const std::string_view arg = cursor.arg();
    if (arg == "--seq-len") parsed.seq_len = cursor.int_value(1);
    else if (arg == "--batch-size") parsed.batch_size = cursor.int_value(1);
    else if (arg == "--lora-rank") parsed.lora_rank = cursor.int_value(1);
    else if (arg == "--config") parsed.config = std::string(cursor.value());
    else if (arg == "--set") parsed.overrides.push_back(std::string(cursor.value()));
    else if (arg == "--dp") parsed.dp = cursor.int_value(1);
    else if (arg == "--threads") parsed.threads = cursor.int_value(1);
    else if (!arg.empty() && arg[0] == '-') throw_bad_input("inspect: unknown option '", arg, "'");
    else if (parsed.model_dir.empty()) parsed.model_dir = arg;
    else throw_bad_input("inspect: unexpected argument '", arg, "' (one MODEL_DIR only)");
  }
  if (parsed.model_dir.empty() && parsed.config.empty())
    throw_bad_input(
        "inspect: usage: llmft inspect MODEL_DIR [--seq-len N] [--batch-size N] [--lora-rank R] | llmft inspect "
        "[MODEL_DIR] --config RUN.pbtxt [--set field.path=value ...] [--dp N] [--threads N]");
  return parsed;
}

// "transformer module" of a HF tensor name.
std::string module_kind(const std::string& name) {
  if (name.find("embed_tokens") != std::string::npos) return "embedding";
  if (name.rfind("lm_head", 0) == 0) return "lm_head";
  if (name.find("norm") != std::string::npos) return "norm";
  if (name.find("self_attn") != std::string::npos) return "attention";
  if (name.find(".mlp.") != std::string::npos) return "mlp";
  return "other";
}

std::string human_count(double count) {
  char text[32];
  if (count >= 1e9) std::snprintf(text, sizeof text, "%.2fB", count / 1e9);
  else if (count >= 1e6) std::snprintf(text, sizeof text, "%.2fM", count / 1e6);
  else if (count >= 1e3) std::snprintf(text, sizeof text, "%.2fK", count / 1e3);
  else std::snprintf(text, sizeof text, "%.0f", count);
  return text;
}

size_t torch_dtype_bytes(const std::string& torch_dtype) { return torch_dtype == "float32" ? 4 : 2; }

}  // namespace

// The run's memory per rank by category, as the trainer reports it.
void print_run_estimate(const ModelConfig& config, const config::TrainOptions& options, int64_t dp, int64_t threads) {
  // CPU threads per rank as `llmft train` picks them, the dp ranks taken to
  // share one node (`mpirun -np dp` on this machine).
  threads = threads_per_rank(threads, dp);
  const trainer::MemoryEstimate estimate =
      trainer::estimate_training_memory(config, options, static_cast<int>(dp), static_cast<int>(threads));
  const std::string precision = options.weights_dtype == options.compute_dtype
                                    ? options.compute_dtype
                                    : str_cat(options.compute_dtype, " compute with ", options.weights_dtype, " weights");
  std::printf("\nrun %s: %s, %s, batch %lld x seq %lld, activation checkpointing %s, dp %lld x tp %lld%s\n",
              options.source.c_str(),
              options.lora()            ? str_cat("LoRA r=", options.lora_r).c_str()
              : options.peft != "none" ? str_cat(options.peft, " ", options.num_virtual_tokens, " virtual tokens").c_str()
                                       : "full fine-tuning",
              precision.c_str(), static_cast<long long>(options.batch_size),
              static_cast<long long>(options.seq_len), options.activation_checkpointing.c_str(),
              static_cast<long long>(dp), static_cast<long long>(options.tp), options.zero1 ? ", ZeRO-1" : "");
  std::printf("  memory per rank (estimate; the run prints its measured peaks after step 1):\n");
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    const auto category = static_cast<MemoryCategory>(c);
    std::printf("    %-18s %12s%s\n", memory_category_name(category), trainer::format_bytes(estimate.of(category)).c_str(),
                category == MemoryCategory::kWorkspace ? "  (CPU backend: 16-bit GEMMs' panels and f32 outputs or copies)" : "");
  }
  std::printf("    %-18s %12s\n", "total", trainer::format_bytes(estimate.total()).c_str());
}

int run_inspect(std::span<char*> raw_args) {
  InspectArgs args = parse_args(raw_args);
  std::optional<config::TrainOptions> run;
  if (!args.config.empty()) {
    run = config::load_train_options(args.config, args.overrides);
    if (args.model_dir.empty()) args.model_dir = run->hf_dir;
    args.seq_len = run->seq_len;
    args.batch_size = run->batch_size;
    if (run->lora()) args.lora_rank = run->lora_r;
  }
  const std::filesystem::path directory = args.model_dir;
  if (!std::filesystem::is_directory(directory))
    throw_bad_input(args.model_dir, ": not a model directory (expected config.json and model.safetensors)");
  ModelConfig config = ModelConfig::load(directory / "config.json");
  SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(directory);

  // Stored parameters, by dtype and by module.
  std::map<std::string, int64_t> by_dtype, by_module;
  int64_t total = 0;
  uint64_t stored_bytes = 0;
  for (const std::string& name : checkpoint.tensor_names()) {
    const SafetensorsEntry& entry = checkpoint.entry(name);
    const int64_t count = shape_numel(entry.shape);
    by_dtype[entry.dtype_name] += count;
    by_module[module_kind(name)] += count;
    total += count;
    stored_bytes += entry.end - entry.begin;
  }

  const int64_t hidden = config.hidden_size, inter = config.intermediate_size, layers = config.num_hidden_layers;
  const int64_t q_size = config.q_size(), kv_size = config.kv_size(), vocab = config.vocab_size;
  // Parameters the config implies (what the model will allocate).
  const int64_t per_layer = hidden * (q_size + 2 * kv_size) + q_size * hidden + 3 * hidden * inter + 2 * hidden +
                            (config.qkv_bias ? q_size + 2 * kv_size : 0) + (config.o_bias ? hidden : 0);
  const int64_t expected = vocab * hidden * (config.tie_word_embeddings ? 1 : 2) + layers * per_layer + hidden;

  std::printf("model        %s\n", args.model_dir.c_str());
  std::printf("architecture %s (model_type %s), torch_dtype %s\n", config.architecture.c_str(),
              config.model_type.c_str(), config.torch_dtype.c_str());
  std::printf("layers       %lld, hidden %lld, intermediate %lld, vocab %lld\n", static_cast<long long>(layers),
              static_cast<long long>(hidden), static_cast<long long>(inter), static_cast<long long>(vocab));
  std::printf("attention    %lld heads, %lld kv heads (%s), head_dim %lld, q/k/v bias %s, o bias %s\n",
              static_cast<long long>(config.num_attention_heads), static_cast<long long>(config.num_key_value_heads),
              config.num_key_value_heads == config.num_attention_heads ? "MHA" : "GQA",
              static_cast<long long>(config.head_dim), config.qkv_bias ? "yes" : "no", config.o_bias ? "yes" : "no");
  const char* scaling = config.rope_scaling.type == RopeScalingType::kLlama3   ? "llama3"
                        : config.rope_scaling.type == RopeScalingType::kLinear ? "linear"
                                                                                : "none";
  std::printf("rope         theta %g, scaling %s (factor %g), max positions %lld\n", config.rope_theta, scaling,
              config.rope_scaling.factor, static_cast<long long>(config.max_position_embeddings));
  std::printf("lm_head      %s\n", config.tie_word_embeddings ? "tied to embed_tokens" : "separate");
  std::printf("\nparameters   %s (%lld) in %zu tensors, %s on disk\n", human_count(static_cast<double>(total)).c_str(),
              static_cast<long long>(total), checkpoint.tensor_names().size(),
              trainer::format_bytes(static_cast<double>(stored_bytes)).c_str());
  if (total != expected)
    std::printf("  note: config.json implies %lld parameters; the checkpoint differs (loading will name the tensor)\n",
                static_cast<long long>(expected));
  std::printf("  by dtype:\n");
  for (const auto& [dtype, count] : by_dtype)
    std::printf("    %-10s %12lld  %6.2f%%\n", dtype.c_str(), static_cast<long long>(count), 100.0 * count / total);
  std::printf("  by module:\n");
  for (const auto& [module, count] : by_module)
    std::printf("    %-10s %12lld  %6.2f%%\n", module.c_str(), static_cast<long long>(count), 100.0 * count / total);

  // Training memory. Compute dtype = torch_dtype; llmft keeps parameter
  // gradients in fp32, an fp32 master copy when the compute dtype is 16-bit,
  // and AdamW's two fp32 moments (DESIGN.md, Precision).
  const double weight_bytes = static_cast<double>(torch_dtype_bytes(config.torch_dtype));
  const double master_bytes = weight_bytes == 4 ? 0.0 : 4.0;
  const double params = static_cast<double>(expected);
  const double tokens = static_cast<double>(args.seq_len * args.batch_size);
  // Activations the backward keeps per token and layer (LlamaModel's
  // BlockActivations with the save-all policy): block input, two norm outputs
  // and the residual midpoint (4·hidden), q and attention output (2·q_size),
  // k and v (2·kv_size), gate, up and silu(gate)·up (3·intermediate), in the
  // compute dtype; plus fp32 norm statistics (2) and attention log-sum-exp
  // (heads). Gradient checkpointing keeps only the block input per layer and
  // one block's full set at a time. Both add the final norm (2·hidden) and one
  // LM-head chunk of logits (about 4M values).
  const double per_token_layer = (4.0 * hidden + 2.0 * q_size + 2.0 * kv_size + 3.0 * inter) * weight_bytes +
                                 (2.0 + static_cast<double>(config.num_attention_heads)) * 4.0;
  const double chunk_rows = std::max(1.0, std::floor(4.0 * 1024 * 1024 / static_cast<double>(vocab)));
  const double head_chunk = std::min(chunk_rows, tokens) * static_cast<double>(vocab) * weight_bytes;
  const double activations_saved = tokens * (layers * per_token_layer + 2.0 * hidden * weight_bytes) + head_chunk;
  const double activations_checkpointed =
      tokens * (layers * hidden * weight_bytes + per_token_layer + 2.0 * hidden * weight_bytes) + head_chunk;

  const double full_states = params * (weight_bytes + 4.0 + master_bytes + 8.0);
  std::printf("\ntraining memory, seq %lld x batch %lld = %.0f tokens (activation estimate: %s per token and layer)\n",
              static_cast<long long>(args.seq_len), static_cast<long long>(args.batch_size), tokens,
              trainer::format_bytes(per_token_layer).c_str());
  std::printf("  full fine-tuning: weights %s + grads %s + fp32 master %s + AdamW moments %s = %s\n",
              trainer::format_bytes(params * weight_bytes).c_str(), trainer::format_bytes(params * 4.0).c_str(),
              trainer::format_bytes(params * master_bytes).c_str(), trainer::format_bytes(params * 8.0).c_str(),
              trainer::format_bytes(full_states).c_str());
  std::printf("    + activations %s = %s (with gradient checkpointing: + %s = %s)\n",
              trainer::format_bytes(activations_saved).c_str(), trainer::format_bytes(full_states + activations_saved).c_str(),
              trainer::format_bytes(activations_checkpointed).c_str(),
              trainer::format_bytes(full_states + activations_checkpointed).c_str());

  // LoRA on every linear layer of the blocks (PEFT's "all-linear" leaves the
  // LM head out): A [r, in] and B [out, r] per projection.
  const double r = static_cast<double>(args.lora_rank);
  const double lora_per_layer =
      r * ((hidden + q_size) + 2.0 * (hidden + kv_size) + (q_size + hidden) + 2.0 * (hidden + inter) + (inter + hidden));
  const double lora_params = lora_per_layer * layers;
  const double lora_states = params * weight_bytes + lora_params * (weight_bytes + 4.0 + master_bytes + 8.0);
  // LoRA adds its rank-r intermediate per projection and token (7 per layer).
  const double lora_activations = activations_saved + tokens * layers * 7.0 * r * weight_bytes;
  std::printf("  LoRA r=%lld all linear layers (%s trainable, %.3f%%): frozen weights %s + LoRA states %s\n",
              static_cast<long long>(args.lora_rank), human_count(lora_params).c_str(), 100.0 * lora_params / params,
              trainer::format_bytes(params * weight_bytes).c_str(),
              trainer::format_bytes(lora_params * (weight_bytes + 4.0 + master_bytes + 8.0)).c_str());
  std::printf("    + activations %s = %s\n", trainer::format_bytes(lora_activations).c_str(),
              trainer::format_bytes(lora_states + lora_activations).c_str());
  if (run) print_run_estimate(config, *run, args.dp > 0 ? args.dp : std::max<int64_t>(run->dp, 1), args.threads);
  return 0;
}

}  // namespace llmft::launch
