#include "kernels/cpu/packed_gemm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/philox.h"
#include "kernels/cpu/avx2_transpose.h"
#include "kernels/cpu/bf16_dot_gemm.h"
#include "kernels/cpu/blocked_gemm.h"
#include "kernels/cpu/cpu_util.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LLMFT_PACKED_GEMM_X86 1
#endif

namespace llmft::cpu {
namespace {

// Blocking (Goto's names: MR x NR register tile, KC depth, MC x KC panel of A
// in L2, KC x NC panel of B in L3). A 6x16 tile takes 12 of the 16 ymm
// registers as accumulators, two for a row of B and one for a broadcast of A;
// a KC = 256 deep micro-panel of B (16 KiB) and of A (6 KiB) stay in a 32 KiB
// L1. MC and NC were picked on a 2-core Zen 3 (512 KiB L2) from 72..192 and
// 1024..4096; the differences were within that VM's noise but for NC below 2048.
constexpr int64_t kTileRows = 6;        // MR
constexpr int64_t kTileColumns = 16;    // NR
constexpr int64_t kDepthBlock = 256;    // KC
constexpr int64_t kRowBlock = 96;       // MC, a multiple of kTileRows
constexpr int64_t kColumnBlock = 3072;  // NC, a multiple of kTileColumns
constexpr Blocking kF32Blocking{1, kTileRows, kTileColumns, kDepthBlock, kRowBlock, kColumnBlock};

// Below this many multiply-adds a product stays on the calling thread.
constexpr double kParallelWork = 1 << 20;

// Stored element `index` widened (load_floats, one element).
float stored_element(const void* data, DType dtype, int64_t index) {
  float value;
  load_floats(data, dtype, index, 1, &value);
  return value;
}

// count stored elements from `index` widened into out[0, count), zeros after
// them up to out[width) (a panel slot's padding).
void load_padded(const void* data, DType dtype, int64_t index, int64_t count, int64_t width, float* out) {
  load_floats(data, dtype, index, count, out);
  std::fill(out + count, out + width, 0.0f);
}

#ifdef LLMFT_PACKED_GEMM_X86
#define LLMFT_AVX2 __attribute__((target("avx2,fma,f16c")))

// Eight consecutive stored elements widened to f32.
LLMFT_AVX2 inline __m256 load8(const void* data, DType dtype, int64_t index) {
  if (dtype == DType::kF32) return _mm256_loadu_ps(static_cast<const float*>(data) + index);
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(data) + index));
  if (dtype == DType::kBF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  return _mm256_cvtph_ps(bits);
}

// Packs op(A)[0, rows) x [0, depth) as panels of kTileRows rows, each stored
// k-major (for each k its 6 values), the last panel padded with zeros.
LLMFT_AVX2 void pack_a(const PackedGemmOperand& a, int64_t rows, int64_t depth, float* out) {
  for (int64_t panel_row = 0; panel_row < rows; panel_row += kTileRows) {
    float* panel = out + panel_row * depth;
    const int64_t height = std::min(kTileRows, rows - panel_row);
    if (!a.trans) {
      // Rows of A are contiguous in k: 8 k of the panel's rows (two zero
      // rows below them) are transposed into 8 slots of 6 values.
      int64_t kk = 0;
      if (height == kTileRows) {
        for (; kk + 8 <= depth; kk += 8) {
          __m256 block[8];
          for (int64_t row = 0; row < kTileRows; ++row)
            block[row] = load8(a.data, a.dtype, (panel_row + row) * a.ld + kk);
          block[6] = block[7] = _mm256_setzero_ps();
          transpose8x8(block);
          for (int64_t lane = 0; lane < 8; ++lane) {
            float* slot = panel + (kk + lane) * kTileRows;
            _mm_storeu_ps(slot, _mm256_castps256_ps128(block[lane]));
            _mm_storel_pi(reinterpret_cast<__m64*>(slot + 4), _mm256_extractf128_ps(block[lane], 1));
          }
        }
      }
      for (; kk < depth; ++kk) {  // the depth's tail and a ragged last panel, an element at a time
        float* slot = panel + kk * kTileRows;
        for (int64_t row = 0; row < kTileRows; ++row)
          slot[row] = row < height ? stored_element(a.data, a.dtype, (panel_row + row) * a.ld + kk) : 0.0f;
      }
    } else {
      // op(A)'s column k is a stored row: the panel's 6 values are contiguous.
      for (int64_t kk = 0; kk < depth; ++kk)
        load_padded(a.data, a.dtype, kk * a.ld + panel_row, height, kTileRows, panel + kk * kTileRows);
    }
  }
}

// Packs op(B)[0, depth) x [0, columns) as panels of kTileColumns columns, each
// stored k-major (for each k its 16 values), the last panel padded with zeros.
LLMFT_AVX2 void pack_b(const PackedGemmOperand& b, int64_t depth, int64_t columns, float* out) {
  for (int64_t panel_column = 0; panel_column < columns; panel_column += kTileColumns) {
    float* panel = out + panel_column * depth;
    const int64_t width = std::min(kTileColumns, columns - panel_column);
    if (!b.trans) {
      // op(B)'s row k is a stored row: the panel's 16 values are contiguous.
      for (int64_t kk = 0; kk < depth; ++kk) {
        const int64_t base = kk * b.ld + panel_column;
        float* slot = panel + kk * kTileColumns;
        if (width == kTileColumns) {
          _mm256_store_ps(slot, load8(b.data, b.dtype, base));
          _mm256_store_ps(slot + 8, load8(b.data, b.dtype, base + 8));
        } else {
          load_padded(b.data, b.dtype, base, width, kTileColumns, slot);
        }
      }
    } else {
      // op(B)'s column j is a stored row (a weight's row in x W^T): 8 k of
      // 8 columns at a time are transposed into 8 slots' halves.
      int64_t kk = 0;
      if (width == kTileColumns) {
        for (; kk + 8 <= depth; kk += 8) {
          for (int64_t half = 0; half < kTileColumns; half += 8) {
            __m256 block[8];
            for (int64_t column = 0; column < 8; ++column)
              block[column] = load8(b.data, b.dtype, (panel_column + half + column) * b.ld + kk);
            transpose8x8(block);
            for (int64_t lane = 0; lane < 8; ++lane)
              _mm256_store_ps(panel + (kk + lane) * kTileColumns + half, block[lane]);
          }
        }
      }
      for (; kk < depth; ++kk) {  // the depth's tail and a ragged last panel, an element at a time
        float* slot = panel + kk * kTileColumns;
        for (int64_t column = 0; column < kTileColumns; ++column)
          slot[column] = column < width ? stored_element(b.data, b.dtype, (panel_column + column) * b.ld + kk) : 0.0f;
      }
    }
  }
}

// C[6, 16] = alpha * (A panel x B panel) + beta * C (beta == 0: C not read).
// Each of the 12 accumulators sums its k products in order. The six rows are
// written out rather than looped over an array so that every accumulator is
// a named register: the loop is the whole GEMM's time.
LLMFT_AVX2 void multiply_tile(int64_t depth, const float* a, const float* b, float alpha, float beta, float* c,
                              int64_t ldc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t kk = 0; kk < depth; ++kk) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    __m256 x = _mm256_broadcast_ss(a);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(x, b0, c10);
    c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(x, b0, c20);
    c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(x, b0, c30);
    c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(x, b0, c40);
    c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(x, b0, c50);
    c51 = _mm256_fmadd_ps(x, b1, c51);
    a += kTileRows;
    b += kTileColumns;
  }
  const __m256 alpha8 = _mm256_set1_ps(alpha), beta8 = _mm256_set1_ps(beta);
  auto store_row = [&](float* row, __m256 low, __m256 high) LLMFT_AVX2 {
    low = _mm256_mul_ps(alpha8, low);
    high = _mm256_mul_ps(alpha8, high);
    if (beta != 0.0f) {
      low = _mm256_fmadd_ps(beta8, _mm256_loadu_ps(row), low);
      high = _mm256_fmadd_ps(beta8, _mm256_loadu_ps(row + 8), high);
    }
    _mm256_storeu_ps(row, low);
    _mm256_storeu_ps(row + 8, high);
  };
  store_row(c, c00, c01);
  store_row(c + ldc, c10, c11);
  store_row(c + 2 * ldc, c20, c21);
  store_row(c + 3 * ldc, c30, c31);
  store_row(c + 4 * ldc, c40, c41);
  store_row(c + 5 * ldc, c50, c51);
}

