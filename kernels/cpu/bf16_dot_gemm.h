// The packed GEMM's kernel for two bf16 operands on CPUs with AVX512_BF16:
// operands are packed as stored, two consecutive k of a row or column in one
// 32-bit pair (no widening), and a 12 x 32 register tile multiplies the
// panels with VDPBF16PS, which adds two bf16 products per f32 lane per
// instruction (Intel 64 and IA-32 Architectures Software Developer's Manual,
// vol. 2, VDPBF16PS): twice the multiply-adds of an f32 FMA of the same width.
// The same tile also runs with VDPBF16PS emulated in portable C++ (the same
// pairing, order and rounding), which is how it is tested on CPUs without the
// instruction, as the CUDA kernels are tested under their CPU emulation.
// Internal to kernels/cpu/packed_gemm.cc.
#pragma once

#include <cstdint>

#include "kernels/cpu/blocked_gemm.h"
#include "kernels/cpu/packed_gemm.h"

namespace llmft::cpu::bf16_dot {

// The tile and its blocks (kernels/cpu/blocked_gemm.h), in elements of k. A
// 12 x 32 tile keeps 24 of the 32 zmm registers as accumulators (two zmm of
// 16 f32 lanes per row). Blocks as the f32 kernel's
// (kernels/cpu/packed_gemm.cc): a 256-deep micro-panel of B is 128 pairs x
// 32 columns (16 KiB) and of A 128 x 12 (6 KiB), in a 32 KiB L1; KC is even,
// so pairs never straddle blocks. Pairs take half an f32's bytes, so the A
// block is 192 rows for the f32 kernel's 96 rows' bytes in L2. Not tuned: no
// CPU with the instruction has run it.
constexpr Blocking kPairBlocking{/*depth_per_slot=*/2, /*tile_rows=*/12, /*tile_columns=*/32,
                                 /*depth_block=*/256, /*row_block=*/192, /*column_block=*/3072};

// Whether this CPU executes the native tile (AVX512F, AVX512BW and AVX512_BF16).
bool native_supported();

// C[M, N] (f32) = alpha * op(A) op(B) + beta * C for bf16 A and B on the
// calling thread, with the native (VDPBF16PS) or the emulated tile, in
// blocked_gemm_thread_floats(kPairBlocking, m, n, k) floats of scratch. Each
// lane's sum adds its k products in pairs, the odd k of a pair first, each
// addition rounded to f32 (as VDPBF16PS does), within blocks 256 deep.
void gemm_one_thread(bool native, int64_t m, int64_t n, int64_t k, float alpha, const PackedGemmOperand& a,
                     const PackedGemmOperand& b, float beta, float* c, int64_t ldc, float* scratch);

}  // namespace llmft::cpu::bf16_dot
