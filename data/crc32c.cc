#include "data/crc32c.h"

#include <algorithm>
#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
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

// Folding with carry-less multiplication (Gopal et al., Intel, "Fast CRC
// Computation for Generic Polynomials Using PCLMULQDQ Instruction", 2009).
// A 128-bit lane x (low qword = earlier bytes) moved D bits further along the
// message keeps its remainder when replaced by x.lo * k(D + 32) ^ x.hi * k(D - 32),
// with k(n) = reflect32(x^n mod P) << 1 for the reflected bit order (the
// formula reproduces zlib's published CRC-32 constants, e.g. k(544) =
// 0x154442bd4). The folded 16 bytes have the same remainder as everything
// they replaced, so two CRC32 instructions finish the job (no Barrett step).
constexpr uint64_t kNormalPolynomial = 0x11EDC6F41ull;  // x^32 + ... (Castagnoli), normal bit order

constexpr uint64_t fold_constant(unsigned exponent) {
  uint64_t remainder = 1;  // x^exponent mod P, normal bit order
  for (unsigned i = 0; i < exponent; ++i) {
    remainder <<= 1;
    if (remainder & (1ull << 32)) remainder ^= kNormalPolynomial;
  }
  uint64_t reflected = 0;
  for (int bit = 0; bit < 32; ++bit)
    if (remainder & (1ull << bit)) reflected |= 1ull << (31 - bit);
  return reflected << 1;
}
// (high qword, low qword) multiply (x.lo, x.hi): see fold128/fold512 below.
constexpr uint64_t kFold128High = fold_constant(128 + 32), kFold128Low = fold_constant(128 - 32);
constexpr uint64_t kFold512High = fold_constant(512 + 32), kFold512Low = fold_constant(512 - 32);
constexpr uint64_t kFold2048High = fold_constant(2048 + 32), kFold2048Low = fold_constant(2048 - 32);

__attribute__((target("sse4.2,pclmul"))) inline __m128i fold128(__m128i x, __m128i constants) {
  return _mm_xor_si128(_mm_clmulepi64_si128(x, constants, 0x01), _mm_clmulepi64_si128(x, constants, 0x10));
}

// Folds the last lanes down, reduces, and finishes the tail (< 16 bytes).
__attribute__((target("sse4.2,pclmul"))) uint32_t finish_folded(__m128i x, const uint8_t* bytes, size_t size) {
  const __m128i fold_by_128 = _mm_set_epi64x(static_cast<int64_t>(kFold128High), static_cast<int64_t>(kFold128Low));
  while (size >= 16) {
    x = _mm_xor_si128(fold128(x, fold_by_128), _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
    bytes += 16;
    size -= 16;
  }
  uint64_t crc = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(x)));
  crc = _mm_crc32_u64(crc, static_cast<uint64_t>(_mm_extract_epi64(x, 1)));
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

// Four 128-bit lanes, 64 bytes per round. Needs size >= 64.
__attribute__((target("sse4.2,pclmul"))) uint32_t update_pclmul(uint32_t state, const uint8_t* bytes, size_t size) {
  const __m128i* in = reinterpret_cast<const __m128i*>(bytes);
  __m128i x0 = _mm_xor_si128(_mm_loadu_si128(in), _mm_cvtsi32_si128(static_cast<int>(state)));
  __m128i x1 = _mm_loadu_si128(in + 1), x2 = _mm_loadu_si128(in + 2), x3 = _mm_loadu_si128(in + 3);
  bytes += 64;
  size -= 64;
  const __m128i fold_by_512 = _mm_set_epi64x(static_cast<int64_t>(kFold512High), static_cast<int64_t>(kFold512Low));
  while (size >= 64) {
    in = reinterpret_cast<const __m128i*>(bytes);
    x0 = _mm_xor_si128(fold128(x0, fold_by_512), _mm_loadu_si128(in));
    x1 = _mm_xor_si128(fold128(x1, fold_by_512), _mm_loadu_si128(in + 1));
    x2 = _mm_xor_si128(fold128(x2, fold_by_512), _mm_loadu_si128(in + 2));
    x3 = _mm_xor_si128(fold128(x3, fold_by_512), _mm_loadu_si128(in + 3));
    bytes += 64;
    size -= 64;
  }
  const __m128i fold_by_128 = _mm_set_epi64x(static_cast<int64_t>(kFold128High), static_cast<int64_t>(kFold128Low));
  __m128i x = _mm_xor_si128(fold128(x0, fold_by_128), x1);
  x = _mm_xor_si128(fold128(x, fold_by_128), x2);
  x = _mm_xor_si128(fold128(x, fold_by_128), x3);
  return finish_folded(x, bytes, size);
}

#define LLMFT_AVX512_CLMUL "sse4.2,pclmul,avx512f,avx512vl,avx512bw,vpclmulqdq"

__attribute__((target(LLMFT_AVX512_CLMUL))) inline __m512i fold512(__m512i x, __m512i constants, __m512i next) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, constants, 0x01),
                                   _mm512_clmulepi64_epi128(x, constants, 0x10), next, 0x96);  // a ^ b ^ c
}

