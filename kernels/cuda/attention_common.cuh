// Shared pieces of the attention kernels (attention_forward.cu,
// attention_backward.cu): the problem shape, the visibility rule of ops.h and
// the host-side argument checks, kept in one place so forward and backward
// cannot disagree about the mask.
#pragma once

#include <cmath>

#include "kernels/cuda/cuda_util.cuh"
#include "kernels/ops.h"

namespace llmft::cuda::attention {

// Tiles: 32 queries x 32 keys per step, 128 threads = 4 threads per query (or
// key) row. Shared-memory rows are padded by one float so that threads reading
// the same column of different rows hit different banks.
constexpr int kBlockQ = 32;
constexpr int kBlockK = 32;
constexpr int kThreads = 128;
constexpr int kThreadsPerRow = kThreads / kBlockQ;           // 4
constexpr int kColumnsPerThread = kBlockK / kThreadsPerRow;  // 8
static_assert(kThreads % kBlockQ == 0 && kThreads / kBlockK == kThreadsPerRow, "tile/thread mapping");
constexpr int64_t kMaxHeadDim = 128;

struct Shape {
  int64_t batch = 0;
  int64_t time = 0;      // T, queries per sequence
  int64_t shared = 0;    // S, shared-prefix positions (ops::SharedPrefix), read from their own tensors
  int64_t k_rows = 0;    // num_prefix + T, k's rows per sequence
  int64_t keys = 0;      // S + num_prefix + T: a sequence's keys, the shared ones first
  int64_t prefix = 0;    // P = S + num_prefix, the keys visible to every query
  int64_t q_heads = 0;   // Hq
  int64_t kv_heads = 0;  // Hkv
  int64_t head_dim = 0;  // Dh
  float scale = 0.0f;
};

// ops.h: query t sees key positions [0, P) and P + [doc_start(t), t].
__device__ __forceinline__ bool key_visible(int64_t key, int64_t query, int64_t prefix, int64_t doc_start) {
  return key < prefix || (key >= prefix + doc_start && key <= prefix + query);
}

__device__ __forceinline__ int64_t q_index(const Shape& shape, int64_t b, int64_t t, int64_t h, int64_t d) {
  return ((b * shape.time + t) * shape.q_heads + h) * shape.head_dim + d;
}

// Element (row, h, d) of sequence b in k or v (row counts k's own rows).
__device__ __forceinline__ int64_t kv_index(const Shape& shape, int64_t b, int64_t row, int64_t h, int64_t d) {
  return ((b * shape.k_rows + row) * shape.kv_heads + h) * shape.head_dim + d;
}

// Element (s, h, d) of a shared-prefix tensor [S, Hkv, Dh] (or of batch b's
// slice of the backward's [B, S, Hkv, Dh] partial gradients).
__device__ __forceinline__ int64_t shared_index(const Shape& shape, int64_t b, int64_t s, int64_t h, int64_t d) {
  return ((b * shape.shared + s) * shape.kv_heads + h) * shape.head_dim + d;
}

// Key position s (0 <= s < keys) of sequence b as fp32: a shared-prefix row
// for s < S, else row s - S of k (or v).
template <typename T>
__device__ __forceinline__ float load_key(const Shape& shape, const T* rows, const T* shared_rows, int64_t b,
                                          int64_t s, int64_t h, int64_t d) {
  return s < shape.shared ? to_float(shared_rows[shared_index(shape, 0, s, h, d)])
                          : to_float(rows[kv_index(shape, b, s - shape.shared, h, d)]);
}

__device__ __forceinline__ int64_t lse_index(const Shape& shape, int64_t b, int64_t h, int64_t t) {
  return (b * shape.q_heads + h) * shape.time + t;
}

// Key/value tile [k0, k0 + kBlockK) of KV head `kv_head` of sequence b into
// shared memory as fp32 rows of kHeadDimPad + 1 floats, zero past the keys
// and past head_dim (so dot products over kHeadDimPad are exact). Every
// thread of the block takes part.
template <typename T, int kHeadDimPad>
__device__ __forceinline__ void load_key_value_tile(const Shape& shape, const T* k, const T* v, const T* shared_k,
                                                    const T* shared_v, int64_t b, int64_t k0, int64_t kv_head,
                                                    float* k_tile, float* v_tile) {
  constexpr int stride = kHeadDimPad + 1;
  for (int e = threadIdx.x; e < kBlockK * kHeadDimPad; e += kThreads) {
    const int r = e / kHeadDimPad, d = e % kHeadDimPad;
    const int64_t s = k0 + r;
    const bool inside = s < shape.keys && d < shape.head_dim;
    k_tile[r * stride + d] = inside ? load_key(shape, k, shared_k, b, s, kv_head, d) : 0.0f;
    v_tile[r * stride + d] = inside ? load_key(shape, v, shared_v, b, s, kv_head, d) : 0.0f;
  }
}

// The smallest doc_start among the query tile's rows that exist: keys before
// prefix + it are hidden from the whole tile.
__device__ __forceinline__ int tile_min_doc_start(const int* row_doc_start, int64_t q0, int64_t time) {
  int smallest = row_doc_start[0];
  for (int r = 1; r < kBlockQ; ++r) {
    if (q0 + r < time) smallest = min(smallest, row_doc_start[r]);
  }
  return smallest;
}

// q.k and dO.v of one query row and one key row (rows of kHeadDimPad + 1 floats in shared memory).
template <int kHeadDimPad>
__device__ __forceinline__ void score_and_dp(const float* q_row, const float* do_row, const float* k_row,
                                             const float* v_row, float& score, float& dp) {
  score = 0.0f;
  dp = 0.0f;
#pragma unroll 16
  for (int d = 0; d < kHeadDimPad; ++d) {
    score += q_row[d] * k_row[d];
    dp += do_row[d] * v_row[d];
  }
}

// Checks q/k/v/out/lse/doc_start as ops.h documents them and returns the shape.
// Two deliberate differences from the CPU backend: q, k, v and out must share
// one dtype (the kernels are instantiated per storage type, not per mix), and
// doc_start values are not range-checked here — checking 0 <= doc_start[t] <= t
// would cost a device-to-host copy and a stream sync per layer and step. The
// data loader produces them (and the CPU backend rejects bad ones); on the GPU
// a query whose visible set is empty gets out = 0 and lse = -inf, never NaN.

inline Shape check_attention_arguments(Context& context, std::string_view op, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const ops::AttentionOptions& options, const Tensor& out,
                                       const Tensor& lse) {
  require_on_context(op, "q", q, context);
  require_on_context(op, "k", k, context);
  require_on_context(op, "v", v, context);
  require_on_context(op, "out", out, context);
  require_on_context(op, "lse", lse, context);
  require_float(op, "q", q);
  require_dtype(op, "k", k, q.dtype());
  require_dtype(op, "v", v, q.dtype());
  require_dtype(op, "out", out, q.dtype());
  require_dtype(op, "lse", lse, DType::kF32);
  if (q.dim() != 4) throw_runtime(op, ": q must be [B, T, Hq, Dh], found ", q.to_string());
  Shape shape;
  shape.batch = q.size(0);
  shape.time = q.size(1);
  shape.q_heads = q.size(2);
  shape.head_dim = q.size(3);
  if (options.num_prefix < 0) throw_runtime(op, ": num_prefix must be >= 0, found ", options.num_prefix);
  shape.k_rows = options.num_prefix + shape.time;
  if (k.dim() != 4 || k.size(0) != shape.batch || k.size(1) != shape.k_rows || k.size(3) != shape.head_dim) {
    throw_runtime(op, ": k: expected [", shape.batch, ", ", shape.k_rows, " (num_prefix ", options.num_prefix,
                  " + T ", shape.time, "), Hkv, ", shape.head_dim, "], found ", k.to_string());
  }
  // The shared prefix's shapes and dtypes are checked in kernels/ops.cc.
  const ops::SharedPrefix& shared = options.shared_prefix;
  if (shared.keys != nullptr) {
    require_on_context(op, "shared_prefix.keys", *shared.keys, context);
    require_on_context(op, "shared_prefix.values", *shared.values, context);
    if (shared.dkeys != nullptr) require_on_context(op, "shared_prefix.dkeys", *shared.dkeys, context);
    if (shared.dvalues != nullptr) require_on_context(op, "shared_prefix.dvalues", *shared.dvalues, context);
    shape.shared = shared.keys->size(0);
  }
  shape.prefix = shape.shared + options.num_prefix;
  shape.keys = shape.shared + shape.k_rows;
  shape.kv_heads = k.size(2);
  require_shape(op, "v", v, k.shape());
  require_shape(op, "out", out, q.shape());
  require_shape(op, "lse", lse, {shape.batch, shape.q_heads, shape.time});
  if (shape.kv_heads == 0 || shape.q_heads % shape.kv_heads != 0) {
    throw_runtime(op, ": query heads (", shape.q_heads, ") must be a multiple of key/value heads (", shape.kv_heads,
                  ")");
  }
  if (shape.head_dim == 0 || shape.head_dim > kMaxHeadDim) {
    throw_runtime(op, ": head_dim must be in [1, ", kMaxHeadDim, "] for the CUDA kernel, found ", shape.head_dim);
  }
  if (options.doc_start != nullptr) {
    require_on_context(op, "doc_start", *options.doc_start, context);
    require_dtype(op, "doc_start", *options.doc_start, DType::kI32);
    require_numel(op, "doc_start", *options.doc_start, shape.batch * shape.time);
  }
  LLMFT_CHECK(shape.batch <= 65535 && shape.q_heads <= 65535, op, ": grid limits exceeded: B=", shape.batch,
              " Hq=", shape.q_heads);
  shape.scale =
      options.softmax_scale != 0.0f ? options.softmax_scale : 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  return shape;
}

}  // namespace llmft::cuda::attention
