// Elementwise ops: add, add_scaled, scale, fill and cast. Nothing to fuse
// here; each is one grid-stride pass that reads every input once in its
// storage dtype, computes in f32 and rounds once into the output with the
// round-to-nearest-even of core/half.h, so results are bit-identical to the
// CPU backend. Like the CPU backend, any mix of f32/bf16/f16 is accepted.
// Next optimisation: 16-byte vector loads/stores (8 bf16 per access).
#include <climits>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.cuh"

namespace llmft::cuda {
namespace {

constexpr int kThreads = 256;

#define LLMFT_GRID_STRIDE_LOOP(index, n)                                                         \
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < (n); \
       index += static_cast<int64_t>(gridDim.x) * blockDim.x)

// out may alias a or b: each element is read before it is written by the same thread.
template <typename A, typename B, typename O>
__global__ void add_kernel(const A* a, const B* b, O* out, int64_t n) {
  LLMFT_GRID_STRIDE_LOOP(i, n) out[i] = from_float<O>(to_float(a[i]) + to_float(b[i]));
}

template <typename X, typename Y>
__global__ void add_scaled_kernel(float alpha, const X* x, Y* y, int64_t n) {
  // Explicit round-to-nearest multiply and add: nvcc would otherwise contract
  // them into one FMA (one rounding), while the CPU build rounds twice.
  LLMFT_GRID_STRIDE_LOOP(i, n) y[i] = from_float<Y>(__fadd_rn(to_float(y[i]), __fmul_rn(alpha, to_float(x[i]))));
}

template <typename T>
__global__ void scale_kernel(T* x, float alpha, int64_t n) {
  LLMFT_GRID_STRIDE_LOOP(i, n) x[i] = from_float<T>(to_float(x[i]) * alpha);
}

template <typename T>
__global__ void fill_kernel(T* x, T value, int64_t n) {
  LLMFT_GRID_STRIDE_LOOP(i, n) x[i] = value;
}

template <typename S, typename D>
__global__ void cast_float_kernel(const S* src, D* dst, int64_t n) {
  LLMFT_GRID_STRIDE_LOOP(i, n) dst[i] = from_float<D>(to_float(src[i]));
}

__global__ void cast_i32_to_i64_kernel(const int32_t* src, int64_t* dst, int64_t n) {
  LLMFT_GRID_STRIDE_LOOP(i, n) dst[i] = src[i];
}

// Out-of-range elements are reported by the smallest index (atomicMin), read
// back by the host so the error names the first offending element like the CPU.
__global__ void cast_i64_to_i32_kernel(const int64_t* src, int32_t* dst, int64_t n,
                                       unsigned long long* first_bad_index) {
  LLMFT_GRID_STRIDE_LOOP(i, n) {
    const int64_t value = src[i];
    if (value < INT32_MIN || value > INT32_MAX) {
      atomicMin(first_bad_index, static_cast<unsigned long long>(i));
    } else {
      dst[i] = static_cast<int32_t>(value);
    }
  }
}

}  // namespace

void add(Context& context, const Tensor& a, const Tensor& b, Tensor& out) {
  constexpr std::string_view op = "add";
  require_on_context(op, "a", a, context);
  require_on_context(op, "b", b, context);
  require_on_context(op, "out", out, context);
  require_float(op, "a", a);
  require_float(op, "b", b);
  require_float(op, "out", out);
  require_numel(op, "b", b, a.numel());
  require_numel(op, "out", out, a.numel());
  const int64_t n = a.numel();
  if (n == 0) return;
  const unsigned blocks = grid_for(context, n, kThreads);
  dispatch_float(a.dtype(), op, [&](auto a_tag) {
    using A = typename decltype(a_tag)::type;
    dispatch_float(b.dtype(), op, [&](auto b_tag) {
      using B = typename decltype(b_tag)::type;
      dispatch_float(out.dtype(), op, [&](auto out_tag) {
        using O = typename decltype(out_tag)::type;
        add_kernel<A, B, O><<<blocks, kThreads, 0, stream_of(context)>>>(static_cast<const A*>(a.raw_data()),
                                                                         static_cast<const B*>(b.raw_data()),
                                                                         static_cast<O*>(out.raw_data()), n);
        LLMFT_CUDA_CHECK_LAUNCH();
      });
    });
  });
}

void add_scaled(Context& context, float alpha, const Tensor& x, Tensor& y) {
  constexpr std::string_view op = "add_scaled";
  require_on_context(op, "x", x, context);
  require_on_context(op, "y", y, context);
  require_float(op, "x", x);
  require_float(op, "y", y);
  require_numel(op, "y", y, x.numel());
  const int64_t n = x.numel();
  if (n == 0) return;
  const unsigned blocks = grid_for(context, n, kThreads);
  dispatch_float(x.dtype(), op, [&](auto x_tag) {
    using X = typename decltype(x_tag)::type;
    dispatch_float(y.dtype(), op, [&](auto y_tag) {
      using Y = typename decltype(y_tag)::type;
      add_scaled_kernel<X, Y><<<blocks, kThreads, 0, stream_of(context)>>>(alpha, static_cast<const X*>(x.raw_data()),
                                                                           static_cast<Y*>(y.raw_data()), n);
      LLMFT_CUDA_CHECK_LAUNCH();
    });
  });
}

