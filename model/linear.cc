#include "model/linear.h"

#include "core/error.h"
#include "kernels/ops.h"

namespace llmft {

// ---- ParameterRegistry ----------------------------------------------------------

Parameter& ParameterRegistry::add(Context& context, const std::string& name, const Shape& shape, DType dtype) {
  LLMFT_CHECK(index_.count(name) == 0, "parameter '", name, "' registered twice");
  index_[name] = parameters_.size();
  Parameter& parameter = parameters_.emplace_back();
  parameter.name = name;
  parameter.value = context.empty(shape, dtype);
  return parameter;
}

Parameter* ParameterRegistry::find(const std::string& name) {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &parameters_[it->second];
}

const Parameter* ParameterRegistry::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &parameters_[it->second];
}

Parameter& ParameterRegistry::get(const std::string& name) {
  Parameter* parameter = find(name);
  if (parameter == nullptr) throw_bad_input("no parameter '", name, "'");
  return *parameter;
}

std::vector<Parameter*> ParameterRegistry::all() {
  std::vector<Parameter*> result;
  for (Parameter& parameter : parameters_) result.push_back(&parameter);
  return result;
}

std::vector<const Parameter*> ParameterRegistry::all() const {
  std::vector<const Parameter*> result;
  for (const Parameter& parameter : parameters_) result.push_back(&parameter);
  return result;
}

void ParameterRegistry::set_trainable(const std::function<bool(const std::string&)>& predicate, bool freeze_others) {
  for (Parameter& parameter : parameters_) {
    if (predicate(parameter.name)) parameter.trainable = true;
    else if (freeze_others) parameter.trainable = false;
  }
}

void ParameterRegistry::allocate_grads(Context& context, DType grad_dtype) {
  MemoryCategoryScope category(MemoryCategory::kGradients);
  for (Parameter& parameter : parameters_) {
    if (!parameter.trainable) {
      parameter.grad = Tensor();
    } else if (!parameter.grad.defined() || parameter.grad.dtype() != grad_dtype) {
      parameter.grad = context.zeros(parameter.value.shape(), grad_dtype);
    }
  }
}

void ParameterRegistry::zero_grads(Context& context) {
  for (Parameter& parameter : parameters_)
    if (parameter.grad.defined()) ops::fill(context, parameter.grad, 0.0f);
}

int64_t ParameterRegistry::num_elements(bool trainable_only) const {
  int64_t count = 0;
  for (const Parameter& parameter : parameters_)
    if (!trainable_only || parameter.trainable) count += parameter.value.numel();
  return count;
}

// ---- Linear ---------------------------------------------------------------------

Linear::Linear(std::string name, Parameter* weight, Parameter* bias, ShardKind shard_kind,
               parallel::Communicator* tensor_parallel)
    : name_(std::move(name)),
      weight_(weight),
      bias_(bias),
      shard_kind_(shard_kind),
      tensor_parallel_(shard_kind == ShardKind::kNone ? nullptr : tensor_parallel) {
  LLMFT_CHECK(weight_ != nullptr && weight_->value.dim() == 2, name_, ": weight must be [out, in]");
  LLMFT_CHECK(shard_kind_ == ShardKind::kNone || tensor_parallel_ != nullptr, name_,
              ": a tensor-parallel linear needs its group");
}

void Linear::forward(Context& context, const Tensor& x, Tensor& y) const {
  // Row-parallel: the ranks' outputs are summed, so the bias enters once.
  const bool add_bias = bias_ != nullptr && !(shard_kind_ == ShardKind::kRow && tensor_parallel_->rank() != 0);
  ops::linear_forward(context, x, weight_->value, add_bias ? &bias_->value : nullptr, y);
  for (const auto& adapter : adapters_) adapter->forward(context, x, y);
}

void Linear::backward(Context& context, const Tensor& dy, const Tensor& x, Tensor* dx, bool accumulate_dx) const {
  Tensor* dweight = weight_->trainable && weight_->grad.defined() ? &weight_->grad : nullptr;
  Tensor* dbias = bias_ != nullptr && bias_->trainable && bias_->grad.defined() ? &bias_->grad : nullptr;
  if (dx != nullptr || dweight != nullptr || dbias != nullptr)
    ops::linear_backward(context, dy, x, weight_->value, dx, dweight, dbias, accumulate_dx);
  for (const auto& adapter : adapters_) adapter->backward(context, dy, x, dx);
}

}  // namespace llmft
