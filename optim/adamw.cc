#include "optim/adamw.h"

#include <cmath>
#include <type_traits>

#include "core/error.h"
#include "core/half.h"

namespace llmft::optim {

bool is_norm_or_bias(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".bias") || ends_with("norm.weight");
}

namespace {

void require_host(const Tensor& tensor, const std::string& what) {
  if (tensor.device().is_cuda()) {
    throw_runtime("AdamW: ", what, " is on ", tensor.to_string(),
                  "; the fused AdamW update exists only for host tensors so far");
  }
}

bool is_float_dtype(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16; }

// Reads element i of a float tensor of any float dtype as f32.
inline float load_float(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(data)[i];
    case DType::kBF16: return bf16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
    default: return f16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
  }
}

// Writes f32 `value` into element i with round-to-nearest-even for 16-bit dtypes.
inline void store_float(void* data, DType dtype, int64_t i, float value) {
  switch (dtype) {
    case DType::kF32: static_cast<float*>(data)[i] = value; break;
    case DType::kBF16: static_cast<uint16_t*>(data)[i] = float_to_bf16_bits(value); break;
    default: static_cast<uint16_t*>(data)[i] = float_to_f16_bits(value); break;
  }
}

struct AdamWScalars {
  float decay_factor;  // 1 - lr * wd, or 1 when the parameter is excluded from decay
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  float step_size;              // lr / (1 - beta1^t)
  float eps;
  float grad_multiplier;
};

struct FusedArrays {
  int64_t n;
  float* master;
  float* exp_avg;
  float* exp_avg_sq;
};

// One fused pass over a parameter: decay, both moments, the update and the
// compute-dtype copy, so each element is read and written once. Templated on
// the storage types so the loop has no per-element dtype switch and vectorises.
// ValueT = float means the value is the master (no separate copy to write).
template <typename GradT, typename ValueT>
void fused_update(const GradT* grad, ValueT* value, const FusedArrays& arrays, const AdamWScalars& s) {
  float* master = arrays.master;
  float* m = arrays.exp_avg;
  float* v = arrays.exp_avg_sq;
  const int64_t n = arrays.n;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float g = static_cast<float>(grad[i]) * s.grad_multiplier;
    // torch: param.mul_(1 - lr * weight_decay) before the Adam step.
    float p = master[i] * s.decay_factor;
    // torch's exp_avg.lerp_(grad, 1 - beta1); lerp with weight < 0.5 is self + weight * (end - self).
    const float m_new = m[i] + s.one_minus_beta1 * (g - m[i]);
    const float v_new = v[i] * s.beta2 + s.one_minus_beta2 * (g * g);
    // denom = sqrt(v) / sqrt(1 - beta2^t) + eps: eps after the square root of the corrected moment.
    const float denom = std::sqrt(v_new) / s.bias_correction2_sqrt + s.eps;
    p = p - s.step_size * (m_new / denom);
    m[i] = m_new;
    v[i] = v_new;
    master[i] = p;
    if constexpr (!std::is_same_v<ValueT, float>) value[i] = ValueT(p);  // round-to-nearest-even (core/half.h)
  }
}

template <typename GradT>
void dispatch_on_value(const GradT* grad, void* value, DType value_dtype, const FusedArrays& arrays,
                       const AdamWScalars& scalars) {
  if (value == nullptr) {
    fused_update<GradT, float>(grad, nullptr, arrays, scalars);
  } else if (value_dtype == DType::kBF16) {
    fused_update(grad, static_cast<bf16*>(value), arrays, scalars);
  } else {
    fused_update(grad, static_cast<f16*>(value), arrays, scalars);
  }
}

void dispatch_fused_update(const void* grad, DType grad_dtype, void* value, DType value_dtype,
                           const FusedArrays& arrays, const AdamWScalars& scalars) {
  switch (grad_dtype) {
    case DType::kF32: dispatch_on_value(static_cast<const float*>(grad), value, value_dtype, arrays, scalars); break;
    case DType::kBF16: dispatch_on_value(static_cast<const bf16*>(grad), value, value_dtype, arrays, scalars); break;
    default: dispatch_on_value(static_cast<const f16*>(grad), value, value_dtype, arrays, scalars); break;
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
    require_host(value, str_cat("parameter '", parameter->name, "'"));
    AdamWParameterState state;
    state.parameter = parameter;
    state.decay = !(config_.exclude_from_decay && config_.exclude_from_decay(parameter->name));
    if (value.dtype() == DType::kF32) {
      state.master = value;
    } else {
      state.master = context_.empty(value.shape(), DType::kF32);
      float* master = state.master.data<float>();
      const void* source = value.raw_data();
      for (int64_t i = 0; i < value.numel(); ++i) master[i] = load_float(source, value.dtype(), i);
    }
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
    require_host(grad, str_cat("gradient of '", parameter.name, "'"));
  }
  ++step_count_;
  const double t = static_cast<double>(step_count_);
  // Scalars as torch computes them (Python floats, i.e. double), then used in f32.
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(config_.beta1), t);
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(config_.beta2), t);
  const float step_size = static_cast<float>(static_cast<double>(lr) / bias_correction1);
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float one_minus_beta1 = static_cast<float>(1.0 - static_cast<double>(config_.beta1));
  const float beta2 = config_.beta2;
  const float one_minus_beta2 = static_cast<float>(1.0 - static_cast<double>(config_.beta2));
  const float eps = config_.eps;

  for (AdamWParameterState& state : states_) {
    Parameter& parameter = *state.parameter;
    AdamWScalars scalars{
        .decay_factor = state.decay ? static_cast<float>(1.0 - static_cast<double>(lr) *
                                                                   static_cast<double>(config_.weight_decay))
                                    : 1.0f,
        .one_minus_beta1 = one_minus_beta1,
        .beta2 = beta2,
        .one_minus_beta2 = one_minus_beta2,
        .bias_correction2_sqrt = bias_correction2_sqrt,
        .step_size = step_size,
        .eps = eps,
        .grad_multiplier = grad_multiplier};
    FusedArrays arrays{state.master.numel(), state.master.data<float>(), state.exp_avg.data<float>(),
                       state.exp_avg_sq.data<float>()};
    // An f32 value is the master itself: nothing to refresh.
    void* value = parameter.value.dtype() == DType::kF32 ? nullptr : parameter.value.raw_data();
    dispatch_fused_update(parameter.grad.raw_data(), parameter.grad.dtype(), value, parameter.value.dtype(), arrays,
                          scalars);
  }
}

void AdamW::refresh_values() {
  for (AdamWParameterState& state : states_) {
    Tensor& value = state.parameter->value;
    if (value.dtype() == DType::kF32) {
      if (value.raw_data() != state.master.raw_data()) value.copy_from(state.master);
      continue;
    }
    const float* master = state.master.data<float>();
    void* value_data = value.raw_data();
    for (int64_t i = 0; i < value.numel(); ++i) store_float(value_data, value.dtype(), i, master[i]);
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
