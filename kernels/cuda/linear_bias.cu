// Bias helpers of Linear (gemm.cc): the bias add used when cuBLASLt's bias
// epilogue cannot take the bias dtype, and the dbias column reduction.
// dbias is reduced by a deterministic two-level sum (each thread walks a fixed
// stride of rows, then a fixed-shape tree in shared memory) instead of
// CUBLASLT_EPILOGUE_BGRADB, so it accumulates into an existing dbias of any
// float dtype with one rounding and the same bits on every run.
#include "kernels/cuda/cuda_util.cuh"
#include "kernels/cuda/launchers.h"

namespace llmft::cuda {
namespace {

template <typename Y, typename B>
__global__ void add_bias_rows_kernel(Y* y, const B* bias, int64_t rows, int64_t columns) {
  const int64_t total = rows * columns;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[index] = from_float<Y>(to_float(y[index]) + to_float(bias[index % columns]));
  }
}

// Block (32, kRowLanes): threadIdx.x picks one of 32 consecutive columns
// (coalesced reads), threadIdx.y one of kRowLanes row lanes.
constexpr int kColumnTile = 32, kRowLanes = 16;

template <typename D, typename B>
__global__ void accumulate_column_sums_kernel(const D* dy, B* dbias, int64_t rows, int64_t columns) {
  __shared__ float partial[kRowLanes][kColumnTile + 1];
  const int64_t column = blockIdx.x * static_cast<int64_t>(kColumnTile) + threadIdx.x;
  float sum = 0.0f;
  if (column < columns) {
    for (int64_t row = threadIdx.y; row < rows; row += kRowLanes) sum += to_float(dy[row * columns + column]);
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && column < columns) {
    float total = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
    dbias[column] = from_float<B>(to_float(dbias[column]) + total);
  }
}

}  // namespace

void launch_add_bias_rows(Context& context, Tensor& y, const Tensor& bias, int64_t rows, int64_t columns) {
  const int threads = 256;
  const unsigned blocks = grid_for(context, rows * columns, threads);
  dispatch_float(y.dtype(), "linear_forward", [&](auto y_tag) {
    using Y = typename decltype(y_tag)::type;
    dispatch_float(bias.dtype(), "linear_forward", [&](auto bias_tag) {
      using B = typename decltype(bias_tag)::type;
      add_bias_rows_kernel<Y, B><<<blocks, threads, 0, stream_of(context)>>>(
          static_cast<Y*>(y.raw_data()), static_cast<const B*>(bias.raw_data()), rows, columns);
      LLMFT_CUDA_CHECK_LAUNCH();
    });
  });
}

void launch_accumulate_column_sums(Context& context, const Tensor& dy, Tensor& dbias, int64_t rows, int64_t columns) {
  const dim3 threads(kColumnTile, kRowLanes);
  const unsigned blocks = static_cast<unsigned>(ceil_div(columns, kColumnTile));
  dispatch_float(dy.dtype(), "linear_backward", [&](auto dy_tag) {
    using D = typename decltype(dy_tag)::type;
    dispatch_float(dbias.dtype(), "linear_backward", [&](auto bias_tag) {
      using B = typename decltype(bias_tag)::type;
      accumulate_column_sums_kernel<D, B><<<blocks, threads, 0, stream_of(context)>>>(
          static_cast<const D*>(dy.raw_data()), static_cast<B*>(dbias.raw_data()), rows, columns);
      LLMFT_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace llmft::cuda
