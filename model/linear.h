// Linear layer (torch.nn.Linear layout: weight [out, in], optional bias [out])
// with two extension points designed in from the start:
//  * adapters (LoRA, bottleneck adapters): each adds its own output to y in
//    the forward and its input gradient to dx in the backward, so peft/ can
//    attach them by module name without touching the model;
//  * tensor-parallel sharding kind (Megatron layout, DESIGN.md "Tensor
//    parallelism"): column (q, k, v, gate, up: this rank holds out / tp rows
//    of W and of the bias) or row (o, down: in / tp columns of W; the output
//    is this rank's partial sum, the bias added by tp rank 0 only). The
//    linear itself never communicates: the model reduces at block level (one
//    all-reduce after the row-parallel output in the forward, one of the
//    column-parallel input gradient in the backward), and adapters reduce
//    their own small intermediates (peft/lora.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/context.h"
#include "model/parameters.h"
#include "parallel/communicator.h"

namespace llmft {

enum class ShardKind { kNone, kColumn, kRow };

// Something that adds to a Linear's output: y += adapter(x). Implementations
// own their parameters (and register them with their own registry) and
// recompute any intermediate they need from x in the backward, so they work
// unchanged under gradient checkpointing. With checkpointing, forward runs
// twice per step for the same x: any randomness (LoRA dropout) must be a pure
// function of the step, e.g. Philox keyed by (seed, step, layer), as
// ops::dropout_forward is.
class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  // x: [N, in]; y_accumulate: [N, out] holding the base output; adds to it.
  virtual void forward(Context& context, const Tensor& x, Tensor& y_accumulate) = 0;
  // dy: [N, out]; accumulates the adapter's parameter gradients and, when
  // dx_accumulate is non-null, adds d(adapter(x))/dx to it ([N, in]).
  virtual void backward(Context& context, const Tensor& dy, const Tensor& x, Tensor* dx_accumulate) = 0;
};

class Linear {
 public:
  // `name` is the module path ("model.layers.0.self_attn.q_proj"); bias may
  // be null. A column/row shard kind needs the tensor-parallel group.
  Linear(std::string name, Parameter* weight, Parameter* bias, ShardKind shard_kind = ShardKind::kNone,
         parallel::Communicator* tensor_parallel = nullptr);

  const std::string& name() const { return name_; }
  int64_t in_features() const { return weight_->value.size(1); }
  int64_t out_features() const { return weight_->value.size(0); }
  Parameter& weight() const { return *weight_; }
  Parameter* bias() const { return bias_; }
  ShardKind shard_kind() const { return shard_kind_; }
  // The tensor-parallel group (null: not sharded).
  parallel::Communicator* tensor_parallel() const { return tensor_parallel_; }

  void add_adapter(std::shared_ptr<LinearAdapter> adapter) { adapters_.push_back(std::move(adapter)); }
  void clear_adapters() { adapters_.clear(); }
  const std::vector<std::shared_ptr<LinearAdapter>>& adapters() const { return adapters_; }

  // y[N, out] = x[N, in] @ W^T + b + sum of adapter outputs (row-parallel:
  // this rank's share of that sum).
  void forward(Context& context, const Tensor& x, Tensor& y) const;
  // dx (null when not needed) overwritten, or accumulated when accumulate_dx;
  // weight/bias gradients accumulated when those parameters are trainable;
  // then each adapter's backward.
  void backward(Context& context, const Tensor& dy, const Tensor& x, Tensor* dx, bool accumulate_dx = false) const;

 private:
  std::string name_;
  Parameter* weight_;
  Parameter* bias_;
  ShardKind shard_kind_;
  parallel::Communicator* tensor_parallel_;
  std::vector<std::shared_ptr<LinearAdapter>> adapters_;
};

}  // namespace llmft
