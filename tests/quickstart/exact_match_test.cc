// The exact-match rule of `llmft generate --batch` (launch/exact_match.h):
// only leading and trailing ASCII whitespace is ignored.
#include "launch/exact_match.h"

#include <gtest/gtest.h>

namespace llmft::launch {
namespace {

TEST(ExactMatchTest, IgnoresLeadingAndTrailingWhitespaceOfBothSides) {
  EXPECT_TRUE(exact_match("{\"age\": 3}", "{\"age\": 3}"));
  EXPECT_TRUE(exact_match(" \t{\"age\": 3}\n\r\n", "{\"age\": 3}"));
  EXPECT_TRUE(exact_match("{\"age\": 3}", "\n{\"age\": 3}  "));
  EXPECT_TRUE(exact_match("\v\f x \v\f", "x"));
  EXPECT_TRUE(exact_match("", " \n "));
}

TEST(ExactMatchTest, EverythingElseCounts) {
  EXPECT_FALSE(exact_match("{\"age\":3}", "{\"age\": 3}")) << "inner spacing";
  EXPECT_FALSE(exact_match("{\"Age\": 3}", "{\"age\": 3}")) << "case";
  EXPECT_FALSE(exact_match("{\"age\": \"3\"}", "{\"age\": 3}")) << "a number written as a string";
  EXPECT_FALSE(exact_match("{\"age\": 3}.", "{\"age\": 3}")) << "trailing text";
  EXPECT_FALSE(exact_match("Sure! {\"age\": 3}", "{\"age\": 3}")) << "leading text";
  EXPECT_FALSE(exact_match("{\"age\": 3}", "")) << "empty expected";
  EXPECT_FALSE(exact_match("a\nb", "a b")) << "inner newline";
  // Non-ASCII spaces are content, not trimmed: U+00A0 no-break space.
  EXPECT_FALSE(exact_match("x\xC2\xA0", "x"));
}

TEST(ExactMatchTest, TrimReturnsTheInnerView) {
  EXPECT_EQ(trim_ascii_whitespace("  a b  "), "a b");
  EXPECT_EQ(trim_ascii_whitespace("\n\n"), "");
  EXPECT_EQ(trim_ascii_whitespace(""), "");
  EXPECT_EQ(trim_ascii_whitespace("a"), "a");
}

}  // namespace
}  // namespace llmft::launch
