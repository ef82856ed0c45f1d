// RMSNorm (Zhang & Sennrich 2019) as Hugging Face's LlamaRMSNorm computes it:
// statistics in fp32, the normalised row cast back to the input dtype, then
// multiplied by the weight (modeling_llama.py, LlamaRMSNorm.forward).
#include <cmath>
#include <vector>

#include <omp.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

// Rounds to `dtype` and back: the `.to(input_dtype)` in LlamaRMSNorm.
void round_in_place(float* values, int64_t count, DType dtype) {
  if (dtype == DType::kBF16) {
    for (int64_t i = 0; i < count; ++i) values[i] = bf16_bits_to_float(float_to_bf16_bits(values[i]));
  } else if (dtype == DType::kF16) {
    for (int64_t i = 0; i < count; ++i) values[i] = f16_bits_to_float(float_to_f16_bits(values[i]));
  }
}

void check_rmsnorm_arguments(std::string_view op, const Tensor& x, const Tensor& weight, const Tensor& rstd) {
  require_float(op, "x", x);
  require_float(op, "weight", weight);
  require_dtype(op, "rstd", rstd, DType::kF32);
  if (x.dim() == 0) throw_runtime(op, ": x must have a feature dimension, found ", x.to_string());
  require_shape(op, "weight", weight, {x.size(-1)});
  require_numel(op, "rstd", rstd, leading_rows(x));
}

}  // namespace

void rmsnorm_forward(Context& context, const Tensor& x, const Tensor& weight, float eps, Tensor& y, Tensor& rstd) {
  constexpr std::string_view op = "rmsnorm_forward";
  check_rmsnorm_arguments(op, x, weight, rstd);
  require_float(op, "y", y);
  require_shape(op, "y", y, x.shape());
  const int64_t dim = x.size(-1), rows = leading_rows(x);
  std::vector<float> weight_scratch(dim);
  const float* weight32 = FloatReader(weight).read(0, dim, weight_scratch.data());
  FloatReader x_reader(x);
  FloatWriter y_writer(y);
  float* rstd_data = rstd.data<float>();
  const DType x_dtype = x.dtype();
#pragma omp parallel if (rows * dim > kParallelWork)
  {
    std::vector<float> x_scratch(dim), y_scratch(dim);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const float* x_row = x_reader.read(row * dim, dim, x_scratch.data());
      double sum_of_squares = 0.0;
      for (int64_t i = 0; i < dim; ++i) sum_of_squares += static_cast<double>(x_row[i]) * x_row[i];
      const float row_rstd = 1.0f / std::sqrt(static_cast<float>(sum_of_squares / dim) + eps);
      rstd_data[row] = row_rstd;
      float* y_row = y_writer.open(row * dim, dim, y_scratch.data());
      for (int64_t i = 0; i < dim; ++i) y_row[i] = x_row[i] * row_rstd;
      round_in_place(y_row, dim, x_dtype);
      for (int64_t i = 0; i < dim; ++i) y_row[i] *= weight32[i];
      y_writer.commit(row * dim, dim, y_row);
    }
  }
}

// With n = x * rstd and y = w * n: dx = rstd * (g - n * mean(g * n)), g = dy * w;
// dweight += sum over rows of dy * round(n) (the rounded n is what multiplied
// the weight). The cast inside the forward is treated as the identity for dx.
void rmsnorm_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                      Tensor& dx, Tensor* dweight) {
  constexpr std::string_view op = "rmsnorm_backward";
  check_rmsnorm_arguments(op, x, weight, rstd);
  require_float(op, "dy", dy);
  require_shape(op, "dy", dy, x.shape());
  require_float(op, "dx", dx);
  require_shape(op, "dx", dx, x.shape());
  const int64_t dim = x.size(-1), rows = leading_rows(x);
  if (dweight != nullptr) {
    require_float(op, "dweight", *dweight);
    require_shape(op, "dweight", *dweight, {dim});
  }
  std::vector<float> weight_scratch(dim);
  const float* weight32 = FloatReader(weight).read(0, dim, weight_scratch.data());
  FloatReader x_reader(x), dy_reader(dy);
  FloatWriter dx_writer(dx);
  const float* rstd_data = rstd.data<float>();
  const DType x_dtype = x.dtype();
  const bool parallel = rows * dim > kParallelWork;
  const int threads = parallel ? omp_get_max_threads() : 1;
  // Per-thread partial dweight sums, added in thread order afterwards so the
  // result does not depend on scheduling.
  std::vector<double> partial_dweight(dweight != nullptr ? static_cast<size_t>(threads * dim) : 0, 0.0);
#pragma omp parallel num_threads(threads) if (parallel)
  {
    std::vector<float> x_scratch(dim), dy_scratch(dim), dx_scratch(dim), normalized(dim);
    double* my_dweight = dweight != nullptr ? partial_dweight.data() + omp_get_thread_num() * dim : nullptr;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const float* x_row = x_reader.read(row * dim, dim, x_scratch.data());
      const float* dy_row = dy_reader.read(row * dim, dim, dy_scratch.data());
      const float row_rstd = rstd_data[row];
      double dot = 0.0;  // sum of g * n
      for (int64_t i = 0; i < dim; ++i) {
        normalized[i] = x_row[i] * row_rstd;
        dot += static_cast<double>(dy_row[i]) * weight32[i] * normalized[i];
      }
      const float mean_dot = static_cast<float>(dot / dim);
      float* dx_row = dx_writer.open(row * dim, dim, dx_scratch.data());
      for (int64_t i = 0; i < dim; ++i) {
        dx_row[i] = row_rstd * (dy_row[i] * weight32[i] - normalized[i] * mean_dot);
      }
      if (my_dweight != nullptr) {
        round_in_place(normalized.data(), dim, x_dtype);
        for (int64_t i = 0; i < dim; ++i) my_dweight[i] += static_cast<double>(dy_row[i]) * normalized[i];
      }
      // dx may alias dy: every element of dy_row is read before its dx element is written.
      dx_writer.commit(row * dim, dim, dx_row);
    }
  }
  if (dweight != nullptr) {
    FloatWriter dweight_writer(*dweight);
    std::vector<float> scratch(dim);
    float* out = dweight_writer.open(0, dim, scratch.data(), /*load_current=*/true);
    for (int64_t i = 0; i < dim; ++i) {
      double total = out[i];
      for (int thread = 0; thread < threads; ++thread) total += partial_dweight[thread * dim + i];
      out[i] = static_cast<float>(total);
    }
    dweight_writer.commit(0, dim, out);
  }
}

}  // namespace llmft::cpu
