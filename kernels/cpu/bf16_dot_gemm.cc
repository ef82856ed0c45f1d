#include "kernels/cpu/bf16_dot_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/avx2_transpose.h"
#include "kernels/cpu/blocked_gemm.h"
#include "kernels/cpu/cpu_util.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LLMFT_BF16_DOT_X86 1
#endif

namespace llmft::cpu::bf16_dot {
namespace {

constexpr int64_t kTileRows = kPairBlocking.tile_rows, kTileColumns = kPairBlocking.tile_columns;

// A pair from two stored bf16 values: the even k in the low half, as
// VDPBF16PS reads a dword's bf16[2j] and bf16[2j + 1].
uint32_t make_pair(uint16_t even, uint16_t odd) { return uint32_t{even} | uint32_t{odd} << 16; }

#ifdef LLMFT_BF16_DOT_X86
#define LLMFT_PACK_AVX2 __attribute__((target("avx2")))

bool cpu_has_avx2() {
  static const bool avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return avx2;
}

// Pairs [pair, pair + 8) of 8 stored rows (8 lanes from out's column 0):
// eight 32-byte loads, one 8x8 transpose of the pairs, eight stores.
LLMFT_PACK_AVX2 void pack_8x8_along_rows(const uint16_t* data, int64_t ld, int64_t pair, int64_t width,
                                         uint32_t* out) {
  __m256 block[8];
  for (int lane = 0; lane < 8; ++lane)
    block[lane] = _mm256_loadu_ps(reinterpret_cast<const float*>(data + lane * ld + 2 * pair));
  transpose8x8(block);
  for (int index = 0; index < 8; ++index)
    _mm256_storeu_ps(reinterpret_cast<float*>(out + (pair + index) * width), block[index]);
}

// 16 lanes of one pair slot from two stored rows: their 16-bit values
// interleaved (unpack within 128-bit halves, then put the halves in order).
LLMFT_PACK_AVX2 void pack_16_across_rows(const uint16_t* even, const uint16_t* odd, uint32_t* slot) {
  const __m256i evens = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(even));
  const __m256i odds = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd));
  const __m256i low = _mm256_unpacklo_epi16(evens, odds), high = _mm256_unpackhi_epi16(evens, odds);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(slot), _mm256_permute2x128_si256(low, high, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(slot + 8), _mm256_permute2x128_si256(low, high, 0x31));
}

// The same for 8 lanes (an A^T panel's 12 = 8 + 4), in 128-bit registers.
LLMFT_PACK_AVX2 void pack_8_across_rows(const uint16_t* even, const uint16_t* odd, uint32_t* slot) {
  const __m128i evens = _mm_loadu_si128(reinterpret_cast<const __m128i*>(even));
  const __m128i odds = _mm_loadu_si128(reinterpret_cast<const __m128i*>(odd));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(slot), _mm_unpacklo_epi16(evens, odds));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(slot + 4), _mm_unpackhi_epi16(evens, odds));
}
#endif

// A panel of `width` lanes over `depth` k: pair p of lane l at
// out[p * width + l], lanes from `lanes` on zero; an odd depth's last pair
// has a zero odd half. Here each lane is a stored row whose k are
// contiguous (rows of A, or of B^T: a weight's rows in x W^T), so a pair is
// two adjacent stored values, and the panel is a transpose of pairs.
void pack_along_rows(const uint16_t* data, int64_t ld, int64_t lanes, int64_t width, int64_t depth, uint32_t* out) {
  const int64_t whole = depth / 2, pairs = ceil_div(depth, 2);
  for (int64_t lane_begin = 0; lane_begin < lanes;) {
    // Eight lanes at a time where the CPU has AVX2; the pairs past the last
    // whole 8 and lanes past the last whole 8 one at a time.
    int64_t lane_count = 1, pair_begin = 0;
#ifdef LLMFT_BF16_DOT_X86
    if (cpu_has_avx2() && lane_begin + 8 <= lanes) {
      lane_count = 8;
      for (; pair_begin + 8 <= whole; pair_begin += 8)
        pack_8x8_along_rows(data + lane_begin * ld, ld, pair_begin, width, out + lane_begin);
    }
#endif
    for (int64_t lane = lane_begin; lane < lane_begin + lane_count; ++lane) {
      const uint16_t* row = data + lane * ld;
      for (int64_t pair = pair_begin; pair < whole; ++pair) {
        uint32_t value;
        std::memcpy(&value, row + 2 * pair, sizeof value);  // little-endian: k = 2p low
        out[pair * width + lane] = value;
      }
      if (whole < pairs) out[whole * width + lane] = make_pair(row[depth - 1], 0);
    }
    lane_begin += lane_count;
  }
  for (int64_t pair = 0; pair < pairs; ++pair) std::fill(out + pair * width + lanes, out + (pair + 1) * width, 0u);
}

