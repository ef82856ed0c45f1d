// The exact-match rule of `llmft generate --batch`: a generation matches when
// it equals the expected answer after removing leading and trailing ASCII
// whitespace (space, \t, \n, \v, \f, \r) from both. Nothing else is normalised:
// case, inner spaces, punctuation and key order all count, because the point
// of the quickstart's task is an exact output format. The generation is the
// decoded completion without special tokens, so the end-of-turn token that
// stops it is not part of the text.
#pragma once

#include <string_view>

namespace llmft::launch {

inline std::string_view trim_ascii_whitespace(std::string_view text) {
  constexpr std::string_view kWhitespace = " \t\n\v\f\r";
  const size_t first = text.find_first_not_of(kWhitespace);
  if (first == std::string_view::npos) return {};
  const size_t last = text.find_last_not_of(kWhitespace);
  return text.substr(first, last - first + 1);
}

inline bool exact_match(std::string_view generated, std::string_view expected) {
  return trim_ascii_whitespace(generated) == trim_ascii_whitespace(expected);
}

}  // namespace llmft::launch
