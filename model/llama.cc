#include "model/llama.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/philox.h"
#include "kernels/ops.h"
#include "model/llama_internal.h"
#include "parallel/shard.h"

namespace llmft {
namespace {

std::vector<int32_t> host_ints(const Tensor& tensor) {
  Tensor host = tensor.device().is_cpu() ? tensor : tensor.to(default_host_allocator());
  const int32_t* data = host.data<int32_t>();
  return std::vector<int32_t>(data, data + host.numel());
}

void check_batch_tensor(const Tensor& tensor, const char* field, const Shape& expected) {
  if (tensor.dtype() != DType::kI32 || tensor.shape() != expected)
    throw_bad_input("batch: ", field, ": expected i32", shape_to_string(expected), ", found ", tensor.to_string());
}

}  // namespace

LlamaModel::LlamaModel(Context& context, const ModelConfig& config, const LlamaOptions& options)
    : config_(config), options_(options) {
  LLMFT_CHECK(is_floating(options.compute_dtype) && is_floating(options.grad_dtype) &&
                  is_floating(options.weights_dtype.value_or(options.compute_dtype)),
              "float dtypes required");
  if (options_.tensor_parallel != nullptr && options_.tensor_parallel->size() == 1) options_.tensor_parallel = nullptr;
  parallel::Communicator* tp = options_.tensor_parallel;
  tp_size_ = tp != nullptr ? tp->size() : 1;
  tp_rank_ = tp != nullptr ? tp->rank() : 0;
  // Megatron's column split gives each rank whole heads (and whole KV heads,
  // so a query head's KV group is on its rank) and whole SwiGLU rows.
  for (const auto& [field, value] : {std::pair<const char*, int64_t>{"num_attention_heads", config.num_attention_heads},
                                     {"num_key_value_heads", config.num_key_value_heads},
                                     {"intermediate_size", config.intermediate_size}})
    if (value % tp_size_ != 0)
      throw_bad_input("config.json: field '", field, "': ", value, " does not divide by parallel.tp ", tp_size_,
                      " (tensor parallelism splits attention heads, KV heads and the MLP evenly; use a tp that "
                      "divides all three)");
  local_heads_ = config.num_attention_heads / tp_size_;
  local_kv_heads_ = config.num_key_value_heads / tp_size_;
  local_intermediate_ = config.intermediate_size / tp_size_;
  const int64_t hidden = config.hidden_size, inter = config.intermediate_size;
  const int64_t q_size = config.q_size(), kv_size = config.kv_size();
  constexpr int kReplicated = -1, kRows = 0, kColumns = 1;

  embed_tokens_ = &add_parameter(context, "model.embed_tokens.weight", {config.vocab_size, hidden}, kReplicated);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string prefix = str_cat("model.layers.", i, ".");
    auto layer = std::make_unique<Layer>();
    // Column-parallel: W [out, in] and the bias split by output rows;
    // row-parallel: W split by input columns, the bias replicated.
    auto linear = [&](const std::string& module, int64_t out, int64_t in, bool bias, ShardKind kind) {
      const std::string name = prefix + module;
      const bool split = tp != nullptr;
      Parameter* weight = &add_parameter(context, name + ".weight", {out, in},
                                         !split ? kReplicated : kind == ShardKind::kColumn ? kRows : kColumns);
      Parameter* bias_parameter =
          bias ? &add_parameter(context, name + ".bias", {out}, split && kind == ShardKind::kColumn ? kRows : kReplicated)
               : nullptr;
      return std::make_unique<Linear>(name, weight, bias_parameter, split ? kind : ShardKind::kNone, tp);
    };
    layer->input_norm = &add_parameter(context, prefix + "input_layernorm.weight", {hidden}, kReplicated);
    layer->q = linear("self_attn.q_proj", q_size, hidden, config.qkv_bias, ShardKind::kColumn);
    layer->k = linear("self_attn.k_proj", kv_size, hidden, config.qkv_bias, ShardKind::kColumn);
    layer->v = linear("self_attn.v_proj", kv_size, hidden, config.qkv_bias, ShardKind::kColumn);
    layer->o = linear("self_attn.o_proj", hidden, q_size, config.o_bias, ShardKind::kRow);
    layer->post_attention_norm =
        &add_parameter(context, prefix + "post_attention_layernorm.weight", {hidden}, kReplicated);
    layer->gate = linear("mlp.gate_proj", inter, hidden, false, ShardKind::kColumn);
    layer->up = linear("mlp.up_proj", inter, hidden, false, ShardKind::kColumn);
    layer->down = linear("mlp.down_proj", hidden, inter, false, ShardKind::kRow);
    layers_.push_back(std::move(layer));
  }
  final_norm_ = &add_parameter(context, "model.norm.weight", {hidden}, kReplicated);
  Parameter* head = config.tie_word_embeddings
                        ? embed_tokens_
                        : &add_parameter(context, "lm_head.weight", {config.vocab_size, hidden}, kReplicated);
  lm_head_ = std::make_unique<Linear>("lm_head", head, nullptr);
  policies_.assign(static_cast<size_t>(config.num_hidden_layers), options.activation_policy);

