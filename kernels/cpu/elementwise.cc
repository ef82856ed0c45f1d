// Elementwise ops, inverted dropout and the gradient statistics pass. Every
// loop walks the data in kChunk pieces through f32 (zero-copy for f32
// storage), so any mix of f32/bf16/f16 tensors is accepted.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/philox.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {

void add(Context& context, const Tensor& a, const Tensor& b, Tensor& out) {
  constexpr std::string_view op = "add";
  require_float(op, "a", a);
  require_float(op, "b", b);
  require_float(op, "out", out);
  require_numel(op, "b", b, a.numel());
  require_numel(op, "out", out, a.numel());
  FloatReader a_reader(a), b_reader(b);
  FloatWriter out_writer(out);
  // out may alias a or b: each chunk is read completely before it is written.
  parallel_chunks(a.numel(), [&](int64_t begin, int64_t count) {
    float a_scratch[kChunk], b_scratch[kChunk], out_scratch[kChunk];
    const float* a_values = a_reader.read(begin, count, a_scratch);
    const float* b_values = b_reader.read(begin, count, b_scratch);
    float* out_values = out_writer.open(begin, count, out_scratch);
    for (int64_t i = 0; i < count; ++i) out_values[i] = a_values[i] + b_values[i];
    out_writer.commit(begin, count, out_values);
  });
}

void add_scaled(Context& context, float alpha, const Tensor& x, Tensor& y) {
  constexpr std::string_view op = "add_scaled";
  require_float(op, "x", x);
  require_float(op, "y", y);
  require_numel(op, "y", y, x.numel());
  FloatReader x_reader(x);
  FloatWriter y_writer(y);
  parallel_chunks(x.numel(), [&](int64_t begin, int64_t count) {
    float x_scratch[kChunk], y_scratch[kChunk];
    const float* x_values = x_reader.read(begin, count, x_scratch);
    float* y_values = y_writer.open(begin, count, y_scratch, /*load_current=*/true);
    for (int64_t i = 0; i < count; ++i) y_values[i] += alpha * x_values[i];
    y_writer.commit(begin, count, y_values);
  });
}

void scale(Context& context, Tensor& x, float alpha) {
  require_float("scale", "x", x);
  FloatWriter writer(x);
  parallel_chunks(x.numel(), [&](int64_t begin, int64_t count) {
    float scratch[kChunk];
    float* values = writer.open(begin, count, scratch, /*load_current=*/true);
    for (int64_t i = 0; i < count; ++i) values[i] *= alpha;
    writer.commit(begin, count, values);
  });
}

void fill(Context& context, Tensor& x, float value) {
  require_defined_cpu("fill", "x", x);
  switch (x.dtype()) {
    case DType::kI32: std::fill_n(x.data<int32_t>(), x.numel(), static_cast<int32_t>(value)); return;
    case DType::kI64: std::fill_n(x.data<int64_t>(), x.numel(), static_cast<int64_t>(value)); return;
    default: break;
  }
  FloatWriter writer(x);
  parallel_chunks(x.numel(), [&](int64_t begin, int64_t count) {
    float scratch[kChunk];
    float* values = writer.open(begin, count, scratch);
    std::fill_n(values, count, value);
    writer.commit(begin, count, values);
  });
}

void cast(Context& context, const Tensor& src, Tensor& dst) {
  constexpr std::string_view op = "cast";
  require_defined_cpu(op, "src", src);
  require_defined_cpu(op, "dst", dst);
  require_numel(op, "dst", dst, src.numel());
  const int64_t n = src.numel();
  if (src.dtype() == dst.dtype()) {
    if (src.raw_data() != dst.raw_data()) std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  if (src.dtype() == DType::kI32 && dst.dtype() == DType::kI64) {
    const int32_t* in = src.data<int32_t>();
    int64_t* out = dst.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) out[i] = in[i];
    return;
  }
  if (src.dtype() == DType::kI64 && dst.dtype() == DType::kI32) {
    const int64_t* in = src.data<int64_t>();
    int32_t* out = dst.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      if (in[i] < INT32_MIN || in[i] > INT32_MAX) {
        throw_bad_input(op, ": element ", i, " = ", in[i], " does not fit in i32");
      }
      out[i] = static_cast<int32_t>(in[i]);
    }
    return;
  }
  if (!is_floating(src.dtype()) || !is_floating(dst.dtype())) {
    throw_runtime(op, ": cannot convert ", src.to_string(), " to ", dst.to_string(),
                  " (float<->float and i32<->i64 only)");
  }
  FloatReader reader(src);
  FloatWriter writer(dst);
  parallel_chunks(n, [&](int64_t begin, int64_t count) {
    float in_scratch[kChunk];
    writer.write(begin, count, reader.read(begin, count, in_scratch));
  });
}

