// The Llama-family decoder (Llama, Mistral, Qwen2) with an explicit forward
// and backward, following transformers' modeling_llama.py:
//
//   embedding (+ prompt-tuning embeddings) →
//   N × [ RMSNorm → q/k/v linears → RoPE (rotate-half) → GQA causal attention
//         (optional prefix K/V, packed documents) → o linear → residual →
//         RMSNorm → gate/up linears → SwiGLU → down linear → residual ] →
//   final RMSNorm → LM head + cross-entropy, chunked over rows so the fp32
//   logits of the whole batch are never materialised.
//
// Parameters live in a ParameterRegistry under their Hugging Face names; the
// backward accumulates gradients into trainable parameters only. Each block
// either saves its activations or keeps only its input and recomputes its
// forward in the backward (gradient checkpointing).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/tensor.h"
#include "model/kv_cache.h"
#include "model/linear.h"
#include "model/model_config.h"
#include "model/parameters.h"
#include "model/safetensors.h"

namespace llmft {

enum class ActivationPolicy {
  kSaveAll,    // keep every intermediate of the block for the backward
  kRecompute,  // keep the block input only; rerun the block forward in the backward
  // Keep the block input and the outputs of the expensive ops (q, k, v after
  // RoPE, the attention output and its log-sum-exp, the residual after
  // attention, gate, up); recompute the cheap ones in the backward (both
  // RMSNorms and SwiGLU): Megatron's selective recompute trade (Korthikanti
  // et al. 2022), which frees [N, D] x 2 + [N, I] per block for elementwise
  // work only. The recomputed tensors are bitwise the saved ones.
  kSelective,
};

struct LlamaOptions {
  DType compute_dtype = DType::kF32;  // activations (and adapters' parameters)
  // Storage of the model's own parameters (matrices, norms, biases); unset:
  // compute_dtype. A bf16 base under f32 compute halves the frozen weights'
  // memory; an f32 base under bf16 compute is torch.autocast's layout. The
  // linears, the embedding and the norms read the weight in its own dtype
  // (kernels/ops.h).
  std::optional<DType> weights_dtype;
  DType grad_dtype = DType::kF32;     // parameter gradients
  ActivationPolicy activation_policy = ActivationPolicy::kSaveAll;  // every block, unless set per block
  // Rows of logits computed at once by the LM head + cross-entropy; 0 picks
  // about 4M logits (16 MB in fp32) per chunk.
  int64_t lm_head_chunk_rows = 0;
  // Tensor parallelism (Megatron layout, DESIGN.md): the group this rank's
  // slices of q, k, v, gate, up (column-parallel: heads, KV heads and the
  // intermediate size split) and o, down (row-parallel) are reduced over;
  // norms, embedding and LM head are replicated. Collectives take the
  // model's tensors (host memory on the CPU, device memory on CUDA: NCCL).
  // Null or size 1: the whole model on this rank. The caller keeps it alive.
  parallel::Communicator* tensor_parallel = nullptr;
};

// One batch of token sequences, on the host or the context's device.
struct Batch {
  Tensor input_ids;     // i32 [B, T]
  Tensor targets;       // i32 [B, T]: next-token targets; negative (-100) = no loss. May be undefined (no loss).
  Tensor position_ids;  // optional i32 [B, T]; default 0..T-1 in every row
  Tensor doc_start;     // optional i32 [B, T]: for packed sequences, the index (within the row) of the first
                        // token of each token's document; attention stays inside the document
};

struct StepResult {
  double loss = 0.0;               // mean cross-entropy over target tokens (0 when there are none)
  int64_t num_target_tokens = 0;
};

// Prompt tuning (Lester et al. 2021): P virtual token embeddings prepended to
// every sequence. Their positions get no loss; positions run 0..P+T-1.
class PromptEmbeddingHook {
 public:
  virtual ~PromptEmbeddingHook() = default;
  virtual int64_t num_virtual_tokens() const = 0;
  // Fills embeddings [P, hidden] (compute dtype), shared by every sequence.
  virtual void forward(Context& context, Tensor& embeddings) = 0;
  // dembeddings: [B, P, hidden], one row block per sequence.
  virtual void backward(Context& context, const Tensor& dembeddings) = 0;
};

// Prefix tuning (Li & Liang 2021): per-layer key/value prefixes that every
// query attends to (ops::AttentionOptions::num_prefix). They enter attention
// as given (no RoPE), like cached keys/values in transformers, and the real
// tokens' positions start at P (given position_ids are offset by P), as
// transformers + PEFT number them.
class AttentionPrefixHook {
 public:
  virtual ~AttentionPrefixHook() = default;
  virtual int64_t num_prefix() const = 0;
  // Fills keys/values [P, kv_heads, head_dim] of `layer`, shared by every
  // sequence. Called again for a block recomputed by gradient checkpointing,
  // so it must give the same values both times.
  virtual void forward(Context& context, int64_t layer, Tensor& keys, Tensor& values) = 0;
  // dkeys/dvalues: f32 [P, kv_heads, head_dim], summed over the batch's
  // sequences (attention reads one copy of the prefix for all of them).
  virtual void backward(Context& context, int64_t layer, const Tensor& dkeys, const Tensor& dvalues) = 0;
};

// Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) on the
// residual stream: after a sub-block (attention or MLP) whose output h joins
// the residual r, the stream becomes r + h + f(x), with x = h (the
// sub-block's output; Houlsby) or x = r + h (after the residual add;
// Pfeiffer) — AdapterHub's Llama placement. The model saves x for the
// backward; the hook recomputes anything else from it.
enum class BlockSite { kAttention, kMlp };
class ResidualAdapterHook {
 public:
  virtual ~ResidualAdapterHook() = default;
  virtual bool adapts(int64_t layer, BlockSite site) const = 0;
  // true: x = r + h (Pfeiffer); false: x = h (Houlsby).
  virtual bool after_residual() const = 0;
  // Adds f(x) to `stream` ([N, hidden], compute dtype).
  virtual void forward(Context& context, int64_t layer, BlockSite site, const Tensor& x, Tensor& stream) = 0;
  // dstream = dL/d(stream): accumulates the hook's parameter gradients and
  // adds (df/dx)ᵀ dstream to dx.
  virtual void backward(Context& context, int64_t layer, BlockSite site, const Tensor& dstream, const Tensor& x,
                        Tensor& dx) = 0;
};

class LlamaModel {
 public:
  // Parameters allocated but not initialised; use init_random or load_weights.
  // Under tensor parallelism each holds its slice (Parameter::shard); kBadInput
  // naming config.json's field when heads, KV heads or the intermediate size
  // do not divide by the group's size.
  LlamaModel(Context& context, const ModelConfig& config, const LlamaOptions& options = {});
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  // config.json + model.safetensors (or a sharded index) from a HF directory,
  // converted to the options' weights dtype.
  static std::unique_ptr<LlamaModel> load(Context& context, const std::filesystem::path& directory,
                                          const LlamaOptions& options = {});
  // Normal(0, stddev) weights (transformers' initializer_range is 0.02), unit
  // norm weights, zero biases; drawn from Philox(seed) in registration order,
  // at full shape then sliced, so every tp layout gets the same model.
  void init_random(Context& context, uint64_t seed, float stddev = 0.02f);
  // Every parameter from `checkpoint` (this rank's slice only, under tensor
  // parallelism); errors name the file, the tensor and the expected (full)
  // shape for missing, unexpected and mis-shaped tensors.
  void load_weights(Context& context, const SafetensorsCheckpoint& checkpoint);
  // Writes config.json and the weights (in `dtype`, default the weights'
  // dtype) as a transformers-loadable directory, sharded above max_shard_bytes.
  void save_pretrained(const std::filesystem::path& directory, std::optional<DType> dtype = std::nullopt,
                       uint64_t max_shard_bytes = kDefaultMaxShardBytes) const;
  // Parameters by HF name (host copies converted to `dtype` when given), full
  // tensors: gathered over the tensor-parallel group (collective; the group
  // must take host memory) when the model is sharded.
  std::vector<NamedTensor> state_dict(std::optional<DType> dtype = std::nullopt) const;

