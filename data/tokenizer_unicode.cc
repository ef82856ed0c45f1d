#include "data/tokenizer_unicode.h"

#include <algorithm>
#include <array>
#include <vector>

#include "data/tokenizer_unicode_tables.h"

namespace llmft::unicode {
namespace {

// The White_Space property from Unicode's PropList.txt (stable since 6.3, when
// U+180E left it). It is what \s means in the regex engines tokenizers use
// (Oniguruma, Rust regex); Python's str.isspace() differs (U+001C..U+001F).
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

constexpr std::array<CharClass, 128> make_ascii_classes() {
  std::array<CharClass, 128> classes{};
  for (char32_t c = 0; c < 128; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
      classes[c] = CharClass::kLetter;
    else if (c >= '0' && c <= '9')
      classes[c] = CharClass::kNumber;
    else if ((c >= 0x09 && c <= 0x0D) || c == 0x20)
      classes[c] = CharClass::kWhitespace;
    else
      classes[c] = CharClass::kOther;
  }
  return classes;
}
constexpr std::array<CharClass, 128> kAsciiClasses = make_ascii_classes();

// Hangul syllables compose and decompose arithmetically (Unicode §3.12).
constexpr char32_t kHangulBase = 0xAC00, kJamoLBase = 0x1100, kJamoVBase = 0x1161, kJamoTBase = 0x11A7;
constexpr char32_t kJamoLCount = 19, kJamoVCount = 21, kJamoTCount = 28;
constexpr char32_t kHangulNCount = kJamoVCount * kJamoTCount, kHangulCount = kJamoLCount * kHangulNCount;

uint8_t combining_class(char32_t c) {
  if (c < 0x300) return 0;
  const auto* begin = std::begin(tables::kCombiningClasses);
  const auto* end = std::end(tables::kCombiningClasses);
  const auto* it = std::lower_bound(begin, end, c, [](const tables::CombiningClass& entry, char32_t value) {
    return entry.codepoint < value;
  });
  return (it != end && it->codepoint == c) ? it->ccc : 0;
}

void decompose(char32_t c, std::vector<char32_t>* out) {
  if (c >= kHangulBase && c < kHangulBase + kHangulCount) {
    char32_t index = c - kHangulBase;
    out->push_back(kJamoLBase + index / kHangulNCount);
    out->push_back(kJamoVBase + (index % kHangulNCount) / kJamoTCount);
    if (index % kJamoTCount != 0) out->push_back(kJamoTBase + index % kJamoTCount);
    return;
  }
  if (c >= 0xC0) {
    const auto* begin = std::begin(tables::kDecompositions);
    const auto* end = std::end(tables::kDecompositions);
    const auto* it = std::lower_bound(begin, end, c, [](const tables::Decomposition& entry, char32_t value) {
      return entry.codepoint < value;
    });
    if (it != end && it->codepoint == c) {
      out->insert(out->end(), tables::kDecompositionData + it->offset,
                  tables::kDecompositionData + it->offset + it->length);
      return;
    }
  }
  out->push_back(c);
}

// The primary composite of (first, second), or 0.
char32_t compose(char32_t first, char32_t second) {
  if (first >= kJamoLBase && first < kJamoLBase + kJamoLCount && second >= kJamoVBase &&
      second < kJamoVBase + kJamoVCount)
    return kHangulBase + ((first - kJamoLBase) * kJamoVCount + (second - kJamoVBase)) * kJamoTCount;
  if (first >= kHangulBase && first < kHangulBase + kHangulCount && (first - kHangulBase) % kJamoTCount == 0 &&
      second > kJamoTBase && second < kJamoTBase + kJamoTCount)
    return first + (second - kJamoTBase);
  const auto* begin = std::begin(tables::kCompositions);
  const auto* end = std::end(tables::kCompositions);
  const auto* it = std::lower_bound(begin, end, std::pair(first, second),
                                    [](const tables::Composition& entry, std::pair<char32_t, char32_t> key) {
                                      return std::pair(entry.first, entry.second) < key;
                                    });
  return (it != end && it->first == first && it->second == second) ? it->composite : 0;
}

}  // namespace

CharClass char_class(char32_t c) {
  if (c < 128) return kAsciiClasses[c];
  if (is_white_space(c)) return CharClass::kWhitespace;
  const auto* begin = std::begin(tables::kClassRanges);
  const auto* end = std::end(tables::kClassRanges);
  const auto* it = std::upper_bound(begin, end, c, [](char32_t value, const tables::ClassRange& range) {
    return value < range.first;
  });
  if (it == begin) return CharClass::kOther;
  --it;
  if (c > it->last) return CharClass::kOther;
  return it->char_class == 1 ? CharClass::kLetter : CharClass::kNumber;
}

const char* table_version() { return tables::kUnicodeVersion; }

namespace {

// Length of the well-formed UTF-8 prefix of the sequence at bytes[0..size)
// (Unicode Table 3-7), and whether it is a complete code point.
struct SequenceCheck {
  size_t valid_length;  // bytes that belong to the (possibly partial) sequence
  bool complete;
};

SequenceCheck check_sequence(const unsigned char* bytes, size_t size) {
  unsigned char lead = bytes[0];
  if (lead < 0x80) return {1, true};
  size_t length;
  unsigned char second_low = 0x80, second_high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) second_low = 0xA0;   // overlong
    if (lead == 0xED) second_high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) second_low = 0x90;   // overlong
    if (lead == 0xF4) second_high = 0x8F;  // above U+10FFFF
  } else {
    return {0, false};
  }
  size_t i = 1;
  for (; i < length && i < size; ++i) {
    unsigned char low = i == 1 ? second_low : 0x80, high = i == 1 ? second_high : 0xBF;
    if (bytes[i] < low || bytes[i] > high) return {i, false};
  }
  return {i, i == length};
}

}  // namespace

