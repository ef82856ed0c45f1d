// A named parameter: its value and, while trainable, its gradient. It lives
// in core/ so that optim/ and parallel/ (gradient buckets) use parameters
// without knowing model/ (DESIGN.md "Distributed design"); model/parameters.h
// holds the registry that owns them.
#pragma once

#include <string>

#include "core/tensor.h"

namespace llmft {

// Which slice of the full (Hugging Face) tensor this rank holds under tensor
// parallelism (DESIGN.md "Tensor parallelism"): the whole of it (split_dim
// -1, replicated on every tp rank), or `value.size(split_dim)` consecutive
// indices of dimension split_dim starting at `offset`. Checkpoints and
// exports gather slices into full tensors and slice full tensors back on
// load (parallel/shard.h), so they do not depend on the layout.
struct ParameterShard {
  int split_dim = -1;
  int64_t offset = 0;
  Shape full_shape;  // empty: the value's own shape (not sharded)

  bool sharded() const { return split_dim >= 0; }
};

struct Parameter {
  std::string name;  // "model.layers.3.self_attn.q_proj.weight"
  Tensor value;      // in the model's compute dtype, on the context's device
  // Defined only while trainable (after allocate_grads). May be a view into a
  // flat buffer shared with other parameters (parallel/gradient_buckets.h).
  Tensor grad;
  bool trainable = true;
  ParameterShard shard;

  // The shape of the whole tensor across tensor-parallel ranks.
  const Shape& full_shape() const { return shard.sharded() ? shard.full_shape : value.shape(); }
};

}  // namespace llmft
