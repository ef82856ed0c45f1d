// CRC32C (Castagnoli, reflected polynomial 0x82F63B78) as used by TFRecord
// framing, with TensorFlow's masking (tensorflow/tsl/lib/hash/crc32c.h).
//
// Two implementations compute the same function and are compared in
// tests/data/crc32c_test.cc: a portable slicing-by-8 table path and an SSE4.2
// path (the CRC32 instruction on three interleaved streams, recombined with
// precomputed "shift by L zero bytes" tables, after Intel's white paper
// "Fast CRC Computation for iSCSI Polynomial Using CRC32 Instruction", 2011).
// extend() picks the hardware path at run time, so the binary still runs on
// CPUs without SSE4.2.
#pragma once

#include <cstddef>
#include <cstdint>

namespace llmft::data::crc32c {

// CRC32C of `data` appended to a message whose CRC32C is `crc` (0 for none):
// extend(extend(0, a), b) == extend(0, a + b).
uint32_t extend(uint32_t crc, const void* data, size_t size);
inline uint32_t value(const void* data, size_t size) { return extend(0, data, size); }

// The two paths, for tests and benchmarks. extend_hardware requires
// hardware_available().
uint32_t extend_portable(uint32_t crc, const void* data, size_t size);
uint32_t extend_hardware(uint32_t crc, const void* data, size_t size);
bool hardware_available();

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
