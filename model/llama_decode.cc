// Incremental decoding of LlamaModel with the KV cache (model/llama.h
// forward_incremental).
#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"
#include "model/llama.h"
#include "model/llama_internal.h"

namespace llmft {

// ---- Incremental decoding -----------------------------------------------------------

// Makes room for `rows` filled rows: allocates the buffers on first use (or
// when the cache was made for another model), doubles them when full.
void LlamaModel::reserve_cache(Context& context, KvCache& cache, int64_t rows, int64_t prefix_rows) const {
  const size_t num_layers = layers_.size();
  const int64_t kv_heads = local_kv_heads_, head_dim = config_.head_dim;
  const DType dtype = options_.compute_dtype;
  const Tensor& sample = embed_tokens_->value;
  const bool fits = cache.keys.size() == num_layers && cache.values.size() == num_layers &&
                    cache.keys.front().dtype() == dtype && cache.keys.front().device() == sample.device() &&
                    cache.keys.front().size(1) == kv_heads && cache.keys.front().size(2) == head_dim;
  if (!fits && cache.num_rows > 0)
    throw_bad_input("forward_incremental: the KV cache holds ", cache.keys.size(), " layers of ",
                    cache.keys.empty() ? std::string("nothing") : cache.keys.front().to_string(), ", this model needs ",
                    num_layers, " layers of [capacity, ", kv_heads, ", ", head_dim, "] ", dtype_name(dtype));
  if (fits && rows <= cache.capacity()) return;
  int64_t capacity = std::max(rows, prefix_rows + cache.reserved_positions);
  if (fits) capacity = std::max(capacity, 2 * cache.capacity());
  std::vector<Tensor> keys(num_layers), values(num_layers);
  for (size_t l = 0; l < num_layers; ++l) {
    keys[l] = context.empty({capacity, kv_heads, head_dim}, dtype);
    values[l] = context.empty({capacity, kv_heads, head_dim}, dtype);
    if (cache.num_rows > 0) {
      cache_rows(keys[l], 0, cache.num_rows).copy_from(cache_rows(cache.keys[l], 0, cache.num_rows));
      cache_rows(values[l], 0, cache.num_rows).copy_from(cache_rows(cache.values[l], 0, cache.num_rows));
    }
  }
  cache.keys = std::move(keys);
  cache.values = std::move(values);
}

Tensor LlamaModel::forward_incremental(Context& context, std::span<const int32_t> new_ids, KvCache& cache) {
  const DType dtype = options_.compute_dtype;
  if (new_ids.empty()) throw_bad_input("forward_incremental: no new tokens");
  for (int32_t id : new_ids)
    if (id < 0 || id >= config_.vocab_size)
      throw_bad_input("forward_incremental: token id ", id, " outside [0, ", config_.vocab_size, ")");
  if (cache.empty()) cache.num_rows = 0;
  // Prefix-tuning K/V enter the cache at the prefill, as the first rows.
  const int64_t prefix_rows = cache.empty() && prefix_hook_ != nullptr ? prefix_hook_->num_prefix() : 0;
  // Prompt-tuning embeddings run at the prefill, in front of the prompt.
  const int64_t virtual_tokens = cache.empty() && prompt_hook_ != nullptr ? prompt_hook_->num_virtual_tokens() : 0;
  const int64_t n = static_cast<int64_t>(new_ids.size()) + virtual_tokens, hidden = config_.hidden_size;
  const int64_t rows = cache.num_rows + prefix_rows + n;
  if (config_.sliding_window > 0 && rows > config_.sliding_window)
    throw_bad_input("forward_incremental: sequence length ", rows, " exceeds the model's sliding_window (",
                    config_.sliding_window, ")");
  reserve_cache(context, cache, rows, prefix_rows);
  const size_t num_layers = layers_.size();
  if (prefix_rows > 0) {
    const int64_t kv_heads = local_kv_heads_, head_dim = config_.head_dim;
    Tensor prefix_k = context.empty({prefix_rows, kv_heads, head_dim}, dtype);
    Tensor prefix_v = context.empty({prefix_rows, kv_heads, head_dim}, dtype);
    for (size_t l = 0; l < num_layers; ++l) {
      prefix_hook_->forward(context, static_cast<int64_t>(l), prefix_k, prefix_v);
      cache_rows(cache.keys[l], 0, prefix_rows).copy_from(prefix_k.reshape({prefix_rows, kv_heads * head_dim}));
      cache_rows(cache.values[l], 0, prefix_rows).copy_from(prefix_v.reshape({prefix_rows, kv_heads * head_dim}));
    }
    cache.num_rows = prefix_rows;
  }

  StepState step;
  step.batch = 1;
  step.time = n;
  step.rows = n;
  step.cache = &cache;
  step.num_prefix = cache.num_rows;
  step.attention.num_prefix = step.num_prefix;
  // Every cached row (prefix, virtual and real tokens) counts: the next
  // token's position is the number of rows before it, as in run().
  std::vector<int32_t> positions(static_cast<size_t>(n));
  for (size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<int32_t>(cache.num_rows + i);
  step.positions = context.upload(Tensor::from_ints({n}, positions));

  const int64_t real = static_cast<int64_t>(new_ids.size());
  Tensor ids = context.upload(Tensor::from_ints({real}, std::vector<int32_t>(new_ids.begin(), new_ids.end())));
  Tensor hidden_states = context.empty({n, hidden}, dtype);
  Tensor real_states = hidden_states.slice_rows(virtual_tokens, n);
  ops::embedding_forward(context, ids, embed_tokens_->value, real_states);
  if (virtual_tokens > 0) {
    Tensor prompt = hidden_states.slice_rows(0, virtual_tokens);
    prompt_hook_->forward(context, prompt);
  }
  for (size_t l = 0; l < num_layers; ++l) {
    BlockActivations activations;
    activations.input = hidden_states;
    Tensor output;
    block_forward(context, step, static_cast<int64_t>(l), activations, output);
    hidden_states = output;
  }
  cache.num_rows += n;
  cache.num_positions += n;

  // Only the last position's logits are needed to pick the next token.
  const float eps = static_cast<float>(config_.rms_norm_eps);
  Tensor last = hidden_states.slice_rows(n - 1, n);
  Tensor normed = context.empty({1, hidden}, dtype);
  Tensor rstd = context.empty({1}, DType::kF32);
  ops::rmsnorm_forward(context, last, final_norm_->value, eps, normed, rstd);
  Tensor logits = context.empty({1, config_.vocab_size}, dtype);
  lm_head_->forward(context, normed, logits);
  if (dtype == DType::kF32) return logits.reshape({config_.vocab_size});
  Tensor logits_f32 = context.empty({config_.vocab_size}, DType::kF32);
  Tensor logits_rows = logits_f32.reshape({1, config_.vocab_size});
  ops::cast(context, logits, logits_rows);
  return logits_f32;
}

}  // namespace llmft
