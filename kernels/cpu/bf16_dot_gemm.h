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

#include "kernels/cpu/packed_gemm.h"

namespace llmft::cpu::bf16_dot {

constexpr int64_t kTileRows = 12;     // MR: 24 of the 32 zmm registers accumulate
constexpr int64_t kTileColumns = 32;  // NR: two zmm of 16 f32 lanes

// Whether this CPU executes the native tile (AVX512F, AVX512BW and AVX512_BF16).
bool native_supported();

// f32-sized scratch one thread needs for its panels of a rows x columns x k
// product (bf16 pairs: half of the f32 kernel's bytes for the same blocks).
int64_t thread_floats(int64_t rows, int64_t columns, int64_t k);

// C[M, N] (f32) = alpha * op(A) op(B) + beta * C for bf16 A and B on the
// calling thread, with the native (VDPBF16PS) or the emulated tile. Each
// lane's sum adds its k products in pairs, the odd k of a pair first, each
// addition rounded to f32 (as VDPBF16PS does), within blocks 256 deep.
void gemm_one_thread(bool native, int64_t m, int64_t n, int64_t k, float alpha, const PackedGemmOperand& a,
                     const PackedGemmOperand& b, float beta, float* c, int64_t ldc, float* scratch);

}  // namespace llmft::cpu::bf16_dot
