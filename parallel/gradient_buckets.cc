#include "parallel/gradient_buckets.h"

#include <algorithm>
#include <numeric>

#include "core/clock.h"
#include "core/error.h"

namespace llmft::parallel {
GradientBuckets::GradientBuckets(Context& context, Communicator& communicator, std::vector<Parameter*> parameters,
                                 std::vector<int64_t> stages, size_t bucket_bytes, bool sharded)
    : communicator_(communicator), sharded_(sharded) {
  MemoryCategoryScope category(MemoryCategory::kGradients);
  // The gradients move into the flat buffers: free the old ones first, so the
  // two never coexist (memory peak).
  for (Parameter* parameter : parameters) parameter->grad = Tensor();
  if (parameters.size() != stages.size())
    throw_runtime("GradientBuckets: ", parameters.size(), " parameters but ", stages.size(), " stages");
  if (bucket_bytes < 1) throw_bad_input("parallel.bucket_mb: the bucket size must be positive");
  std::vector<size_t> order(parameters.size());
  std::iota(order.begin(), order.end(), size_t{0});
  // Completion order: higher stages first; within a stage, later parameters
  // first (the backward walks a block's layers in reverse).
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return stages[a] != stages[b] ? stages[a] > stages[b] : a > b;
  });

  // Cut the ordered list into buckets of about bucket_bytes (a parameter
  // larger than that gets a bucket of its own), then lay each bucket's
  // gradients out in one flat buffer. Two cuts beyond the size: the first
  // bucket holds at most kFirstBucketBytes, as DDP's, so communication
  // starts early in the backward; and gradients final only at its very end
  // (stage -1: the embedding) never share a bucket with earlier ones, which
  // they would otherwise hold back.
  std::vector<std::vector<size_t>> members;
  size_t bytes_in_bucket = 0;
  for (size_t index : order) {
    const size_t bytes = static_cast<size_t>(parameters[index]->value.numel()) * sizeof(float);
    const size_t limit = members.size() <= 1 ? std::min(bucket_bytes, kFirstBucketBytes) : bucket_bytes;
    const bool crosses_into_last_stage = !members.empty() && stages[index] < 0 && stages[members.back().back()] >= 0;
    if (members.empty() || crosses_into_last_stage || (bytes_in_bucket > 0 && bytes_in_bucket + bytes > limit)) {
      members.emplace_back();
      bytes_in_bucket = 0;
    }
    members.back().push_back(index);
    bytes_in_bucket += bytes;
  }
  for (const std::vector<size_t>& bucket_members : members) {
    int64_t elements = 0;
    int64_t min_stage = stages[bucket_members.front()];
    for (size_t index : bucket_members) {
      elements += parameters[index]->value.numel();
      min_stage = std::min(min_stage, stages[index]);
    }
    Bucket bucket;
    const int64_t group = communicator.size();
    if (sharded_) elements = (elements + group - 1) / group * group;  // reduce_scatter takes equal slices
    bucket.flat = context.zeros({elements}, DType::kF32);
    if (sharded_) bucket.shard = context.zeros({elements / group}, DType::kF32);
    bucket.min_stage = min_stage;
    int64_t offset = 0;
    for (size_t index : bucket_members) {
      Parameter& parameter = *parameters[index];
      const int64_t numel = parameter.value.numel();
      parameter.grad = bucket.flat.slice_rows(offset, offset + numel).reshape(parameter.value.shape());
      bucket.members.push_back({&parameter, offset, numel});
      offset += numel;
    }
    buckets_.push_back(std::move(bucket));
  }
}

GradientBuckets::~GradientBuckets() {
  // Never leave a collective reading freed buffers.
  for (Bucket& bucket : buckets_) {
    if (!bucket.work) continue;
    try {
      bucket.work->wait();
    } catch (...) {
    }
  }
}

std::vector<GradientBuckets::Layout> GradientBuckets::layouts() const {
  std::vector<Layout> result;
  for (const Bucket& bucket : buckets_) {
    Layout layout;
    layout.members = bucket.members;
    layout.elements = bucket.flat.numel();
    if (sharded_) {
      layout.shard = bucket.shard;
      layout.shard_begin = bucket.shard.numel() * communicator_.rank();
    }
    result.push_back(std::move(layout));
  }
  return result;
}

int64_t GradientBuckets::total_bytes() const {
  int64_t bytes = 0;
  for (const Bucket& bucket : buckets_) bytes += static_cast<int64_t>(bucket.flat.nbytes());
  return bytes;
}

void GradientBuckets::begin_reduction() {
  if (reducing_) throw_runtime("GradientBuckets: begin_reduction twice without finish");
  reducing_ = true;
  launched_ = 0;
  stats_ = BucketStepStats();
}

void GradientBuckets::launch_through(size_t end) {
  for (; launched_ < end; ++launched_) {
    Bucket& bucket = buckets_[launched_];
    bucket.work = sharded_ ? communicator_.reduce_scatter_async(bucket.flat, bucket.shard, ReduceOp::kSum,
                                                                "data-parallel gradient reduce-scatter (ZeRO-1)")
                           : communicator_.all_reduce_async(bucket.flat, ReduceOp::kSum,
                                                            "data-parallel gradient all-reduce");
    stats_.bytes += static_cast<int64_t>(bucket.flat.nbytes());
    ++stats_.buckets;
  }
}

void GradientBuckets::stage_complete(int64_t stage) {
  if (!reducing_) return;  // a micro-batch that only accumulates
  size_t end = launched_;
  while (end < buckets_.size() && buckets_[end].min_stage >= stage) ++end;
  launch_through(end);
  // Stage -1 is the backward's very end: what starts there overlaps nothing.
  if (stage >= 0) stats_.launched_during_backward = stats_.buckets;
}

const BucketStepStats& GradientBuckets::finish() {
  if (!reducing_) throw_runtime("GradientBuckets: finish without begin_reduction");
  launch_through(buckets_.size());
  const double start = steady_seconds();
  for (Bucket& bucket : buckets_) {
    bucket.work->wait();
    stats_.communication_seconds += bucket.work->seconds();
    bucket.work.reset();
  }
  stats_.exposed_seconds = steady_seconds() - start;
  reducing_ = false;
  return stats_;
}

}  // namespace llmft::parallel
