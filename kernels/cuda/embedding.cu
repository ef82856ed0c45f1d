// Token embedding lookup and its scatter-add gradient (kernels/cpu/embedding.cc
// is the reference).
//
// Ids come from the user's data, so an id outside [0, V) must be reported by
// position like on the CPU: both ops copy the ids to the host first (N int32
// and one stream sync per call — the forward runs once per micro-batch) and
// check them before any row is touched.
//
// Backward, f32 dtable: one thread per (position, column) atomicAdds in fp32
// into dtable. Repeated ids therefore add in a run-dependent order (fp32
// last-bit differences between runs), the price of a sync-free scatter;
// a deterministic context (Context::deterministic) takes the segment path
// below instead.
// Backward, bf16/f16 dtable: 16-bit atomics would round after every add and
// race on the packed pair, so the host (which has the ids anyway) groups the
// positions by id in position order (a CSR list); one block per distinct id
// sums its rows in fp32 in that fixed order and rounds once into dtable:
// deterministic, and more accurate than per-add rounding.
#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.cuh"

namespace llmft::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void embedding_forward_kernel(const int32_t* ids, const void* table, DType table_dtype, void* out,
                                         DType out_dtype, int64_t count, int64_t dim) {
  const int64_t total = count * dim;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t position = index / dim, column = index % dim;
    const int64_t id = ids[position];
    store_from_float(out, out_dtype, index, load_as_float(table, table_dtype, id * dim + column));
  }
}

__global__ void embedding_backward_atomic_kernel(const int32_t* ids, const void* dout, DType dout_dtype, float* dtable,
                                                 int64_t count, int64_t dim) {
  const int64_t total = count * dim;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t position = index / dim, column = index % dim;
    atomicAdd(dtable + ids[position] * dim + column, load_as_float(dout, dout_dtype, index));
  }
}

// Block (segment, column tile): positions[segment_begin[s] .. segment_begin[s+1])
// all hold id segment_id[s].
__global__ void embedding_backward_segments_kernel(const int32_t* positions, const int32_t* segment_begin,
                                                   const int32_t* segment_id, const void* dout, DType dout_dtype,
                                                   void* dtable, DType dtable_dtype, int64_t dim) {
  const int64_t segment = blockIdx.x;
  const int64_t column = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (column >= dim) return;
  float sum = 0.0f;
  for (int32_t k = segment_begin[segment]; k < segment_begin[segment + 1]; ++k) {
    sum += load_as_float(dout, dout_dtype, static_cast<int64_t>(positions[k]) * dim + column);
  }
  const int64_t target = static_cast<int64_t>(segment_id[segment]) * dim + column;
  store_from_float(dtable, dtable_dtype, target, load_as_float(dtable, dtable_dtype, target) + sum);
}

std::vector<int32_t> download_checked_ids(Context& context, std::string_view op, const Tensor& ids,
                                          int64_t vocab_size) {
  std::vector<int32_t> host_ids = download_small<int32_t>(context, ids);
  for (size_t position = 0; position < host_ids.size(); ++position) {
    if (host_ids[position] < 0 || host_ids[position] >= vocab_size) {
      throw_bad_input(op, ": token id ", host_ids[position], " at position ", position,
                      " is outside the vocabulary [0, ", vocab_size, ")");
    }
  }
  return host_ids;
}

// Copies a host vector into a fresh device tensor on the context's stream.
// The source is pageable, so cudaMemcpyAsync stages it before returning and
// the vector may be freed right after.
Tensor upload_ints(Context& context, const std::vector<int32_t>& values) {
  Tensor device = context.empty({static_cast<int64_t>(values.size())}, DType::kI32);
  LLMFT_CUDA_CHECK(cudaMemcpyAsync(device.raw_data(), values.data(), values.size() * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, stream_of(context)));
  return device;
}

}  // namespace

