// Goto and van de Geijn's loop order ("Anatomy of High-Performance Matrix
// Multiplication", ACM TOMS 2008; BLIS's), shared by the packed GEMM's tiles
// (kernels/cpu/packed_gemm.cc's f32 tile, kernels/cpu/bf16_dot_gemm.cc's bf16
// pair tile): B's panel (NC columns, KC deep) is packed once per depth block,
// A's (MC rows) once per row block, and tiles multiply the panels in between;
// edge tiles go through a local tile and are added element by element.
// Internal to kernels/cpu.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/packed_gemm.h"

namespace llmft::cpu {

// Splits `extent` into the fewest blocks of at most `limit`, as equal as
// possible and rounded up to a multiple of `multiple` (a 577-deep product is
// three blocks of 196, 196 and 185, not 256, 256 and 65: short blocks pay
// the tile's load and store of C for little work).
inline int64_t balanced_step(int64_t extent, int64_t limit, int64_t multiple) {
  const int64_t blocks = (extent + limit - 1) / limit;
  const int64_t step = (extent + blocks - 1) / blocks;
  return (step + multiple - 1) / multiple * multiple;
}

// A tile's register shape and cache blocks, in k (depth) and in rows and
// columns of C (Goto's MR, NR, KC, MC, NC).
struct Blocking {
  int64_t depth_per_slot;  // the k one packed slot holds: 1 (an f32) or 2 (a pair of bf16)
  int64_t tile_rows, tile_columns;
  int64_t depth_block;  // a multiple of depth_per_slot
  int64_t row_block, column_block;  // multiples of the tile
};

// A tile comes with two packers and the tile itself, all over one Slot type
// (float-sized):
//   pack_a(a, rows, depth, Slot* out)     op(A)[rows, depth] as panels of tile_rows lanes,
//   pack_b(b, depth, columns, Slot* out)  op(B)[depth, columns] as panels of tile_columns lanes,
//                                         each panel slot-major (for each slot, its lanes), edges zero;
//   multiply_tile(slots, a_panel, b_panel, alpha, beta, c, ldc)
//                                         C[tile] = alpha * (A panel x B panel) + beta * C, beta == 0 not reading C.

// The panels' floats (slots are float-sized) one thread needs for its
// rows x columns x k product: a block is at most min(limit, the extent
// rounded up to whole tiles); 16 more for the 64-byte alignment.
inline int64_t blocked_gemm_thread_floats(const Blocking& blocking, int64_t rows, int64_t columns, int64_t k) {
  const int64_t depth = balanced_step(std::max<int64_t>(k, 1), blocking.depth_block, blocking.depth_per_slot);
  const int64_t slots = (depth + blocking.depth_per_slot - 1) / blocking.depth_per_slot;
  const auto whole_tiles = [](int64_t extent, int64_t tile) { return (extent + tile - 1) / tile * tile; };
  return slots * std::min(blocking.column_block, whole_tiles(columns, blocking.tile_columns)) +
         slots * std::min(blocking.row_block, whole_tiles(rows, blocking.tile_rows)) + 16;
}

// C[M, N] (f32) = alpha * op(A) op(B) + beta * C on the calling thread, in
// `scratch` of blocked_gemm_thread_floats(kBlocking, m, n, k) floats. Later
// depth blocks add onto the earlier ones' sums (beta 1), so every element's
// sum runs over k in the same order whatever the bands and blocks around it.
template <Blocking kBlocking, class Slot, class PackA, class PackB, class Tile>
void blocked_gemm(PackA pack_a, PackB pack_b, Tile multiply_tile, int64_t m, int64_t n, int64_t k, float alpha,
                  const PackedGemmOperand& a, const PackedGemmOperand& b, float beta, float* c, int64_t ldc,
                  float* scratch) {
  static_assert(sizeof(Slot) == sizeof(float));
  constexpr int64_t kRows = kBlocking.tile_rows, kColumns = kBlocking.tile_columns;
  const int64_t column_step = balanced_step(n, kBlocking.column_block, kColumns);
  const int64_t depth_step = balanced_step(k, kBlocking.depth_block, kBlocking.depth_per_slot);
  const int64_t row_step = balanced_step(m, kBlocking.row_block, kRows);
  const auto slots_of = [](int64_t depth) { return (depth + kBlocking.depth_per_slot - 1) / kBlocking.depth_per_slot; };
  auto* packed_b = reinterpret_cast<Slot*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t{63});
  // A multiple of 16 slots (NC is a multiple of the tile's 16 or 32 columns):
  // A's panels stay 64-byte aligned.
  Slot* packed_a = packed_b + slots_of(depth_step) * column_step;
  alignas(64) float tile[kRows * kColumns];
  for (int64_t column_begin = 0; column_begin < n; column_begin += column_step) {
    const int64_t columns = std::min(column_step, n - column_begin);
    for (int64_t depth_begin = 0; depth_begin < k; depth_begin += depth_step) {
      const int64_t depth = std::min(depth_step, k - depth_begin), slots = slots_of(depth);
      const float block_beta = depth_begin == 0 ? beta : 1.0f;
      pack_b(b.at(depth_begin, column_begin), depth, columns, packed_b);
      for (int64_t row_begin = 0; row_begin < m; row_begin += row_step) {
        const int64_t rows = std::min(row_step, m - row_begin);
        pack_a(a.at(row_begin, depth_begin), rows, depth, packed_a);
        for (int64_t tile_column = 0; tile_column < columns; tile_column += kColumns) {
          const int64_t width = std::min(kColumns, columns - tile_column);
          const Slot* b_panel = packed_b + tile_column * slots;
          for (int64_t tile_row = 0; tile_row < rows; tile_row += kRows) {
            const int64_t height = std::min(kRows, rows - tile_row);
            const Slot* a_panel = packed_a + tile_row * slots;
            float* c_tile = c + (row_begin + tile_row) * ldc + column_begin + tile_column;
            if (height == kRows && width == kColumns) {
              multiply_tile(slots, a_panel, b_panel, alpha, block_beta, c_tile, ldc);
              continue;
            }
            multiply_tile(slots, a_panel, b_panel, 1.0f, 0.0f, tile, kColumns);
            for (int64_t row = 0; row < height; ++row) {
              float* c_row = c_tile + row * ldc;
              for (int64_t column = 0; column < width; ++column) {
                // alpha times the sum, then beta C fused onto it, as the tiles store.
                const float product = alpha * tile[row * kColumns + column];
                c_row[column] = block_beta == 0.0f ? product : std::fma(block_beta, c_row[column], product);
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace llmft::cpu