  std::vector<float> inv_freq = config.rope_inv_freq();
  inv_freq_ = context.upload(Tensor::from_floats({static_cast<int64_t>(inv_freq.size())}, inv_freq));
}

Parameter& LlamaModel::add_parameter(Context& context, const std::string& name, const Shape& full_shape,
                                     int split_dim) {
  const ParameterShard shard = parallel::even_shard(full_shape, split_dim, tp_size_, tp_rank_);
  Parameter& parameter =
      parameters_.add(context, name, shard.sharded() ? parallel::shard_shape(shard, tp_size_) : full_shape,
                      weights_dtype());
  parameter.shard = shard;
  return parameter;
}

void LlamaModel::reduce_over_tensor_parallel(Tensor& partial, std::string_view what) const {
  if (options_.tensor_parallel != nullptr) options_.tensor_parallel->all_reduce(partial, parallel::ReduceOp::kSum, what);
}

LlamaModel::~LlamaModel() = default;

std::unique_ptr<LlamaModel> LlamaModel::load(Context& context, const std::filesystem::path& directory,
                                             const LlamaOptions& options) {
  if (!std::filesystem::is_directory(directory))
    throw_bad_input(directory.string(), ": not a model directory (expected config.json and model.safetensors)");
  ModelConfig config = ModelConfig::load(directory / "config.json");
  SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(directory);
  auto model = std::make_unique<LlamaModel>(context, config, options);
  model->load_weights(context, checkpoint);
  return model;
}

void LlamaModel::init_random(Context& context, uint64_t seed, float stddev) {
  PhiloxGenerator generator(seed);
  for (Parameter* parameter : parameters_.all()) {
    const Shape& full_shape = parameter->full_shape();
    std::vector<float> values(static_cast<size_t>(shape_numel(full_shape)));
    const bool is_norm = parameter->name.ends_with("norm.weight");
    const bool is_bias = parameter->name.ends_with(".bias");
    for (float& value : values) value = is_norm ? 1.0f : is_bias ? 0.0f : stddev * generator.next_normal();
    MemoryCategoryScope scratch(MemoryCategory::kWorkspace);
    const Tensor full = Tensor::from_floats(full_shape, values, parameter->value.dtype());
    parameter->value.copy_from(parallel::take_shard(full, parameter->shard, tp_size_));
  }
}

