#include "core/philox.h"

#include <cmath>

namespace llmft {

__extension__ typedef unsigned __int128 UInt128;

float PhiloxGenerator::next_normal() {
  // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
  float u1 = 1.0f - next_uniform();
  float u2 = next_uniform();
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
}

uint64_t PhiloxGenerator::next_below(uint64_t bound) {
  if (bound <= 1) return 0;
  // Lemire, "Fast Random Integer Generation in an Interval" (2019), 64-bit.
  while (true) {
    UInt128 product = static_cast<UInt128>(next_u64()) * bound;
    uint64_t low = static_cast<uint64_t>(product);
    if (low >= bound || low >= (-bound) % bound) return static_cast<uint64_t>(product >> 64);
  }
}

}  // namespace llmft