// The same panel where each lane is a stored column: k runs down the stored
// rows (rows of B, or of A^T), so pair p of lane l interleaves stored rows
// 2p and 2p + 1 at column l.
void pack_across_rows(const uint16_t* data, int64_t ld, int64_t lanes, int64_t width, int64_t depth, uint32_t* out) {
  const int64_t pairs = ceil_div(depth, 2);
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const uint16_t* even = data + 2 * pair * ld;
    const uint16_t* odd = 2 * pair + 1 < depth ? even + ld : nullptr;
    uint32_t* slot = out + pair * width;
    int64_t lane = 0;
    if (odd != nullptr) {
#ifdef LLMFT_BF16_DOT_X86
      if (cpu_has_avx2()) {
        for (; lane + 16 <= lanes; lane += 16) pack_16_across_rows(even + lane, odd + lane, slot + lane);
        for (; lane + 8 <= lanes; lane += 8) pack_8_across_rows(even + lane, odd + lane, slot + lane);
      }
#endif
      for (; lane < lanes; ++lane) slot[lane] = make_pair(even[lane], odd[lane]);
    } else {
      for (; lane < lanes; ++lane) slot[lane] = make_pair(even[lane], 0);
    }
    std::fill(slot + lanes, slot + width, 0u);
  }
}

// `extent` lanes of x over `depth` k as panels of `width` lanes. A lane is
// a stored row where `lanes_are_stored_rows` (A's rows; B's columns when op(B)
// = B^T), else a stored column.
void pack_panels(const PackedGemmOperand& x, int64_t extent, int64_t depth, int64_t width,
                 bool lanes_are_stored_rows, uint32_t* out) {
  const auto* data = static_cast<const uint16_t*>(x.data);
  const int64_t pairs = ceil_div(depth, 2);
  for (int64_t panel_lane = 0; panel_lane < extent; panel_lane += width) {
    const int64_t lanes = std::min(width, extent - panel_lane);
    uint32_t* panel = out + panel_lane * pairs;
    if (lanes_are_stored_rows) pack_along_rows(data + panel_lane * x.ld, x.ld, lanes, width, depth, panel);
    else pack_across_rows(data + panel_lane, x.ld, lanes, width, depth, panel);
  }
}

// op(A)[0, rows) x [0, depth) as panels of kTileRows lanes.
void pack_a(const PackedGemmOperand& a, int64_t rows, int64_t depth, uint32_t* out) {
  pack_panels(a, rows, depth, kTileRows, !a.trans, out);
}

// op(B)[0, depth) x [0, columns) as panels of kTileColumns lanes.
void pack_b(const PackedGemmOperand& b, int64_t depth, int64_t columns, uint32_t* out) {
  pack_panels(b, columns, depth, kTileColumns, b.trans, out);
}

