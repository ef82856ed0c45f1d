// CRC32C: both implementations against published vectors and against a
// bitwise reference written here from the polynomial's definition.
#include "data/crc32c.h"

#include <gtest/gtest.h>

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

TEST(Crc32c, HardwarePathIsAvailableOnThisX86Machine) {
#if defined(__x86_64__)
  EXPECT_TRUE(crc32c::hardware_available()) << "every x86-64 CPU since 2008 has SSE4.2";
#endif
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
  for (auto extend : {crc32c::extend_portable, crc32c::extend_hardware}) {
    EXPECT_EQ(extend(0, zeros.data(), 32), 0x8a9136aau);
    EXPECT_EQ(extend(0, ones.data(), 32), 0x62a8ab43u);
    EXPECT_EQ(extend(0, ascending.data(), 32), 0x46dd794eu);
    EXPECT_EQ(extend(0, descending.data(), 32), 0x113fdb5cu);
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
  std::vector<size_t> lengths = {0, 1, 7, 8, 9, 63, 255, 767, 768, 769, 1535, 1536, 4095, 12287, 12288, 12289,
                                 24576 + 768 + 13, 39990};
  for (size_t length : lengths)
    for (size_t alignment = 0; alignment < 8; ++alignment) {
      std::string piece = buffer.substr(alignment, length);
      uint32_t expected = bitwise_crc32c(piece);
      EXPECT_EQ(crc32c::extend_portable(0, piece.data(), piece.size()), expected) << "length " << length;
      EXPECT_EQ(crc32c::extend_hardware(0, buffer.data() + alignment, length), expected)
          << "length " << length << " alignment " << alignment;
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
