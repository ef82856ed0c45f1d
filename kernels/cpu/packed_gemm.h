// A GEMM that reads bf16/f16/f32 operands as they are stored: it widens them
// to f32 while packing them into cache-sized panels, the copy every blocked
// GEMM makes anyway (Goto & van de Geijn, "Anatomy of High-Performance Matrix
// Multiplication", ACM TOMS 2008; BLIS's loop order), and multiplies the
// panels with an AVX2/FMA 6x16 register tile. The alternative, widening whole
// 16-bit operands into f32 copies for OpenBLAS's SGEMM (which packs them
// again), spends a store-bound pass over memory per operand per call: 13% of a
// bf16 SmolLM2 LoRA step on a 2-core Zen 3 (bench/RESULTS.md).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace llmft::cpu {

// One operand of C = alpha * op(A) op(B) + beta * C, row-major: element
// (row, column) of the stored matrix is at data[row * ld + column], and
// `trans` means the GEMM reads its transpose. dtype is f32, bf16 or f16.
struct PackedGemmOperand {
  const void* data;
  DType dtype;
  int64_t ld;
  bool trans;
};

// Whether this CPU runs the packed kernel (AVX2, FMA and F16C).
bool packed_gemm_supported();

// Whether the CPU GEMMs take the packed kernel for 16-bit operands. Chosen once:
// yes where the CPU runs it and has no AVX-512 (OpenBLAS's AVX-512 SGEMM on
// widened copies keeps those CPUs, where it was measured to meet the CPU
// targets); LLMFT_CPU_HALF_GEMM=packed|widen picks one instead (tests, bench).
bool packed_gemm_preferred();

// f32 scratch packed_gemm needs for this product on `threads` threads (its
// panels: at most 3.4 MiB per thread).
int64_t packed_gemm_scratch_floats(int64_t m, int64_t n, int64_t k, int threads);

// The threads packed_gemm uses from the calling context: omp_get_max_threads()
// outside a parallel region, 1 inside one.
int packed_gemm_threads();

// C[M, N] (f32, leading dimension ldc) = alpha * op(A)[M, K] op(B)[K, N] +
// beta * C; beta == 0 never reads C. Sums run in f32 in k order within
// blocks at most 256 deep (the same rounding class as SGEMM), the same for any
// `threads`. `scratch` holds packed_gemm_scratch_floats(m, n, k, threads)
// floats; large products are split into row (or column) bands across
// `threads` OpenMP threads. Requires
// packed_gemm_supported().
void packed_gemm(int64_t m, int64_t n, int64_t k, float alpha, const PackedGemmOperand& a, const PackedGemmOperand& b,
                 float beta, float* c, int64_t ldc, float* scratch, int threads);

}  // namespace llmft::cpu