void embedding_forward(Context& context, const Tensor& ids, const Tensor& table, Tensor& out) {
  constexpr std::string_view op = "embedding_forward";
  require_on_context(op, "ids", ids, context);
  require_on_context(op, "table", table, context);
  require_on_context(op, "out", out, context);
  require_dtype(op, "ids", ids, DType::kI32);
  require_float(op, "table", table);
  require_float(op, "out", out);
  if (table.dim() != 2) throw_runtime(op, ": table must be [vocab, dim], found ", table.to_string());
  const int64_t vocab_size = table.size(0), dim = table.size(1);
  const int64_t count = ids.numel();
  if (out.dim() == 0 || out.size(-1) != dim) {
    throw_runtime(op, ": out: expected last dimension ", dim, ", found ", out.to_string());
  }
  require_numel(op, "out", out, count * dim);
  if (count == 0) return;
  download_checked_ids(context, op, ids, vocab_size);
  if (dim == 0) return;
  embedding_forward_kernel<<<grid_for(context, count * dim, kThreads), kThreads, 0, stream_of(context)>>>(
      ids.data<int32_t>(), table.raw_data(), table.dtype(), out.raw_data(), out.dtype(), count, dim);
  LLMFT_CUDA_CHECK_LAUNCH();
}

void embedding_backward(Context& context, const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  constexpr std::string_view op = "embedding_backward";
  require_on_context(op, "ids", ids, context);
  require_on_context(op, "dout", dout, context);
  require_on_context(op, "dtable", dtable, context);
  require_dtype(op, "ids", ids, DType::kI32);
  require_float(op, "dout", dout);
  require_float(op, "dtable", dtable);
  if (dtable.dim() != 2) throw_runtime(op, ": dtable must be [vocab, dim], found ", dtable.to_string());
  const int64_t vocab_size = dtable.size(0), dim = dtable.size(1);
  const int64_t count = ids.numel();
  if (dout.dim() == 0 || dout.size(-1) != dim) {
    throw_runtime(op, ": dout: expected last dimension ", dim, ", found ", dout.to_string());
  }
  require_numel(op, "dout", dout, count * dim);
  if (count == 0) return;
  const std::vector<int32_t> host_ids = download_checked_ids(context, op, ids, vocab_size);
  if (dim == 0) return;
  cudaStream_t stream = stream_of(context);
  if (dtable.dtype() == DType::kF32 && !context.deterministic()) {
    embedding_backward_atomic_kernel<<<grid_for(context, count * dim, kThreads), kThreads, 0, stream>>>(
        ids.data<int32_t>(), dout.raw_data(), dout.dtype(), dtable.data<float>(), count, dim);
    LLMFT_CUDA_CHECK_LAUNCH();
    return;
  }
  LLMFT_CHECK(count <= INT32_MAX, op, ": too many positions: ", count);
  std::vector<int32_t> positions(static_cast<size_t>(count));
  std::iota(positions.begin(), positions.end(), 0);
  std::stable_sort(positions.begin(), positions.end(), [&](int32_t a, int32_t b) { return host_ids[a] < host_ids[b]; });
  std::vector<int32_t> segment_begin, segment_id;
  for (int32_t k = 0; k < static_cast<int32_t>(count); ++k) {
    const int32_t id = host_ids[positions[k]];
    if (segment_id.empty() || segment_id.back() != id) {
      segment_begin.push_back(k);
      segment_id.push_back(id);
    }
  }
  segment_begin.push_back(static_cast<int32_t>(count));
  const Tensor device_positions = upload_ints(context, positions);
  const Tensor device_segment_begin = upload_ints(context, segment_begin);
  const Tensor device_segment_id = upload_ints(context, segment_id);
  const dim3 grid(static_cast<unsigned>(segment_id.size()), static_cast<unsigned>(ceil_div(dim, kThreads)));
  embedding_backward_segments_kernel<<<grid, kThreads, 0, stream>>>(
      device_positions.data<int32_t>(), device_segment_begin.data<int32_t>(), device_segment_id.data<int32_t>(),
      dout.raw_data(), dout.dtype(), dtable.raw_data(), dtable.dtype(), dim);
  LLMFT_CUDA_CHECK_LAUNCH();
}

}  // namespace llmft::cuda
