#include "kernels/cpu/cpu_util.h"

#include <cblas.h>
#include <omp.h>

#include <climits>
#include <cstring>

namespace llmft::cpu {

void require_defined_cpu(std::string_view op, std::string_view arg, const Tensor& tensor) {
  if (!tensor.defined()) throw_runtime(op, ": ", arg, " is an undefined tensor");
  if (!tensor.device().is_cpu()) throw_runtime(op, ": ", arg, " must be on cpu, found ", tensor.to_string());
}

void require_float(std::string_view op, std::string_view arg, const Tensor& tensor) {
  require_defined_cpu(op, arg, tensor);
  kernels::require_float(op, arg, tensor);
}

void require_dtype(std::string_view op, std::string_view arg, const Tensor& tensor, DType expected) {
  require_defined_cpu(op, arg, tensor);
  kernels::require_dtype(op, arg, tensor, expected);
}

LLMFT_CPU_MULTIVERSION float max_value(const float* x, int64_t n) {
  float result = -__builtin_inff();
#pragma omp simd reduction(max : result)
  for (int64_t i = 0; i < n; ++i) result = x[i] > result ? x[i] : result;
  return result;
}

LLMFT_CPU_MULTIVERSION float exp_shifted(const float* x, int64_t n, float shift, float* out) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float value = fast_exp(x[i] - shift);
    out[i] = value;
    sum += value;
  }
  return sum;
}

LLMFT_CPU_MULTIVERSION float sum_exp_shifted(const float* x, int64_t n, float shift) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += fast_exp(x[i] - shift);
  return sum;
}

LLMFT_CPU_MULTIVERSION void scaled_exp_shifted(const float* x, int64_t n, float shift, float scale, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = scale * fast_exp(x[i] - shift);
}

