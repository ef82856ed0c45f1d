// Rotary position embedding (Su et al. 2021) in Hugging Face's rotate-half
// convention (dimension i pairs with i + head_dim/2; kernels/cpu/rope.cc is
// the reference). One thread per (row, head, pair): it reads both elements of
// its pair before writing them, so the output may alias the input, and the
// angle is the fp32 product position * inv_freq as on the CPU and in HF.
// The backward is the same kernel rotating by -angle (the transpose).
// Next optimisation: one thread per (row, pair) looping over heads so each
// sincos is shared by all heads of a position.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.cuh"

namespace llmft::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rope_kernel(const void* x, DType x_dtype, const int32_t* positions, const float* inv_freq, void* out,
                            DType out_dtype, int64_t rows, int64_t heads, int64_t half, float direction) {
  const int64_t pairs = rows * heads * half;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < pairs;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = index % half;
    const int64_t row = index / (heads * half);
    const int64_t head_base = (index / half) * (2 * half);
    const float angle = static_cast<float>(positions[row]) * inv_freq[i];
    float sine, cosine;
    sincosf(angle, &sine, &cosine);
    sine *= direction;
    const float first = load_as_float(x, x_dtype, head_base + i);
    const float second = load_as_float(x, x_dtype, head_base + i + half);
    store_from_float(out, out_dtype, head_base + i, first * cosine - second * sine);
    store_from_float(out, out_dtype, head_base + i + half, second * cosine + first * sine);
  }
}

void rotate(Context& context, std::string_view op, const Tensor& x, const Tensor& positions, const Tensor& inv_freq,
            Tensor& out, float direction) {
  require_on_context(op, "input", x, context);
  require_on_context(op, "positions", positions, context);
  require_on_context(op, "inv_freq", inv_freq, context);
  require_on_context(op, "output", out, context);
  require_float(op, "input", x);
  require_float(op, "output", out);
  require_dtype(op, "positions", positions, DType::kI32);
  require_dtype(op, "inv_freq", inv_freq, DType::kF32);
  if (x.dim() < 3) throw_runtime(op, ": input must be [..., heads, head_dim], found ", x.to_string());
  require_shape(op, "output", out, x.shape());
  const int64_t head_dim = x.size(-1), heads = x.size(-2);
  if (head_dim % 2 != 0) throw_runtime(op, ": head_dim must be even, found ", x.to_string());
  const int64_t half = head_dim / 2;
  require_numel(op, "inv_freq", inv_freq, half);
  const int64_t rows = heads == 0 || head_dim == 0 ? 0 : x.numel() / (heads * head_dim);
  require_numel(op, "positions", positions, rows);
  const int64_t pairs = rows * heads * half;
  if (pairs == 0) return;
  rope_kernel<<<grid_for(context, pairs, kThreads), kThreads, 0, stream_of(context)>>>(
      x.raw_data(), x.dtype(), positions.data<int32_t>(), inv_freq.data<float>(), out.raw_data(), out.dtype(), rows,
      heads, half, direction);
  LLMFT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_forward(Context& context, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& y) {
  rotate(context, "rope_forward", x, positions, inv_freq, y, 1.0f);
}

// The rotation is orthogonal, so its transpose is the rotation by -angle.
void rope_backward(Context& context, const Tensor& dy, const Tensor& positions, const Tensor& inv_freq, Tensor& dx) {
  rotate(context, "rope_backward", dy, positions, inv_freq, dx, -1.0f);
}

}  // namespace llmft::cuda
