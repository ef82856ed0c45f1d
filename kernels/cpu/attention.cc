// Causal grouped-query self-attention with prefix keys and packed documents.
//
// The CPU version works on one (batch, query head, block of kQueryBlock
// queries) at a time: it scores the block against the keys it may see with one
// SGEMM, applies the mask and the softmax in fp32 on that [block, keys] tile,
// and multiplies by V with a second SGEMM. The tile is bounded by
// threads x kQueryBlock x keys floats, so the [T, T] matrix of a whole head is
// never held. The backward recomputes the probabilities from the saved
// log-sum-exp (P = exp(scale * s - lse), as FlashAttention's backward does,
// Dao et al. 2022) and follows
//   dV = P^T dO,  dP = dO V^T,  dS = P o (dP - rowsum(dO o O)),
//   dQ = scale * dS K,  dK = scale * dS^T Q,
// summing dK/dV over the query heads that share a KV head (GQA).
//
// A shared prefix (ops::SharedPrefix, prefix tuning) is a set of key rows
// that come first in every sequence: the kernels see keys
// [shared | k's rows], reading the shared rows from their own tensor, and
// the backward sums their gradient over the batch in batch order.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

constexpr int64_t kQueryBlock = 64;
// Multiply-adds of Q K^T below which the forward runs on the calling thread.
constexpr int64_t kParallelAttentionWork = int64_t{1} << 20;

struct AttentionShape {
  // prefix: every position visible to every query (shared + num_prefix);
  // keys: all of a sequence's keys (shared + k_rows); k_rows: k's rows per
  // sequence (num_prefix + time).
  int64_t batch, time, query_heads, kv_heads, head_dim, shared, prefix, keys, k_rows;
  int64_t heads_per_group;
  float scale;
};

AttentionShape check_attention(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v,
                               const ops::AttentionOptions& options) {
  require_float(op, "q", q);
  require_float(op, "k", k);
  require_float(op, "v", v);
  if (q.dim() != 4) throw_runtime(op, ": q must be [batch, time, heads, head_dim], found ", q.to_string());
  AttentionShape shape{};
  shape.batch = q.size(0);
  shape.time = q.size(1);
  shape.query_heads = q.size(2);
  shape.head_dim = q.size(3);
  if (options.num_prefix < 0) throw_runtime(op, ": num_prefix must be >= 0, found ", options.num_prefix);
  shape.k_rows = options.num_prefix + shape.time;
  if (k.dim() != 4 || k.size(0) != shape.batch || k.size(1) != shape.k_rows || k.size(3) != shape.head_dim) {
    throw_runtime(op, ": k has shape ", shape_to_string(k.shape()), ", expected [", shape.batch, ", ", shape.k_rows,
                  " (num_prefix ", options.num_prefix, " + time ", shape.time, "), kv_heads, ", shape.head_dim, "]");
  }
  // Shapes and dtypes of the shared prefix are checked in kernels/ops.cc.
  shape.shared = options.shared_prefix.keys != nullptr ? options.shared_prefix.keys->size(0) : 0;
  if (shape.shared > 0) {
    require_float(op, "shared_prefix.keys", *options.shared_prefix.keys);
    require_float(op, "shared_prefix.values", *options.shared_prefix.values);
  }
  shape.prefix = shape.shared + options.num_prefix;
  shape.keys = shape.shared + shape.k_rows;
  shape.kv_heads = k.size(2);
  require_shape(op, "v", v, k.shape());
  if (shape.kv_heads == 0 || shape.query_heads % shape.kv_heads != 0) {
    throw_runtime(op, ": query heads (", shape.query_heads, ") must be a multiple of kv heads (", shape.kv_heads, ")");
  }
  shape.heads_per_group = shape.query_heads / shape.kv_heads;
  shape.scale = options.softmax_scale != 0.0f ? options.softmax_scale
                                               : 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  return shape;
}

// doc_start as a [batch * time] vector (zeros when absent), validated so that
// every query sees at least itself: 0 <= doc_start[t] <= t.
std::vector<int32_t> document_starts(std::string_view op, const ops::AttentionOptions& options,
                                     const AttentionShape& shape) {
  std::vector<int32_t> starts(static_cast<size_t>(shape.batch * shape.time), 0);
  if (options.doc_start == nullptr) return starts;
  const Tensor& doc_start = *options.doc_start;
  require_dtype(op, "doc_start", doc_start, DType::kI32);
  require_numel(op, "doc_start", doc_start, shape.batch * shape.time);
  const int32_t* data = doc_start.data<int32_t>();
  for (int64_t index = 0; index < shape.batch * shape.time; ++index) {
    const int64_t t = index % shape.time;
    if (data[index] < 0 || data[index] > t) {
      throw_bad_input(op, ": doc_start[", index, "] (batch ", index / shape.time, ", position ", t, ") = ",
                      data[index], ", expected a value in [0, ", t, "]");
    }
    starts[index] = data[index];
  }
  return starts;
}

