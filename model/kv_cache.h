// The keys and values a sequence has produced so far, per layer, for
// incremental decoding (LlamaModel::forward_incremental): the prompt is run
// once (prefill), then each new token attends to the cached positions as a
// prefix (ops::AttentionOptions::num_prefix) instead of recomputing them.
//
// The buffers are allocated once with room for `reserved_positions` and
// filled in place: each step's new keys/values are projected straight into the
// rows after the cached ones, and attention reads rows [0, num_rows) where they
// lie, so a decode step copies nothing. Past the capacity the buffers double
// (one copy of the filled rows, amortised over as many steps).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace llmft {

struct KvCache {
  // Per layer, [capacity, kv_heads, head_dim] in the compute dtype on the
  // context's device; rows [0, num_rows) are filled. Keys are stored after
  // RoPE, as transformers' DynamicCache does, so a cached key never needs its
  // position again.
  std::vector<Tensor> keys, values;
  // Filled rows: prefix-tuning positions (when a prefix hook is set) plus every
  // token seen (prompt-tuning virtual tokens included); also the position id
  // of the next token (model/llama.h numbers tokens after a prefix from P).
  int64_t num_rows = 0;
  // Token rows run so far (virtual tokens included; 0: nothing run yet).
  int64_t num_positions = 0;
  // Token positions to make room for when the buffers are first allocated
  // (generate() sets prompt + max_new_tokens, so decoding never reallocates);
  // 0 allocates just what the first call needs.
  int64_t reserved_positions = 0;

  bool empty() const { return num_positions == 0; }
  int64_t capacity() const { return keys.empty() ? 0 : keys.front().size(0); }
  // Forgets the sequence but keeps the buffers for the next one.
  void clear() {
    num_rows = 0;
    num_positions = 0;
  }
};

}  // namespace llmft
