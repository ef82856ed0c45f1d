// CRC32C (Castagnoli, reflected polynomial 0x82F63B78) as used by TFRecord
// framing, with TensorFlow's masking (tensorflow/tsl/lib/hash/crc32c.h).
//
// Several implementations compute the same function and are compared in
// tests/data/crc32c_test.cc: a portable slicing-by-8 table path; the SSE4.2
// CRC32 instruction on three interleaved streams, recombined with
// precomputed "shift by L zero bytes" tables (Intel, "Fast CRC Computation
// for iSCSI Polynomial Using CRC32 Instruction", 2011); and carry-less
// multiplication folding with PCLMULQDQ (128-bit) or VPCLMULQDQ (512-bit,
// AVX-512), which is what makes CRC checks cheap next to reading the bytes.
// extend() picks the fastest path the CPU has at run time; each path is
// compiled with a target attribute, so the binary still runs on CPUs without
// them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace llmft::data::crc32c {

// CRC32C of `data` appended to a message whose CRC32C is `crc` (0 for none):
// extend(extend(0, a), b) == extend(0, a + b).
uint32_t extend(uint32_t crc, const void* data, size_t size);
inline uint32_t value(const void* data, size_t size) { return extend(0, data, size); }

// The individual paths, for tests and benchmarks. A path other than
// kPortable requires path_available(path); inputs too short for a folding
// path fall through to the next simpler one.
enum class Path { kPortable, kSse42, kPclmul, kAvx512 };
bool path_available(Path path);
Path best_path();
const char* path_name(Path path);
uint32_t extend_with(Path path, uint32_t crc, const void* data, size_t size);

uint32_t extend_portable(uint32_t crc, const void* data, size_t size);
uint32_t extend_hardware(uint32_t crc, const void* data, size_t size);  // kSse42
bool hardware_available();                                              // kSse42 present

// TFRecord stores masked CRCs: a CRC of data that itself contains CRCs is
// weak, so the stored value is rotated right by 15 bits and offset by a
// constant (TensorFlow's crc32c::Mask).
constexpr uint32_t kMaskDelta = 0xa282ead8u;
constexpr uint32_t mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kMaskDelta; }
constexpr uint32_t unmask(uint32_t masked_crc) {
  uint32_t rotated = masked_crc - kMaskDelta;
  return (rotated >> 17) | (rotated << 15);
}
inline uint32_t masked_value(const void* data, size_t size) { return mask(value(data, size)); }

}  // namespace llmft::data::crc32c