void scale(Context& context, Tensor& x, float alpha) {
  constexpr std::string_view op = "scale";
  require_on_context(op, "x", x, context);
  require_float(op, "x", x);
  const int64_t n = x.numel();
  if (n == 0) return;
  const unsigned blocks = grid_for(context, n, kThreads);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    scale_kernel<T><<<blocks, kThreads, 0, stream_of(context)>>>(static_cast<T*>(x.raw_data()), alpha, n);
    LLMFT_CUDA_CHECK_LAUNCH();
  });
}

void fill(Context& context, Tensor& x, float value) {
  constexpr std::string_view op = "fill";
  require_on_context(op, "x", x, context);
  const int64_t n = x.numel();
  if (n == 0) return;
  const unsigned blocks = grid_for(context, n, kThreads);
  cudaStream_t stream = stream_of(context);
  switch (x.dtype()) {
    case DType::kI32:
      fill_kernel<int32_t>
          <<<blocks, kThreads, 0, stream>>>(static_cast<int32_t*>(x.raw_data()), static_cast<int32_t>(value), n);
      LLMFT_CUDA_CHECK_LAUNCH();
      return;
    case DType::kI64:
      fill_kernel<int64_t>
          <<<blocks, kThreads, 0, stream>>>(static_cast<int64_t*>(x.raw_data()), static_cast<int64_t>(value), n);
      LLMFT_CUDA_CHECK_LAUNCH();
      return;
    case DType::kF32:
      fill_kernel<float><<<blocks, kThreads, 0, stream>>>(static_cast<float*>(x.raw_data()), value, n);
      LLMFT_CUDA_CHECK_LAUNCH();
      return;
    case DType::kBF16:
      fill_kernel<bf16><<<blocks, kThreads, 0, stream>>>(static_cast<bf16*>(x.raw_data()), bf16(value), n);
      LLMFT_CUDA_CHECK_LAUNCH();
      return;
    case DType::kF16:
      fill_kernel<f16><<<blocks, kThreads, 0, stream>>>(static_cast<f16*>(x.raw_data()), f16(value), n);
      LLMFT_CUDA_CHECK_LAUNCH();
      return;
  }
}

void cast(Context& context, const Tensor& src, Tensor& dst) {
  constexpr std::string_view op = "cast";
  require_on_context(op, "src", src, context);
  require_on_context(op, "dst", dst, context);
  require_numel(op, "dst", dst, src.numel());
  const int64_t n = src.numel();
  cudaStream_t stream = stream_of(context);
  if (src.dtype() == dst.dtype()) {
    if (src.raw_data() != dst.raw_data() && n > 0) {
      LLMFT_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(), cudaMemcpyDeviceToDevice, stream));
    }
    return;
  }
  const unsigned blocks = grid_for(context, n, kThreads);
  if (src.dtype() == DType::kI32 && dst.dtype() == DType::kI64) {
    if (n == 0) return;
    cast_i32_to_i64_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const int32_t*>(src.raw_data()),
                                                            static_cast<int64_t*>(dst.raw_data()), n);
    LLMFT_CUDA_CHECK_LAUNCH();
    return;
  }
  if (src.dtype() == DType::kI64 && dst.dtype() == DType::kI32) {
    if (n == 0) return;
    Tensor first_bad = context.empty({1}, DType::kI64);
    auto* first_bad_index = static_cast<unsigned long long*>(first_bad.raw_data());
    LLMFT_CUDA_CHECK(cudaMemsetAsync(first_bad_index, 0xff, sizeof(unsigned long long), stream));
    cast_i64_to_i32_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const int64_t*>(src.raw_data()),
                                                            static_cast<int32_t*>(dst.raw_data()), n, first_bad_index);
    LLMFT_CUDA_CHECK_LAUNCH();
    const std::vector<int64_t> bad = download_small<int64_t>(context, first_bad);
    if (bad[0] != -1) {
      int64_t value = 0;
      LLMFT_CUDA_CHECK(cudaMemcpy(&value, static_cast<const int64_t*>(src.raw_data()) + bad[0], sizeof value,
                                  cudaMemcpyDeviceToHost));
      throw_bad_input(op, ": element ", bad[0], " = ", value, " does not fit in i32");
    }
    return;
  }
  if (!is_floating(src.dtype()) || !is_floating(dst.dtype())) {
    throw_runtime(op, ": cannot convert ", src.to_string(), " to ", dst.to_string(),
                  " (float<->float and i32<->i64 only)");
  }
  if (n == 0) return;
  dispatch_float(src.dtype(), op, [&](auto src_tag) {
    using S = typename decltype(src_tag)::type;
    dispatch_float(dst.dtype(), op, [&](auto dst_tag) {
      using D = typename decltype(dst_tag)::type;
      cast_float_kernel<S, D>
          <<<blocks, kThreads, 0, stream>>>(static_cast<const S*>(src.raw_data()), static_cast<D*>(dst.raw_data()), n);
      LLMFT_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace llmft::cuda
