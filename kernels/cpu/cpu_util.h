// Shared helpers of the CPU kernels: argument checks that name the op and the
// argument, f32 views of f32/bf16/f16 storage (zero-copy for f32), the
// row-major SGEMM every op funnels into, and OpenMP loop helpers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string_view>

#include "core/context.h"
#include "core/error.h"
#include "core/half.h"
#include "core/tensor.h"
#include "kernels/op_checks.h"

namespace llmft::cpu {

// Function multiversioning for the hot elementwise loops (see max_value below).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LLMFT_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LLMFT_CPU_MULTIVERSION
#endif

// ---- Argument checks (kernels/op_checks.h) ---------------------------------------
// require_float and require_dtype also check that the tensor is defined and on
// the CPU, since every CPU op checks its tensors' dtypes first.
void require_defined_cpu(std::string_view op, std::string_view arg, const Tensor& tensor);
void require_float(std::string_view op, std::string_view arg, const Tensor& tensor);
void require_dtype(std::string_view op, std::string_view arg, const Tensor& tensor, DType expected);
using kernels::require_last_dim;
using kernels::require_numel;
using kernels::require_shape;

// ---- Element conversion -------------------------------------------------------
// Converts `count` elements starting at element `begin` of a float tensor's
// storage to f32, and back with round-to-nearest-even (core/half.h).
void load_floats(const void* data, DType dtype, int64_t begin, int64_t count, float* out);
void store_floats(const float* values, int64_t count, void* data, DType dtype, int64_t begin);

// Read access to a float tensor as f32. read() returns the tensor's own memory
// when it is f32 (no copy), otherwise `scratch` filled with converted values.
class FloatReader {
 public:
  explicit FloatReader(const Tensor& tensor) : data_(tensor.raw_data()), dtype_(tensor.dtype()) {}
  bool is_f32() const { return dtype_ == DType::kF32; }
  const float* read(int64_t begin, int64_t count, float* scratch) const {
    if (dtype_ == DType::kF32) return static_cast<const float*>(data_) + begin;
    load_floats(data_, dtype_, begin, count, scratch);
    return scratch;
  }
  float at(int64_t index) const {
    float value;
    load_floats(data_, dtype_, index, 1, &value);
    return value;
  }

 private:
  const void* data_;
  DType dtype_;
};

// Write access to a float tensor as f32: open() gives the place to write
// elements [begin, begin + count) (the tensor itself for f32, else `scratch`,
// preloaded with the current values when `load_current` for += updates);
// commit() rounds scratch back into the tensor (a no-op for f32).
class FloatWriter {
 public:
  explicit FloatWriter(Tensor& tensor) : data_(tensor.raw_data()), dtype_(tensor.dtype()) {}
  bool is_f32() const { return dtype_ == DType::kF32; }
  float* open(int64_t begin, int64_t count, float* scratch, bool load_current = false) const {
    if (dtype_ == DType::kF32) return static_cast<float*>(data_) + begin;
    if (load_current) load_floats(data_, dtype_, begin, count, scratch);
    return scratch;
  }
  void commit(int64_t begin, int64_t count, const float* values) const {
    if (dtype_ != DType::kF32) store_floats(values, count, data_, dtype_, begin);
  }
  // Stores values from anywhere (copy for f32, rounding otherwise).
  void write(int64_t begin, int64_t count, const float* values) const {
    store_floats(values, count, data_, dtype_, begin);
  }

 private:
  void* data_;
  DType dtype_;
};

// A whole float tensor as contiguous f32: its own memory for f32, else a
// converted copy (converted in parallel). The copy comes from the context's
// caching host allocator, counted as workspace: a GEMM widens whole 16-bit
// weights every call, and fresh glibc blocks of that size are new mmap()s
// whose page faults cost as much as the conversion (bench/RESULTS.md).
class F32Copy {
 public:
  F32Copy(Context& context, const Tensor& tensor);
  const float* data() const { return data_; }

 private:
  Tensor owned_;
  const float* data_ = nullptr;
};

// An f32 buffer standing in for a float output tensor: the tensor itself when
// it is f32, else a scratch buffer from the context (preloaded when
// `load_current`) that finish() rounds back into the tensor.
class F32Output {
 public:
  F32Output(Context& context, Tensor& tensor, bool load_current);
  float* data() const { return data_; }
  void finish();