void LlamaModel::load_weights(Context& context, const SafetensorsCheckpoint& checkpoint) {
  for (Parameter* parameter : parameters_.all()) {
    const Shape& full_shape = parameter->full_shape();
    if (!checkpoint.contains(parameter->name))
      throw_bad_input(checkpoint.directory(), ": missing tensor '", parameter->name, "' (expected shape ",
                      shape_to_string(full_shape), " for ", config_.architecture, ")");
    const SafetensorsEntry& entry = checkpoint.entry(parameter->name);
    if (entry.shape != full_shape)
      throw_bad_input(checkpoint.file_of(parameter->name).path(), ": tensor '", parameter->name, "': expected shape ",
                      shape_to_string(full_shape), ", found ", shape_to_string(entry.shape));
  }
  for (const std::string& name : checkpoint.tensor_names()) {
    if (parameters_.find(name) != nullptr) continue;
    // Tolerated as transformers does: stale RoPE buffers of old exports and a
    // redundant head of tied models.
    if (name.ends_with("rotary_emb.inv_freq") || (config_.tie_word_embeddings && name == "lm_head.weight")) continue;
    throw_bad_input(checkpoint.file_of(name).path(), ": unexpected tensor '", name, "' (not a parameter of ",
                    config_.architecture, " with this config.json)");
  }
  // Conversions and slices are scratch, not the weights' category.
  MemoryCategoryScope scratch(MemoryCategory::kWorkspace);
  for (Parameter* parameter : parameters_.all()) {
    const DType dtype = parameter->value.dtype();
    if (!parameter->shard.sharded()) {
      // A CPU parameter stored in another float dtype than the file's is
      // converted straight into place: a staging copy would be a transient
      // peak the size of the largest tensor (the embedding) on top of it all.
      const Tensor stored = checkpoint.tensor(parameter->name);
      if (stored.dtype() == dtype) {
        parameter->value.copy_from(stored);
      } else if (parameter->value.device().is_cpu() && is_floating(stored.dtype()) && is_floating(dtype)) {
        ops::cast(context, stored, parameter->value);
      } else {  // staged on the host (a CUDA parameter), or the integer/float mismatch tensor_as reports
        parameter->value.copy_from(checkpoint.tensor_as(parameter->name, dtype));
      }
      continue;
    }
    // Only this rank's slice is read from the mapping and converted.
    Tensor slice = parallel::take_shard(checkpoint.tensor(parameter->name), parameter->shard, tp_size_);
    if (slice.dtype() != dtype) slice = Tensor::from_floats(slice.shape(), slice.to_floats(), dtype);
    parameter->value.copy_from(slice);
  }
  context.synchronize();
}

std::vector<NamedTensor> LlamaModel::state_dict(std::optional<DType> dtype) const {
  std::vector<NamedTensor> tensors;
  for (const Parameter* parameter : parameters_.all()) {
    Tensor host =
        parameter->shard.sharded()
            ? parallel::gather_shards(*options_.tensor_parallel, parameter->value, parameter->shard,
                                      str_cat("state_dict gather of ", parameter->name))
        : parameter->value.device().is_cpu() ? parameter->value
                                              : parameter->value.to(default_host_allocator());
    if (dtype && *dtype != host.dtype()) host = Tensor::from_floats(host.shape(), host.to_floats(), *dtype);
    tensors.push_back({parameter->name, host});
  }
  return tensors;
}

void LlamaModel::save_pretrained(const std::filesystem::path& directory, std::optional<DType> dtype,
                                 uint64_t max_shard_bytes) const {
  std::filesystem::create_directories(directory);
  ModelConfig saved = config_;
  saved.torch_dtype = torch_dtype_name(dtype.value_or(weights_dtype()));
  write_safetensors_checkpoint(directory, state_dict(dtype), max_shard_bytes);
  saved.save(directory / "config.json");
}

std::vector<Linear*> LlamaModel::linears() {
  std::vector<Linear*> result;
  for (auto& layer : layers_)
    for (Linear* linear : {layer->q.get(), layer->k.get(), layer->v.get(), layer->o.get(), layer->gate.get(),
                           layer->up.get(), layer->down.get()})
      result.push_back(linear);
  result.push_back(lm_head_.get());
  return result;
}

Linear* LlamaModel::find_linear(const std::string& module_name) {
  for (Linear* linear : linears())
    if (linear->name() == module_name) return linear;
  return nullptr;
}

void LlamaModel::set_activation_policy(ActivationPolicy policy) { std::fill(policies_.begin(), policies_.end(), policy); }

void LlamaModel::set_activation_policy(int64_t layer, ActivationPolicy policy) {
  LLMFT_CHECK(layer >= 0 && layer < config_.num_hidden_layers, "layer ", layer, " out of range");
  policies_[static_cast<size_t>(layer)] = policy;
}

StepResult LlamaModel::forward(Context& context, const Batch& batch, Tensor* logits) {
  return run(context, batch, /*backward=*/false, 1.0f, logits);
}

StepResult LlamaModel::forward_backward(Context& context, const Batch& batch, float loss_scale) {
  return run(context, batch, /*backward=*/true, loss_scale, nullptr);
}

