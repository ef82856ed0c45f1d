// Host entry points of small CUDA kernels used by host-only code in
// kernels/cuda (gemm.cc is plain C++ so it compiles with the host compiler;
// its helper kernels live in linear_bias.cu). Shapes are checked by callers.
#pragma once

#include <cstdint>

#include "core/context.h"
#include "core/tensor.h"

namespace llmft::cuda {

// y[r, c] += bias[c] for a row-major [rows, columns] y (any float dtypes),
// computed in f32 and rounded once into y.
void launch_add_bias_rows(Context& context, Tensor& y, const Tensor& bias, int64_t rows, int64_t columns);

// dbias[c] += sum over r of dy[r, c], f32 accumulation in a fixed order
// (deterministic), one rounding into dbias.
void launch_accumulate_column_sums(Context& context, const Tensor& dy, Tensor& dbias, int64_t rows, int64_t columns);

}  // namespace llmft::cuda
