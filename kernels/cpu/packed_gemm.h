// A GEMM that reads bf16/f16/f32 operands as they are stored: it widens them
// to f32 while packing them into cache-sized panels, the copy every blocked
// GEMM makes anyway (Goto & van de Geijn, "Anatomy of High-Performance Matrix
// Multiplication", ACM TOMS 2008; BLIS's loop order), and multiplies the
// panels with an AVX2/FMA 6x16 register tile. Two bf16 operands can instead
// be packed as stored and multiplied with AVX512_BF16's VDPBF16PS
// (kernels/cpu/bf16_dot_gemm.h). The alternative, widening whole
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

  // The operand starting at op(X)'s element (row, column).
  PackedGemmOperand at(int64_t row, int64_t column) const {
    const int64_t offset = trans ? column * ld + row : row * ld + column;
    return {static_cast<const char*>(data) + offset * dtype_size(dtype), dtype, ld, trans};
  }
};

// How the CPU GEMMs (kernels/cpu/gemm.cc) multiply a pair of operand dtypes.
enum class CpuGemmPath {
  kSgemm,          // both f32: OpenBLAS SGEMM
  kWidenForSgemm,  // 16-bit operands widened into f32 copies for SGEMM
  kPackedF32,      // packed_gemm's AVX2/FMA f32 tile; 16-bit operands widened while packing
  kPackedBf16Dot,  // both bf16: packed as stored in pairs, AVX512_BF16 VDPBF16PS tile
  kPackedBf16DotEmulated,  // the same tile with VDPBF16PS emulated in portable C++
};

// The path for operands of dtypes a and b on this CPU, chosen once per
// process: both bf16 take the VDPBF16PS tile where the CPU has AVX512_BF16
// (and its self-check on first use agreed with the emulation); other 16-bit
// operands take the f32 tile on AVX2 CPUs without AVX-512, and f32 copies
// for OpenBLAS's AVX-512 SGEMM where it has AVX-512 (measured to meet the
// CPU targets there). LLMFT_CPU_HALF_GEMM=packed|widen|bf16dot|bf16dot-emulated
// forces one (tests, bench): packed and widen for every 16-bit pair, the
// bf16dot ones for bf16 x bf16 with the others as by default (packed where
// the CPU runs it, for bf16dot-emulated).
CpuGemmPath cpu_gemm_path(DType a, DType b);

// The path's name as LLMFT_CPU_HALF_GEMM spells it ("sgemm" for f32 pairs).
const char* cpu_gemm_path_name(CpuGemmPath path);

// Whether `path` is one of packed_gemm's (the operands are read as stored).
bool is_packed_path(CpuGemmPath path);

// Whether this CPU runs the f32 tile (AVX2, FMA and F16C).
bool packed_gemm_supported();

// Whether this CPU runs the VDPBF16PS tile (AVX512F, AVX512BW, AVX512_BF16).
bool bf16_dot_supported();

// f32 scratch packed_gemm needs for this product on `threads` threads (its
// panels: at most 3.4 MiB per thread).
int64_t packed_gemm_scratch_floats(CpuGemmPath path, int64_t m, int64_t n, int64_t k, int threads);

// The threads packed_gemm uses from the calling context: omp_get_max_threads()
// outside a parallel region, 1 inside one.
int packed_gemm_threads();

// C[M, N] (f32, leading dimension ldc) = alpha * op(A)[M, K] op(B)[K, N] +
// beta * C with one of the packed paths; beta == 0 never reads C. Sums run in
// f32 in k order within blocks at most 256 deep (the same rounding class as
// SGEMM; the bf16 paths add two products per step, the odd k first, each
// addition rounded), the same for any `threads`. `scratch` holds
// packed_gemm_scratch_floats(path, m, n, k, threads) floats; large products
// are split into row (or column) bands across `threads` OpenMP threads.
// kPackedF32 requires packed_gemm_supported(), kPackedBf16Dot
// bf16_dot_supported(); both bf16 paths require bf16 operands.
void packed_gemm(CpuGemmPath path, int64_t m, int64_t n, int64_t k, float alpha, const PackedGemmOperand& a,
                 const PackedGemmOperand& b, float beta, float* c, int64_t ldc, float* scratch, int threads);

}  // namespace llmft::cpu