// The keys a block of queries [t_begin, t_end) is scored against, [key_begin,
// key_end), and for each row the allowed columns of that tile: the prefix
// [0, prefix_end) and its document [doc_begin(t), doc_end(t)).
struct KeyTile {
  int64_t key_begin, key_end, prefix_end;
  int64_t count() const { return key_end - key_begin; }
  int64_t doc_begin(const AttentionShape& shape, int32_t start) const { return shape.prefix + start - key_begin; }
  int64_t doc_end(const AttentionShape& shape, int64_t t) const { return shape.prefix + t + 1 - key_begin; }
};

KeyTile key_tile(const AttentionShape& shape, const int32_t* starts, int64_t t_begin, int64_t t_end) {
  KeyTile tile{};
  if (shape.prefix > 0) {
    tile.key_begin = 0;
  } else {
    // Without a prefix, keys before the earliest document start of the block are never seen.
    tile.key_begin = *std::min_element(starts + t_begin, starts + t_end);
  }
  tile.key_end = shape.prefix + t_end;
  tile.prefix_end = std::max<int64_t>(0, shape.prefix - tile.key_begin);
  return tile;
}

// Rows [first_row, first_row + rows) of head `head` of a [batch*positions,
// heads, head_dim] tensor as f32 with leading dimension `ld`: the tensor's own
// memory for f32, else converted into `scratch` (ld = head_dim).
const float* head_rows(const FloatReader& reader, int64_t first_row, int64_t rows, int64_t heads, int64_t head,
                       int64_t head_dim, float* scratch, int64_t& ld) {
  const int64_t first = (first_row * heads + head) * head_dim;
  if (reader.is_f32()) {
    ld = heads * head_dim;
    return reader.read(first, 0, nullptr);
  }
  ld = head_dim;
  for (int64_t row = 0; row < rows; ++row) reader.read(first + row * heads * head_dim, head_dim, scratch + row * head_dim);
  return scratch;
}

// Keys [first_key, first_key + count) of KV head `head` of sequence `b` as f32
// (see head_rows): with a shared prefix, its rows then k's, gathered into
// `scratch` (ld = head_dim); without one, head_rows of k.
const float* key_rows(const FloatReader& rows, const FloatReader* shared_rows, const AttentionShape& shape, int64_t b,
                      int64_t first_key, int64_t count, int64_t head, float* scratch, int64_t& ld) {
  const int64_t D = shape.head_dim, H = shape.kv_heads;
  if (shape.shared == 0) return head_rows(rows, b * shape.k_rows + first_key, count, H, head, D, scratch, ld);
  ld = D;
  for (int64_t index = 0; index < count; ++index) {
    const int64_t key = first_key + index;
    float* row = scratch + index * D;
    const FloatReader& from = key < shape.shared ? *shared_rows : rows;
    const int64_t element = key < shape.shared ? (key * H + head) * D
                                               : ((b * shape.k_rows + key - shape.shared) * H + head) * D;
    const float* values = from.read(element, D, row);
    if (values != row) std::copy(values, values + D, row);
  }
  return scratch;
}

// Where to write rows of one head of an output: the tensor for f32 (ld =
// heads * head_dim), else `scratch` (ld = head_dim) that store_head_rows rounds back.
float* open_head_rows(Tensor& tensor, int64_t first_row, int64_t heads, int64_t head, int64_t head_dim,
                      float* scratch, int64_t& ld) {
  if (tensor.dtype() == DType::kF32) {
    ld = heads * head_dim;
    return tensor.data<float>() + (first_row * heads + head) * head_dim;
  }
  ld = head_dim;
  return scratch;
}

void store_head_rows(const FloatWriter& writer, const float* values, int64_t first_row, int64_t rows, int64_t heads,
                     int64_t head, int64_t head_dim) {
  if (writer.is_f32()) return;
  for (int64_t row = 0; row < rows; ++row) {
    writer.commit(((first_row + row) * heads + head) * head_dim, head_dim, values + row * head_dim);
  }
}

