// CRC32C: both implementations against published vectors and against a
// bitwise reference written here from the polynomial's definition.
#include "data/crc32c.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/philox.h"

namespace llmft::data {
namespace {

// One bit at a time, reflected polynomial 0x82F63B78: the definition itself.
uint32_t bitwise_crc32c(const std::string& bytes) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char byte : bytes) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

const crc32c::Path kAllPaths[] = {crc32c::Path::kPortable, crc32c::Path::kSse42, crc32c::Path::kPclmul,
                                   crc32c::Path::kAvx512};

TEST(Crc32c, HardwarePathIsAvailableOnThisX86Machine) {
#if defined(__x86_64__)
  EXPECT_TRUE(crc32c::hardware_available()) << "every x86-64 CPU since 2008 has SSE4.2";
  EXPECT_TRUE(crc32c::path_available(crc32c::Path::kPclmul)) << "every x86-64 CPU since 2010 has PCLMULQDQ";
#endif
  std::printf("CRC32C paths on this CPU:");
  for (crc32c::Path path : kAllPaths)
    if (crc32c::path_available(path)) std::printf(" [%s]", crc32c::path_name(path));
  std::printf("; extend() uses %s\n", crc32c::path_name(crc32c::best_path()));
}

TEST(Crc32c, StandardCheckValue) {
  const std::string check = "123456789";
  EXPECT_EQ(crc32c::extend_portable(0, check.data(), check.size()), 0xe3069283u);
  EXPECT_EQ(crc32c::extend_hardware(0, check.data(), check.size()), 0xe3069283u);
  EXPECT_EQ(crc32c::value(check.data(), check.size()), 0xe3069283u);
  EXPECT_EQ(bitwise_crc32c(check), 0xe3069283u);
}

// RFC 3720 (iSCSI) appendix B.4 test vectors.
TEST(Crc32c, Rfc3720Vectors) {
  std::string zeros(32, '\0'), ones(32, '\xff'), ascending(32, '\0'), descending(32, '\0');
  for (int i = 0; i < 32; ++i) {
    ascending[i] = static_cast<char>(i);
    descending[i] = static_cast<char>(31 - i);
  }
  for (crc32c::Path path : kAllPaths) {
    if (!crc32c::path_available(path)) continue;
    EXPECT_EQ(crc32c::extend_with(path, 0, zeros.data(), 32), 0x8a9136aau) << crc32c::path_name(path);
    EXPECT_EQ(crc32c::extend_with(path, 0, ones.data(), 32), 0x62a8ab43u) << crc32c::path_name(path);
    EXPECT_EQ(crc32c::extend_with(path, 0, ascending.data(), 32), 0x46dd794eu) << crc32c::path_name(path);
    EXPECT_EQ(crc32c::extend_with(path, 0, descending.data(), 32), 0x113fdb5cu) << crc32c::path_name(path);
  }
}

TEST(Crc32c, MaskMatchesTensorFlowDefinition) {
  for (uint32_t crc : {0u, 1u, 0xe3069283u, 0xffffffffu, 0x12345678u}) {
    uint32_t rotated = (crc >> 15) | (crc << 17);
    EXPECT_EQ(crc32c::mask(crc), rotated + 0xa282ead8u);
    EXPECT_EQ(crc32c::unmask(crc32c::mask(crc)), crc);
  }
}

// Lengths around the 3-way block sizes (768 B and 12 KiB rounds) and every
// alignment, so each path of the hardware loop is exercised.
TEST(Crc32c, BothPathsAgreeWithBitwiseReferenceOnRandomData) {
  PhiloxGenerator random(7);
  std::string buffer(40000, '\0');
  for (char& byte : buffer) byte = static_cast<char>(random.next_u32());
  std::vector<size_t> lengths = {0,    1,    7,    8,     9,     15,    16,    17,    63,   64,
                                 65,   79,   80,   127,   128,   255,   256,   257,   319,  320,
                                 511,  512,  767,  768,   769,   1023,  1535,  1536,  4095, 6000,
                                 12287, 12288, 12289, 24576 + 768 + 13, 39990};
  for (size_t length : lengths)
    for (size_t alignment = 0; alignment < 8; ++alignment) {
      std::string piece = buffer.substr(alignment, length);
      uint32_t expected = bitwise_crc32c(piece);
      EXPECT_EQ(crc32c::extend_portable(0, piece.data(), piece.size()), expected) << "length " << length;
      EXPECT_EQ(crc32c::extend_hardware(0, buffer.data() + alignment, length), expected)
          << "length " << length << " alignment " << alignment;
      for (crc32c::Path path : kAllPaths) {
        if (!crc32c::path_available(path)) continue;
        // A non-zero starting CRC exercises how each path folds it in.
        uint32_t prefix = bitwise_crc32c("prefix");
        EXPECT_EQ(crc32c::extend_with(path, prefix, buffer.data() + alignment, length),
                  bitwise_crc32c("prefix" + piece))
            << crc32c::path_name(path) << ", length " << length << " alignment " << alignment;
      }
    }
}

TEST(Crc32c, ExtendIsConcatenation) {
  const std::string whole = "The quick brown fox jumps over the lazy dog, twice over for good measure.";
  for (size_t split = 0; split <= whole.size(); ++split) {
    uint32_t first = crc32c::value(whole.data(), split);
    EXPECT_EQ(crc32c::extend(first, whole.data() + split, whole.size() - split), bitwise_crc32c(whole));
    EXPECT_EQ(crc32c::extend_portable(crc32c::extend_portable(0, whole.data(), split), whole.data() + split,
                                      whole.size() - split),
              bitwise_crc32c(whole));
  }
}

}  // namespace
}  // namespace llmft::data
