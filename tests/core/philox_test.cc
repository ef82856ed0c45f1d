// Philox4x32-10 against the known-answer vectors of Random123 (kat_vectors).
#include <cmath>

#include <gtest/gtest.h>

#include "core/philox.h"

namespace llmft {
namespace {

void expect_block(PhiloxCounter counter, PhiloxKey key, PhiloxCounter expected) {
  PhiloxCounter result = philox4x32_10(counter, key);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(result.word[i], expected.word[i]) << "word " << i;
}

TEST(Philox, Random123KnownAnswers) {
  expect_block({{0, 0, 0, 0}}, {{0, 0}}, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}});
  expect_block({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, {{0xffffffffu, 0xffffffffu}},
               {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}});
  expect_block({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, {{0xa4093822u, 0x299f31d0u}},
               {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
}

TEST(Philox, GeneratorMatchesRandomAccess) {
  PhiloxGenerator generator(42);
  for (uint64_t i = 0; i < 100; ++i) {
    float sequential = generator.next_uniform();
    EXPECT_EQ(sequential, philox_uniform_at(42, i));
    EXPECT_GE(sequential, 0.0f);
    EXPECT_LT(sequential, 1.0f);
  }
  EXPECT_EQ(generator.position(), 100u);
  PhiloxGenerator resumed(42, 50);
  EXPECT_EQ(resumed.next_uniform(), philox_uniform_at(42, 50));
}

TEST(Philox, UniformAndNormalMoments) {
  PhiloxGenerator generator(7);
  double sum = 0, sum_sq = 0, normal_sum = 0, normal_sq = 0;
  const int count = 200000;
  for (int i = 0; i < count; ++i) {
    double u = generator.next_uniform();
    sum += u;
    sum_sq += u * u;
    double z = generator.next_normal();
    normal_sum += z;
    normal_sq += z * z;
  }
  EXPECT_NEAR(sum / count, 0.5, 0.005);
  EXPECT_NEAR(sum_sq / count - 0.25, 1.0 / 12.0, 0.005);
  EXPECT_NEAR(normal_sum / count, 0.0, 0.01);
  EXPECT_NEAR(normal_sq / count, 1.0, 0.02);
}

TEST(Philox, BelowIsInRangeAndCoversIt) {
  PhiloxGenerator generator(3);
  int counts[7] = {};
  for (int i = 0; i < 70000; ++i) {
    uint64_t value = generator.next_below(7);
    ASSERT_LT(value, 7u);
    ++counts[value];
  }
  for (int count : counts) EXPECT_NEAR(count, 10000, 500);
}

}  // namespace
}  // namespace llmft
