#include "trainer/memory_estimate.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/packed_gemm.h"
#include "peft/lora.h"
#include "trainer/training_setup.h"

namespace llmft::trainer {

double MemoryEstimate::total() const {
  double sum = 0.0;
  for (double value : bytes) sum += value;
  return sum;
}

MemoryEstimate estimate_training_memory(const ModelConfig& config, const config::TrainOptions& options, int dp,
                                        int cpu_threads) {
  const DType dtype = parse_float_dtype(options.compute_dtype, options.source + ": precision.compute_dtype");
  const double w = static_cast<double>(dtype_size(dtype));
  // The model's own parameters are stored in model.weights_dtype; adapters'
  // parameters and activations in the compute dtype.
  const DType base_dtype = parse_float_dtype(options.weights_dtype, options.source + ": model.weights_dtype");
  const double wb = static_cast<double>(dtype_size(base_dtype));
  const double tp = static_cast<double>(std::max<int64_t>(options.tp, 1));
  const double D = static_cast<double>(config.hidden_size), V = static_cast<double>(config.vocab_size);
  const double layers = static_cast<double>(config.num_hidden_layers);
  // This rank's share of the split sizes.
  const double q = static_cast<double>(config.q_size()) / tp, kv = static_cast<double>(config.kv_size()) / tp;
  const double I = static_cast<double>(config.intermediate_size) / tp;
  const double heads = static_cast<double>(config.num_attention_heads) / tp;

  // Parameters on this rank: the block linears split, the rest replicated.
  const double biases = (config.qkv_bias ? q + 2 * kv : 0.0) + (config.o_bias ? D : 0.0);
  const double per_layer = D * (q + 2 * kv) + q * D + 3 * D * I + 2 * D + biases;
  const double parameters = V * D * (config.tie_word_embeddings ? 1.0 : 2.0) + layers * per_layer + D;

  double trainable = parameters;
  if (options.lora()) {
    LoraSettings lora;
    lora.target_modules = options.lora_target_modules;
    const std::vector<std::string> targets = lora.resolved_target_modules();
    const double r = static_cast<double>(options.lora_r);
    auto has = [&](const char* name) { return std::find(targets.begin(), targets.end(), name) != targets.end(); };
    // A [r, in] and B [out, r]; under tp the split side of each is divided.
    double per_layer_lora = 0.0;
    if (has("q_proj")) per_layer_lora += r * (D + q);
    if (has("k_proj")) per_layer_lora += r * (D + kv);
    if (has("v_proj")) per_layer_lora += r * (D + kv);
    if (has("o_proj")) per_layer_lora += r * (q + D);
    if (has("gate_proj")) per_layer_lora += r * (D + I);
    if (has("up_proj")) per_layer_lora += r * (D + I);
    if (has("down_proj")) per_layer_lora += r * (I + D);
    trainable = layers * per_layer_lora;
  }
  // Prompt learning: the virtual tokens (or prefix key/values) and any
  // encoder, H wide (peft/prompt_tuning.h, peft/prefix_tuning.h).
  const double P = static_cast<double>(options.num_virtual_tokens);
  const double H = options.encoder_hidden_size > 0 ? static_cast<double>(options.encoder_hidden_size) : D;
  const double prefix_width = layers * 2 * static_cast<double>(config.kv_size());
  if (options.peft == "prompt_tuning") trainable = P * D;
  if (options.peft == "p_tuning") trainable = P * D + (D * H + H) + (H * H + H) + (H * D + D);
  if (options.peft == "bottleneck") {
    const double b = options.bottleneck_size > 0 ? static_cast<double>(options.bottleneck_size)
                                                 : std::floor(D / static_cast<double>(options.bottleneck_reduction_factor));
    const double sites = options.bottleneck_placement == "houlsby" ? 2.0 : 1.0;
    trainable = layers * sites * (2 * D * b + b + D);
  }
  if (options.peft == "prefix_tuning")
    trainable = options.prefix_projection
                    ? P * static_cast<double>(config.kv_size()) + (config.kv_size() * H + H) + (H + 1) * prefix_width
                    : P * prefix_width;
  const double zero1 = options.zero1 && dp > 1 ? static_cast<double>(dp) : 1.0;
  MemoryEstimate estimate;
  auto set = [&](MemoryCategory category, double value) { estimate.bytes[static_cast<size_t>(category)] = value; };
  set(MemoryCategory::kFrozenWeights, options.peft != "none" ? parameters * wb : 0.0);
  // fp32 masters only for 16-bit values (an f32 value is its own master).
  const double wt = options.peft != "none" ? w : wb;  // the trainable values' dtype size
  set(MemoryCategory::kTrainableWeights, trainable * wt + (wt < 4 ? trainable * 4 / zero1 : 0.0));
  // ZeRO-1 adds the reduce-scattered shard of the flat gradient buckets.
  set(MemoryCategory::kGradients, trainable * 4 + (zero1 > 1 ? trainable * 4 / zero1 : 0.0));
  set(MemoryCategory::kOptimizerState, trainable * 8 / zero1);

  // Activations of one micro-batch of N = batch_size x seq_len rows (and the
  // virtual tokens in front of each row with prompt or P-tuning).
  const bool virtual_rows = options.peft == "prompt_tuning" || options.peft == "p_tuning";
  const double B = static_cast<double>(options.batch_size);
  const double N = B * (static_cast<double>(options.seq_len) + (virtual_rows ? P : 0.0));
  // A block's full set for the backward: norm outputs, q, k, v, attention
  // output, residual midpoint, gate, up, silu(gate)·up and the block output
  // (the next block's input), in the compute dtype; two f32 RMS statistics
  // and the attention log-sum-exp per head.
  const double all = N * ((4 * D + 2 * q + 2 * kv + 3 * I) * w + (2 + heads) * 4);
  // Selective: the norms, their statistics and SwiGLU's output are dropped.
  const double selective = N * ((2 * D + 2 * q + 2 * kv + 2 * I) * w + heads * 4);
  const double full_checkpoint = N * D * w;  // the block output only
  const std::string& policy = options.activation_checkpointing;
  const int64_t every = std::max<int64_t>(options.checkpoint_every_n_layers, 1);
  double kept = N * D * w;  // the embedding output (block 0's input)
  // Bottleneck adapters keep each adapter's input x ([N, D]) for the backward.
  const double adapter_sites =
      options.peft != "bottleneck" ? 0.0 : options.bottleneck_placement == "houlsby" ? 2.0 : 1.0;
  const double adapter_inputs = adapter_sites * N * D * w;
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const bool checkpointed = policy != "none" && layer % every == 0;
    kept += !checkpointed ? all : policy == "full" ? full_checkpoint : selective;
    if (!checkpointed || policy != "full") kept += adapter_inputs;
  }
  // After the blocks: the final norm's output and its gradient, the LM
  // head's logits chunk, f32 losses, log-sum-exp, dloss, targets and positions.
  const double chunk_rows = std::min(N, std::max(1.0, std::floor(4194304.0 / V)));  // LlamaOptions default
  const double tail = 2 * N * D * w + chunk_rows * V * w + N * 4 * 6;
  // The last block's backward: its recomputed activations (FULL: the whole
  // set but its kept output; SELECTIVE: norms, statistics and SwiGLU) and
  // the gradients of its input, midpoint, MLP and attention tensors.
  const int64_t last = config.num_hidden_layers - 1;
  const bool last_checkpointed = policy != "none" && last % every == 0;
  const double recomputed = !last_checkpointed ? 0.0
                            : policy == "full"  ? all - full_checkpoint
                                                : all - selective;
  const double backward = N * (D + I + 2 * D + 2 * q + 2 * kv) * w;
  // Prefix tuning: each layer keeps its [P, kv] keys and values once (attention
  // reads them for every sequence, ops::SharedPrefix), and the prefix's own
  // [layers·2, P, kv] values and f32 gradient.
  const double prefix =
      options.peft != "prefix_tuning" ? 0.0 : layers * P * 2 * kv * w + P * prefix_width * (w + 4);
  set(MemoryCategory::kActivations, kept + tail + recomputed + backward + prefix);

