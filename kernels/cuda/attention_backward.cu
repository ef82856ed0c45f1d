// Causal grouped-query attention, backward (FlashAttention-2, Dao 2023,
// Algorithm 2). Three launches:
//   1. D = rowsum(dO * O) per query (fp32 [B, Hq, T]).
//   2. One block per (key tile of 32, KV head, batch entry) holds its K, V
//      tile and the fp32 dK, dV accumulators in registers, and walks every
//      query head of its GQA group and every query tile that can see it:
//      it recomputes P = exp(scale * Q K^T - lse) from the forward's lse,
//      dV += P^T dO, dP = dO V^T, dS = P * (dP - D), dK += scale * dS^T Q,
//      and adds scale * dS K into an fp32 dQ scratch with atomicAdd.
//   3. dq = round(dQ scratch).
// dK/dV need no atomics: the group's query heads are summed inside one block,
// so each key row has one writer and dk/dv are overwritten as ops.h says. For
// dQ we chose FA2's atomicAdd into fp32 over a separate dQ pass: one pass
// instead of recomputing P and dP a second time; the cost is that dQ's fp32
// summation order (hence its last bits) varies between runs.
// The [T, T] matrix is never materialised. Same masking as the forward
// (attention_common.cuh). Next optimisations: tensor cores (mma/wgmma), larger
// tiles, skipping query tiles wholly hidden by doc_start.
// Deterministic contexts (Context::deterministic) replace the atomics: launch
// 2 leaves dQ alone, and a dQ kernel with one block per (query tile, query
// head, batch entry) walks the key tiles its queries see (as the forward),
// recomputes dS and sums dQ = scale * dS K in registers in key order (FA2's
// separate-dQ schedule: P and dP are computed twice, every dQ element has one
// writer).
// A shared prefix (ops::SharedPrefix): the blocks of batch entry b write
// their shared-key rows of dK/dV to an fp32 [B, S, Hkv, Dh] scratch, and a
// fourth launch sums it over b in batch order (no atomics, so those
// gradients are the same bits on every run).
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace llmft::cuda {
namespace {

using namespace attention;

// One warp per (b, t, h) row: D[b, h, t] = sum_d dO * O in fp32.
template <typename T>
__global__ void attention_backward_dot_kernel(Shape shape, const T* dout, const T* out, float* row_dot) {
  const int64_t rows = shape.batch * shape.time * shape.q_heads;
  const int lane = threadIdx.x & 31;
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; r < rows;
       r += (static_cast<int64_t>(gridDim.x) * blockDim.x) / 32) {
    const int64_t head = r % shape.q_heads;
    const int64_t t = (r / shape.q_heads) % shape.time;
    const int64_t b = r / (shape.q_heads * shape.time);
    float sum = 0.0f;
    for (int64_t d = lane; d < shape.head_dim; d += 32) {
      const int64_t index = r * shape.head_dim + d;  // [B, T, Hq, Dh] row r
      sum += to_float(dout[index]) * to_float(out[index]);
    }
    sum = warp_sum(sum);
    if (lane == 0) row_dot[lse_index(shape, b, head, t)] = sum;
  }
}

template <int kHeadDimPad>
constexpr size_t backward_shared_bytes() {
  constexpr int stride = kHeadDimPad + 1;
  return sizeof(float) * (4 * kBlockQ * stride + 2 * kBlockQ * (kBlockK + 1) + 2 * kBlockQ) + sizeof(int) * kBlockQ;
}

// Thread t plays two roles: owner of key row j = t / 4 (dK, dV columns
// d = t%4 + 4k) and, for the score step, of query row i = t / 4 with score
// columns j = t%4 + 4c; for dQ it owns query row i and columns d = t%4 + 4k.
template <typename T, int kHeadDimPad>
__global__ void __launch_bounds__(kThreads)
    attention_backward_kernel(Shape shape, const T* q, const T* k, const T* v, const T* shared_k, const T* shared_v,
                              const T* dout, const float* lse, const float* row_dot, const int32_t* doc_start,
                              float* dq_accumulator, T* dk, T* dv, float* dshared_k_partial,
                              float* dshared_v_partial) {
  constexpr int stride = kHeadDimPad + 1;
  constexpr int kOutPerThread = kHeadDimPad / kThreadsPerRow;
  constexpr int p_stride = kBlockK + 1;
  extern __shared__ float shared[];
  float* k_tile = shared;                                            // [kBlockK][stride]
  float* v_tile = k_tile + kBlockK * stride;                         // [kBlockK][stride]
  float* q_tile = v_tile + kBlockK * stride;                         // [kBlockQ][stride]
  float* do_tile = q_tile + kBlockQ * stride;                        // [kBlockQ][stride]
  float* p_tile = do_tile + kBlockQ * stride;                        // [kBlockQ][p_stride]
  float* ds_tile = p_tile + kBlockQ * p_stride;                      // [kBlockQ][p_stride]
  float* lse_tile = ds_tile + kBlockQ * p_stride;                    // [kBlockQ]
  float* dot_tile = lse_tile + kBlockQ;                              // [kBlockQ]
  int* doc_start_tile = reinterpret_cast<int*>(dot_tile + kBlockQ);  // [kBlockQ]

  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kBlockK;
  const int64_t kv_head = blockIdx.y, b = blockIdx.z;
  const int64_t group = shape.q_heads / shape.kv_heads;
  const int tid = threadIdx.x;
  const int row = tid / kThreadsPerRow, sub = tid % kThreadsPerRow;

  load_key_value_tile<T, kHeadDimPad>(shape, k, v, shared_k, shared_v, b, k0, kv_head, k_tile, v_tile);

  float dk_accumulator[kOutPerThread], dv_accumulator[kOutPerThread];
#pragma unroll
  for (int kk = 0; kk < kOutPerThread; ++kk) dk_accumulator[kk] = dv_accumulator[kk] = 0.0f;

  // Query t sees a non-prefix key s only when t >= s - P; a tile holding
  // prefix keys is seen by every query.
  const int64_t first_query = k0 < shape.prefix ? 0 : k0 - shape.prefix;
  const int64_t first_query_tile = first_query / kBlockQ;
  const int64_t query_tiles = (shape.time + kBlockQ - 1) / kBlockQ;

  for (int64_t g = 0; g < group; ++g) {
    const int64_t head = kv_head * group + g;
    for (int64_t tile = first_query_tile; tile < query_tiles; ++tile) {
      const int64_t q0 = tile * kBlockQ;
      __syncthreads();  // the previous step is done with q_tile, do_tile, p_tile, ds_tile
      for (int e = tid; e < kBlockQ * kHeadDimPad; e += kThreads) {
        const int r = e / kHeadDimPad, d = e % kHeadDimPad;
        const int64_t t = q0 + r;
        const bool inside = t < shape.time && d < shape.head_dim;
        q_tile[r * stride + d] = inside ? to_float(q[q_index(shape, b, t, head, d)]) : 0.0f;
        do_tile[r * stride + d] = inside ? to_float(dout[q_index(shape, b, t, head, d)]) : 0.0f;
      }
      if (tid < kBlockQ) {
        const int64_t t = q0 + tid;
        const bool inside = t < shape.time;
        lse_tile[tid] = inside ? lse[lse_index(shape, b, head, t)] : 0.0f;
        dot_tile[tid] = inside ? row_dot[lse_index(shape, b, head, t)] : 0.0f;
        doc_start_tile[tid] = inside && doc_start != nullptr ? doc_start[b * shape.time + t] : 0;
      }
      __syncthreads();

      // Scores for query row `row`, key columns sub + 4c.
      const int64_t query = q0 + row;
      const bool row_valid = query < shape.time;
      const int64_t my_doc_start = doc_start_tile[row];
      const float my_lse = lse_tile[row], my_dot = dot_tile[row];
#pragma unroll
      for (int c = 0; c < kColumnsPerThread; ++c) {
        const int j = sub + kThreadsPerRow * c;
        const int64_t s = k0 + j;
        const bool visible = row_valid && s < shape.keys && key_visible(s, query, shape.prefix, my_doc_start);
        float p = 0.0f, ds = 0.0f;
        if (visible) {
          float score, dp;
          score_and_dp<kHeadDimPad>(q_tile + row * stride, do_tile + row * stride, k_tile + j * stride,
                                    v_tile + j * stride, score, dp);
          p = expf(score * shape.scale - my_lse);
          ds = p * (dp - my_dot);
        }
        p_tile[row * p_stride + j] = p;
        ds_tile[row * p_stride + j] = ds;
      }
      __syncthreads();

      // dV, dK for key row `row` (the same index, now meaning a key).
#pragma unroll
      for (int kk = 0; kk < kOutPerThread; ++kk) {
        const int d = sub + kThreadsPerRow * kk;
        float dv_sum = 0.0f, dk_sum = 0.0f;
#pragma unroll 8
        for (int i = 0; i < kBlockQ; ++i) {
          dv_sum += p_tile[i * p_stride + row] * do_tile[i * stride + d];
          dk_sum += ds_tile[i * p_stride + row] * q_tile[i * stride + d];
        }
        dv_accumulator[kk] += dv_sum;
        dk_accumulator[kk] += dk_sum;
      }

      // dQ for query row `row` (deterministic contexts: the dQ kernel instead).
      if (row_valid && dq_accumulator != nullptr) {
#pragma unroll
        for (int kk = 0; kk < kOutPerThread; ++kk) {
          const int d = sub + kThreadsPerRow * kk;
          if (d >= shape.head_dim) continue;
          float dq_sum = 0.0f;
#pragma unroll 8
          for (int j = 0; j < kBlockK; ++j) dq_sum += ds_tile[row * p_stride + j] * k_tile[j * stride + d];
          if (dq_sum != 0.0f) atomicAdd(dq_accumulator + q_index(shape, b, query, head, d), dq_sum * shape.scale);
        }
      }
    }
  }

  const int64_t key = k0 + row;
  if (key < shape.keys) {
#pragma unroll
    for (int kk = 0; kk < kOutPerThread; ++kk) {
      const int d = sub + kThreadsPerRow * kk;
      if (d >= shape.head_dim) continue;
      if (key < shape.shared) {
        dshared_k_partial[shared_index(shape, b, key, kv_head, d)] = dk_accumulator[kk] * shape.scale;
        dshared_v_partial[shared_index(shape, b, key, kv_head, d)] = dv_accumulator[kk];
      } else {
        dk[kv_index(shape, b, key - shape.shared, kv_head, d)] = from_float<T>(dk_accumulator[kk] * shape.scale);
        dv[kv_index(shape, b, key - shape.shared, kv_head, d)] = from_float<T>(dv_accumulator[kk]);
      }
    }
  }
}

// out[i] = sum over b of partial[b * n + i], b in order.
__global__ void sum_over_batch_kernel(const float* partial, int64_t batch, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t b = 0; b < batch; ++b) sum += partial[b * n + i];
    out[i] = sum;
  }
}

