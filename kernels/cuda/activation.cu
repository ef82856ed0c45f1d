// Pointwise activations (kernels/ops.h): relu, tanh, silu, exact-erf gelu,
// forward and backward in fp32 (kernels/cpu/activation.cc is the reference).
// Each thread reads its element's inputs before writing, so y may alias x and
// dx may alias dy or x.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.cuh"

namespace llmft::cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

__device__ __forceinline__ float activation_value(ops::Activation kind, float x) {
  switch (kind) {
    case ops::Activation::kRelu: return x > 0.0f ? x : 0.0f;
    case ops::Activation::kTanh: return tanhf(x);
    case ops::Activation::kSilu: return x / (1.0f + expf(-x));
    case ops::Activation::kGelu: return 0.5f * x * (1.0f + erff(x * kInvSqrt2));
  }
  return 0.0f;
}

__device__ __forceinline__ float activation_derivative(ops::Activation kind, float x) {
  switch (kind) {
    case ops::Activation::kRelu: return x > 0.0f ? 1.0f : 0.0f;
    case ops::Activation::kTanh: {
      const float t = tanhf(x);
      return 1.0f - t * t;
    }
    case ops::Activation::kSilu: {
      const float s = 1.0f / (1.0f + expf(-x));
      return s * (1.0f + x * (1.0f - s));
    }
    case ops::Activation::kGelu:
      return 0.5f * (1.0f + erff(x * kInvSqrt2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
  }
  return 0.0f;
}

__global__ void activation_forward_kernel(ops::Activation kind, const void* x, DType x_dtype, void* y, DType y_dtype,
                                          int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    store_from_float(y, y_dtype, i, activation_value(kind, load_as_float(x, x_dtype, i)));
}

__global__ void activation_backward_kernel(ops::Activation kind, const void* dy, DType dy_dtype, const void* x,
                                           DType x_dtype, void* dx, DType dx_dtype, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gradient = load_as_float(dy, dy_dtype, i);
    const float input = load_as_float(x, x_dtype, i);
    store_from_float(dx, dx_dtype, i, gradient * activation_derivative(kind, input));
  }
}

}  // namespace

void activation_forward(Context& context, ops::Activation kind, const Tensor& x, Tensor& y) {
  constexpr std::string_view op = "activation_forward";
  require_on_context(op, "x", x, context);
  require_on_context(op, "y", y, context);
  require_float(op, "x", x);
  require_float(op, "y", y);
  require_shape(op, "y", y, x.shape());
  const int64_t n = x.numel();
  if (n == 0) return;
  activation_forward_kernel<<<grid_for(context, n, kThreads), kThreads, 0, stream_of(context)>>>(
      kind, x.raw_data(), x.dtype(), y.raw_data(), y.dtype(), n);
  LLMFT_CUDA_CHECK_LAUNCH();
}

void activation_backward(Context& context, ops::Activation kind, const Tensor& dy, const Tensor& x, Tensor& dx) {
  constexpr std::string_view op = "activation_backward";
  require_on_context(op, "dy", dy, context);
  require_on_context(op, "x", x, context);
  require_on_context(op, "dx", dx, context);
  require_float(op, "dy", dy);
  require_float(op, "x", x);
  require_float(op, "dx", dx);
  require_shape(op, "dy", dy, x.shape());
  require_shape(op, "dx", dx, x.shape());
  const int64_t n = x.numel();
  if (n == 0) return;
  activation_backward_kernel<<<grid_for(context, n, kThreads), kThreads, 0, stream_of(context)>>>(
      kind, dy.raw_data(), dy.dtype(), x.raw_data(), x.dtype(), dx.raw_data(), dx.dtype(), n);
  LLMFT_CUDA_CHECK_LAUNCH();
}

}  // namespace llmft::cuda
