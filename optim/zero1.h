// ZeRO stage 1 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
// Training Trillion Parameter Models", P_os): the AdamW state (fp32 masters
// where the model computes in 16 bits, both moments) is sharded over the
// data-parallel ranks. The gradient buckets are reduce-scattered instead of
// all-reduced (parallel/gradient_buckets.h, sharded mode), so rank r holds the
// summed gradient of slice r of every bucket; it updates only the parameter
// elements of those slices, and the updated values are all-gathered bucket by
// bucket so every rank holds the whole model again. Per-rank optimizer memory
// is about 1/dp of the unsharded figure; the update itself is the same
// element-wise AdamW (optim/adamw.h), so ZeRO-1 trains the same model.
//
// The state is held per segment: the part of one parameter inside this
// rank's slice of one bucket. A segment is a Parameter whose value is a view
// of the model parameter's elements and whose gradient is a view of the
// reduce-scattered shard; AdamW runs on the segments unchanged (an f32 value
// is its own master there too).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "core/context.h"
#include "optim/adamw.h"
#include "parallel/communicator.h"
#include "parallel/gradient_buckets.h"

namespace llmft::optim {

class Zero1Optimizer {
 public:
  // `buckets` must be sharded; its parameters are the optimizer's.
  Zero1Optimizer(Context& context, parallel::GradientBuckets& buckets, AdamWConfig config);

  struct Segment {
    Parameter* parameter = nullptr;  // the model's (or host copy's) parameter
    int64_t begin = 0, end = 0;      // its flattened elements [begin, end)
    Parameter* view = nullptr;       // value/grad views of those elements; AdamW's parameter
    size_t bucket = 0;               // the bucket (layout) holding it
    int64_t shard_offset = 0;        // where its elements start in that bucket's shard
  };
  // This rank's segments, in bucket order.
  const std::vector<Segment>& segments() const { return segments_; }
  // The segments' gradients (views of the reduce-scattered shards): what the
  // norm, the non-finite check and clipping see on this rank.
  std::vector<Tensor> gradients() const;

  // AdamW on this rank's segments, then every bucket's values all-gathered
  // into the parameters. Collective over the buckets' group.
  void step(float lr, float grad_multiplier);

  AdamW& adamw() { return *adamw_; }
  const AdamW& adamw() const { return *adamw_; }
  // Bytes of optimizer state on this rank.
  size_t state_bytes() const { return adamw_->state_bytes(); }

  // Checkpoints: the AdamW tensor `which` ("master", "exp_avg",
  // "exp_avg_sq") of `parameter` at its (local) shape, assembled on the host
  // from every rank's segments (a sum over the group of zero-filled copies:
  // exact). Collective over `host_group`, the buckets' ranks with a
  // communicator of host memory.
  Tensor assemble(parallel::Communicator& host_group, const Parameter& parameter, const std::string& which);
  // The inverse: this rank's segments of `parameter` from the host tensor
  // `full` (the parameter's local shape).
  void scatter(const Parameter& parameter, const std::string& which, const Tensor& full);
  // Whether AdamW keeps a separate master (16-bit values) for the parameters.
  bool has_masters() const;

 private:
  Tensor& state_tensor(size_t segment, const std::string& which);

  Context& context_;
  parallel::GradientBuckets& buckets_;
  std::vector<parallel::GradientBuckets::Layout> layouts_;
  std::deque<Parameter> views_;  // deque: AdamW keeps pointers
  std::vector<Segment> segments_;
  std::unique_ptr<AdamW> adamw_;
};

}  // namespace llmft::optim