  // The whole model's configuration (global head counts and sizes).
  const ModelConfig& config() const { return config_; }
  int tensor_parallel_size() const { return tp_size_; }
  parallel::Communicator* tensor_parallel() const { return options_.tensor_parallel; }
  const LlamaOptions& options() const { return options_; }
  // The dtype the model's own parameters are stored in.
  DType weights_dtype() const { return options_.weights_dtype.value_or(options_.compute_dtype); }
  ParameterRegistry& parameters() { return parameters_; }
  const ParameterRegistry& parameters() const { return parameters_; }
  // Every linear layer (q, k, v, o, gate, up, down of each layer, then
  // lm_head), for adapters to attach to by name.
  std::vector<Linear*> linears();
  Linear* find_linear(const std::string& module_name);

  void set_activation_policy(ActivationPolicy policy);
  void set_activation_policy(int64_t layer, ActivationPolicy policy);
  void set_prompt_embedding_hook(PromptEmbeddingHook* hook) { prompt_hook_ = hook; }
  // Called by forward_backward's backward as gradients become final, by
  // stage: num_layers once the LM head and the final norm are done, then l
  // after block l (l = N-1 .. 0), then -1 at the very end (embedding, prompt
  // embeddings). Data parallelism starts each gradient bucket's all-reduce
  // from here (parallel/gradient_buckets.h). Empty: no calls.
  void set_gradient_stage_hook(std::function<void(int64_t stage)> hook) { gradient_stage_hook_ = std::move(hook); }
  // The stage after which the gradient of the parameter named `name` (the
  // model's, or an adapter's on one of its modules) is final: the block
  // index for names with "layers.<l>.", num_layers for the LM head and the
  // final norm (a tied head's weight is the embedding's), -1 for the rest.
  int64_t gradient_stage(const std::string& name) const;
  void set_attention_prefix_hook(AttentionPrefixHook* hook) { prefix_hook_ = hook; }
  void set_residual_adapter_hook(ResidualAdapterHook* hook) { residual_hook_ = hook; }

