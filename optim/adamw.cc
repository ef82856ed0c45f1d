#include "optim/adamw.h"

#include "core/error.h"
#include "kernels/ops.h"

namespace llmft::optim {

bool is_norm_or_bias(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".bias") || ends_with("norm.weight");
}

namespace {

bool is_float_dtype(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16; }

void require_on_context(const Context& context, const Tensor& tensor, const std::string& what) {
  if (!(tensor.device() == context.device())) {
    throw_runtime("AdamW: ", what, " is ", tensor.to_string(), ", but the optimizer's context is on ",
                  context.device().to_string());
  }
}

}  // namespace

AdamW::AdamW(Context& context, const std::vector<Parameter*>& parameters, AdamWConfig config)
    : context_(context), config_(std::move(config)) {
  if (!(config_.beta1 >= 0.0f && config_.beta1 < 1.0f) || !(config_.beta2 >= 0.0f && config_.beta2 < 1.0f)) {
    throw_bad_input("optimizer: betas must lie in [0, 1), found (", config_.beta1, ", ", config_.beta2, ")");
  }
  if (!(config_.eps >= 0.0f)) throw_bad_input("optimizer.eps: expected >= 0, found ", config_.eps);
  if (!(config_.weight_decay >= 0.0f)) {
    throw_bad_input("optimizer.weight_decay: expected >= 0, found ", config_.weight_decay);
  }
  for (Parameter* parameter : parameters) {
    LLMFT_CHECK(parameter != nullptr, "null parameter");
    if (!parameter->trainable) continue;  // frozen: no master, no moments
    const Tensor& value = parameter->value;
    if (!value.defined() || !is_float_dtype(value.dtype())) {
      throw_bad_input("AdamW: parameter '", parameter->name, "': expected a defined f32/bf16/f16 value, found ",
                      value.defined() ? value.to_string() : std::string("undefined"));
    }
    require_on_context(context_, value, str_cat("parameter '", parameter->name, "'"));
    AdamWParameterState state;
    state.parameter = parameter;
    state.decay = !(config_.exclude_from_decay && config_.exclude_from_decay(parameter->name));
    if (value.dtype() == DType::kF32) {
      state.master = value;
    } else {
      MemoryCategoryScope category(MemoryCategory::kTrainableWeights);  // the master is the weight in fp32
      state.master = context_.empty(value.shape(), DType::kF32);
      ops::cast(context_, value, state.master);  // widening is exact
    }
    MemoryCategoryScope category(MemoryCategory::kOptimizerState);
    state.exp_avg = context_.zeros(value.shape(), DType::kF32);
    state.exp_avg_sq = context_.zeros(value.shape(), DType::kF32);
    states_.push_back(std::move(state));
  }
}

void AdamW::set_step_count(int64_t step_count) {
  if (step_count < 0) throw_bad_input("AdamW state: step count must be >= 0, found ", step_count);
  step_count_ = step_count;
}

void AdamW::step(float lr, float grad_multiplier) {
  // Validate everything before touching anything, so a bad gradient leaves the
  // optimizer and the model unchanged.
  for (const AdamWParameterState& state : states_) {
    const Parameter& parameter = *state.parameter;
    const Tensor& grad = parameter.grad;
    if (!grad.defined()) throw_bad_input("AdamW: trainable parameter '", parameter.name, "' has no gradient");
    if (grad.shape() != parameter.value.shape() || !is_float_dtype(grad.dtype())) {
      throw_bad_input("AdamW: parameter '", parameter.name, "': gradient ", grad.to_string(),
                      " does not match value ", parameter.value.to_string());
    }
    require_on_context(context_, grad, str_cat("gradient of '", parameter.name, "'"));
  }
  ++step_count_;
  for (AdamWParameterState& state : states_) {
    Parameter& parameter = *state.parameter;
    ops::AdamWUpdate update;
    update.lr = lr;
    update.beta1 = config_.beta1;
    update.beta2 = config_.beta2;
    update.eps = config_.eps;
    update.weight_decay = state.decay ? config_.weight_decay : 0.0f;
    update.step = step_count_;
    update.grad_multiplier = grad_multiplier;
    ops::adamw_update(context_, parameter.value, state.master, state.exp_avg, state.exp_avg_sq, parameter.grad,
                      update);
  }
}

void AdamW::refresh_values() {
  for (AdamWParameterState& state : states_) {
    Tensor& value = state.parameter->value;
    if (value.raw_data() == state.master.raw_data()) continue;  // an f32 value is its master
    ops::cast(context_, state.master, value);                     // round-to-nearest-even
  }
}

size_t AdamW::state_bytes() const {
  size_t bytes = 0;
  for (const AdamWParameterState& state : states_) {
    bytes += state.exp_avg.nbytes() + state.exp_avg_sq.nbytes();
    if (state.master.raw_data() != state.parameter->value.raw_data()) bytes += state.master.nbytes();
  }
  return bytes;
}

}  // namespace llmft::optim