template <int kHeadDimPad>
constexpr size_t dq_shared_bytes() {
  constexpr int stride = kHeadDimPad + 1;
  return sizeof(float) * ((2 * kBlockQ + 2 * kBlockK) * stride + kBlockQ * (kBlockK + 1)) + sizeof(int) * kBlockQ;
}

// Deterministic dQ: thread t owns query row i = t / 4, score columns
// j = t%4 + 4c and dQ columns d = t%4 + 4k, as in the forward kernel.
template <typename T, int kHeadDimPad>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(Shape shape, const T* q, const T* k, const T* v, const T* shared_k,
                                 const T* shared_v, const T* dout, const float* lse, const float* row_dot,
                                 const int32_t* doc_start, T* dq) {
  constexpr int stride = kHeadDimPad + 1;
  constexpr int kOutPerThread = kHeadDimPad / kThreadsPerRow;
  constexpr int p_stride = kBlockK + 1;
  extern __shared__ float shared[];
  float* q_tile = shared;                                              // [kBlockQ][stride]
  float* do_tile = q_tile + kBlockQ * stride;                          // [kBlockQ][stride]
  float* k_tile = do_tile + kBlockQ * stride;                          // [kBlockK][stride]
  float* v_tile = k_tile + kBlockK * stride;                           // [kBlockK][stride]
  float* ds_tile = v_tile + kBlockK * stride;                          // [kBlockQ][p_stride]
  int* row_doc_start = reinterpret_cast<int*>(ds_tile + kBlockQ * p_stride);  // [kBlockQ]

  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBlockQ;
  const int64_t head = blockIdx.y, b = blockIdx.z;
  const int64_t kv_head = head / (shape.q_heads / shape.kv_heads);
  const int tid = threadIdx.x;
  const int row = tid / kThreadsPerRow, sub = tid % kThreadsPerRow;
  const int64_t query = q0 + row;
  const bool row_valid = query < shape.time;

  for (int e = tid; e < kBlockQ * kHeadDimPad; e += kThreads) {
    const int r = e / kHeadDimPad, d = e % kHeadDimPad;
    const int64_t t = q0 + r;
    const bool inside = t < shape.time && d < shape.head_dim;
    q_tile[r * stride + d] = inside ? to_float(q[q_index(shape, b, t, head, d)]) : 0.0f;
    do_tile[r * stride + d] = inside ? to_float(dout[q_index(shape, b, t, head, d)]) : 0.0f;
  }
  if (sub == 0) row_doc_start[row] = (row_valid && doc_start != nullptr) ? doc_start[b * shape.time + query] : 0;
  const float my_lse = row_valid ? lse[lse_index(shape, b, head, query)] : 0.0f;
  const float my_dot = row_valid ? row_dot[lse_index(shape, b, head, query)] : 0.0f;
  __syncthreads();
  const int64_t hidden_before = shape.prefix + tile_min_doc_start(row_doc_start, q0, shape.time);
  const int64_t my_doc_start = row_doc_start[row];
  const int64_t last_query = min(q0 + kBlockQ, shape.time) - 1;
  const int64_t key_end = shape.prefix + last_query + 1;  // exclusive

  float accumulator[kOutPerThread];
#pragma unroll
  for (int kk = 0; kk < kOutPerThread; ++kk) accumulator[kk] = 0.0f;

  for (int64_t k0 = 0; k0 < key_end; k0 += kBlockK) {
    if (k0 >= shape.prefix && k0 + kBlockK <= hidden_before) continue;  // all hidden
    __syncthreads();  // the previous step is done with k_tile, v_tile, ds_tile
    load_key_value_tile<T, kHeadDimPad>(shape, k, v, shared_k, shared_v, b, k0, kv_head, k_tile, v_tile);
    __syncthreads();
#pragma unroll
    for (int c = 0; c < kColumnsPerThread; ++c) {
      const int j = sub + kThreadsPerRow * c;
      const int64_t s = k0 + j;
      const bool visible = row_valid && s < shape.keys && key_visible(s, query, shape.prefix, my_doc_start);
      float ds = 0.0f;
      if (visible) {
        float score, dp;
        score_and_dp<kHeadDimPad>(q_tile + row * stride, do_tile + row * stride, k_tile + j * stride,
                                  v_tile + j * stride, score, dp);
        ds = expf(score * shape.scale - my_lse) * (dp - my_dot);
      }
      ds_tile[row * p_stride + j] = ds;
    }
    __syncthreads();  // the row's four threads wrote its dS columns
#pragma unroll
    for (int kk = 0; kk < kOutPerThread; ++kk) {
      const int d = sub + kThreadsPerRow * kk;
      float sum = 0.0f;
#pragma unroll 8
      for (int j = 0; j < kBlockK; ++j) sum += ds_tile[row * p_stride + j] * k_tile[j * stride + d];
      accumulator[kk] += sum;
    }
  }
  if (!row_valid) return;
#pragma unroll
  for (int kk = 0; kk < kOutPerThread; ++kk) {
    const int d = sub + kThreadsPerRow * kk;
    if (d < shape.head_dim) dq[q_index(shape, b, query, head, d)] = from_float<T>(accumulator[kk] * shape.scale);
  }
}