#endif  // LLMFT_PACKED_GEMM_X86

// How a product is split: `bands` bands of `band` rows (or columns) of C,
// one per thread, each with `thread_floats` of scratch for its panels (B's
// [depth_step, column_step] and A's [row_step, depth_step], 64-byte aligned).
struct Plan {
  bool split_rows = true;
  int64_t band = 0, bands = 1, thread_floats = 0;
};

bool is_bf16_dot(CpuGemmPath path) {
  return path == CpuGemmPath::kPackedBf16Dot || path == CpuGemmPath::kPackedBf16DotEmulated;
}

Plan make_plan(CpuGemmPath path, int64_t m, int64_t n, int64_t k, int threads) {
  const Blocking& blocking = is_bf16_dot(path) ? bf16_dot::kPairBlocking : kF32Blocking;
  Plan plan;
  int64_t rows = m, columns = n;
  if (threads > 1 && static_cast<double>(m) * n * k >= kParallelWork) {
    plan.split_rows = m >= n;
    const int64_t extent = plan.split_rows ? m : n;
    const int64_t multiple = plan.split_rows ? blocking.tile_rows : blocking.tile_columns;
    plan.band = ceil_div(ceil_div(extent, threads), multiple) * multiple;
    plan.bands = ceil_div(extent, plan.band);
    (plan.split_rows ? rows : columns) = plan.band;
  }
  plan.thread_floats = blocked_gemm_thread_floats(blocking, rows, columns, k);
  return plan;
}

