// Inverted dropout (forward and backward are the same map) and the gradient
// statistics pass.
//
// Dropout fuses the mask generation into the multiply: the mask is never
// stored; each thread draws one Philox4x32-10 block (core/philox.h, the same
// function the CPU runs) and applies its four words to the four consecutive
// elements of the stream it covers, so the keep decisions are bit-identical
// to the CPU backend for any (seed, offset).
//
// gradient_stats fuses the sum of squares and the finiteness test into one
// read of every gradient: fp32 squares summed per thread, then double across
// threads and blocks (atomicAdd on double), and one read-back at the end
// (the caller needs the numbers on the host anyway to decide clipping and
// whether to skip the step). A deterministic context (Context::deterministic)
// has each block write its own sum instead, and the host adds the blocks in
// order: the same bits on every run, for one read-back of a few KB per tensor.
#include <algorithm>
#include <vector>

#include "core/philox.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.cuh"

namespace llmft::cuda {
namespace {

constexpr int kThreads = 256;

// Thread g handles Philox block (offset >> 2) + g, i.e. stream elements
// 4 * block .. 4 * block + 3, of which those inside [offset, offset + n) map to
// tensor elements element - offset.
template <typename X, typename Y>
__global__ void dropout_kernel(const X* x, Y* y, int64_t n, float p, float keep_scale, uint64_t seed, uint64_t offset) {
  const uint64_t first_block = offset >> 2;
  const uint64_t last_block = (offset + static_cast<uint64_t>(n) - 1) >> 2;
  const uint64_t blocks = last_block - first_block + 1;
  for (uint64_t g = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; g < blocks;
       g += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint64_t block_index = first_block + g;
    const PhiloxCounter draws = philox_block(seed, block_index);
#pragma unroll
    for (int word = 0; word < 4; ++word) {
      const uint64_t element = block_index * 4 + word;
      if (element < offset || element - offset >= static_cast<uint64_t>(n)) continue;
      const uint64_t i = element - offset;
      const bool keep = philox_uniform(draws.word[word]) >= p;
      y[i] = from_float<Y>(keep ? to_float(x[i]) * keep_scale : 0.0f);
    }
  }
}

// A column slice of a wider tensor (ops::DropoutLayout): one thread per
// element, each drawing the Philox block of its own stream index. Up to four
// times the Philox work of dropout_kernel, paid only by row-parallel LoRA
// under tensor parallelism, whose inputs are [rows, in / tp].
template <typename X, typename Y>
__global__ void strided_dropout_kernel(const X* x, Y* y, int64_t n, int64_t columns, int64_t row_stride,
                                       int64_t column_offset, float p, float keep_scale, uint64_t seed,
                                       uint64_t offset) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t element = offset + static_cast<uint64_t>(i / columns * row_stride + column_offset + i % columns);
    const PhiloxCounter draws = philox_block(seed, element >> 2);
    const bool keep = philox_uniform(draws.word[element & 3u]) >= p;
    y[i] = from_float<Y>(keep ? to_float(x[i]) * keep_scale : 0.0f);
  }
}

void apply_dropout(Context& context, std::string_view op, const Tensor& x, float p, uint64_t seed, uint64_t offset,
                   Tensor& y, ops::DropoutLayout layout) {
  require_on_context(op, "input", x, context);
  require_on_context(op, "output", y, context);
  require_float(op, "input", x);
  require_float(op, "output", y);
  require_numel(op, "output", y, x.numel());
  if (!(p >= 0.0f && p < 1.0f)) throw_bad_input(op, ": dropout probability must be in [0, 1), found ", p);
  const int64_t n = x.numel();
  if (n == 0) return;
  const float keep_scale = 1.0f / (1.0f - p);
  // A strided layout (checked by kernels/ops.cc) takes one thread per
  // element; the contiguous one a thread per Philox block.
  const int64_t columns = x.dim() == 0 ? 1 : x.size(-1);
  const bool contiguous = layout.contiguous(columns);
  const int64_t philox_blocks =
      static_cast<int64_t>(((offset + static_cast<uint64_t>(n) - 1) >> 2) - (offset >> 2) + 1);
  const unsigned blocks = grid_for(context, contiguous ? philox_blocks : n, kThreads);
  dispatch_float(x.dtype(), op, [&](auto x_tag) {
    using X = typename decltype(x_tag)::type;
    dispatch_float(y.dtype(), op, [&](auto y_tag) {
      using Y = typename decltype(y_tag)::type;
      const X* in = static_cast<const X*>(x.raw_data());
      Y* out = static_cast<Y*>(y.raw_data());
      if (contiguous) {
        dropout_kernel<X, Y><<<blocks, kThreads, 0, stream_of(context)>>>(in, out, n, p, keep_scale, seed, offset);
      } else {
        strided_dropout_kernel<X, Y><<<blocks, kThreads, 0, stream_of(context)>>>(
            in, out, n, columns, layout.row_stride, layout.column_offset, p, keep_scale, seed, offset);
      }
      LLMFT_CUDA_CHECK_LAUNCH();
    });
  });
}

