#include "optim/zero1.h"

#include <algorithm>

#include "core/allocator.h"
#include "core/error.h"
#include "kernels/ops.h"

namespace llmft::optim {
namespace {

Tensor flat_view(const Tensor& tensor) { return tensor.reshape({tensor.numel()}); }

}  // namespace

Zero1Optimizer::Zero1Optimizer(Context& context, parallel::GradientBuckets& buckets, AdamWConfig config)
    : context_(context), buckets_(buckets), layouts_(buckets.layouts()) {
  LLMFT_CHECK(buckets.sharded(), "ZeRO-1 needs sharded (reduce-scattered) gradient buckets");
  std::vector<Parameter*> views;
  for (size_t bucket = 0; bucket < layouts_.size(); ++bucket) {
    const parallel::GradientBuckets::Layout& layout = layouts_[bucket];
    const int64_t shard_end = layout.shard_begin + layout.shard.numel();
    for (const parallel::GradientBuckets::Member& member : layout.members) {
      const int64_t begin = std::max(member.offset, layout.shard_begin);
      const int64_t end = std::min(member.offset + member.numel, shard_end);
      if (begin >= end) continue;
      Parameter& view = views_.emplace_back();
      view.name = str_cat(member.parameter->name, "[", begin - member.offset, ":", end - member.offset, "]");
      view.value = flat_view(member.parameter->value).slice_rows(begin - member.offset, end - member.offset);
      view.grad = layout.shard.slice_rows(begin - layout.shard_begin, end - layout.shard_begin);
      view.trainable = true;
      segments_.push_back(
          {member.parameter, begin - member.offset, end - member.offset, &view, bucket, begin - layout.shard_begin});
      views.push_back(&view);
    }
  }
  // Weight decay is decided by the parameter's name, not the segment's.
  if (config.exclude_from_decay) {
    auto exclude = config.exclude_from_decay;
    config.exclude_from_decay = [exclude](const std::string& name) { return exclude(name.substr(0, name.rfind('['))); };
  }
  adamw_ = std::make_unique<AdamW>(context, views, std::move(config));
}

std::vector<Tensor> Zero1Optimizer::gradients() const {
  std::vector<Tensor> grads;
  for (const Segment& segment : segments_) grads.push_back(segment.view->grad);
  return grads;
}

void Zero1Optimizer::step(float lr, float grad_multiplier) {
  adamw_->step(lr, grad_multiplier);
  // All-gather the updated values, bucket by bucket: this rank's slice is
  // packed into a contiguous buffer (padding zero), gathered, and every
  // parameter's elements copied out of the gathered bucket.
  parallel::Communicator& group = buckets_.communicator();
  size_t next_segment = 0;  // segments are in bucket order
  for (size_t bucket = 0; bucket < layouts_.size(); ++bucket) {
    const parallel::GradientBuckets::Layout& layout = layouts_[bucket];
    if (layout.members.empty()) continue;
    const DType dtype = layout.members.front().parameter->value.dtype();
    Tensor mine = context_.zeros({layout.shard.numel()}, dtype);
    for (; next_segment < segments_.size() && segments_[next_segment].bucket == bucket; ++next_segment) {
      const Segment& segment = segments_[next_segment];
      LLMFT_CHECK(segment.parameter->value.dtype() == dtype, "ZeRO-1: one bucket holds parameters of two dtypes");
      Tensor destination =
          mine.slice_rows(segment.shard_offset, segment.shard_offset + (segment.end - segment.begin));
      destination.copy_from(segment.view->value);
    }
    Tensor gathered = context_.empty({layout.elements}, dtype);
    group.all_gather(mine, gathered, "ZeRO-1 parameter all-gather");
    for (const parallel::GradientBuckets::Member& member : layout.members) {
      Tensor destination = flat_view(member.parameter->value);
      destination.copy_from(gathered.slice_rows(member.offset, member.offset + member.numel));
    }
  }
}

bool Zero1Optimizer::has_masters() const {
  for (const AdamWParameterState& state : adamw_->states())
    if (state.master.raw_data() != state.parameter->value.raw_data()) return true;
  return false;
}

Tensor& Zero1Optimizer::state_tensor(size_t segment, const std::string& which) {
  AdamWParameterState& state = adamw_->states()[segment];
  if (which == "master") return state.master;
  if (which == "exp_avg") return state.exp_avg;
  if (which == "exp_avg_sq") return state.exp_avg_sq;
  throw_runtime("ZeRO-1: no optimizer tensor '", which, "'");
}

Tensor Zero1Optimizer::assemble(parallel::Communicator& host_group, const Parameter& parameter,
                                const std::string& which) {
  Tensor full = Tensor::zeros_cpu(parameter.value.shape(), DType::kF32);
  Tensor flat = flat_view(full);
  for (size_t i = 0; i < segments_.size(); ++i) {
    if (segments_[i].parameter != &parameter) continue;
    Tensor destination = flat.slice_rows(segments_[i].begin, segments_[i].end);
    destination.copy_from(state_tensor(i, which));
  }
  // Other ranks contribute zeros where this rank holds the values: x + 0 = x.
  host_group.all_reduce(full, parallel::ReduceOp::kSum, "ZeRO-1 optimizer state gather");
  return full;
}

void Zero1Optimizer::scatter(const Parameter& parameter, const std::string& which, const Tensor& full) {
  LLMFT_CHECK(full.shape() == parameter.value.shape() && full.dtype() == DType::kF32, "ZeRO-1 scatter of ",
              parameter.name, ": ", full.to_string());
  const Tensor flat = flat_view(full);
  for (size_t i = 0; i < segments_.size(); ++i) {
    if (segments_[i].parameter != &parameter) continue;
    state_tensor(i, which).copy_from(flat.slice_rows(segments_[i].begin, segments_[i].end));
  }
}

}  // namespace llmft::optim
