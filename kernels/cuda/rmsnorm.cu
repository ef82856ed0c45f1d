// RMSNorm (Zhang & Sennrich 2019) as Hugging Face's LlamaRMSNorm computes it
// (kernels/cpu/rmsnorm.cc is the readable reference): fp32 statistics, the
// normalised row rounded to x's dtype, then multiplied by the weight.
//
// Forward fuses the sum of squares, rstd, the rounding and the weight multiply
// into one block per row (x is read twice, from L1/L2 the second time).
// Backward fuses dx and the dweight partial sums into one pass per row; the
// dweight partials go to an fp32 [blocks, dim] scratch owned row-by-row by
// fixed blocks and are added in block order by a second small kernel, so
// dweight is deterministic (no atomics) like the CPU's thread-ordered sum.
// Next optimisation: vectorised 16-byte loads and keeping the row in registers.
#include <algorithm>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.cuh"

namespace llmft::cuda {
namespace {

constexpr int kThreads = 256;

struct RmsnormArguments {
  const void* x;
  DType x_dtype;
  const void* weight;
  DType weight_dtype;
  int64_t rows, dim;
};

__global__ void rmsnorm_forward_kernel(RmsnormArguments args, float eps, void* y, DType y_dtype, float* rstd) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t base = row * args.dim;
  float sum_of_squares = 0.0f;
  for (int64_t i = threadIdx.x; i < args.dim; i += blockDim.x) {
    const float value = load_as_float(args.x, args.x_dtype, base + i);
    sum_of_squares += value * value;
  }
  sum_of_squares = block_sum(sum_of_squares, scratch);
  const float row_rstd = 1.0f / sqrtf(sum_of_squares / static_cast<float>(args.dim) + eps);
  if (threadIdx.x == 0) rstd[row] = row_rstd;
  for (int64_t i = threadIdx.x; i < args.dim; i += blockDim.x) {
    const float normalized = round_to_dtype(load_as_float(args.x, args.x_dtype, base + i) * row_rstd, args.x_dtype);
    store_from_float(y, y_dtype, base + i, normalized * load_as_float(args.weight, args.weight_dtype, i));
  }
}

// dx = rstd * (g - n * mean(g * n)) with g = dy * w, n = x * rstd; the partial
// dweight of this block += dy * round(n). dx may alias dy: each element of dy
// is read by the thread that later writes the same element of dx, and the
// first pass is finished (block_sum synchronises) before any dx is written.
__global__ void rmsnorm_backward_kernel(RmsnormArguments args, const void* dy, DType dy_dtype, const float* rstd,
                                        void* dx, DType dx_dtype, float* partial_dweight) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < args.rows; row += gridDim.x) {
    const int64_t base = row * args.dim;
    const float row_rstd = rstd[row];
    float dot = 0.0f;
    for (int64_t i = threadIdx.x; i < args.dim; i += blockDim.x) {
      const float normalized = load_as_float(args.x, args.x_dtype, base + i) * row_rstd;
      dot += load_as_float(dy, dy_dtype, base + i) * load_as_float(args.weight, args.weight_dtype, i) * normalized;
    }
    dot = block_sum(dot, scratch);
    const float mean_dot = dot / static_cast<float>(args.dim);
    for (int64_t i = threadIdx.x; i < args.dim; i += blockDim.x) {
      const float normalized = load_as_float(args.x, args.x_dtype, base + i) * row_rstd;
      const float gradient = load_as_float(dy, dy_dtype, base + i);
      if (partial_dweight != nullptr) {
        partial_dweight[blockIdx.x * args.dim + i] += gradient * round_to_dtype(normalized, args.x_dtype);
      }
      store_from_float(
          dx, dx_dtype, base + i,
          row_rstd * (gradient * load_as_float(args.weight, args.weight_dtype, i) - normalized * mean_dot));
    }
  }
}