bool cpu_runs_packed_kernel() {
#ifdef LLMFT_PACKED_GEMM_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

// A fixed 13 x 35 x 47 product of bf16 operands (ragged tiles, an odd depth)
// through the native tile and the emulated one. The native tile is taken by
// default only where they agree within f32 rounding noise, so a CPU whose
// VDPBF16PS behaves otherwise than this code expects cannot change results
// unnoticed (the tile has been checked on CPUs without the instruction only
// under its emulation).
bool native_bf16_dot_agrees_with_emulation() {
  constexpr int64_t m = 13, n = 35, k = 47;
  std::vector<uint16_t> a(m * k), b(n * k);
  for (uint64_t index = 0; index < a.size(); ++index)
    a[index] = float_to_bf16_bits(philox_uniform_at(1, index) * 2.0f - 1.0f);
  for (uint64_t index = 0; index < b.size(); ++index)
    b[index] = float_to_bf16_bits(philox_uniform_at(2, index) * 2.0f - 1.0f);
  std::vector<float> native(m * n), emulated(m * n);
  std::vector<float> scratch(blocked_gemm_thread_floats(bf16_dot::kPairBlocking, m, n, k));
  const PackedGemmOperand a_operand{a.data(), DType::kBF16, k, false}, b_operand{b.data(), DType::kBF16, k, true};
  bf16_dot::gemm_one_thread(true, m, n, k, 1.0f, a_operand, b_operand, 0.0f, native.data(), n, scratch.data());
  bf16_dot::gemm_one_thread(false, m, n, k, 1.0f, a_operand, b_operand, 0.0f, emulated.data(), n, scratch.data());
  for (int64_t index = 0; index < m * n; ++index) {
    if (!(std::fabs(native[index] - emulated[index]) <= 1e-4f * (1.0f + std::fabs(emulated[index])))) return false;
  }
  return true;
}

// How 16-bit operands are multiplied in this process.
struct HalfGemmChoice {
  CpuGemmPath bf16_pair;  // for bf16 x bf16
  CpuGemmPath others;     // for any other pair with a 16-bit operand
};

HalfGemmChoice choose_half_gemm() {
  const char* forced = std::getenv("LLMFT_CPU_HALF_GEMM");
  const std::string choice = forced != nullptr ? forced : "";
  bool packed_by_default = false;
#ifdef LLMFT_PACKED_GEMM_X86
  packed_by_default = cpu_runs_packed_kernel() && !__builtin_cpu_supports("avx512f");
#endif
  const CpuGemmPath others = packed_by_default ? CpuGemmPath::kPackedF32 : CpuGemmPath::kWidenForSgemm;
  if (choice == "widen") return {CpuGemmPath::kWidenForSgemm, CpuGemmPath::kWidenForSgemm};
  if (choice == "packed") {
    if (!cpu_runs_packed_kernel())
      throw_runtime("LLMFT_CPU_HALF_GEMM=packed: this CPU lacks AVX2, FMA or F16C, which the packed GEMM needs");
    return {CpuGemmPath::kPackedF32, CpuGemmPath::kPackedF32};
  }
  if (choice == "bf16dot") {
    if (!bf16_dot::native_supported()) {
      throw_runtime("LLMFT_CPU_HALF_GEMM=bf16dot: this CPU lacks AVX512F, AVX512BW or AVX512_BF16, which the "
                    "VDPBF16PS tile needs (bf16dot-emulated runs it in portable code)");
    }
    return {CpuGemmPath::kPackedBf16Dot, others};
  }
  if (choice == "bf16dot-emulated") {
    return {CpuGemmPath::kPackedBf16DotEmulated,
            cpu_runs_packed_kernel() ? CpuGemmPath::kPackedF32 : CpuGemmPath::kWidenForSgemm};
  }
  if (!choice.empty()) {
    throw_runtime("LLMFT_CPU_HALF_GEMM: expected packed, widen, bf16dot or bf16dot-emulated, found '", choice, "'");
  }
  if (bf16_dot::native_supported()) {
    if (native_bf16_dot_agrees_with_emulation()) return {CpuGemmPath::kPackedBf16Dot, others};
    std::fprintf(stderr,
                 "llmft: warning: this CPU's VDPBF16PS disagreed with its emulation on a test product; bf16 GEMMs "
                 "take the %s path instead\n",
                 cpu_gemm_path_name(others));
  }
  return {others, others};
}

const HalfGemmChoice& half_gemm_choice() {
  static const HalfGemmChoice choice = choose_half_gemm();
  return choice;
}

}  // namespace