LLMFT_CPU_MULTIVERSION void load_floats(const void* data, DType dtype, int64_t begin, int64_t count, float* out) {
  switch (dtype) {
    case DType::kF32: std::memcpy(out, static_cast<const float*>(data) + begin, count * sizeof(float)); return;
    case DType::kBF16: {
      const uint16_t* in = static_cast<const uint16_t*>(data) + begin;
      for (int64_t i = 0; i < count; ++i) out[i] = bf16_bits_to_float(in[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* in = static_cast<const uint16_t*>(data) + begin;
      for (int64_t i = 0; i < count; ++i) out[i] = f16_bits_to_float(in[i]);
      return;
    }
    default: throw_runtime("load_floats: ", dtype_name(dtype), " is not a float dtype");
  }
}

LLMFT_CPU_MULTIVERSION void store_floats(const float* values, int64_t count, void* data, DType dtype, int64_t begin) {
  switch (dtype) {
    case DType::kF32: std::memcpy(static_cast<float*>(data) + begin, values, count * sizeof(float)); return;
    case DType::kBF16: {
      uint16_t* out = static_cast<uint16_t*>(data) + begin;
      for (int64_t i = 0; i < count; ++i) out[i] = float_to_bf16_bits(values[i]);
      return;
    }
    case DType::kF16: {
      uint16_t* out = static_cast<uint16_t*>(data) + begin;
      for (int64_t i = 0; i < count; ++i) out[i] = float_to_f16_bits(values[i]);
      return;
    }
    default: throw_runtime("store_floats: ", dtype_name(dtype), " is not a float dtype");
  }
}

namespace {

// Scratch f32 storage for n values from the context's allocator, as workspace.
Tensor f32_scratch(Context& context, int64_t n) {
  MemoryCategoryScope category(MemoryCategory::kWorkspace);
  return context.empty({n}, DType::kF32);
}

}  // namespace

F32Copy::F32Copy(Context& context, const Tensor& tensor) {
  if (tensor.dtype() == DType::kF32) {
    data_ = static_cast<const float*>(tensor.raw_data());
    return;
  }
  const int64_t n = tensor.numel();
  owned_ = f32_scratch(context, n);
  float* out = owned_.data<float>();
  const void* in = tensor.raw_data();
  const DType dtype = tensor.dtype();
  parallel_chunks(n, [&](int64_t begin, int64_t count) { load_floats(in, dtype, begin, count, out + begin); });
  data_ = out;
}

F32Output::F32Output(Context& context, Tensor& tensor, bool load_current) : tensor_(&tensor) {
  if (tensor.dtype() == DType::kF32) {
    data_ = static_cast<float*>(tensor.raw_data());
    return;
  }
  const int64_t n = tensor.numel();
  owned_ = f32_scratch(context, n);
  data_ = owned_.data<float>();
  if (load_current) {
    const void* in = tensor.raw_data();
    const DType dtype = tensor.dtype();
    float* out = data_;
    parallel_chunks(n, [&](int64_t begin, int64_t count) { load_floats(in, dtype, begin, count, out + begin); });
  }
}

void F32Output::finish() {
  if (!owned_.defined()) return;
  void* out = tensor_->raw_data();
  const DType dtype = tensor_->dtype();
  const float* in = data_;
  parallel_chunks(tensor_->numel(),
                  [&](int64_t begin, int64_t count) { store_floats(in + begin, count, out, dtype, begin); });
}

namespace {

void sgemm_one_thread(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                      int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

// Below this many multiply-adds a GEMM runs on the calling thread.
constexpr double kParallelGemmWork = 1 << 20;

}  // namespace

void pin_blas_to_one_thread() {
  // The CPU backend has one thread pool, OpenMP's. OpenBLAS's own pthread pool
  // would compete with it for the same cores (both spin while waiting), and
  // attention calls SGEMM from inside OpenMP loops; so every SGEMM runs
  // single-threaded and sgemm() below splits large products across OpenMP
  // threads itself (measured on a 2-core EPYC: as fast as OpenBLAS's 2 threads).
  static const bool pinned = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)pinned;
}

void scale_rows(int64_t m, int64_t n, float beta, float* c, int64_t ldc) {
  for (int64_t row = 0; row < m; ++row) {
    float* c_row = c + row * ldc;
    for (int64_t column = 0; column < n; ++column) c_row[column] = beta == 0.0f ? 0.0f : beta * c_row[column];
  }
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  LLMFT_CHECK(m < INT_MAX && n < INT_MAX && k < INT_MAX && lda < INT_MAX && ldb < INT_MAX && ldc < INT_MAX,
              "gemm dimensions exceed the BLAS int range: m=", m, " n=", n, " k=", k);
  if (k == 0) {  // BLAS rejects lda == 0; the product is empty, so C = beta * C.
    scale_rows(m, n, beta, c, ldc);
    return;
  }
  if (m == 1 && trans_b && (!trans_a || lda == 1)) {  // one row of A against the rows of B: a GEMV
    gemv(n, k, alpha, b, DType::kF32, ldb, a, beta, c);
    return;
  }
  pin_blas_to_one_thread();
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads == 1 || static_cast<double>(m) * n * k < kParallelGemmWork) {
    sgemm_one_thread(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split C into row bands (or column bands when C is wide), each an
  // independent GEMM on a sub-block of A (or B); bands are multiples of 16 so
  // the kernels' register tiles stay whole and at least 64 wide. One band per
  // thread rather than four: every band re-packs the shared operand, and on a
  // quiet 2-core Zen 5 the 1024-row training GEMMs of the small Llama ran 5-12%
  // faster this way (OpenBLAS AVX2 and AVX-512 kernels), a full fine-tuning
  // step 1-7% (bench/RESULTS.md). The price: a core taken by another process
  // can no longer be balanced against by handing its bands to the free one.
  const bool split_rows = m >= n;
  const int64_t extent = split_rows ? m : n;
  const int64_t band = std::max<int64_t>(64, ceil_div(ceil_div(extent, threads), 16) * 16);
  const int64_t bands = ceil_div(extent, band);
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t index = 0; index < bands; ++index) {
    const int64_t begin = index * band, size = std::min(band, extent - begin);
    if (split_rows) {
      const float* a_band = trans_a ? a + begin : a + begin * lda;
      sgemm_one_thread(trans_a, trans_b, size, n, k, alpha, a_band, lda, b, ldb, beta, c + begin * ldc, ldc);
    } else {
      const float* b_band = trans_b ? b + begin * ldb : b + begin;
      sgemm_one_thread(trans_a, trans_b, m, size, k, alpha, a, lda, b_band, ldb, beta, c + begin, ldc);
    }
  }
}

}  // namespace llmft::cpu
