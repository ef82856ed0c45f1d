// GEMM and the torch.nn.Linear forward/backward: OpenBLAS SGEMM for f32
// operands; bf16/f16 operands go to the packed GEMM, which reads them as
// stored (kernels/cpu/packed_gemm.h: widened while packing, or two bf16
// operands multiplied in pairs by VDPBF16PS), or, where the CPU's path says
// so, are widened to f32 copies once per call (OpenBLAS 0.3.21 has no half
// GEMM). Sums are f32; 16-bit outputs are rounded once at the end.
#include <cstring>
#include <optional>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"
#include "kernels/cpu/packed_gemm.h"

namespace llmft::cpu {
namespace {

Shape batch_dims(const Tensor& tensor) { return Shape(tensor.shape().begin(), tensor.shape().end() - 2); }

// dbias[j] += sum over rows of dy[row, j] (dy of any float dtype, read as
// stored); columns are split across threads so every sum is a private loop in
// row order (deterministic).
void add_column_sums(const Tensor& dy, int64_t rows, int64_t columns, Tensor& dbias) {
  const FloatReader reader(dy);
  FloatWriter writer(dbias);
  constexpr int64_t kColumnBlock = 256;
  const int64_t blocks = ceil_div(columns, kColumnBlock);
#pragma omp parallel for schedule(static) if (rows * columns > kParallelWork)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t begin = block * kColumnBlock;
    const int64_t count = std::min(kColumnBlock, columns - begin);
    double sums[kColumnBlock] = {};
    float scratch[kColumnBlock];
    for (int64_t row = 0; row < rows; ++row) {
      const float* dy_row = reader.read(row * columns + begin, count, scratch);
      for (int64_t j = 0; j < count; ++j) sums[j] += dy_row[j];
    }
    float* out = writer.open(begin, count, scratch, /*load_current=*/true);
    for (int64_t j = 0; j < count; ++j) out[j] = static_cast<float>(out[j] + sums[j]);
    writer.commit(begin, count, out);
  }
}

// A GEMM operand: the tensor as stored where its GEMM takes a packed path
// (cpu_gemm_path), otherwise f32 (its own memory or a copy).
class GemmInput {
 public:
  GemmInput(Context& context, const Tensor& tensor, CpuGemmPath path) {
    if (tensor.dtype() != DType::kF32 && is_packed_path(path)) {
      data_ = tensor.raw_data();
      dtype_ = tensor.dtype();
      return;
    }
    copy_.emplace(context, tensor);
    data_ = copy_->data();
  }
  DType dtype() const { return dtype_; }
  // The address of element `index`.
  const void* at(int64_t index) const { return static_cast<const char*>(data_) + index * dtype_size(dtype_); }

 private:
  std::optional<F32Copy> copy_;
  const void* data_ = nullptr;
  DType dtype_ = DType::kF32;
};

// Row-major C (f32) = alpha * op(A) @ op(B) + beta * C: SGEMM when both
// operands are f32 (as given: widened copies are f32), else the packed GEMM's
// `path` with its panels from the context.
void gemm_rows(Context& context, CpuGemmPath path, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
               float alpha, const void* a, DType a_dtype, int64_t lda, const void* b, DType b_dtype, int64_t ldb,
               float beta, float* c, int64_t ldc) {
  if (a_dtype == DType::kF32 && b_dtype == DType::kF32) {
    sgemm(trans_a, trans_b, m, n, k, alpha, static_cast<const float*>(a), lda, static_cast<const float*>(b), ldb,
          beta, c, ldc);
    return;
  }
  const int threads = packed_gemm_threads();
  Tensor scratch;
  {
    MemoryCategoryScope category(MemoryCategory::kWorkspace);
    scratch = context.empty({std::max<int64_t>(packed_gemm_scratch_floats(path, m, n, k, threads), 1)}, DType::kF32);
  }
  packed_gemm(path, m, n, k, alpha, {a, a_dtype, lda, trans_a}, {b, b_dtype, ldb, trans_b}, beta, c, ldc,
              scratch.data<float>(), threads);
}

}  // namespace

