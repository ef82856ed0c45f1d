// Softmax cross-entropy over a large vocabulary (kernels/cpu/cross_entropy.cc
// is the reference). One block per row: every thread keeps an online
// (max, sum of exp) pair over its strided share of the row (Milakov &
// Gimelshein 2018), the pairs are merged across the block, and the row's lse
// and loss come out of a single read of the logits in their storage dtype —
// no f32 copy of the logits is ever made. The backward recomputes
// softmax = exp(logit - lse) from the saved lse and writes dlogits in one
// pass; each element is read before the same thread writes it, so dlogits may
// alias logits (the model's in-place form).
//
// Targets >= V are user data errors: the forward copies the targets to the
// host (one small read-back and stream sync per call) and reports the first
// bad row like the CPU. The backward runs on the same targets after the
// forward validated them, so it only guards memory (an out-of-range target
// subtracts nothing) instead of paying a second sync.
// Next optimisation: 16-byte vector loads, and fusing the backward into the
// LM-head GEMM's consumer so logits are read once per chunk.
#include <cmath>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.cuh"

namespace llmft::cuda {
namespace {

constexpr int kThreads = 256;

struct OnlineSoftmax {
  float max;
  float sum;  // sum of exp(value - max)
};

__device__ __forceinline__ OnlineSoftmax merge(OnlineSoftmax a, OnlineSoftmax b) {
  const float max = fmaxf(a.max, b.max);
  if (max == -INFINITY) return OnlineSoftmax{-INFINITY, 0.0f};
  const float sum =
      (a.max == -INFINITY ? 0.0f : a.sum * expf(a.max - max)) + (b.max == -INFINITY ? 0.0f : b.sum * expf(b.max - max));
  return OnlineSoftmax{max, sum};
}

__global__ void cross_entropy_forward_kernel(const void* logits, DType logits_dtype, const int32_t* targets,
                                             int64_t vocab_size, float* losses, float* lse) {
  __shared__ OnlineSoftmax warp_results[32];
  const int64_t row = blockIdx.x;
  const int64_t base = row * vocab_size;
  OnlineSoftmax state{-INFINITY, 0.0f};
  for (int64_t v = threadIdx.x; v < vocab_size; v += blockDim.x) {
    const float value = load_as_float(logits, logits_dtype, base + v);
    if (value > state.max) {
      state.sum = state.sum * expf(state.max - value) + 1.0f;  // exp(-inf) = 0 on the first element
      state.max = value;
    } else if (value != -INFINITY) {
      state.sum += expf(value - state.max);  // NaN logits propagate through here
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    OnlineSoftmax other{__shfl_xor_sync(0xffffffffu, state.max, offset),
                        __shfl_xor_sync(0xffffffffu, state.sum, offset)};
    state = merge(state, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_results[warp] = state;
  __syncthreads();
  if (threadIdx.x == 0) {
    OnlineSoftmax total = warp_results[0];
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) total = merge(total, warp_results[w]);
    const float row_lse = total.max + logf(total.sum);
    lse[row] = row_lse;
    const int32_t target = targets[row];
    losses[row] =
        target < 0 || target >= vocab_size ? 0.0f : row_lse - load_as_float(logits, logits_dtype, base + target);
  }
}

__global__ void cross_entropy_backward_kernel(const void* logits, DType logits_dtype, const int32_t* targets,
                                              const float* lse, const float* dloss, int64_t vocab_size, void* dlogits,
                                              DType dlogits_dtype) {
  const int64_t row = blockIdx.x;
  const int64_t base = row * vocab_size;
  const int32_t target = targets[row];
  const bool ignored = target < 0;
  const float row_lse = lse[row];
  const float row_dloss = ignored ? 0.0f : dloss[row];
  for (int64_t v = threadIdx.x; v < vocab_size; v += blockDim.x) {
    float gradient = 0.0f;
    if (!ignored) {
      gradient = row_dloss * expf(load_as_float(logits, logits_dtype, base + v) - row_lse);
      if (v == target) gradient -= row_dloss;
    }
    store_from_float(dlogits, dlogits_dtype, base + v, gradient);
  }
}

void check_cross_entropy_arguments(Context& context, std::string_view op, const Tensor& logits, const Tensor& targets) {
  require_on_context(op, "logits", logits, context);
  require_on_context(op, "targets", targets, context);
  require_float(op, "logits", logits);
  require_dtype(op, "targets", targets, DType::kI32);
  if (logits.dim() != 2) throw_runtime(op, ": logits must be [rows, vocab], found ", logits.to_string());
  require_numel(op, "targets", targets, logits.size(0));
  if (logits.size(1) == 0) throw_runtime(op, ": logits have an empty vocabulary dimension: ", logits.to_string());
  LLMFT_CHECK(logits.size(0) <= INT32_MAX, op, ": too many rows for a one-block-per-row grid: ", logits.size(0));
}

}  // namespace

void cross_entropy_forward(Context& context, const Tensor& logits, const Tensor& targets, Tensor& losses, Tensor& lse) {
  constexpr std::string_view op = "cross_entropy_forward";
  check_cross_entropy_arguments(context, op, logits, targets);
  const int64_t rows = logits.size(0), vocab_size = logits.size(1);
  require_on_context(op, "losses", losses, context);
  require_on_context(op, "lse", lse, context);
  require_dtype(op, "losses", losses, DType::kF32);
  require_dtype(op, "lse", lse, DType::kF32);
  require_numel(op, "losses", losses, rows);
  require_numel(op, "lse", lse, rows);
  if (rows == 0) return;
  const std::vector<int32_t> host_targets = download_small<int32_t>(context, targets);
  for (int64_t row = 0; row < rows; ++row) {
    if (host_targets[row] >= vocab_size) {
      throw_bad_input(op, ": target ", host_targets[row], " of row ", row, " is outside the vocabulary [0, ",
                      vocab_size, ") (negative targets mark ignored rows)");
    }
  }
  cross_entropy_forward_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream_of(context)>>>(
      logits.raw_data(), logits.dtype(), targets.data<int32_t>(), vocab_size, losses.data<float>(), lse.data<float>());
  LLMFT_CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(Context& context, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& dloss, Tensor& dlogits) {
  constexpr std::string_view op = "cross_entropy_backward";
  check_cross_entropy_arguments(context, op, logits, targets);
  const int64_t rows = logits.size(0), vocab_size = logits.size(1);
  require_on_context(op, "lse", lse, context);
  require_on_context(op, "dloss", dloss, context);
  require_on_context(op, "dlogits", dlogits, context);
  require_dtype(op, "lse", lse, DType::kF32);
  require_dtype(op, "dloss", dloss, DType::kF32);
  require_numel(op, "lse", lse, rows);
  require_numel(op, "dloss", dloss, rows);
  require_float(op, "dlogits", dlogits);
  require_shape(op, "dlogits", dlogits, logits.shape());
  if (rows == 0) return;
  cross_entropy_backward_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream_of(context)>>>(
      logits.raw_data(), logits.dtype(), targets.data<int32_t>(), lse.data<float>(), dloss.data<float>(), vocab_size,
      dlogits.raw_data(), dlogits.dtype());
  LLMFT_CUDA_CHECK_LAUNCH();
}

}  // namespace llmft::cuda