template <typename T>
__global__ void round_accumulator_kernel(const float* accumulator, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = from_float<T>(accumulator[i]);
  }
}

template <typename T, int kHeadDimPad>
void launch_backward(Context& context, const Shape& shape, const Tensor& dout, const Tensor& q, const Tensor& k,
                     const Tensor& v, const Tensor& out, const Tensor& lse, const ops::SharedPrefix& shared,
                     const int32_t* doc_start, Tensor& dq, Tensor& dk, Tensor& dv) {
  cudaStream_t stream = stream_of(context);
  const int64_t query_rows = shape.batch * shape.time * shape.q_heads;

  Tensor row_dot = context.empty({shape.batch, shape.q_heads, shape.time}, DType::kF32);
  attention_backward_dot_kernel<T><<<grid_for(context, query_rows * 32, 256), 256, 0, stream>>>(
      shape, static_cast<const T*>(dout.raw_data()), static_cast<const T*>(out.raw_data()), row_dot.data<float>());
  LLMFT_CUDA_CHECK_LAUNCH();

  const bool deterministic = context.deterministic();
  Tensor dq_accumulator;
  if (!deterministic) {
    dq_accumulator = context.empty(q.shape(), DType::kF32);
    LLMFT_CUDA_CHECK(cudaMemsetAsync(dq_accumulator.raw_data(), 0, dq_accumulator.nbytes(), stream));
  }

  constexpr size_t shared_bytes = backward_shared_bytes<kHeadDimPad>();
  auto kernel = attention_backward_kernel<T, kHeadDimPad>;
  LLMFT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
  const dim3 grid(static_cast<unsigned>(ceil_div(shape.keys, kBlockK)), static_cast<unsigned>(shape.kv_heads),
                  static_cast<unsigned>(shape.batch));
  const int64_t shared_elements = shape.shared * shape.kv_heads * shape.head_dim;
  Tensor dshared_k_partial, dshared_v_partial;
  const T* shared_k = nullptr;
  const T* shared_v = nullptr;
  if (shape.shared > 0) {
    dshared_k_partial = context.empty({shape.batch, shape.shared, shape.kv_heads, shape.head_dim}, DType::kF32);
    dshared_v_partial = context.empty({shape.batch, shape.shared, shape.kv_heads, shape.head_dim}, DType::kF32);
    shared_k = static_cast<const T*>(shared.keys->raw_data());
    shared_v = static_cast<const T*>(shared.values->raw_data());
  }
  kernel<<<grid, kThreads, shared_bytes, stream>>>(
      shape, static_cast<const T*>(q.raw_data()), static_cast<const T*>(k.raw_data()),
      static_cast<const T*>(v.raw_data()), shared_k, shared_v, static_cast<const T*>(dout.raw_data()),
      lse.data<float>(), row_dot.data<float>(), doc_start, deterministic ? nullptr : dq_accumulator.data<float>(),
      static_cast<T*>(dk.raw_data()), static_cast<T*>(dv.raw_data()),
      shape.shared > 0 ? dshared_k_partial.data<float>() : nullptr,
      shape.shared > 0 ? dshared_v_partial.data<float>() : nullptr);
  LLMFT_CUDA_CHECK_LAUNCH();
  if (shape.shared > 0) {
    sum_over_batch_kernel<<<grid_for(context, shared_elements, 256), 256, 0, stream>>>(
        dshared_k_partial.data<float>(), shape.batch, shared_elements, shared.dkeys->data<float>());
    LLMFT_CUDA_CHECK_LAUNCH();
    sum_over_batch_kernel<<<grid_for(context, shared_elements, 256), 256, 0, stream>>>(
        dshared_v_partial.data<float>(), shape.batch, shared_elements, shared.dvalues->data<float>());
    LLMFT_CUDA_CHECK_LAUNCH();
  }

  if (deterministic) {
    constexpr size_t dq_bytes = dq_shared_bytes<kHeadDimPad>();
    auto dq_kernel = attention_backward_dq_kernel<T, kHeadDimPad>;
    LLMFT_CUDA_CHECK(
        cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dq_bytes)));
    const dim3 dq_grid(static_cast<unsigned>(ceil_div(shape.time, kBlockQ)), static_cast<unsigned>(shape.q_heads),
                       static_cast<unsigned>(shape.batch));
    dq_kernel<<<dq_grid, kThreads, dq_bytes, stream>>>(
        shape, static_cast<const T*>(q.raw_data()), static_cast<const T*>(k.raw_data()),
        static_cast<const T*>(v.raw_data()), shared_k, shared_v, static_cast<const T*>(dout.raw_data()),
        lse.data<float>(), row_dot.data<float>(), doc_start, static_cast<T*>(dq.raw_data()));
    LLMFT_CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t n = dq.numel();
  round_accumulator_kernel<T>
      <<<grid_for(context, n, 256), 256, 0, stream>>>(dq_accumulator.data<float>(), static_cast<T*>(dq.raw_data()), n);
  LLMFT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void attention_backward(Context& context, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const ops::AttentionOptions& options, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  constexpr std::string_view op = "attention_backward";
  const Shape shape = check_attention_arguments(context, op, q, k, v, options, out, lse);
  require_on_context(op, "dout", dout, context);
  require_on_context(op, "dq", dq, context);
  require_on_context(op, "dk", dk, context);
  require_on_context(op, "dv", dv, context);
  require_dtype(op, "dout", dout, q.dtype());
  require_dtype(op, "dq", dq, q.dtype());
  require_dtype(op, "dk", dk, q.dtype());
  require_dtype(op, "dv", dv, q.dtype());
  require_shape(op, "dout", dout, q.shape());
  require_shape(op, "dq", dq, q.shape());
  require_shape(op, "dk", dk, k.shape());
  require_shape(op, "dv", dv, v.shape());
  if (shape.batch == 0 || shape.q_heads == 0 || shape.time == 0) {
    // No queries: nothing attends to the prefix keys, their gradients are 0.
    fill(context, dk, 0.0f);
    fill(context, dv, 0.0f);
    if (shape.shared > 0) {
      fill(context, *options.shared_prefix.dkeys, 0.0f);
      fill(context, *options.shared_prefix.dvalues, 0.0f);
    }
    return;
  }
  const int32_t* doc_start = options.doc_start != nullptr ? options.doc_start->data<int32_t>() : nullptr;
  dispatch_float(q.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (shape.head_dim <= 64) {
      launch_backward<T, 64>(context, shape, dout, q, k, v, out, lse, options.shared_prefix, doc_start, dq, dk, dv);
    } else {
      launch_backward<T, 128>(context, shape, dout, q, k, v, out, lse, options.shared_prefix, doc_start, dq, dk,
                              dv);
    }
  });
}

}  // namespace llmft::cuda
