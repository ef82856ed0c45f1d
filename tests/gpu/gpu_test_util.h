// What every GPU test binary needs: skipping, with the reason, where no GPU
// can run it, and one CUDA context shared by the whole binary.
#pragma once

#include <gtest/gtest.h>

#include "core/context.h"
#include "core/dtype.h"

// Skips the calling test (or fixture SetUp) unless this binary has the CUDA
// backend and a GPU is visible; the skip message says which is missing. A
// macro because GTEST_SKIP() returns from the function it is written in.
#define SKIP_WITHOUT_CUDA()                                                                      \
  do {                                                                                           \
    if (!::llmft::cuda_backend_built())                                                          \
      GTEST_SKIP() << "no CUDA device: this binary was built without the CUDA backend "          \
                      "(-DLLMFT_CUDA=OFF)";                                                      \
    if (::llmft::cuda_device_count() == 0)                                                       \
      GTEST_SKIP() << "no CUDA device: no GPU is visible to the CUDA runtime";                   \
  } while (0)

namespace llmft {

// One CUDA context for the whole binary: creating one allocates the cuBLASLt
// workspace, which would dominate tests of small inputs. Deliberately never
// destroyed: a static destructor would run after the CUDA runtime may have
// begun tearing down at exit.
inline Context& cuda_context() {
  static Context* const context = Context::cuda(0, /*seed=*/0).release();
  return *context;
}

}  // namespace llmft