struct DeviceGradientStats {
  double sum_of_squares;
  unsigned long long non_finite_count;
};

// per_block: block b writes stats[b] (deterministic); else atomics into stats[0].
template <typename T>
__global__ void gradient_stats_kernel(const T* values, int64_t n, DeviceGradientStats* stats, bool per_block) {
  __shared__ double scratch[32];
  float thread_sum = 0.0f;
  unsigned non_finite = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float value = to_float(values[i]);
    thread_sum += value * value;
    // Tested on the element, not its square: a huge finite value whose square
    // overflows fp32 is still finite (as on the CPU).
    non_finite |= static_cast<unsigned>((float_bits(value) & 0x7f800000u) == 0x7f800000u);
  }
  const double block_total = block_sum<double>(static_cast<double>(thread_sum), scratch);
  const int any_non_finite = __syncthreads_or(static_cast<int>(non_finite));
  if (threadIdx.x == 0 && per_block) {
    stats[blockIdx.x].sum_of_squares = block_total;
    stats[blockIdx.x].non_finite_count = any_non_finite ? 1ull : 0ull;
  } else if (threadIdx.x == 0) {
    atomicAdd(&stats->sum_of_squares, block_total);
    if (any_non_finite) atomicAdd(&stats->non_finite_count, 1ull);
  }
}

}  // namespace

void dropout_forward(Context& context, const Tensor& x, float p, uint64_t seed, uint64_t offset, Tensor& y,
                     ops::DropoutLayout layout) {
  apply_dropout(context, "dropout_forward", x, p, seed, offset, y, layout);
}

// The mask is regenerated from (seed, offset), so the backward is the same map.
void dropout_backward(Context& context, const Tensor& dy, float p, uint64_t seed, uint64_t offset, Tensor& dx,
                      ops::DropoutLayout layout) {
  apply_dropout(context, "dropout_backward", dy, p, seed, offset, dx, layout);
}

ops::GradientStats gradient_stats(Context& context, std::span<const Tensor> tensors) {
  constexpr std::string_view op = "gradient_stats";
  for (size_t index = 0; index < tensors.size(); ++index) {
    const std::string name = str_cat("tensors[", index, "]");
    require_on_context(op, name, tensors[index], context);
    require_float(op, name, tensors[index]);
  }
  cudaStream_t stream = stream_of(context);
  static_assert(sizeof(DeviceGradientStats) == 16);
  // Deterministic: one DeviceGradientStats per block of every launch, in launch order.
  const bool per_block = context.deterministic();
  std::vector<unsigned> blocks_of(tensors.size(), 0);  // 0 for empty tensors: no launch
  int64_t total_blocks = 0;
  for (size_t index = 0; index < tensors.size(); ++index) {
    if (tensors[index].numel() == 0) continue;
    blocks_of[index] = grid_for(context, tensors[index].numel(), kThreads);
    total_blocks += blocks_of[index];
  }
  const int64_t slots = per_block ? std::max<int64_t>(total_blocks, 1) : 1;
  Tensor device_stats = context.empty({2 * slots}, DType::kI64);  // 16 bytes per DeviceGradientStats
  auto* stats = static_cast<DeviceGradientStats*>(device_stats.raw_data());
  LLMFT_CUDA_CHECK(cudaMemsetAsync(stats, 0, slots * sizeof(DeviceGradientStats), stream));
  // One launch per tensor; a LoRA run has a few hundred. Next optimisation: one
  // launch over a device table of (pointer, numel, dtype).
  int64_t slot = 0;
  for (size_t index = 0; index < tensors.size(); ++index) {
    const Tensor& tensor = tensors[index];
    const int64_t n = tensor.numel();
    const unsigned blocks = blocks_of[index];
    if (blocks == 0) continue;
    dispatch_float(tensor.dtype(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      gradient_stats_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(tensor.raw_data()), n,
                                                                 stats + (per_block ? slot : 0), per_block);
      LLMFT_CUDA_CHECK_LAUNCH();
    });
    if (per_block) slot += blocks;
  }
  std::vector<DeviceGradientStats> host_stats(static_cast<size_t>(slots));
  LLMFT_CUDA_CHECK(cudaMemcpyAsync(host_stats.data(), stats, slots * sizeof(DeviceGradientStats),
                                   cudaMemcpyDeviceToHost, stream));
  LLMFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  ops::GradientStats result;
  unsigned long long non_finite = 0;
  for (const DeviceGradientStats& block : host_stats) {  // in order: the same sum on every run
    result.sum_of_squares += block.sum_of_squares;
    non_finite += block.non_finite_count;
  }
  result.all_finite = non_finite == 0;
  return result;
}

}  // namespace llmft::cuda