// dS = P o (dP - row_dot), in place over dP.
LLMFT_CPU_MULTIVERSION void softmax_gradient_row(const float* p, int64_t n, float row_dot, float* dp) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - row_dot);
}

}  // namespace

void attention_forward(Context& context, const Tensor& q, const Tensor& k, const Tensor& v,
                       const ops::AttentionOptions& options, Tensor& out, Tensor& lse) {
  constexpr std::string_view op = "attention_forward";
  const AttentionShape shape = check_attention(op, q, k, v, options);
  require_float(op, "out", out);
  require_shape(op, "out", out, q.shape());
  require_dtype(op, "lse", lse, DType::kF32);
  require_numel(op, "lse", lse, shape.batch * shape.query_heads * shape.time);
  const std::vector<int32_t> starts = document_starts(op, options, shape);
  const int64_t T = shape.time, D = shape.head_dim, S = shape.keys, Hq = shape.query_heads;
  const int64_t blocks = ceil_div(T, kQueryBlock);
  const int64_t tasks = shape.batch * Hq * blocks;
  FloatReader q_reader(q), k_reader(k), v_reader(v);
  const FloatReader shared_k_reader(shape.shared > 0 ? *options.shared_prefix.keys : k);
  const FloatReader shared_v_reader(shape.shared > 0 ? *options.shared_prefix.values : v);
  FloatWriter out_writer(out);
  float* lse_data = lse.data<float>();

  // Decoding (a few queries against the cache) stays on the calling thread:
  // its work is microseconds, less than a fork-join region costs on a busy machine.
  const int64_t work = tasks * std::min(T, kQueryBlock) * S * D;
#pragma omp parallel if (tasks > 1 && work > kParallelAttentionWork)
  {
    std::vector<float> scores(static_cast<size_t>(kQueryBlock * S)), q_scratch(kQueryBlock * D),
        k_scratch(S * D), v_scratch(S * D), out_scratch(kQueryBlock * D), inverse_sums(kQueryBlock);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t block = task % blocks, h = (task / blocks) % Hq, b = task / (blocks * Hq);
      const int64_t g = h / shape.heads_per_group;
      const int64_t t_begin = block * kQueryBlock, t_end = std::min(T, t_begin + kQueryBlock);
      const int64_t rows = t_end - t_begin;
      const int32_t* row_starts = starts.data() + b * T;
      const KeyTile tile = key_tile(shape, row_starts, t_begin, t_end);
      const int64_t columns = tile.count();

      int64_t ldq, ldk, ldv, ldo;
      const float* q_rows = head_rows(q_reader, b * T + t_begin, rows, Hq, h, D, q_scratch.data(), ldq);
      const float* k_rows =
          key_rows(k_reader, &shared_k_reader, shape, b, tile.key_begin, columns, g, k_scratch.data(), ldk);
      const float* v_rows =
          key_rows(v_reader, &shared_v_reader, shape, b, tile.key_begin, columns, g, v_scratch.data(), ldv);

      sgemm(false, true, rows, columns, D, shape.scale, q_rows, ldq, k_rows, ldk, 0.0f, scores.data(), columns);
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t t = t_begin + row;
        float* s = scores.data() + row * columns;
        const int64_t doc_begin = tile.doc_begin(shape, row_starts[t]), doc_end = tile.doc_end(shape, t);
        const float row_max = std::max(max_value(s, tile.prefix_end), max_value(s + doc_begin, doc_end - doc_begin));
        const float sum = exp_shifted(s, tile.prefix_end, row_max, s) +
                          exp_shifted(s + doc_begin, doc_end - doc_begin, row_max, s + doc_begin);
        std::fill(s + tile.prefix_end, s + doc_begin, 0.0f);
        std::fill(s + doc_end, s + columns, 0.0f);
        inverse_sums[row] = 1.0f / sum;
        lse_data[(b * Hq + h) * T + t] = row_max + std::log(sum);
      }
      // O = (unnormalised P) V, then each row divided by its sum: D instead of
      // `columns` multiplies per row.
      float* out_rows = open_head_rows(out, b * T + t_begin, Hq, h, D, out_scratch.data(), ldo);
      sgemm(false, false, rows, D, columns, 1.0f, scores.data(), columns, v_rows, ldv, 0.0f, out_rows, ldo);
      for (int64_t row = 0; row < rows; ++row) {
        float* out_row = out_rows + row * ldo;
        for (int64_t d = 0; d < D; ++d) out_row[d] *= inverse_sums[row];
      }
      store_head_rows(out_writer, out_rows, b * T + t_begin, rows, Hq, h, D);
    }
  }
}