// dweight[i] += sum over blocks b (in order) of partial[b, i].
__global__ void add_partial_sums_kernel(const float* partial, int64_t partial_rows, int64_t dim, void* dweight,
                                        DType dweight_dtype) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < dim;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float total = 0.0f;
    for (int64_t b = 0; b < partial_rows; ++b) total += partial[b * dim + i];
    store_from_float(dweight, dweight_dtype, i, load_as_float(dweight, dweight_dtype, i) + total);
  }
}

RmsnormArguments check_rmsnorm_arguments(Context& context, std::string_view op, const Tensor& x, const Tensor& weight,
                                         const Tensor& rstd) {
  require_on_context(op, "x", x, context);
  require_on_context(op, "weight", weight, context);
  require_on_context(op, "rstd", rstd, context);
  require_float(op, "x", x);
  require_float(op, "weight", weight);
  require_dtype(op, "rstd", rstd, DType::kF32);
  if (x.dim() == 0) throw_runtime(op, ": x must have a feature dimension, found ", x.to_string());
  require_shape(op, "weight", weight, {x.size(-1)});
  const int64_t dim = x.size(-1);
  const int64_t rows = dim == 0 ? 0 : x.numel() / dim;
  require_numel(op, "rstd", rstd, rows);
  return RmsnormArguments{x.raw_data(), x.dtype(), weight.raw_data(), weight.dtype(), rows, dim};
}

}  // namespace

void rmsnorm_forward(Context& context, const Tensor& x, const Tensor& weight, float eps, Tensor& y, Tensor& rstd) {
  constexpr std::string_view op = "rmsnorm_forward";
  const RmsnormArguments args = check_rmsnorm_arguments(context, op, x, weight, rstd);
  require_on_context(op, "y", y, context);
  require_float(op, "y", y);
  require_shape(op, "y", y, x.shape());
  if (args.rows == 0 || args.dim == 0) return;
  LLMFT_CHECK(args.rows <= INT32_MAX, op, ": too many rows for a one-block-per-row grid: ", args.rows);
  rmsnorm_forward_kernel<<<static_cast<unsigned>(args.rows), kThreads, 0, stream_of(context)>>>(
      args, eps, y.raw_data(), y.dtype(), rstd.data<float>());
  LLMFT_CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                      Tensor& dx, Tensor* dweight) {
  constexpr std::string_view op = "rmsnorm_backward";
  const RmsnormArguments args = check_rmsnorm_arguments(context, op, x, weight, rstd);
  require_on_context(op, "dy", dy, context);
  require_on_context(op, "dx", dx, context);
  require_float(op, "dy", dy);
  require_shape(op, "dy", dy, x.shape());
  require_float(op, "dx", dx);
  require_shape(op, "dx", dx, x.shape());
  if (dweight != nullptr) {
    require_on_context(op, "dweight", *dweight, context);
    require_float(op, "dweight", *dweight);
    require_shape(op, "dweight", *dweight, {args.dim});
  }
  if (args.rows == 0 || args.dim == 0) return;
  cudaStream_t stream = stream_of(context);
  const int64_t sm_count =
      context.cuda_resources()->multiprocessor_count > 0 ? context.cuda_resources()->multiprocessor_count : 132;
  const int64_t blocks = std::min<int64_t>(args.rows, sm_count * 4);
  Tensor partial;
  if (dweight != nullptr) {
    partial = context.empty({blocks, args.dim}, DType::kF32);
    LLMFT_CUDA_CHECK(cudaMemsetAsync(partial.raw_data(), 0, partial.nbytes(), stream));
  }
  float* partial_data = dweight != nullptr ? partial.data<float>() : nullptr;
  rmsnorm_backward_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      args, dy.raw_data(), dy.dtype(), rstd.data<float>(), dx.raw_data(), dx.dtype(), partial_data);
  LLMFT_CUDA_CHECK_LAUNCH();
  if (dweight != nullptr) {
    add_partial_sums_kernel<<<grid_for(context, args.dim, kThreads), kThreads, 0, stream>>>(
        partial_data, blocks, args.dim, dweight->raw_data(), dweight->dtype());
    LLMFT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace llmft::cuda