// ---- The whole step ---------------------------------------------------------------

StepResult LlamaModel::run(Context& context, const Batch& batch, bool backward, float loss_scale, Tensor* logits) {
  MemoryCategoryScope category(MemoryCategory::kActivations);
  const DType dtype = options_.compute_dtype;
  if (!batch.input_ids.defined() || batch.input_ids.dim() != 2 || batch.input_ids.dtype() != DType::kI32)
    throw_bad_input("batch: input_ids: expected i32 [B, T], found ",
                    batch.input_ids.defined() ? batch.input_ids.to_string() : "nothing");
  const int64_t b = batch.input_ids.size(0), real_time = batch.input_ids.size(1);
  const Shape batch_shape = {b, real_time};
  if (batch.targets.defined()) check_batch_tensor(batch.targets, "targets", batch_shape);
  if (batch.position_ids.defined()) check_batch_tensor(batch.position_ids, "position_ids", batch_shape);
  if (batch.doc_start.defined()) check_batch_tensor(batch.doc_start, "doc_start", batch_shape);
  const int64_t virtual_tokens = prompt_hook_ != nullptr ? prompt_hook_->num_virtual_tokens() : 0;
  // Prompt tuning numbers virtual and real tokens together (0 .. P+T-1): PEFT
  // ignores position_ids for it. Rows of one document each are fine: the
  // loader's padded rows (doc_start 0, or t for a trailing pad, which no
  // target depends on under the causal mask); packed rows are not.
  bool use_positions = batch.position_ids.defined(), use_doc_start = batch.doc_start.defined();
  if (virtual_tokens > 0) {
    use_positions = false;
    if (use_doc_start) {
      const std::vector<int32_t> starts = host_ints(batch.doc_start);
      for (size_t i = 0; i < starts.size(); ++i) {
        const int32_t t = static_cast<int32_t>(i % static_cast<size_t>(real_time));
        if (starts[i] != 0 && starts[i] != t)
          throw_bad_input("batch: prompt tuning needs one document per row (padded rows), found packed rows");
      }
      use_doc_start = false;
    }
  }

  StepState step;
  step.batch = b;
  step.time = real_time + virtual_tokens;
  step.rows = b * step.time;
  step.num_prefix = prefix_hook_ != nullptr ? prefix_hook_->num_prefix() : 0;
  step.prefix_hook = prefix_hook_;
  if (config_.sliding_window > 0 && step.time + step.num_prefix > config_.sliding_window)
    throw_bad_input("batch: sequence length ", step.time + step.num_prefix, " exceeds the model's sliding_window (",
                    config_.sliding_window, "); llmft attends to the full causal window only");
  const int64_t n = step.rows, hidden = config_.hidden_size, vocab = config_.vocab_size;

  // Positions and targets, with the prompt-tuning positions (no target) first.
  // Behind a prefix of P key/value positions the tokens are numbered from P,
  // as transformers numbers tokens after P cached ones (and PEFT offsets
  // explicit position_ids by P for prefix tuning).
  std::vector<int32_t> positions(static_cast<size_t>(n)), targets(static_cast<size_t>(n), -100);
  std::vector<int32_t> given_positions = use_positions ? host_ints(batch.position_ids) : std::vector<int32_t>();
  std::vector<int32_t> given_targets = batch.targets.defined() ? host_ints(batch.targets) : std::vector<int32_t>();
  int64_t num_targets = 0;
  for (int64_t s = 0; s < b; ++s) {
    for (int64_t i = 0; i < step.time; ++i) {
      const size_t row = static_cast<size_t>(s * step.time + i);
      const int64_t real = i - virtual_tokens;  // index among the real tokens, negative for virtual ones
      positions[row] = static_cast<int32_t>(step.num_prefix) +
                       (given_positions.empty() || real < 0
                            ? static_cast<int32_t>(i)
                            : given_positions[static_cast<size_t>(s * real_time + real)]);
      if (real >= 0 && !given_targets.empty()) {
        targets[row] = given_targets[static_cast<size_t>(s * real_time + real)];
        if (targets[row] >= 0) ++num_targets;
      }
    }
  }
  step.positions = context.upload(Tensor::from_ints({n}, positions));
  Tensor targets_device = context.upload(Tensor::from_ints({n}, targets));
  if (use_doc_start) {
    step.doc_start = context.upload(batch.doc_start).reshape({n});
    step.attention.doc_start = &step.doc_start;
  }
  // Prefix tuning's K/V are not rows of k and v: block_forward passes them
  // to attention as a shared prefix, read from one [P, Hkv, Dh] tensor.
  step.attention.num_prefix = 0;
  if (backward) parameters_.allocate_grads(context, options_.grad_dtype);

  // Embedding (+ prompt-tuning embeddings in front of each sequence).
  Tensor ids = context.upload(batch.input_ids).reshape({b * real_time});
  Tensor hidden_states = context.empty({n, hidden}, dtype);
  if (virtual_tokens == 0) {
    ops::embedding_forward(context, ids, embed_tokens_->value, hidden_states);
  } else {
    Tensor real_embeddings = context.empty({b * real_time, hidden}, dtype);
    ops::embedding_forward(context, ids, embed_tokens_->value, real_embeddings);
    Tensor prompt = context.empty({virtual_tokens, hidden}, dtype);
    prompt_hook_->forward(context, prompt);
    for (int64_t s = 0; s < b; ++s) {
      hidden_states.slice_rows(s * step.time, s * step.time + virtual_tokens).copy_from(prompt);
      hidden_states.slice_rows(s * step.time + virtual_tokens, (s + 1) * step.time)
          .copy_from(real_embeddings.slice_rows(s * real_time, (s + 1) * real_time));
    }
  }

  // Blocks.
  const size_t num_layers = layers_.size();
  std::vector<BlockActivations> saved(backward ? num_layers : 1);
  for (size_t l = 0; l < num_layers; ++l) {
    BlockActivations& activations = saved[backward ? l : 0];
    activations.input = hidden_states;
    Tensor output;
    block_forward(context, step, static_cast<int64_t>(l), activations, output);
    if (!backward || policies_[l] == ActivationPolicy::kRecompute) activations.release_all_but_input();
    if (backward && policies_[l] == ActivationPolicy::kSelective) activations.release_recomputable();
    hidden_states = output;
  }

  // Final norm, then LM head + cross-entropy a chunk of rows at a time. With
  // backward, each chunk's logits turn into dlogits in place and are folded
  // into dnormed and the head's weight gradient before the next chunk.
  const float eps = static_cast<float>(config_.rms_norm_eps);
  Tensor normed = context.empty({n, hidden}, dtype);
  Tensor final_rstd = context.empty({n}, DType::kF32);
  ops::rmsnorm_forward(context, hidden_states, final_norm_->value, eps, normed, final_rstd);

  const bool compute_loss = batch.targets.defined();
  const bool do_backward = backward && num_targets > 0;
  int64_t chunk_rows = options_.lm_head_chunk_rows > 0 ? options_.lm_head_chunk_rows
                                                       : std::max<int64_t>(1, (int64_t{1} << 22) / vocab);
  chunk_rows = std::min(chunk_rows, n);
  Tensor logits_buffer = context.empty({chunk_rows, vocab}, dtype);
  Tensor losses = context.empty({n}, DType::kF32);
  Tensor lse = context.empty({n}, DType::kF32);
  Tensor dloss, dnormed;
  if (do_backward) {
    dloss = context.empty({n}, DType::kF32);
    ops::fill(context, dloss, loss_scale / static_cast<float>(num_targets));  // d(mean loss * scale)/d(row loss)
    dnormed = context.empty({n, hidden}, dtype);
  }
  Tensor logits_rows;
  if (logits != nullptr) {
    *logits = context.empty({b, step.time, vocab}, DType::kF32);
    logits_rows = logits->reshape({n, vocab});
  }
  for (int64_t begin = 0; begin < n; begin += chunk_rows) {
    const int64_t end = std::min(n, begin + chunk_rows);
    Tensor chunk_logits = logits_buffer.slice_rows(0, end - begin);
    Tensor chunk_hidden = normed.slice_rows(begin, end);
    lm_head_->forward(context, chunk_hidden, chunk_logits);
    if (logits != nullptr) {
      Tensor destination = logits_rows.slice_rows(begin, end);
      ops::cast(context, chunk_logits, destination);
    }
    if (!compute_loss) continue;
    Tensor chunk_targets = targets_device.slice_rows(begin, end);
    Tensor chunk_losses = losses.slice_rows(begin, end), chunk_lse = lse.slice_rows(begin, end);
    ops::cross_entropy_forward(context, chunk_logits, chunk_targets, chunk_losses, chunk_lse);
    if (!do_backward) continue;
    ops::cross_entropy_backward(context, chunk_logits, chunk_targets, chunk_lse, dloss.slice_rows(begin, end),
                                chunk_logits);
    Tensor chunk_dhidden = dnormed.slice_rows(begin, end);
    lm_head_->backward(context, chunk_logits, chunk_hidden, &chunk_dhidden);
  }

  StepResult result;
  result.num_target_tokens = num_targets;
  if (compute_loss && num_targets > 0) {
    double total = 0.0;
    for (float loss : losses.to_floats()) total += loss;
    result.loss = total / static_cast<double>(num_targets);
  }
  if (!do_backward) return result;

  // Backward through the final norm, the blocks in reverse, the embedding.
  Tensor dresidual = context.empty({n, hidden}, dtype);
  ops::rmsnorm_backward(context, dnormed, hidden_states, final_norm_->value, final_rstd, dresidual,
                        grad_of(final_norm_));
  normed = dnormed = Tensor();
  const auto stage_complete = [&](int64_t stage) {
    if (gradient_stage_hook_) gradient_stage_hook_(stage);
  };
  stage_complete(static_cast<int64_t>(num_layers));
  for (size_t l = num_layers; l-- > 0;) {
    BlockActivations& activations = saved[l];
    if (policies_[l] == ActivationPolicy::kRecompute) {
      Tensor recomputed_output;  // equal to the next block's input, which is kept
      block_forward(context, step, static_cast<int64_t>(l), activations, recomputed_output);
    } else if (policies_[l] == ActivationPolicy::kSelective) {
      recompute_selective(context, static_cast<int64_t>(l), activations);
    }
    block_backward(context, step, static_cast<int64_t>(l), activations, dresidual);
    activations = BlockActivations();
    stage_complete(static_cast<int64_t>(l));
  }
  Tensor dembeddings = dresidual;
  if (virtual_tokens > 0) {
    dembeddings = context.empty({b * real_time, hidden}, dtype);
    Tensor dprompt = context.empty({b, virtual_tokens, hidden}, dtype);
    Tensor dprompt_rows = dprompt.reshape({b * virtual_tokens, hidden});
    for (int64_t s = 0; s < b; ++s) {
      dprompt_rows.slice_rows(s * virtual_tokens, (s + 1) * virtual_tokens)
          .copy_from(dresidual.slice_rows(s * step.time, s * step.time + virtual_tokens));
      dembeddings.slice_rows(s * real_time, (s + 1) * real_time)
          .copy_from(dresidual.slice_rows(s * step.time + virtual_tokens, (s + 1) * step.time));
    }
    prompt_hook_->backward(context, dprompt);
  }
  if (Tensor* dtable = grad_of(embed_tokens_)) ops::embedding_backward(context, ids, dembeddings, *dtable);
  stage_complete(-1);
  return result;
}

int64_t LlamaModel::gradient_stage(const std::string& name) const {
  const size_t at = name.find("layers.");
  if (at != std::string::npos && (at == 0 || name[at - 1] == '.')) {
    size_t end = at + 7;
    int64_t layer = 0;
    bool digits = false;
    for (; end < name.size() && name[end] >= '0' && name[end] <= '9'; ++end, digits = true)
      layer = layer * 10 + (name[end] - '0');
    if (digits && end < name.size() && name[end] == '.' && layer < static_cast<int64_t>(layers_.size())) return layer;
  }
  // A tied LM head's weight is model.embed_tokens.weight, final only at -1.
  if (name.rfind("lm_head.", 0) == 0 || name.find(".lm_head.") != std::string::npos)
    return static_cast<int64_t>(layers_.size());
  if (name == final_norm_->name) return static_cast<int64_t>(layers_.size());
  return -1;
}

}  // namespace llmft
