// CUDA resources of a Context (CUDA builds only): stream, cuBLASLt handle and
// its workspace. Included by kernels/cuda and core's CUDA code.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/error.h"

namespace llmft {

struct CudaResources {
  int device_index = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t blaslt = nullptr;
  void* blaslt_workspace = nullptr;  // cuBLASLt recommends >= 32 MiB on Hopper
  size_t blaslt_workspace_bytes = 0;
  int multiprocessor_count = 0;
};

}  // namespace llmft

#define LLMFT_CUDA_CHECK(expr)                                                                     \
  do {                                                                                             \
    cudaError_t llmft_cuda_status = (expr);                                                        \
    if (llmft_cuda_status != cudaSuccess)                                                          \
      ::llmft::throw_runtime(__FILE__, ":", __LINE__, ": ", #expr, ": ",                           \
                             cudaGetErrorString(llmft_cuda_status));                               \
  } while (0)

#define LLMFT_CUBLAS_CHECK(expr)                                                                   \
  do {                                                                                             \
    cublasStatus_t llmft_cublas_status = (expr);                                                   \
    if (llmft_cublas_status != CUBLAS_STATUS_SUCCESS)                                              \
      ::llmft::throw_runtime(__FILE__, ":", __LINE__, ": ", #expr, ": cuBLAS status ",             \
                             static_cast<int>(llmft_cublas_status));                               \
  } while (0)
