// Data-parallel gradient buckets (DESIGN.md "Distributed design"; the
// scheme of PyTorch DDP, Li et al. 2020, "PyTorch Distributed"): the
// gradients of the trainable parameters live in flat buffers cut into
// buckets of about `bucket_bytes`, ordered as the backward completes them,
// and each bucket's all-reduce starts asynchronously as soon as the backward
// has finished its last gradient, so communication overlaps the rest of the
// backward.
//
// Completion is reported by stage: the model's backward finishes stages in
// descending order (the LM head and final norm, then blocks N-1 .. 0, then
// everything else at stage -1; model/llama.h gradient_stage), and after
// stage_complete(s) every parameter of stage >= s has its final gradient.
// Buckets hold parameters sorted by (stage descending, registration order
// descending), so they complete in bucket order on every rank and are
// launched in the same order everywhere (the collective contract).
//
// Sharded mode (ZeRO-1, optim/zero1.h): each bucket is padded to a multiple
// of the group size and reduce-scattered instead of all-reduced: rank r
// receives the summed elements [r * n / size, (r + 1) * n / size) of the
// bucket in its `shard` tensor, which is all its optimizer updates; the
// flat buffers then hold only this rank's unreduced gradients.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/context.h"
#include "core/parameter.h"
#include "parallel/communicator.h"

namespace llmft::parallel {

// The share of `communication_seconds` that ran behind compute, given the
// part of it a step waited for (`exposed_seconds`); 1 without communication.
inline double hidden_fraction(double communication_seconds, double exposed_seconds) {
  return communication_seconds > 0 ? 1.0 - std::min(1.0, exposed_seconds / communication_seconds) : 1.0;
}

struct BucketStepStats {
  int64_t buckets = 0;
  int64_t launched_during_backward = 0;  // buckets started before the backward's last stage (-1)
  int64_t bytes = 0;                    // bytes all-reduced by this rank in the step
  double communication_seconds = 0.0;  // the all-reduces' own durations, summed
  double exposed_seconds = 0.0;        // time finish() waited for them after the backward
  // Share of communication that ran while the backward was computing.
  double hidden_fraction() const { return parallel::hidden_fraction(communication_seconds, exposed_seconds); }
};

class GradientBuckets {
 public:
  // PyTorch DDP's first-bucket cap (torch.distributed's
  // _DEFAULT_FIRST_BUCKET_BYTES), for the same reason: the first all-reduce
  // starts soon after the backward does.
  static constexpr size_t kFirstBucketBytes = size_t{1} << 20;

  // Re-points every parameter's gradient (f32, on `context`'s device, whose
  // memory `communicator` must take) into zeroed flat bucket buffers.
  // `stages[i]` is parameters[i]'s completion stage. `bucket_bytes` >= 1.
  GradientBuckets(Context& context, Communicator& communicator, std::vector<Parameter*> parameters,
                  std::vector<int64_t> stages, size_t bucket_bytes, bool sharded = false);
  ~GradientBuckets();

  // Starts the reduction of an optimizer step's gradients (call before the
  // backward of the step's last micro-batch); earlier micro-batches only
  // accumulate and communicate nothing.
  void begin_reduction();
  // The backward has completed `stage`: launches every bucket now complete.
  void stage_complete(int64_t stage);
  // Launches what is left and waits for every bucket: the gradients are then
  // the sum over ranks. Returns the step's figures.
  const BucketStepStats& finish();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  bool sharded() const { return sharded_; }
  Communicator& communicator() const { return communicator_; }

  // Where each gradient lives: parameter `parameter`'s elements are the
  // bucket's flat elements [offset, offset + numel).
  struct Member {
    Parameter* parameter = nullptr;
    int64_t offset = 0;
    int64_t numel = 0;
  };
  struct Layout {
    std::vector<Member> members;
    int64_t elements = 0;     // flat size, padded to a multiple of the group size when sharded
    int64_t shard_begin = 0;  // sharded: this rank's elements [shard_begin, shard_begin + shard.numel())
    Tensor shard;             // sharded: f32, the reduce-scattered sum of those elements
  };
  std::vector<Layout> layouts() const;
  int64_t total_bytes() const;
  const BucketStepStats& last_stats() const { return stats_; }

 private:
  struct Bucket {
    Tensor flat;          // f32 [elements]
    Tensor shard;         // sharded mode: f32 [elements / group size]
    int64_t min_stage = 0;  // complete once this stage is
    std::vector<Member> members;
    std::unique_ptr<Work> work;
  };
  void launch_through(size_t end);

  Communicator& communicator_;
  bool sharded_ = false;
  std::vector<Bucket> buckets_;
  size_t launched_ = 0;
  bool reducing_ = false;
  BucketStepStats stats_;
};

}  // namespace llmft::parallel