void gemm(Context& context, const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float alpha,
          float beta) {
  constexpr std::string_view op = "gemm";
  require_float(op, "a", a);
  require_float(op, "b", b);
  require_float(op, "c", c);
  if (a.dim() < 2 || b.dim() < 2 || c.dim() < 2) {
    throw_runtime(op, ": a, b and c need at least 2 dimensions, found a ", a.to_string(), ", b ", b.to_string(),
                  ", c ", c.to_string());
  }
  if (b.dtype() != a.dtype()) throw_runtime(op, ": b must have a's dtype ", dtype_name(a.dtype()), ", found ", b.to_string());
  if (c.dtype() != DType::kF32 && c.dtype() != a.dtype()) {
    throw_runtime(op, ": c must be f32 or a's dtype ", dtype_name(a.dtype()), ", found ", c.to_string());
  }
  const int64_t m = c.size(-2), n = c.size(-1);
  const int64_t k = trans_a ? a.size(-2) : a.size(-1);
  const Shape c_batch = batch_dims(c);
  const bool a_shared = a.dim() == 2 && c.dim() > 2;
  const bool b_shared = b.dim() == 2 && c.dim() > 2;
  if (!a_shared && batch_dims(a) != c_batch) {
    throw_runtime(op, ": a's batch dimensions differ from c's: a ", a.to_string(), ", c ", c.to_string());
  }
  if (!b_shared && batch_dims(b) != c_batch) {
    throw_runtime(op, ": b's batch dimensions differ from c's: b ", b.to_string(), ", c ", c.to_string());
  }
  const int64_t a_rows = trans_a ? k : m, a_columns = trans_a ? m : k;
  if (a.size(-2) != a_rows || a.size(-1) != a_columns) {
    throw_runtime(op, ": a has shape ", shape_to_string(a.shape()), ", expected [..., ", a_rows, ", ", a_columns,
                  "] for c ", shape_to_string(c.shape()), (trans_a ? " with trans_a" : ""));
  }
  const int64_t b_rows = trans_b ? n : k, b_columns = trans_b ? k : n;
  if (b.size(-2) != b_rows || b.size(-1) != b_columns) {
    throw_runtime(op, ": b has shape ", shape_to_string(b.shape()), ", expected [..., ", b_rows, ", ", b_columns,
                  "] for c ", shape_to_string(c.shape()), " and k = ", k, (trans_b ? " with trans_b" : ""));
  }
  const int64_t batch = shape_numel(c_batch);
  if (c.numel() == 0) return;

  const CpuGemmPath path = cpu_gemm_path(a.dtype(), b.dtype());
  GemmInput a_in(context, a, path), b_in(context, b, path);
  F32Output c32(context, c, /*load_current=*/beta != 0.0f);
  if (b_shared && !a_shared && !trans_a) {
    // Consecutive [M, K] blocks of a against one b form a single [batch * M, K] GEMM.
    gemm_rows(context, path, false, trans_b, batch * m, n, k, alpha, a_in.at(0), a_in.dtype(), k, b_in.at(0),
              b_in.dtype(), b_columns, beta, c32.data(), n);
  } else {
    const int64_t a_stride = a_shared ? 0 : a_rows * a_columns;
    const int64_t b_stride = b_shared ? 0 : b_rows * b_columns;
    for (int64_t index = 0; index < batch; ++index) {
      gemm_rows(context, path, trans_a, trans_b, m, n, k, alpha, a_in.at(index * a_stride), a_in.dtype(), a_columns,
                b_in.at(index * b_stride), b_in.dtype(), b_columns, beta, c32.data() + index * m * n, n);
    }
  }
  c32.finish();
}

void linear_forward(Context& context, const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) {
  constexpr std::string_view op = "linear_forward";
  require_float(op, "x", x);
  require_float(op, "weight", weight);
  require_float(op, "y", y);
  if (weight.dim() != 2) throw_runtime(op, ": weight must be [out, in], found ", weight.to_string());
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  require_last_dim(op, "x", x, in_features);
  const int64_t rows = leading_rows(x);
  Shape y_shape = x.shape();
  y_shape.back() = out_features;
  require_shape(op, "y", y, y_shape);
  if (bias != nullptr) {
    require_float(op, "bias", *bias);
    require_shape(op, "bias", *bias, {out_features});
  }
  if (y.numel() == 0) return;

  if (rows == 1 && weight.dtype() != DType::kF32) {
    // One row (a decode step) with 16-bit weights: the GEMV reads them as
    // stored, half the bytes of f32 and no f32 copy of the whole weight per call.
    F32Copy x32(context, x);
    F32Output y32(context, y, /*load_current=*/false);
    if (bias != nullptr) load_floats(bias->raw_data(), bias->dtype(), 0, out_features, y32.data());
    gemv(out_features, in_features, 1.0f, weight.raw_data(), weight.dtype(), in_features, x32.data(),
         bias != nullptr ? 1.0f : 0.0f, y32.data());
    y32.finish();
    return;
  }
  const CpuGemmPath path = cpu_gemm_path(x.dtype(), weight.dtype());
  GemmInput x_in(context, x, path), weight_in(context, weight, path);
  F32Output y32(context, y, /*load_current=*/false);
  float beta = 0.0f;
  if (bias != nullptr) {
    // Start every row from the bias and let the GEMM add onto it (beta = 1).
    std::unique_ptr<float[]> bias_scratch = std::make_unique_for_overwrite<float[]>(out_features);
    const float* bias32 = FloatReader(*bias).read(0, out_features, bias_scratch.get());
    float* y_data = y32.data();
    parallel_rows(rows, out_features, [&](int64_t row) {
      std::memcpy(y_data + row * out_features, bias32, out_features * sizeof(float));
    });
    beta = 1.0f;
  }
  gemm_rows(context, path, false, true, rows, out_features, in_features, 1.0f, x_in.at(0), x_in.dtype(), in_features,
            weight_in.at(0), weight_in.dtype(), in_features, beta, y32.data(), out_features);
  y32.finish();
}

