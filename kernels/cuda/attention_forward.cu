// Causal grouped-query attention, forward (FlashAttention-2 schedule, Dao 2023;
// online softmax of Milakov & Gimelshein 2018). One block per (query tile of
// 32, query head, batch entry) walks the key tiles this tile can see, keeping
// the running max m, running sum l and the unnormalised output O of each query
// in registers, so the [T, T] score matrix is never materialised; it saves
// lse = m + log(l) (fp32 [B, Hq, T]) for the backward. Masking follows ops.h:
// query t sees keys [0, P) (shared prefix, then the KV cache's) and
// P + [doc_start(t), t]; key tiles entirely hidden from every query of the
// tile are skipped. Shared-prefix keys are loaded from their own tensors.
//
// Storage may be f32, bf16 or f16; everything is computed in fp32 in shared
// memory with CUDA cores. This is the straightforward tiled kernel: correct by
// construction, not yet fast. Next optimisations, in order: tensor cores
// (mma.sync m16n8k16 on bf16/f16 tiles, then Hopper wgmma with TMA loads),
// Q held in registers instead of shared memory, 64/128-query tiles with more
// threads, exp2 with log2(e) folded into the scale, and heavy causal tiles
// scheduled first.
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace llmft::cuda {
namespace {

using namespace attention;

template <int kHeadDimPad>
constexpr size_t forward_shared_bytes() {
  constexpr int stride = kHeadDimPad + 1;
  return sizeof(float) * (3 * kBlockQ * stride + kBlockQ * (kBlockK + 1)) + sizeof(int) * kBlockQ;
}

// Thread t owns query row i = t / 4 of the tile: score columns j = t%4 + 4c
// (c < 8) and output columns d = t%4 + 4k (k < kHeadDimPad/4). The four
// threads of a row are consecutive lanes and combine with __shfl_xor 1, 2.
template <typename T, int kHeadDimPad>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(Shape shape, const T* q, const T* k, const T* v,
                                                                     const T* shared_k, const T* shared_v,
                                                                     const int32_t* doc_start, T* out, float* lse) {
  constexpr int stride = kHeadDimPad + 1;
  constexpr int kOutPerThread = kHeadDimPad / kThreadsPerRow;
  extern __shared__ float shared[];
  float* q_tile = shared;                                                         // [kBlockQ][stride]
  float* k_tile = q_tile + kBlockQ * stride;                                      // [kBlockK][stride]
  float* v_tile = k_tile + kBlockK * stride;                                      // [kBlockK][stride]
  float* p_tile = v_tile + kBlockK * stride;                                      // [kBlockQ][kBlockK + 1]
  int* row_doc_start = reinterpret_cast<int*>(p_tile + kBlockQ * (kBlockK + 1));  // [kBlockQ]

  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBlockQ;
  const int64_t head = blockIdx.y, b = blockIdx.z;
  const int64_t kv_head = head / (shape.q_heads / shape.kv_heads);
  const int tid = threadIdx.x;
  const int row = tid / kThreadsPerRow, sub = tid % kThreadsPerRow;
  const int64_t query = q0 + row;
  const bool row_valid = query < shape.time;

  // Zero padding (d >= head_dim, rows past T) makes every dot product over
  // kHeadDimPad exact and keeps padded rows finite.
  for (int e = tid; e < kBlockQ * kHeadDimPad; e += kThreads) {
    const int r = e / kHeadDimPad, d = e % kHeadDimPad;
    const int64_t t = q0 + r;
    q_tile[r * stride + d] = (t < shape.time && d < shape.head_dim) ? to_float(q[q_index(shape, b, t, head, d)]) : 0.0f;
  }
  if (sub == 0) row_doc_start[row] = (row_valid && doc_start != nullptr) ? doc_start[b * shape.time + query] : 0;
  __syncthreads();
  // Keys before prefix + min(doc_start) of the tile are hidden from all its rows.
  const int64_t hidden_before = shape.prefix + tile_min_doc_start(row_doc_start, q0, shape.time);
  const int64_t my_doc_start = row_doc_start[row];
  const int64_t last_query = min(q0 + kBlockQ, shape.time) - 1;
  const int64_t key_end = shape.prefix + last_query + 1;  // exclusive

  float running_max = -INFINITY, running_sum = 0.0f;
  float accumulator[kOutPerThread];
#pragma unroll
  for (int kk = 0; kk < kOutPerThread; ++kk) accumulator[kk] = 0.0f;

  for (int64_t k0 = 0; k0 < key_end; k0 += kBlockK) {
    if (k0 >= shape.prefix && k0 + kBlockK <= hidden_before) continue;  // all hidden
    __syncthreads();  // the previous step is done with k_tile, v_tile, p_tile
    load_key_value_tile<T, kHeadDimPad>(shape, k, v, shared_k, shared_v, b, k0, kv_head, k_tile, v_tile);
    __syncthreads();

    float scores[kColumnsPerThread];
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < kColumnsPerThread; ++c) {
      const int j = sub + kThreadsPerRow * c;
      const int64_t s = k0 + j;
      float dot = 0.0f;
#pragma unroll 16
      for (int d = 0; d < kHeadDimPad; ++d) dot += q_tile[row * stride + d] * k_tile[j * stride + d];
      const bool visible = row_valid && s < shape.keys && key_visible(s, query, shape.prefix, my_doc_start);
      scores[c] = visible ? dot * shape.scale : -INFINITY;
      tile_max = fmaxf(tile_max, scores[c]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float new_max = fmaxf(running_max, tile_max);
    // A row that has seen no visible key yet keeps max = -inf; subtracting 0
    // instead keeps exp() at exactly 0 rather than NaN.
    const float shift = new_max == -INFINITY ? 0.0f : new_max;
    const float correction = expf(running_max - shift);
    float tile_sum = 0.0f;
#pragma unroll
    for (int c = 0; c < kColumnsPerThread; ++c) {
      const float p = expf(scores[c] - shift);
      p_tile[row * (kBlockK + 1) + sub + kThreadsPerRow * c] = p;
      tile_sum += p;
    }
    tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
    tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 2);
    running_sum = running_sum * correction + tile_sum;
    running_max = new_max;
    __syncthreads();  // p_tile complete

#pragma unroll
    for (int kk = 0; kk < kOutPerThread; ++kk) {
      const int d = sub + kThreadsPerRow * kk;
      float acc = 0.0f;
#pragma unroll 8
      for (int j = 0; j < kBlockK; ++j) acc += p_tile[row * (kBlockK + 1) + j] * v_tile[j * stride + d];
      accumulator[kk] = accumulator[kk] * correction + acc;
    }
  }

  if (row_valid) {
    // A row with no visible key (only possible with an invalid doc_start > t)
    // gets out = 0 and lse = -inf instead of NaN.
    const float inverse = running_sum > 0.0f ? 1.0f / running_sum : 0.0f;
#pragma unroll
    for (int kk = 0; kk < kOutPerThread; ++kk) {
      const int d = sub + kThreadsPerRow * kk;
      if (d < shape.head_dim) out[q_index(shape, b, query, head, d)] = from_float<T>(accumulator[kk] * inverse);
    }
    if (sub == 0) {
      lse[lse_index(shape, b, head, query)] = running_sum > 0.0f ? running_max + logf(running_sum) : -INFINITY;
    }
  }
}

template <typename T, int kHeadDimPad>
void launch_forward(Context& context, const Shape& shape, const Tensor& q, const Tensor& k, const Tensor& v,
                    const ops::SharedPrefix& shared, const int32_t* doc_start, Tensor& out, Tensor& lse) {
  const T* shared_k = shared.keys != nullptr ? static_cast<const T*>(shared.keys->raw_data()) : nullptr;
  const T* shared_v = shared.values != nullptr ? static_cast<const T*>(shared.values->raw_data()) : nullptr;
  constexpr size_t shared_bytes = forward_shared_bytes<kHeadDimPad>();
  auto kernel = attention_forward_kernel<T, kHeadDimPad>;
  LLMFT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
  const dim3 grid(static_cast<unsigned>(ceil_div(shape.time, kBlockQ)), static_cast<unsigned>(shape.q_heads),
                  static_cast<unsigned>(shape.batch));
  kernel<<<grid, kThreads, shared_bytes, stream_of(context)>>>(
      shape, static_cast<const T*>(q.raw_data()), static_cast<const T*>(k.raw_data()),
      static_cast<const T*>(v.raw_data()), shared_k, shared_v, doc_start, static_cast<T*>(out.raw_data()),
      lse.data<float>());
  LLMFT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void attention_forward(Context& context, const Tensor& q, const Tensor& k, const Tensor& v,
                       const ops::AttentionOptions& options, Tensor& out, Tensor& lse) {
  constexpr std::string_view op = "attention_forward";
  const Shape shape = check_attention_arguments(context, op, q, k, v, options, out, lse);
  if (shape.batch == 0 || shape.time == 0 || shape.q_heads == 0) return;
  const int32_t* doc_start = options.doc_start != nullptr ? options.doc_start->data<int32_t>() : nullptr;
  dispatch_float(q.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (shape.head_dim <= 64) {
      launch_forward<T, 64>(context, shape, q, k, v, options.shared_prefix, doc_start, out, lse);
    } else {
      launch_forward<T, 128>(context, shape, q, k, v, options.shared_prefix, doc_start, out, lse);
    }
  });
}

}  // namespace llmft::cuda
