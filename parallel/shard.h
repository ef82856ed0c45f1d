// Shard arithmetic for tensor parallelism (DESIGN.md parallel/): which slice
// of a full tensor a rank holds, taking that slice from a full tensor (when a
// rank loads a Hugging Face checkpoint or a layout-free training checkpoint),
// and gathering the slices back into the full tensor (checkpoints, exports).
// Slices are even: dimension `split_dim` of the full tensor divides by the
// number of ranks, and rank r holds indices [r * n, (r + 1) * n).
#pragma once

#include <cstdint>

#include "core/parameter.h"
#include "core/tensor.h"
#include "parallel/communicator.h"

namespace llmft::parallel {

// The shard of a tensor of `full_shape` split along `split_dim` over `parts`
// ranks that `rank` holds (split_dim -1: replicated). LLMFT_CHECK that the
// dimension divides (callers check user-facing sizes with their own message).
ParameterShard even_shard(const Shape& full_shape, int split_dim, int parts, int rank);
// The local shape of `shard` over `parts` ranks.
Shape shard_shape(const ParameterShard& shard, int parts);

// Host copy of indices [offset, offset + length) of dimension `dim` of the
// host tensor `full` (any dtype).
Tensor slice_dim(const Tensor& full, int dim, int64_t offset, int64_t length);
// Copies the host tensor `slice` into indices [offset, offset + slice.size(dim))
// of dimension `dim` of the host tensor `full` (same dtype, other dims equal).
void place_slice(Tensor& full, const Tensor& slice, int dim, int64_t offset);
// The rank's slice of the full host tensor (`full` itself when not sharded);
// full.shape() must be shard.full_shape.
Tensor take_shard(const Tensor& full, const ParameterShard& shard, int parts);

// The full tensor (host) from every rank's slice `local` (any device) of a
// tensor sharded as `shard` over `group`; collective over `group`, whose
// communicator must take host memory. Not sharded: a host copy of `local`.
Tensor gather_shards(Communicator& group, const Tensor& local, const ParameterShard& shard, std::string_view what);

}  // namespace llmft::parallel