namespace {

// y = x * keep / (1 - p), keep = philox_uniform_at(seed, stream index) >= p,
// where element i of x has stream index offset + i, or with a non-contiguous
// layout offset + row * row_stride + column_offset + column. One Philox block
// yields the draws of four consecutive stream indices, so it is computed once
// per block index instead of once per element.
void apply_dropout(std::string_view op, const Tensor& x, float p, uint64_t seed, uint64_t offset, Tensor& y,
                   ops::DropoutLayout layout) {
  require_float(op, "input", x);
  require_float(op, "output", y);
  require_numel(op, "output", y, x.numel());
  if (!(p >= 0.0f && p < 1.0f)) throw_bad_input(op, ": dropout probability must be in [0, 1), found ", p);
  const int64_t columns = x.dim() == 0 ? 1 : x.size(-1);
  const bool contiguous = layout.contiguous(columns);  // a strided layout is checked by kernels/ops.cc
  const float keep_scale = 1.0f / (1.0f - p);
  FloatReader reader(x);
  FloatWriter writer(y);
  parallel_chunks(x.numel(), [&](int64_t begin, int64_t count) {
    float in_scratch[kChunk], out_scratch[kChunk];
    const float* in = reader.read(begin, count, in_scratch);
    float* out = writer.open(begin, count, out_scratch);
    PhiloxCounter block{};
    uint64_t block_index = ~uint64_t{0};
    for (int64_t i = 0; i < count; ++i) {
      const int64_t index = begin + i;
      const uint64_t element =
          contiguous ? offset + static_cast<uint64_t>(index)
                     : offset + static_cast<uint64_t>(index / columns * layout.row_stride + layout.column_offset +
                                                      index % columns);
      if ((element >> 2) != block_index) {
        block_index = element >> 2;
        block = philox_block(seed, block_index);
      }
      const bool keep = philox_uniform(block.word[element & 3u]) >= p;
      out[i] = keep ? in[i] * keep_scale : 0.0f;
    }
    writer.commit(begin, count, out);
  });
}

}  // namespace

void dropout_forward(Context& context, const Tensor& x, float p, uint64_t seed, uint64_t offset, Tensor& y,
                     ops::DropoutLayout layout) {
  apply_dropout("dropout_forward", x, p, seed, offset, y, layout);
}

// The mask is regenerated from (seed, offset), so the backward is the same map.
void dropout_backward(Context& context, const Tensor& dy, float p, uint64_t seed, uint64_t offset, Tensor& dx,
                      ops::DropoutLayout layout) {
  apply_dropout("dropout_backward", dy, p, seed, offset, dx, layout);
}

ops::GradientStats gradient_stats(Context& context, std::span<const Tensor> tensors) {
  ops::GradientStats stats;
  for (size_t index = 0; index < tensors.size(); ++index) {
    const Tensor& tensor = tensors[index];
    require_float("gradient_stats", str_cat("tensors[", index, "]"), tensor);
    FloatReader reader(tensor);
    const int64_t n = tensor.numel();
    const int64_t chunks = ceil_div(n, kChunk);
    double sum_of_squares = 0.0;
    bool all_finite = true;
    // Each chunk squares and sums in fp32; chunks add up in double. Finiteness
    // is tested on the elements themselves: a huge finite gradient whose square
    // overflows fp32 is still finite.
#pragma omp parallel for schedule(static) reduction(+ : sum_of_squares) reduction(&& : all_finite) \
    if (n > kParallelWork)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t begin = chunk * kChunk;
      const int64_t count = std::min(kChunk, n - begin);
      float scratch[kChunk];
      const float* values = reader.read(begin, count, scratch);
      float chunk_sum = 0.0f;
      uint32_t non_finite = 0;
      for (int64_t i = 0; i < count; ++i) {
        chunk_sum += values[i] * values[i];
        non_finite |= static_cast<uint32_t>((float_bits(values[i]) & 0x7f800000u) == 0x7f800000u);
      }
      sum_of_squares += chunk_sum;
      all_finite = all_finite && non_finite == 0;
    }
    stats.sum_of_squares += sum_of_squares;
    stats.all_finite = stats.all_finite && all_finite;
  }
  return stats;
}

}  // namespace llmft::cpu