void linear_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, Tensor* dx,
                     Tensor* dweight, Tensor* dbias, bool accumulate_dx) {
  constexpr std::string_view op = "linear_backward";
  require_float(op, "dy", dy);
  require_float(op, "x", x);
  require_float(op, "weight", weight);
  if (weight.dim() != 2) throw_runtime(op, ": weight must be [out, in], found ", weight.to_string());
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  require_last_dim(op, "x", x, in_features);
  const int64_t rows = leading_rows(x);
  Shape dy_shape = x.shape();
  dy_shape.back() = out_features;
  require_shape(op, "dy", dy, dy_shape);
  if (dx != nullptr) {
    require_float(op, "dx", *dx);
    require_shape(op, "dx", *dx, x.shape());
  }
  for (Tensor* gradient : {dweight, dbias}) {
    if (gradient != nullptr && gradient->defined() && gradient->dtype() != DType::kF32 &&
        gradient->dtype() != weight.dtype()) {
      throw_runtime(op, ": ", gradient == dweight ? "dweight" : "dbias", " must be f32 or the weight's dtype ",
                    dtype_name(weight.dtype()), ", found ", gradient->to_string());
    }
  }
  if (dweight != nullptr) {
    require_float(op, "dweight", *dweight);
    require_shape(op, "dweight", *dweight, weight.shape());
  }
  if (dbias != nullptr) {
    require_float(op, "dbias", *dbias);
    require_shape(op, "dbias", *dbias, {out_features});
  }

  // dy meets the weight (dx) and x (dweight), whose dtypes may differ (bf16
  // base weights under f32 compute): each product takes its own path, and dy
  // is read as stored or widened once for whichever needs it.
  const CpuGemmPath dx_path = cpu_gemm_path(dy.dtype(), weight.dtype());
  const CpuGemmPath dweight_path = cpu_gemm_path(dy.dtype(), x.dtype());
  std::optional<GemmInput> dy_stored, dy_widened;
  auto dy_for = [&](CpuGemmPath path) -> const GemmInput& {
    std::optional<GemmInput>& slot = is_packed_path(path) ? dy_stored : dy_widened;
    if (!slot) slot.emplace(context, dy, path);
    return *slot;
  };
  if (dx != nullptr && dx->numel() > 0) {
    const GemmInput& dy_in = dy_for(dx_path);
    GemmInput weight_in(context, weight, dx_path);
    F32Output dx32(context, *dx, /*load_current=*/accumulate_dx);
    gemm_rows(context, dx_path, false, false, rows, in_features, out_features, 1.0f, dy_in.at(0), dy_in.dtype(),
              out_features, weight_in.at(0), weight_in.dtype(), in_features, accumulate_dx ? 1.0f : 0.0f, dx32.data(),
              in_features);
    dx32.finish();
  }
  if (dweight != nullptr && dweight->numel() > 0) {
    const GemmInput& dy_in = dy_for(dweight_path);
    GemmInput x_in(context, x, dweight_path);
    F32Output dweight32(context, *dweight, /*load_current=*/true);
    gemm_rows(context, dweight_path, true, false, out_features, in_features, rows, 1.0f, dy_in.at(0), dy_in.dtype(),
              out_features, x_in.at(0), x_in.dtype(), in_features, 1.0f, dweight32.data(), in_features);
    dweight32.finish();
  }
  if (dbias != nullptr) add_column_sums(dy, rows, out_features, *dbias);
}

}  // namespace llmft::cpu