  // Workspace (the CPU backend's), one GEMM at a time; the largest are the LM
  // head's (its [V, D] weight; a chunk's logits, hidden rows and their
  // gradient) and the MLP's ([I, D] weight; [N, D] and [N, I] rows). Outputs
  // in a 16-bit dtype are computed into an f32 buffer (kernels/cpu/cpu_util.h
  // F32Output). 16-bit operands either go to the packed GEMM, which needs its
  // panels (kernels/cpu/packed_gemm.h), or are widened into f32 copies
  // (F32Copy), as cpu_gemm_path() says for this CPU and the pair of dtypes.
  // Batches and other scratch are a few KB.
  double lm_head_copies = 0.0, mlp_copies = 0.0;
  if (w < 4 || wb < 4) {
    const cpu::CpuGemmPath path = cpu::cpu_gemm_path(dtype, base_dtype);
    if (cpu::is_packed_path(path)) {
      const int threads = cpu_threads > 0 ? cpu_threads : cpu::packed_gemm_threads();
      const auto panels = [&](double m, double n, double k) {
        return static_cast<double>(cpu::packed_gemm_scratch_floats(
            path, static_cast<int64_t>(m), static_cast<int64_t>(n), static_cast<int64_t>(k), threads));
      };
      lm_head_copies = (w < 4 ? chunk_rows * V : 0.0) + panels(chunk_rows, V, D);
      mlp_copies = (w < 4 ? N * I : 0.0) + panels(N, I, D);
    } else {
      lm_head_copies = (wb < 4 ? V * D : 0.0) + (w < 4 ? chunk_rows * (V + 2 * D) : 0.0);
      mlp_copies = (wb < 4 ? I * D : 0.0) + (w < 4 ? N * (I + D) : 0.0);
    }
  }
  set(MemoryCategory::kWorkspace, 4 * std::max(lm_head_copies, mlp_copies));
  return estimate;
}

}  // namespace llmft::trainer
