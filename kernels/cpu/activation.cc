// Pointwise activations (kernels/ops.h): relu, tanh, silu and exact-erf gelu,
// forward and backward, in fp32 whatever the storage dtype. The reference the
// CUDA kernels (kernels/cuda/activation.cu) are compared with.
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

float activation_value(ops::Activation kind, float x) {
  switch (kind) {
    case ops::Activation::kRelu: return x > 0.0f ? x : 0.0f;
    case ops::Activation::kTanh: return std::tanh(x);
    case ops::Activation::kSilu: return x / (1.0f + std::exp(-x));
    case ops::Activation::kGelu: return 0.5f * x * (1.0f + std::erf(x * kInvSqrt2));
  }
  return 0.0f;
}

// d/dx: relu 1 for x > 0 (0 at 0, as torch); tanh 1 - tanh²; silu
// s (1 + x (1 - s)); gelu Phi(x) + x phi(x).
float activation_derivative(ops::Activation kind, float x) {
  switch (kind) {
    case ops::Activation::kRelu: return x > 0.0f ? 1.0f : 0.0f;
    case ops::Activation::kTanh: {
      const float t = std::tanh(x);
      return 1.0f - t * t;
    }
    case ops::Activation::kSilu: {
      const float s = 1.0f / (1.0f + std::exp(-x));
      return s * (1.0f + x * (1.0f - s));
    }
    case ops::Activation::kGelu:
      return 0.5f * (1.0f + std::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
  }
  return 0.0f;
}

}  // namespace

void activation_forward(Context& context, ops::Activation kind, const Tensor& x, Tensor& y) {
  constexpr std::string_view op = "activation_forward";
  require_float(op, "x", x);
  require_float(op, "y", y);
  require_shape(op, "y", y, x.shape());
  FloatReader x_reader(x);
  FloatWriter y_writer(y);
  parallel_chunks(x.numel(), [&](int64_t begin, int64_t count) {
    float x_scratch[kChunk], y_scratch[kChunk];
    const float* input = x_reader.read(begin, count, x_scratch);
    float* output = y_writer.open(begin, count, y_scratch);
    for (int64_t i = 0; i < count; ++i) output[i] = activation_value(kind, input[i]);
    y_writer.commit(begin, count, output);
  });
}

void activation_backward(Context& context, ops::Activation kind, const Tensor& dy, const Tensor& x, Tensor& dx) {
  constexpr std::string_view op = "activation_backward";
  require_float(op, "dy", dy);
  require_float(op, "x", x);
  require_float(op, "dx", dx);
  require_shape(op, "dy", dy, x.shape());
  require_shape(op, "dx", dx, x.shape());
  FloatReader dy_reader(dy), x_reader(x);
  FloatWriter dx_writer(dx);
  // dx may alias dy or x: a chunk is read whole before it is committed.
  parallel_chunks(x.numel(), [&](int64_t begin, int64_t count) {
    float dy_scratch[kChunk], x_scratch[kChunk], dx_scratch[kChunk];
    const float* gradient = dy_reader.read(begin, count, dy_scratch);
    const float* input = x_reader.read(begin, count, x_scratch);
    float* output = dx_writer.open(begin, count, dx_scratch);
    for (int64_t i = 0; i < count; ++i) output[i] = gradient[i] * activation_derivative(kind, input[i]);
    dx_writer.commit(begin, count, output);
  });
}

}  // namespace llmft::cpu