const char* cpu_gemm_path_name(CpuGemmPath path) {
  switch (path) {
    case CpuGemmPath::kSgemm: return "sgemm";
    case CpuGemmPath::kWidenForSgemm: return "widen";
    case CpuGemmPath::kPackedF32: return "packed";
    case CpuGemmPath::kPackedBf16Dot: return "bf16dot";
    case CpuGemmPath::kPackedBf16DotEmulated: return "bf16dot-emulated";
  }
  return "unknown";
}

CpuGemmPath cpu_gemm_path(DType a, DType b) {
  if (a == DType::kF32 && b == DType::kF32) return CpuGemmPath::kSgemm;
  const HalfGemmChoice& choice = half_gemm_choice();
  return a == DType::kBF16 && b == DType::kBF16 ? choice.bf16_pair : choice.others;
}

bool is_packed_path(CpuGemmPath path) { return path == CpuGemmPath::kPackedF32 || is_bf16_dot(path); }

bool packed_gemm_supported() {
  static const bool supported = cpu_runs_packed_kernel();
  return supported;
}

bool bf16_dot_supported() {
  static const bool supported = bf16_dot::native_supported();
  return supported;
}

int64_t packed_gemm_scratch_floats(CpuGemmPath path, int64_t m, int64_t n, int64_t k, int threads) {
  if (m == 0 || n == 0) return 0;
  const Plan plan = make_plan(path, m, n, k, std::max(threads, 1));
  return plan.bands * plan.thread_floats;
}