// ---- The tile with VDPBF16PS emulated ------------------------------------------
namespace emulated {

#define LLMFT_TILE_TARGET
struct Acc {
  float lane[16];
};
struct Pairs {
  uint32_t lane[16];
};

inline Acc zero() { return Acc{}; }
inline Pairs load_pairs(const uint32_t* data) {
  Pairs pairs;
  std::memcpy(pairs.lane, data, sizeof pairs.lane);
  return pairs;
}
inline Pairs broadcast(uint32_t pair) {
  Pairs pairs;
  std::fill(pairs.lane, pairs.lane + 16, pair);
  return pairs;
}

// The f32 value of bf16 bits placed in a word's high half, a denormal read
// as zero of its sign (VDPBF16PS's DAZ). Branch-free, so the lane loops
// below vectorize.
inline float bf16_value(uint32_t high_half) {
  const uint32_t bits = (high_half & 0x7f800000u) == 0 ? high_half & 0x80000000u : high_half;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// A sum flushed to zero of its sign when denormal (VDPBF16PS's FTZ).
inline float flush(float value) { return std::fabs(value) < 0x1p-126f ? std::copysign(0.0f, value) : value; }

// The product of two bf16 values is exact in f32 (8 + 8 significant bits),
// so each step rounds once, in the addition, as the instruction does.
inline Acc dot(Acc acc, const Pairs& a, const Pairs& b) {
  for (int lane = 0; lane < 16; ++lane) {
    const float a_odd = bf16_value(a.lane[lane] & 0xffff0000u), b_odd = bf16_value(b.lane[lane] & 0xffff0000u);
    const float a_even = bf16_value(a.lane[lane] << 16), b_even = bf16_value(b.lane[lane] << 16);
    const float sum = flush(acc.lane[lane] + a_odd * b_odd);
    acc.lane[lane] = flush(sum + a_even * b_even);
  }
  return acc;
}

// alpha * x, then beta * row + that fused, as the native _mm512_fmadd_ps.
inline void store_row(float* row, const Acc& low, const Acc& high, float alpha, float beta) {
  for (const Acc* half : {&low, &high}) {
    for (int lane = 0; lane < 16; ++lane) {
      const float product = alpha * half->lane[lane];
      row[lane] = beta != 0.0f ? std::fma(beta, row[lane], product) : product;
    }
    row += 16;
  }
}

#include "kernels/cpu/bf16_dot_tile.inc"
#undef LLMFT_TILE_TARGET

}  // namespace emulated

// ---- The tile with VDPBF16PS ----------------------------------------------------
#ifdef LLMFT_BF16_DOT_X86
namespace native {

#define LLMFT_TILE_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))
using Acc = __m512;
using Pairs = __m512i;

LLMFT_TILE_TARGET inline Acc zero() { return _mm512_setzero_ps(); }
LLMFT_TILE_TARGET inline Pairs load_pairs(const uint32_t* data) { return _mm512_load_si512(data); }
LLMFT_TILE_TARGET inline Pairs broadcast(uint32_t pair) { return _mm512_set1_epi32(static_cast<int>(pair)); }
LLMFT_TILE_TARGET inline Acc dot(Acc acc, Pairs a, Pairs b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a), reinterpret_cast<__m512bh>(b));
}
LLMFT_TILE_TARGET inline void store_row(float* row, Acc low, Acc high, float alpha, float beta) {
  const __m512 alpha16 = _mm512_set1_ps(alpha);
  low = _mm512_mul_ps(alpha16, low);
  high = _mm512_mul_ps(alpha16, high);
  if (beta != 0.0f) {
    const __m512 beta16 = _mm512_set1_ps(beta);
    low = _mm512_fmadd_ps(beta16, _mm512_loadu_ps(row), low);
    high = _mm512_fmadd_ps(beta16, _mm512_loadu_ps(row + 16), high);
  }
  _mm512_storeu_ps(row, low);
  _mm512_storeu_ps(row + 16, high);
}

#include "kernels/cpu/bf16_dot_tile.inc"
#undef LLMFT_TILE_TARGET

}  // namespace native
#endif  // LLMFT_BF16_DOT_X86

using TileFunction = void (*)(int64_t, const uint32_t*, const uint32_t*, float, float, float*, int64_t);

}  // namespace

bool native_supported() {
#ifdef LLMFT_BF16_DOT_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

void gemm_one_thread(bool native, int64_t m, int64_t n, int64_t k, float alpha, const PackedGemmOperand& a,
                     const PackedGemmOperand& b, float beta, float* c, int64_t ldc, float* scratch) {
  TileFunction tile_function = emulated::multiply_tile;
#ifdef LLMFT_BF16_DOT_X86
  if (native) tile_function = native::multiply_tile;
#else
  if (native) throw_runtime("bf16_dot: the native tile needs an x86-64 build");
#endif
  blocked_gemm<kPairBlocking, uint32_t>(pack_a, pack_b, tile_function, m, n, k, alpha, a, b, beta, c, ldc, scratch);
}

}  // namespace llmft::cpu::bf16_dot
