// Host-side helpers shared by the CUDA kernels (kernels/cuda/*.cu and gemm.cc):
// the device check of the argument checks (the rest are kernels/op_checks.h,
// shared with the CPU backend, so both backends reject the same calls with the
// same words), the context's stream, launch-geometry arithmetic, and dtype
// dispatch to the storage types of core/half.h.
//
// Error kinds follow the CPU backend: wrong shapes or dtypes at an op boundary
// are programming errors inside llmft (kRuntime); values that come from the
// user's data (token ids, targets) are kBadInput.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/context.h"
#include "core/cuda_resources.h"
#include "core/error.h"
#include "core/half.h"
#include "core/tensor.h"
#include "kernels/op_checks.h"

namespace llmft::cuda {

// ---- Argument checks -----------------------------------------------------------
inline void require_on_context(std::string_view op, std::string_view arg, const Tensor& tensor,
                               const Context& context) {
  if (!tensor.defined()) throw_runtime(op, ": ", arg, ": expected a tensor, found an undefined one");
  if (!(tensor.device() == context.device())) {
    throw_runtime(op, ": ", arg, ": expected a tensor on ", context.device().to_string(), ", found ",
                  tensor.to_string());
  }
}

using kernels::require_dtype;
using kernels::require_float;
using kernels::require_last_dim;
using kernels::require_numel;
using kernels::require_shape;

// ---- Streams and launches ---------------------------------------------------------
inline cudaStream_t stream_of(const Context& context) {
  LLMFT_CHECK(context.is_cuda() && context.cuda_resources() != nullptr, "a CUDA op needs a CUDA context");
  return context.cuda_resources()->stream;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid size for a grid-stride loop over n elements: enough blocks to fill the
// device several times over, never more than needed.
inline unsigned grid_for(const Context& context, int64_t n, int threads_per_block) {
  const int64_t wanted = ceil_div(n, threads_per_block);
  const int64_t cap = static_cast<int64_t>(context.cuda_resources()->multiprocessor_count > 0
                                               ? context.cuda_resources()->multiprocessor_count
                                               : 132) *
                      16;
  const int64_t blocks = wanted < cap ? wanted : cap;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

// Checks the launch just queued (bad configuration, missing kernel image).
#define LLMFT_CUDA_CHECK_LAUNCH() LLMFT_CUDA_CHECK(cudaGetLastError())

// Copies a small device tensor (ids, targets) to a host vector. Synchronises
// the stream: used only where an op must report bad user data by position.
template <typename T>
std::vector<T> download_small(const Context& context, const Tensor& tensor) {
  std::vector<T> host(static_cast<size_t>(tensor.numel()));
  cudaStream_t stream = stream_of(context);
  if (!host.empty()) {
    LLMFT_CUDA_CHECK(
        cudaMemcpyAsync(host.data(), tensor.raw_data(), host.size() * sizeof(T), cudaMemcpyDeviceToHost, stream));
  }
  LLMFT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

// ---- dtype dispatch -------------------------------------------------------------------
template <typename T>
struct TypeTag {
  using type = T;
};

// Calls body(TypeTag<T>{}) with T the storage type of a float dtype.
template <typename Body>
void dispatch_float(DType dtype, std::string_view op, Body&& body) {
  switch (dtype) {
    case DType::kF32: body(TypeTag<float>{}); return;
    case DType::kBF16: body(TypeTag<bf16>{}); return;
    case DType::kF16: body(TypeTag<f16>{}); return;
    default: break;
  }
  throw_runtime(op, ": expected a float dtype (f32, bf16 or f16), found ", dtype_name(dtype));
}

}  // namespace llmft::cuda