int packed_gemm_threads() { return omp_in_parallel() ? 1 : omp_get_max_threads(); }

void packed_gemm(CpuGemmPath path, int64_t m, int64_t n, int64_t k, float alpha, const PackedGemmOperand& a,
                 const PackedGemmOperand& b, float beta, float* c, int64_t ldc, float* scratch, int threads) {
  if (!is_packed_path(path)) throw_runtime("packed_gemm: '", cpu_gemm_path_name(path), "' is not a packed path");
  for (const PackedGemmOperand* operand : {&a, &b}) {
    if (operand->dtype != DType::kF32 && operand->dtype != DType::kBF16 && operand->dtype != DType::kF16)
      throw_runtime("packed_gemm: operands must be f32, bf16 or f16, found ", dtype_name(operand->dtype));
  }
  const bool bf16_pairs = is_bf16_dot(path);
  if (bf16_pairs && (a.dtype != DType::kBF16 || b.dtype != DType::kBF16)) {
    throw_runtime("packed_gemm: the ", cpu_gemm_path_name(path), " path needs bf16 operands, found a ",
                  dtype_name(a.dtype), " and b ", dtype_name(b.dtype));
  }
  if (path == CpuGemmPath::kPackedBf16Dot && !bf16_dot_supported())
    throw_runtime("packed_gemm: this CPU lacks AVX512F, AVX512BW or AVX512_BF16, which the bf16dot path needs");
  if (path == CpuGemmPath::kPackedF32 && !packed_gemm_supported())
    throw_runtime("packed_gemm: this CPU lacks AVX2, FMA or F16C");
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum: C = beta * C
    scale_rows(m, n, beta, c, ldc);
    return;
  }
  const auto one_thread = [&](int64_t rows, int64_t columns, const PackedGemmOperand& a_band,
                              const PackedGemmOperand& b_band, float* c_band, float* own_scratch) {
    if (bf16_pairs) {
      bf16_dot::gemm_one_thread(path == CpuGemmPath::kPackedBf16Dot, rows, columns, k, alpha, a_band, b_band, beta,
                                c_band, ldc, own_scratch);
      return;
    }
#ifdef LLMFT_PACKED_GEMM_X86
    blocked_gemm<kF32Blocking, float>(pack_a, pack_b, multiply_tile, rows, columns, k, alpha, a_band, b_band, beta,
                                      c_band, ldc, own_scratch);
#endif
  };
  const Plan plan = make_plan(path, m, n, k, std::max(threads, 1));
  if (plan.bands == 1) {
    one_thread(m, n, a, b, c, scratch);
    return;
  }
  // One band of C's rows (or columns, when C is wide) per thread, each an
  // independent product with its own panels, as cpu_util.cc's sgemm splits
  // OpenBLAS calls. Bands are whole tiles; every element's sum is the same
  // whichever band computes it, so the result does not depend on `threads`.
  const int64_t extent = plan.split_rows ? m : n;
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(plan.bands))
  for (int64_t index = 0; index < plan.bands; ++index) {
    const int64_t begin = index * plan.band, size = std::min(plan.band, extent - begin);
    float* own_scratch = scratch + index * plan.thread_floats;
    if (plan.split_rows) one_thread(size, n, a.at(begin, 0), b, c + begin * ldc, own_scratch);
    else one_thread(m, size, a, b.at(0, begin), c + begin, own_scratch);
  }
}

}  // namespace llmft::cpu