  // Loss (and optionally logits f32 [B, P+T, V] on the context's device,
  // where P is the number of prompt-tuning tokens) without gradients.
  StepResult forward(Context& context, const Batch& batch, Tensor* logits = nullptr);
  // Forward and backward: d(loss * loss_scale)/dparameter is ADDED to the
  // gradient of every trainable parameter (allocated on first use, of
  // options.grad_dtype), so gradient accumulation is a loop of calls.
  StepResult forward_backward(Context& context, const Batch& batch, float loss_scale = 1.0f);

  // Incremental decoding of one sequence: runs `new_ids` after the positions
  // already in `cache` (all of them visible to every new token, the new ones
  // causal among themselves), writes their keys/values into the cache rows
  // after the filled ones (allocating cache.reserved_positions rows at first,
  // doubling when full), and returns the f32 logits [vocab] of the last new
  // token on the context's device. An empty cache is the prefill; with a
  // prefix hook set, its K/V enter the cache on that first call, and with a
  // prompt-tuning hook its virtual tokens run in front of the prompt.
  Tensor forward_incremental(Context& context, std::span<const int32_t> new_ids, KvCache& cache);

 private:
  struct Layer;
  struct StepState;
  struct BlockActivations;

  StepResult run(Context& context, const Batch& batch, bool backward, float loss_scale, Tensor* logits);
  void reserve_cache(Context& context, KvCache& cache, int64_t rows, int64_t prefix_rows) const;
  void block_forward(Context& context, StepState& step, int64_t layer, BlockActivations& activations,
                     Tensor& output);
  void block_backward(Context& context, StepState& step, int64_t layer, BlockActivations& activations,
                      Tensor& dresidual);
  void recompute_selective(Context& context, int64_t layer, BlockActivations& activations);
  void add_residual(Context& context, int64_t layer, BlockSite site, const Tensor& residual, Tensor& sublayer,
                    Tensor& adapter_input);
  Tensor residual_backward(Context& context, int64_t layer, BlockSite site, const Tensor& adapter_input,
                           Tensor& dstream);
  // Sums a row-parallel partial output (forward) or a column-parallel partial
  // input gradient (backward) over the tensor-parallel group.
  void reduce_over_tensor_parallel(Tensor& partial, std::string_view what) const;
  // Registers a parameter of full shape `full_shape`, this rank's slice of
  // dimension `split_dim` (-1: replicated).
  Parameter& add_parameter(Context& context, const std::string& name, const Shape& full_shape, int split_dim);

  ModelConfig config_;
  LlamaOptions options_;
  int tp_size_ = 1, tp_rank_ = 0;
  // This rank's share of the attention heads, KV heads and MLP width.
  int64_t local_heads_ = 0, local_kv_heads_ = 0, local_intermediate_ = 0;
  ParameterRegistry parameters_;
  Parameter* embed_tokens_ = nullptr;
  Parameter* final_norm_ = nullptr;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::unique_ptr<Linear> lm_head_;  // weight = embed_tokens when tied
  std::vector<ActivationPolicy> policies_;
  Tensor inv_freq_;  // f32 [head_dim / 2] on the device
  PromptEmbeddingHook* prompt_hook_ = nullptr;
  AttentionPrefixHook* prefix_hook_ = nullptr;
  ResidualAdapterHook* residual_hook_ = nullptr;
  std::function<void(int64_t)> gradient_stage_hook_;
};

}  // namespace llmft
