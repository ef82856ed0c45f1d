// Philox4x32-10 counter-based random numbers (Salmon et al., "Parallel Random
// Numbers: As Easy as 1, 2, 3", SC'11; constants from Random123's philox.h).
// A draw is a pure function of (key, counter), so the CPU and CUDA backends
// produce identical streams and a recomputed forward (gradient checkpointing,
// dropout backward) regenerates the same numbers without storing them.
#pragma once

#include <cstdint>

#include "core/half.h"  // LLMFT_HOST_DEVICE

namespace llmft {

struct PhiloxCounter {
  uint32_t word[4];
};
struct PhiloxKey {
  uint32_t word[2];
};

LLMFT_HOST_DEVICE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t product = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// Ten rounds of Philox4x32 on `counter` with `key`.
LLMFT_HOST_DEVICE PhiloxCounter philox4x32_10(PhiloxCounter counter, PhiloxKey key) {
  constexpr uint32_t kMultiplier0 = 0xD2511F53u, kMultiplier1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kMultiplier0, counter.word[0], hi0, lo0);
    philox_mulhilo(kMultiplier1, counter.word[2], hi1, lo1);
    PhiloxCounter next;
    next.word[0] = hi1 ^ counter.word[1] ^ key.word[0];
    next.word[1] = lo1;
    next.word[2] = hi0 ^ counter.word[3] ^ key.word[1];
    next.word[3] = lo0;
    counter = next;
    key.word[0] += kWeyl0;
    key.word[1] += kWeyl1;
  }
  return counter;
}

// Uniform float in [0, 1) from the top 24 bits of a 32-bit draw.
LLMFT_HOST_DEVICE float philox_uniform(uint32_t bits) { return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f); }

// The four 32-bit draws for block `block_index` of the stream keyed by `seed`.
// Element i of a stream uses word i % 4 of block i / 4, so any element can be
// drawn independently.
LLMFT_HOST_DEVICE PhiloxCounter philox_block(uint64_t seed, uint64_t block_index) {
  PhiloxCounter counter{{static_cast<uint32_t>(block_index), static_cast<uint32_t>(block_index >> 32), 0u, 0u}};
  PhiloxKey key{{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}};
  return philox4x32_10(counter, key);
}

LLMFT_HOST_DEVICE float philox_uniform_at(uint64_t seed, uint64_t element_index) {
  PhiloxCounter block = philox_block(seed, element_index >> 2);
  return philox_uniform(block.word[element_index & 3]);
}

// Host-side sequential generator over the same stream (initialisation of
// weights, shuffling). Its position is two integers, so it checkpoints exactly.
class PhiloxGenerator {
 public:
  explicit PhiloxGenerator(uint64_t seed = 0, uint64_t position = 0) : seed_(seed), position_(position) {}
  uint32_t next_u32() {
    PhiloxCounter block = philox_block(seed_, position_ >> 2);
    uint32_t value = block.word[position_ & 3];
    ++position_;
    return value;
  }
  uint64_t next_u64() {
    uint64_t high = next_u32();
    return (high << 32) | next_u32();
  }
  float next_uniform() { return philox_uniform(next_u32()); }
  // Standard normal by Box-Muller.
  float next_normal();
  // Uniform integer in [0, bound) without modulo bias (Lemire's method).
  uint64_t next_below(uint64_t bound);

  uint64_t seed() const { return seed_; }
  uint64_t position() const { return position_; }

 private:
  uint64_t seed_;
  uint64_t position_;
};

}  // namespace llmft
