// Element-wise reductions of host buffers, shared by the in-process
// communicator and the MPI user operations for 16-bit floats (MPI has no
// bf16/f16 types): accumulator[i] = accumulator[i] (op) input[i]. 16-bit
// values are widened to fp32, combined and rounded once (round to nearest
// even, core/half.h); f32 sums are plain fp32 additions; integers exact.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "parallel/communicator.h"

namespace llmft::parallel {

void reduce_host(void* accumulator, const void* input, int64_t count, DType dtype, ReduceOp op);

}  // namespace llmft::parallel
