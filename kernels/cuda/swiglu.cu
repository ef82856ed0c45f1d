// SwiGLU activation (Shazeer 2020): out = silu(gate) * up, with the sigmoid in
// fp32 (kernels/cpu/swiglu.cc is the reference). Forward fuses silu and the
// product; backward produces dgate and dup from one read of dout, gate and up.
// Each thread reads all inputs of its element before writing, so dgate/dup
// may alias gate/up as ops.h allows.
// Next optimisation: fuse into the gate/up GEMM epilogue (one [N, 2F] GEMM).
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.cuh"

namespace llmft::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float value) { return 1.0f / (1.0f + expf(-value)); }

__global__ void swiglu_forward_kernel(const void* gate, DType gate_dtype, const void* up, DType up_dtype, void* out,
                                      DType out_dtype, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = load_as_float(gate, gate_dtype, i);
    store_from_float(out, out_dtype, i, g * sigmoid(g) * load_as_float(up, up_dtype, i));
  }
}

// d silu(g)/dg = s (1 + g (1 - s)) with s = sigmoid(g).
__global__ void swiglu_backward_kernel(const void* dout, DType dout_dtype, const void* gate, DType gate_dtype,
                                       const void* up, DType up_dtype, void* dgate, DType dgate_dtype, void* dup,
                                       DType dup_dtype, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gradient = load_as_float(dout, dout_dtype, i);
    const float g = load_as_float(gate, gate_dtype, i);
    const float u = load_as_float(up, up_dtype, i);
    const float s = sigmoid(g);
    store_from_float(dgate, dgate_dtype, i, gradient * u * s * (1.0f + g * (1.0f - s)));
    store_from_float(dup, dup_dtype, i, gradient * g * s);
  }
}

}  // namespace

void swiglu_forward(Context& context, const Tensor& gate, const Tensor& up, Tensor& out) {
  constexpr std::string_view op = "swiglu_forward";
  require_on_context(op, "gate", gate, context);
  require_on_context(op, "up", up, context);
  require_on_context(op, "out", out, context);
  require_float(op, "gate", gate);
  require_float(op, "up", up);
  require_float(op, "out", out);
  require_shape(op, "up", up, gate.shape());
  require_shape(op, "out", out, gate.shape());
  const int64_t n = gate.numel();
  if (n == 0) return;
  swiglu_forward_kernel<<<grid_for(context, n, kThreads), kThreads, 0, stream_of(context)>>>(
      gate.raw_data(), gate.dtype(), up.raw_data(), up.dtype(), out.raw_data(), out.dtype(), n);
  LLMFT_CUDA_CHECK_LAUNCH();
}

void swiglu_backward(Context& context, const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup) {
  constexpr std::string_view op = "swiglu_backward";
  require_on_context(op, "dout", dout, context);
  require_on_context(op, "gate", gate, context);
  require_on_context(op, "up", up, context);
  require_on_context(op, "dgate", dgate, context);
  require_on_context(op, "dup", dup, context);
  require_float(op, "dout", dout);
  require_float(op, "gate", gate);
  require_float(op, "up", up);
  require_float(op, "dgate", dgate);
  require_float(op, "dup", dup);
  require_shape(op, "up", up, gate.shape());
  require_shape(op, "dout", dout, gate.shape());
  require_shape(op, "dgate", dgate, gate.shape());
  require_shape(op, "dup", dup, gate.shape());
  const int64_t n = gate.numel();
  if (n == 0) return;
  swiglu_backward_kernel<<<grid_for(context, n, kThreads), kThreads, 0, stream_of(context)>>>(
      dout.raw_data(), dout.dtype(), gate.raw_data(), gate.dtype(), up.raw_data(), up.dtype(), dgate.raw_data(),
      dgate.dtype(), dup.raw_data(), dup.dtype(), n);
  LLMFT_CUDA_CHECK_LAUNCH();
}

}  // namespace llmft::cuda