std::optional<size_t> find_invalid_utf8(std::string_view text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  size_t position = 0;
  while (position < text.size()) {
    if (bytes[position] < 0x80) {
      ++position;
      continue;
    }
    SequenceCheck check = check_sequence(bytes + position, text.size() - position);
    if (!check.complete) return position;
    position += check.valid_length;
  }
  return std::nullopt;
}

char32_t next_codepoint(std::string_view text, size_t* position) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data()) + *position;
  unsigned char lead = bytes[0];
  if (lead < 0x80) {
    *position += 1;
    return lead;
  }
  if (lead < 0xE0) {
    *position += 2;
    return (char32_t(lead & 0x1F) << 6) | (bytes[1] & 0x3F);
  }
  if (lead < 0xF0) {
    *position += 3;
    return (char32_t(lead & 0x0F) << 12) | (char32_t(bytes[1] & 0x3F) << 6) | (bytes[2] & 0x3F);
  }
  *position += 4;
  return (char32_t(lead & 0x07) << 18) | (char32_t(bytes[1] & 0x3F) << 12) | (char32_t(bytes[2] & 0x3F) << 6) |
         (bytes[3] & 0x3F);
}

void append_utf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string utf8_lossy(std::string_view text) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  std::string out;
  out.reserve(text.size());
  size_t position = 0;
  while (position < text.size()) {
    SequenceCheck check = check_sequence(bytes + position, text.size() - position);
    if (check.complete) {
      out.append(text.substr(position, check.valid_length));
      position += check.valid_length;
    } else {
      // One replacement per maximal subpart: a lead byte and the continuation
      // bytes that could still have completed it, or one stray byte.
      out.append(kReplacement);
      position += std::max<size_t>(check.valid_length, 1);
    }
  }
  return out;
}

std::string nfc(std::string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(text);  // ASCII is already in every normalization form

  std::vector<char32_t> codepoints;
  codepoints.reserve(text.size());
  for (size_t position = 0; position < text.size();) decompose(next_codepoint(text, &position), &codepoints);

  // Canonical ordering: a stable sort by combining class of each run of non-starters.
  for (size_t i = 1; i < codepoints.size(); ++i) {
    uint8_t ccc = combining_class(codepoints[i]);
    if (ccc == 0) continue;
    for (size_t j = i; j > 0; --j) {
      uint8_t previous = combining_class(codepoints[j - 1]);
      if (previous == 0 || previous <= ccc) break;
      std::swap(codepoints[j - 1], codepoints[j]);
    }
  }

  // Canonical composition (UAX #15 §1.3): a character combines with the last
  // starter unless a character in between has a combining class >= its own.
  if (!codepoints.empty()) {
    size_t starter = 0;
    int last_class = combining_class(codepoints[0]) == 0 ? 0 : 256;
    size_t kept = 1;
    for (size_t i = 1; i < codepoints.size(); ++i) {
      char32_t c = codepoints[i];
      int ccc = combining_class(c);
      // last_class 0: the starter is the previous character; 256: no starter yet.
      bool blocked = !(last_class < ccc || last_class == 0);
      char32_t composite = blocked ? 0 : compose(codepoints[starter], c);
      if (composite != 0) {
        codepoints[starter] = composite;
        continue;
      }
      if (ccc == 0) {
        starter = kept;
        last_class = 0;
      } else {
        last_class = ccc;
      }
      codepoints[kept++] = c;
    }
    codepoints.resize(kept);
  }

  std::string out;
  out.reserve(text.size());
  for (char32_t c : codepoints) append_utf8(c, &out);
  return out;
}

}  // namespace llmft::unicode