void attention_backward(Context& context, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const ops::AttentionOptions& options, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  constexpr std::string_view op = "attention_backward";
  const AttentionShape shape = check_attention(op, q, k, v, options);
  require_float(op, "dout", dout);
  require_shape(op, "dout", dout, q.shape());
  require_float(op, "out", out);
  require_shape(op, "out", out, q.shape());
  require_dtype(op, "lse", lse, DType::kF32);
  require_numel(op, "lse", lse, shape.batch * shape.query_heads * shape.time);
  require_float(op, "dq", dq);
  require_shape(op, "dq", dq, q.shape());
  require_float(op, "dk", dk);
  require_shape(op, "dk", dk, k.shape());
  require_float(op, "dv", dv);
  require_shape(op, "dv", dv, v.shape());
  const std::vector<int32_t> starts = document_starts(op, options, shape);
  const int64_t T = shape.time, D = shape.head_dim, S = shape.keys, Hq = shape.query_heads, Hkv = shape.kv_heads;
  const int64_t blocks = ceil_div(T, kQueryBlock);
  // One task per (batch, query head). Its dK/dV contributions go to a private
  // [S, D] slice of partial_dk / partial_dv (2 x B x Hq x S x D floats, the
  // size of q's gradient when there is no prefix); the slices of the query
  // heads that share a KV head are summed afterwards in head order. So GQA
  // needs no locks, the result does not depend on scheduling, and B * Hq tasks
  // (not B * Hkv) keep the threads busy.
  const int64_t tasks = shape.batch * Hq;
  const int64_t slice = S * D;
  std::unique_ptr<float[]> partial_dk = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(tasks * slice));
  std::unique_ptr<float[]> partial_dv = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(tasks * slice));
  FloatReader q_reader(q), k_reader(k), v_reader(v), out_reader(out), dout_reader(dout);
  const FloatReader shared_k_reader(shape.shared > 0 ? *options.shared_prefix.keys : k);
  const FloatReader shared_v_reader(shape.shared > 0 ? *options.shared_prefix.values : v);
  FloatWriter dq_writer(dq), dk_writer(dk), dv_writer(dv);
  const float* lse_data = lse.data<float>();
  const bool parallel = tasks > 1 && tasks * T * S * D > kParallelWork;

