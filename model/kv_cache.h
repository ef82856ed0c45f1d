// The keys and values a sequence has produced so far, per layer, for
// incremental decoding (LlamaModel::forward_incremental): the prompt is run
// once (prefill), then each new token attends to the cached positions as a
// prefix (ops::AttentionOptions::num_prefix) instead of recomputing them.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace llmft {

struct KvCache {
  // Per layer, [1, rows, kv_heads, head_dim] in the compute dtype on the
  // context's device. Keys are stored after RoPE, as transformers' DynamicCache
  // does, so a cached key never needs its position again. `rows` counts
  // prefix-tuning positions (when a prefix hook is set) plus every token seen.
  std::vector<Tensor> keys, values;
  // Tokens seen so far: the position id of the next token.
  int64_t num_positions = 0;

  bool empty() const { return num_positions == 0; }
  void clear() {
    keys.clear();
    values.clear();
    num_positions = 0;
  }
};

}  // namespace llmft