// Four 512-bit registers of four lanes each, 256 bytes per round. Needs size >= 256.
__attribute__((target(LLMFT_AVX512_CLMUL))) uint32_t update_avx512(uint32_t state, const uint8_t* bytes,
                                                                   size_t size) {
  __m512i z0 = _mm512_xor_si512(_mm512_loadu_si512(bytes), _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(state))));
  __m512i z1 = _mm512_loadu_si512(bytes + 64), z2 = _mm512_loadu_si512(bytes + 128), z3 = _mm512_loadu_si512(bytes + 192);
  bytes += 256;
  size -= 256;
  const __m512i fold_by_2048 = _mm512_set4_epi64(static_cast<int64_t>(kFold2048High), static_cast<int64_t>(kFold2048Low),
                                                 static_cast<int64_t>(kFold2048High), static_cast<int64_t>(kFold2048Low));
  while (size >= 256) {
    z0 = fold512(z0, fold_by_2048, _mm512_loadu_si512(bytes));
    z1 = fold512(z1, fold_by_2048, _mm512_loadu_si512(bytes + 64));
    z2 = fold512(z2, fold_by_2048, _mm512_loadu_si512(bytes + 128));
    z3 = fold512(z3, fold_by_2048, _mm512_loadu_si512(bytes + 192));
    bytes += 256;
    size -= 256;
  }
  const __m512i fold_by_512 = _mm512_set4_epi64(static_cast<int64_t>(kFold512High), static_cast<int64_t>(kFold512Low),
                                                static_cast<int64_t>(kFold512High), static_cast<int64_t>(kFold512Low));
  __m512i z = fold512(z0, fold_by_512, z1);
  z = fold512(z, fold_by_512, z2);
  z = fold512(z, fold_by_512, z3);
  while (size >= 64) {
    z = fold512(z, fold_by_512, _mm512_loadu_si512(bytes));
    bytes += 64;
    size -= 64;
  }
  const __m128i fold_by_128 = _mm_set_epi64x(static_cast<int64_t>(kFold128High), static_cast<int64_t>(kFold128Low));
  alignas(64) __m128i lanes[4];
  _mm512_store_si512(lanes, z);
  __m128i x = lanes[0];
  x = _mm_xor_si128(fold128(x, fold_by_128), lanes[1]);
  x = _mm_xor_si128(fold128(x, fold_by_128), lanes[2]);
  x = _mm_xor_si128(fold128(x, fold_by_128), lanes[3]);
  return finish_folded(x, bytes, size);
}
#endif

}  // namespace

uint32_t extend_portable(uint32_t crc, const void* data, size_t size) {
  return ~update_portable(~crc, static_cast<const uint8_t*>(data), size);
}

bool path_available(Path path) {
#if LLMFT_CRC32C_X86
  static const bool sse42 = __builtin_cpu_supports("sse4.2");
  static const bool pclmul = sse42 && __builtin_cpu_supports("pclmul");
  static const bool avx512 = pclmul && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("vpclmulqdq");
  switch (path) {
    case Path::kPortable: return true;
    case Path::kSse42: return sse42;
    case Path::kPclmul: return pclmul;
    case Path::kAvx512: return avx512;
  }
  return false;
#else
  return path == Path::kPortable;
#endif
}

Path best_path() {
  static const Path best = path_available(Path::kAvx512)   ? Path::kAvx512
                           : path_available(Path::kPclmul) ? Path::kPclmul
                           : path_available(Path::kSse42)  ? Path::kSse42
                                                           : Path::kPortable;
  return best;
}

const char* path_name(Path path) {
  switch (path) {
    case Path::kPortable: return "portable slicing-by-8";
    case Path::kSse42: return "SSE4.2 crc32, 3 streams";
    case Path::kPclmul: return "PCLMULQDQ folding, 4x128 bit";
    case Path::kAvx512: return "VPCLMULQDQ folding, 16x128 bit";
  }
  return "?";
}

uint32_t extend_with(Path path, uint32_t crc, const void* data, size_t size) {
  const auto* bytes = static_cast<const uint8_t*>(data);
#if LLMFT_CRC32C_X86
  switch (path) {
    case Path::kAvx512:
      if (size >= 256) return ~update_avx512(~crc, bytes, size);
      [[fallthrough]];
    case Path::kPclmul:
      if (size >= 64) return ~update_pclmul(~crc, bytes, size);
      [[fallthrough]];
    case Path::kSse42:
      return ~update_hardware(~crc, bytes, size);
    case Path::kPortable:
      break;
  }
#endif
  (void)path;
  return ~update_portable(~crc, bytes, size);
}

bool hardware_available() { return path_available(Path::kSse42); }

uint32_t extend_hardware(uint32_t crc, const void* data, size_t size) {
  return extend_with(Path::kSse42, crc, data, size);
}

uint32_t extend(uint32_t crc, const void* data, size_t size) { return extend_with(best_path(), crc, data, size); }

}  // namespace llmft::data::crc32c
