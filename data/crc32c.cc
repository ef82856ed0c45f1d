#include "data/crc32c.h"

#include <algorithm>
#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define LLMFT_CRC32C_X86 1
#endif

namespace llmft::data::crc32c {
namespace {

constexpr uint32_t kPolynomial = 0x82F63B78u;  // reflected Castagnoli polynomial

using Table = std::array<uint32_t, 256>;

// Slicing-by-8 tables (Kounavis & Berry, "A Systematic Approach to Building
// High Performance Software-based CRC Generators", 2005): table[0] is the
// byte-at-a-time table; table[k][b] is the CRC register after byte b followed
// by k zero bytes.
constexpr std::array<Table, 8> make_slicing_tables() {
  std::array<Table, 8> tables{};
  for (uint32_t byte = 0; byte < 256; ++byte) {
    uint32_t crc = byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) ? kPolynomial : 0u);
    tables[0][byte] = crc;
  }
  for (int k = 1; k < 8; ++k)
    for (uint32_t byte = 0; byte < 256; ++byte)
      tables[k][byte] = (tables[k - 1][byte] >> 8) ^ tables[0][tables[k - 1][byte] & 0xffu];
  return tables;
}
constexpr std::array<Table, 8> kSlicing = make_slicing_tables();

inline uint64_t load_le64(const uint8_t* bytes) {
  uint64_t word;
  std::memcpy(&word, bytes, 8);  // x86 and every target we build for are little-endian
  return word;
}

// The CRC register update without the initial/final inversion.
uint32_t update_portable(uint32_t state, const uint8_t* bytes, size_t size) {
  while (size > 0 && (reinterpret_cast<uintptr_t>(bytes) & 7) != 0) {
    state = kSlicing[0][(state ^ *bytes++) & 0xffu] ^ (state >> 8);
    --size;
  }
  while (size >= 8) {
    uint64_t word = load_le64(bytes) ^ state;
    state = kSlicing[7][word & 0xff] ^ kSlicing[6][(word >> 8) & 0xff] ^ kSlicing[5][(word >> 16) & 0xff] ^
            kSlicing[4][(word >> 24) & 0xff] ^ kSlicing[3][(word >> 32) & 0xff] ^
            kSlicing[2][(word >> 40) & 0xff] ^ kSlicing[1][(word >> 48) & 0xff] ^ kSlicing[0][word >> 56];
    bytes += 8;
    size -= 8;
  }
  while (size > 0) {
    state = kSlicing[0][(state ^ *bytes++) & 0xffu] ^ (state >> 8);
    --size;
  }
  return state;
}

#if LLMFT_CRC32C_X86
// The register update is linear: update(s, X) = shift_|X|(s) ^ update(0, X),
// where shift_L(s) = update(s, L zero bytes). So three blocks A, B, C of L
// bytes can be processed as independent streams (hiding the instruction's
// 3-cycle latency) and combined as shift_L(shift_L(a) ^ b) ^ c. shift_L is
// linear in s, so it is four 256-entry tables, one per byte of s.
struct ShiftTables {
  explicit ShiftTables(size_t block_bytes) {
    uint32_t basis[32];
    const uint8_t zeros[64] = {};
    for (int bit = 0; bit < 32; ++bit) {
      uint32_t state = 1u << bit;
      for (size_t done = 0; done < block_bytes; done += sizeof(zeros))
        state = update_portable(state, zeros, std::min(sizeof(zeros), block_bytes - done));
      basis[bit] = state;
    }
    for (int k = 0; k < 4; ++k)
      for (uint32_t byte = 0; byte < 256; ++byte) {
        uint32_t shifted = 0;
        for (int bit = 0; bit < 8; ++bit)
          if (byte & (1u << bit)) shifted ^= basis[8 * k + bit];
        table[k][byte] = shifted;
      }
  }
  uint32_t shift(uint32_t state) const {
    return table[0][state & 0xff] ^ table[1][(state >> 8) & 0xff] ^ table[2][(state >> 16) & 0xff] ^
           table[3][state >> 24];
  }
  uint32_t table[4][256];
};

constexpr size_t kLongBlock = 4096;  // 12 KiB per round for large records
constexpr size_t kShortBlock = 256;  // 768 B per round for typical token records

const ShiftTables& long_shift() {
  static const ShiftTables tables(kLongBlock);
  return tables;
}
const ShiftTables& short_shift() {
  static const ShiftTables tables(kShortBlock);
  return tables;
}

// Whole rounds of three interleaved `block`-byte streams; advances bytes/size.
__attribute__((target("sse4.2"))) uint64_t three_way_rounds(uint64_t crc, const uint8_t*& bytes, size_t& size,
                                                             size_t block, const ShiftTables& shift) {
  while (size >= 3 * block) {
    uint64_t crc0 = crc, crc1 = 0, crc2 = 0;
    const uint8_t* first = bytes;
    const uint8_t* second = bytes + block;
    const uint8_t* third = bytes + 2 * block;
    for (size_t i = 0; i < block; i += 8) {
      crc0 = _mm_crc32_u64(crc0, load_le64(first + i));
      crc1 = _mm_crc32_u64(crc1, load_le64(second + i));
      crc2 = _mm_crc32_u64(crc2, load_le64(third + i));
    }
    uint32_t combined = shift.shift(shift.shift(static_cast<uint32_t>(crc0)) ^ static_cast<uint32_t>(crc1));
    crc = combined ^ static_cast<uint32_t>(crc2);
    bytes += 3 * block;
    size -= 3 * block;
  }
  return crc;
}

__attribute__((target("sse4.2"))) uint32_t update_hardware(uint32_t state, const uint8_t* bytes, size_t size) {
  uint64_t crc = state;
  while (size > 0 && (reinterpret_cast<uintptr_t>(bytes) & 7) != 0) {
    crc = _mm_crc32_u8(static_cast<uint32_t>(crc), *bytes++);
    --size;
  }
  if (size >= 3 * kLongBlock) crc = three_way_rounds(crc, bytes, size, kLongBlock, long_shift());
  if (size >= 3 * kShortBlock) crc = three_way_rounds(crc, bytes, size, kShortBlock, short_shift());
  while (size >= 8) {
    crc = _mm_crc32_u64(crc, load_le64(bytes));
    bytes += 8;
    size -= 8;
  }
  while (size > 0) {
    crc = _mm_crc32_u8(static_cast<uint32_t>(crc), *bytes++);
    --size;
  }
  return static_cast<uint32_t>(crc);
}
#endif

}  // namespace

uint32_t extend_portable(uint32_t crc, const void* data, size_t size) {
  return ~update_portable(~crc, static_cast<const uint8_t*>(data), size);
}

bool hardware_available() {
#if LLMFT_CRC32C_X86
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
#else
  return false;
#endif
}

uint32_t extend_hardware(uint32_t crc, const void* data, size_t size) {
#if LLMFT_CRC32C_X86
  return ~update_hardware(~crc, static_cast<const uint8_t*>(data), size);
#else
  return extend_portable(crc, data, size);
#endif
}

uint32_t extend(uint32_t crc, const void* data, size_t size) {
  return hardware_available() ? extend_hardware(crc, data, size) : extend_portable(crc, data, size);
}

}  // namespace llmft::data::crc32c