 private:
  Tensor* tensor_;
  Tensor owned_;
  float* data_ = nullptr;
};

// ---- Math -----------------------------------------------------------------------
// exp(x) for float, written so the compiler can vectorise loops over it (libm's
// expf is a call per element): Cody-Waite reduction x = n ln2 + r and Cephes'
// expf polynomial on |r| <= ln2/2 (relative error below 2 ulp). Arguments below
// -87.3 (including -inf) give 0 (no subnormal results), above ln(FLT_MAX) +inf.
inline float fast_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693359375f, kLn2Low = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float clamped = x < -87.3f ? -87.3f : (x > 88.7228f ? 88.7228f : x);
  const float n = (clamped * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (clamped - n * kLn2High) - n * kLn2Low;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // exp(x) for x in (88.38, 88.7] is finite but needs n = 128, whose 2^n is not
  // a float: take one factor 2 into p instead.
  const bool top = n > 127.0f;
  p = top ? p * 2.0f : p;
  const float exponent = top ? 127.0f : n;
  const float power = bits_float(static_cast<uint32_t>(static_cast<int32_t>(exponent) + 127) << 23);
  float result = p * power;
  if (x < -87.3f) result = 0.0f;
  if (x > 88.7228f) result = __builtin_inff();
  return result;
}

// Loops over fast_exp, compiled for AVX-512, AVX2 and baseline x86-64 and
// picked at load time (GCC target_clones), since the library is built for
// baseline x86-64. out may equal x.
float max_value(const float* x, int64_t n);                               // -inf when n == 0
float exp_shifted(const float* x, int64_t n, float shift, float* out);    // out = exp(x - shift); returns the sum
float sum_exp_shifted(const float* x, int64_t n, float shift);            // sum of exp(x - shift)
void scaled_exp_shifted(const float* x, int64_t n, float shift, float scale, float* out);  // out = scale exp(x - shift)

// ---- GEMM -----------------------------------------------------------------------
// Row-major C[M, N] = alpha * op(A) @ op(B) + beta * C on f32 pointers with
// leading dimensions; beta == 0 never reads C (OpenBLAS's beta kernel zeroes it).
// Outside a parallel region a large product is split across OpenMP threads;
// inside one (attention's per-head loops) it runs on the calling thread.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// C[M, N] (leading dimension ldc) = beta * C, zeros without reading C when
// beta == 0: a GEMM with an empty sum (K = 0).
void scale_rows(int64_t m, int64_t n, float beta, float* c, int64_t ldc);

// Row-major y[N] = alpha * W[N, K] x + beta * y (beta == 0 never reads y), W
// of `w_dtype` (f32, bf16 or f16, widened in registers) with leading dimension
// ldw, x and y f32: the single-row products of decoding, which sgemm hands
// over for M = 1 and linear_forward for one row of 16-bit weights. Outside a
// parallel region its rows are shared by omp_get_max_threads() threads
// without a barrier (kernels/cpu/gemv.cc).
void gemv(int64_t n, int64_t k, float alpha, const void* w, DType w_dtype, int64_t ldw, const float* x, float beta,
          float* y);

// Sets OpenBLAS to one thread per call (once per process); see cpu_util.cc.
void pin_blas_to_one_thread();

// ---- Parallel loops ----------------------------------------------------------------
// Below this much work (elements touched) a loop stays on the calling thread:
// waking the OpenMP team costs more than it saves.
inline constexpr int64_t kParallelWork = 1 << 16;
// Elementwise loops walk the data in chunks that fit a stack scratch buffer.
inline constexpr int64_t kChunk = 1024;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls body(begin, count) for consecutive chunks of [0, n), in parallel when
// the loop is large enough.
template <typename Body>
void parallel_chunks(int64_t n, Body&& body) {
  const int64_t chunks = ceil_div(n, kChunk);
#pragma omp parallel for schedule(static) if (n > kParallelWork)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t begin = chunk * kChunk;
    body(begin, std::min(kChunk, n - begin));
  }
}

// Calls body(row) for each row in [0, rows), in parallel when rows * row_work
// is large enough.
template <typename Body>
void parallel_rows(int64_t rows, int64_t row_work, Body&& body) {
#pragma omp parallel for schedule(static) if (rows > 1 && rows * row_work > kParallelWork)
  for (int64_t row = 0; row < rows; ++row) body(row);
}

// Number of rows of a [..., last] tensor.
inline int64_t leading_rows(const Tensor& tensor) {
  const int64_t last = tensor.dim() == 0 ? 1 : tensor.size(-1);
  return last == 0 ? 0 : tensor.numel() / last;
}

}  // namespace llmft::cpu