#pragma omp parallel if (parallel)
  {
    std::vector<float> probabilities(static_cast<size_t>(kQueryBlock * S)), dprobabilities(kQueryBlock * S),
        q_scratch(kQueryBlock * D), out_scratch(kQueryBlock * D), dout_scratch(kQueryBlock * D),
        dq_scratch(kQueryBlock * D), k_scratch(S * D), v_scratch(S * D), row_dot(kQueryBlock);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t h = task % Hq, b = task / Hq;
      const int64_t g = h / shape.heads_per_group;
      const int32_t* row_starts = starts.data() + b * T;
      float* dk_sum = partial_dk.get() + task * slice;
      float* dv_sum = partial_dv.get() + task * slice;
      std::fill(dk_sum, dk_sum + slice, 0.0f);
      std::fill(dv_sum, dv_sum + slice, 0.0f);
      int64_t ldk, ldv;
      const float* k_all = key_rows(k_reader, &shared_k_reader, shape, b, 0, S, g, k_scratch.data(), ldk);
      const float* v_all = key_rows(v_reader, &shared_v_reader, shape, b, 0, S, g, v_scratch.data(), ldv);
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t t_begin = block * kQueryBlock, t_end = std::min(T, t_begin + kQueryBlock);
        const int64_t rows = t_end - t_begin;
        const KeyTile tile = key_tile(shape, row_starts, t_begin, t_end);
        const int64_t columns = tile.count();
        const float* k_rows = k_all + tile.key_begin * ldk;
        const float* v_rows = v_all + tile.key_begin * ldv;
        int64_t ldq, ldo, lddo, lddq;
        const float* q_rows = head_rows(q_reader, b * T + t_begin, rows, Hq, h, D, q_scratch.data(), ldq);
        const float* out_rows = head_rows(out_reader, b * T + t_begin, rows, Hq, h, D, out_scratch.data(), ldo);
        const float* dout_rows = head_rows(dout_reader, b * T + t_begin, rows, Hq, h, D, dout_scratch.data(), lddo);

        // P = exp(scale * q.k - lse) on the allowed columns, 0 elsewhere.
        float* p = probabilities.data();
        sgemm(false, true, rows, columns, D, shape.scale, q_rows, ldq, k_rows, ldk, 0.0f, p, columns);
        for (int64_t row = 0; row < rows; ++row) {
          const int64_t t = t_begin + row;
          float* p_row = p + row * columns;
          const float row_lse = lse_data[(b * Hq + h) * T + t];
          const int64_t doc_begin = tile.doc_begin(shape, row_starts[t]), doc_end = tile.doc_end(shape, t);
          exp_shifted(p_row, tile.prefix_end, row_lse, p_row);
          exp_shifted(p_row + doc_begin, doc_end - doc_begin, row_lse, p_row + doc_begin);
          std::fill(p_row + tile.prefix_end, p_row + doc_begin, 0.0f);
          std::fill(p_row + doc_end, p_row + columns, 0.0f);
          double dot = 0.0;
          const float* out_row = out_rows + row * ldo;
          const float* dout_row = dout_rows + row * lddo;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(out_row[d]) * dout_row[d];
          row_dot[row] = static_cast<float>(dot);
        }
        // dV += P^T dO
        sgemm(true, false, columns, D, rows, 1.0f, p, columns, dout_rows, lddo, 1.0f, dv_sum + tile.key_begin * D, D);
        // dS = P o (dO V^T - rowsum(dO o O)); masked columns have P = 0.
        float* ds = dprobabilities.data();
        sgemm(false, true, rows, columns, D, 1.0f, dout_rows, lddo, v_rows, ldv, 0.0f, ds, columns);
        for (int64_t row = 0; row < rows; ++row) {
          softmax_gradient_row(p + row * columns, columns, row_dot[row], ds + row * columns);
        }
        // dQ = scale * dS K ; dK += scale * dS^T Q
        float* dq_rows = open_head_rows(dq, b * T + t_begin, Hq, h, D, dq_scratch.data(), lddq);
        sgemm(false, false, rows, D, columns, shape.scale, ds, columns, k_rows, ldk, 0.0f, dq_rows, lddq);
        store_head_rows(dq_writer, dq_rows, b * T + t_begin, rows, Hq, h, D);
        sgemm(true, false, columns, D, rows, shape.scale, ds, columns, q_rows, ldq, 1.0f, dk_sum + tile.key_begin * D,
              D);
      }
    }
  }

  // dK/dV rows: the sum over each group's query heads, into the first head's
  // slice, then stored; shared-prefix rows (key < shared) are summed over
  // the batch afterwards.
  const int64_t kv_rows = shape.batch * S * Hkv;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t index = 0; index < kv_rows; ++index) {
    const int64_t g = index % Hkv, key = (index / Hkv) % S, b = index / (Hkv * S);
    const int64_t first_task = b * Hq + g * shape.heads_per_group;
    float* dk_row = partial_dk.get() + first_task * slice + key * D;
    float* dv_row = partial_dv.get() + first_task * slice + key * D;
    for (int64_t other = 1; other < shape.heads_per_group; ++other) {
      const float* dk_other = dk_row + other * slice;
      const float* dv_other = dv_row + other * slice;
      for (int64_t d = 0; d < D; ++d) {
        dk_row[d] += dk_other[d];
        dv_row[d] += dv_other[d];
      }
    }
    if (key < shape.shared) continue;
    const int64_t element = ((b * shape.k_rows + key - shape.shared) * Hkv + g) * D;
    dk_writer.write(element, D, dk_row);
    dv_writer.write(element, D, dv_row);
  }
  if (shape.shared == 0) return;
  float* dshared_k = options.shared_prefix.dkeys->data<float>();
  float* dshared_v = options.shared_prefix.dvalues->data<float>();
  const int64_t shared_rows = shape.shared * Hkv;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t index = 0; index < shared_rows; ++index) {
    const int64_t g = index % Hkv, key = index / Hkv;
    float* dk_out = dshared_k + index * D;
    float* dv_out = dshared_v + index * D;
    std::fill(dk_out, dk_out + D, 0.0f);
    std::fill(dv_out, dv_out + D, 0.0f);
    for (int64_t b = 0; b < shape.batch; ++b) {
      const int64_t first_task = b * Hq + g * shape.heads_per_group;
      const float* dk_row = partial_dk.get() + first_task * slice + key * D;
      const float* dv_row = partial_dv.get() + first_task * slice + key * D;
      for (int64_t d = 0; d < D; ++d) {
        dk_out[d] += dk_row[d];
        dv_out[d] += dv_row[d];
      }
    }
  }
}

}  // namespace llmft::cpu
