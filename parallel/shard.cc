#include "parallel/shard.h"

#include <cstring>

#include "core/allocator.h"
#include "core/error.h"

namespace llmft::parallel {
namespace {

// The tensor seen as [outer, shape[dim], inner] in elements.
struct Split3 {
  int64_t outer = 1, middle = 1, inner = 1;
};

Split3 split_at(const Shape& shape, int dim) {
  LLMFT_CHECK(dim >= 0 && dim < static_cast<int>(shape.size()), "dimension ", dim, " out of range for ",
              shape_to_string(shape));
  Split3 split;
  for (int i = 0; i < dim; ++i) split.outer *= shape[static_cast<size_t>(i)];
  split.middle = shape[static_cast<size_t>(dim)];
  for (size_t i = static_cast<size_t>(dim) + 1; i < shape.size(); ++i) split.inner *= shape[i];
  return split;
}

Tensor host_of(const Tensor& tensor) {
  return tensor.device().is_cpu() ? tensor : tensor.to(default_host_allocator());
}

}  // namespace

ParameterShard even_shard(const Shape& full_shape, int split_dim, int parts, int rank) {
  ParameterShard shard;
  if (split_dim < 0 || parts == 1) return shard;
  const int64_t size = full_shape.at(static_cast<size_t>(split_dim));
  LLMFT_CHECK(parts > 0 && size % parts == 0, "dimension ", split_dim, " of ", shape_to_string(full_shape),
              " does not divide over ", parts, " ranks");
  shard.split_dim = split_dim;
  shard.offset = size / parts * rank;
  shard.full_shape = full_shape;
  return shard;
}

Shape shard_shape(const ParameterShard& shard, int parts) {
  Shape shape = shard.full_shape;
  if (shard.sharded()) shape[static_cast<size_t>(shard.split_dim)] /= parts;
  return shape;
}

Tensor slice_dim(const Tensor& full, int dim, int64_t offset, int64_t length) {
  LLMFT_CHECK(full.device().is_cpu(), "slice_dim: host tensors only");
  const Split3 split = split_at(full.shape(), dim);
  LLMFT_CHECK(offset >= 0 && length >= 0 && offset + length <= split.middle, "slice [", offset, ", ",
              offset + length, ") of dimension ", dim, " out of range for ", full.to_string());
  Shape shape = full.shape();
  shape[static_cast<size_t>(dim)] = length;
  Tensor slice = Tensor::empty_cpu(shape, full.dtype());
  const size_t element = dtype_size(full.dtype());
  const size_t run = static_cast<size_t>(length * split.inner) * element;
  const auto* source = static_cast<const uint8_t*>(full.raw_data());
  auto* destination = static_cast<uint8_t*>(slice.raw_data());
  for (int64_t o = 0; o < split.outer; ++o)
    std::memcpy(destination + static_cast<size_t>(o) * run,
                source + static_cast<size_t>((o * split.middle + offset) * split.inner) * element, run);
  return slice;
}

void place_slice(Tensor& full, const Tensor& slice, int dim, int64_t offset) {
  LLMFT_CHECK(full.device().is_cpu() && slice.device().is_cpu() && full.dtype() == slice.dtype(),
              "place_slice: host tensors of one dtype");
  const Split3 split = split_at(full.shape(), dim);
  const int64_t length = slice.size(dim);
  Shape expected = full.shape();
  expected[static_cast<size_t>(dim)] = length;
  LLMFT_CHECK(slice.shape() == expected && offset >= 0 && offset + length <= split.middle, "place_slice: ",
              slice.to_string(), " at ", offset, " of dimension ", dim, " does not fit ", full.to_string());
  const size_t element = dtype_size(full.dtype());
  const size_t run = static_cast<size_t>(length * split.inner) * element;
  auto* destination = static_cast<uint8_t*>(full.raw_data());
  const auto* source = static_cast<const uint8_t*>(slice.raw_data());
  for (int64_t o = 0; o < split.outer; ++o)
    std::memcpy(destination + static_cast<size_t>((o * split.middle + offset) * split.inner) * element,
                source + static_cast<size_t>(o) * run, run);
}

Tensor take_shard(const Tensor& full, const ParameterShard& shard, int parts) {
  if (!shard.sharded()) return full;
  LLMFT_CHECK(full.shape() == shard.full_shape, "take_shard: ", full.to_string(), " is not the full shape ",
              shape_to_string(shard.full_shape));
  const int64_t length = shard.full_shape[static_cast<size_t>(shard.split_dim)] / parts;
  return slice_dim(host_of(full), shard.split_dim, shard.offset, length);
}

Tensor gather_shards(Communicator& group, const Tensor& local, const ParameterShard& shard, std::string_view what) {
  if (!shard.sharded()) return local.device().is_cpu() ? local.clone() : local.to(default_host_allocator());
  Tensor host = host_of(local);
  const int parts = group.size();
  const int64_t length = local.size(shard.split_dim);
  LLMFT_CHECK(shard.offset == length * group.rank() && shard_shape(shard, parts) == local.shape(), what,
              ": rank ", group.rank(), " holds ", local.to_string(), " at offset ", shard.offset, " of ",
              shape_to_string(shard.full_shape), ", not its even slice");
  Tensor flat = host.reshape({host.numel()});
  Tensor gathered = Tensor::empty_cpu({host.numel() * parts}, host.dtype());
  group.all_gather(flat, gathered, what);
  Tensor full = Tensor::empty_cpu(shard.full_shape, host.dtype());
  const Shape slice_shape = local.shape();
  for (int r = 0; r < parts; ++r) {
    Tensor part = gathered.slice_rows(r * host.numel(), (r + 1) * host.numel()).reshape(slice_shape);
    place_slice(full, part, shard.split_dim, r * length);
  }
  return full;
}

}  // namespace llmft::parallel
