#include "data/tokenizer_pretokenizer.h"

#include <array>
#include <unordered_map>

#include "data/tokenizer_unicode.h"

namespace llmft {
namespace {

using unicode::CharClass;

constexpr std::string_view kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct Char {
  char32_t codepoint;
  CharClass char_class;
  size_t offset;  // byte offset in the text
};

std::vector<Char> decode_chars(std::string_view text) {
  std::vector<Char> chars;
  chars.reserve(text.size() + 1);
  for (size_t position = 0; position < text.size();) {
    size_t offset = position;
    char32_t c = unicode::next_codepoint(text, &position);
    chars.push_back({c, unicode::char_class(c), offset});
  }
  chars.push_back({0, CharClass::kOther, text.size()});  // sentinel: the end offset
  return chars;
}

class Matcher {
 public:
  explicit Matcher(const std::vector<Char>& chars) : chars_(chars), size_(chars.size() - 1) {}

  // End (exclusive) of the match that starts at `i`, for each pattern.
  size_t match_gpt2(size_t i) const {
    if (size_t end = match_contraction(i, /*ignore_case=*/false)) return end;
    for (CharClass run_class : {CharClass::kLetter, CharClass::kNumber, CharClass::kOther}) {
      size_t start = (cp(i) == ' ' && is(i + 1, run_class)) ? i + 1 : i;  // " ?"
      if (is(start, run_class)) return run_end(start, run_class);
    }
    return match_whitespace_tail(i);
  }

  size_t match_llama3(size_t i, size_t max_digits) const {
    if (size_t end = match_contraction(i, /*ignore_case=*/true)) return end;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (is(i, CharClass::kLetter)) return run_end(i, CharClass::kLetter);
    if (cp(i) != '\r' && cp(i) != '\n' && !is(i, CharClass::kNumber) && is(i + 1, CharClass::kLetter))
      return run_end(i + 1, CharClass::kLetter);
    // \p{N}{1,3}
    if (is(i, CharClass::kNumber)) return std::min(run_end(i, CharClass::kNumber), i + max_digits);
    // " ?[^\s\p{L}\p{N}]+[\r\n]*"
    size_t start = (cp(i) == ' ' && is(i + 1, CharClass::kOther)) ? i + 1 : i;
    if (is(start, CharClass::kOther)) {
      size_t end = run_end(start, CharClass::kOther);
      while (end < size_ && (cp(end) == '\r' || cp(end) == '\n')) ++end;
      return end;
    }
    // \s*[\r\n]+ : backtracking gives the whitespace run up to its last \r or \n.
    size_t run = run_end(i, CharClass::kWhitespace);
    for (size_t end = run; end > i; --end)
      if (cp(end - 1) == '\r' || cp(end - 1) == '\n') return end;
    return match_whitespace_tail(i);
  }

 private:
  char32_t cp(size_t i) const { return i < size_ ? chars_[i].codepoint : 0; }
  bool is(size_t i, CharClass c) const { return i < size_ && chars_[i].char_class == c; }
  size_t run_end(size_t i, CharClass c) const {
    while (is(i, c)) ++i;
    return i;
  }

  // 's 't 're 've 'm 'll 'd, or 0 when none matches at i.
  size_t match_contraction(size_t i, bool ignore_case) const {
    if (cp(i) != '\'') return 0;
    // (?i) uses Unicode simple case folding: besides A-Z, U+017F (long s) folds
    // to 's'; no other character folds to a letter of these contractions.
    auto lower = [&](size_t k) -> char32_t {
      char32_t c = cp(k);
      if (!ignore_case) return c;
      if (c >= 'A' && c <= 'Z') return c + ('a' - 'A');
      return c == 0x17F ? U's' : c;
    };
    char32_t first = lower(i + 1), second = lower(i + 2);
    if (first == 's' || first == 't' || first == 'm' || first == 'd') return i + 2;
    if ((first == 'r' && second == 'e') || (first == 'v' && second == 'e') || (first == 'l' && second == 'l'))
      return i + 3;
    return 0;
  }

  // \s+(?!\S)|\s+ at a whitespace character: the whole run when it ends the
  // text, else the run minus its last character (which then leads the next
  // piece, e.g. " word"), but never less than one character.
  size_t match_whitespace_tail(size_t i) const {
    size_t end = run_end(i, CharClass::kWhitespace);
    if (end == i) return i + 1;  // unreachable for these patterns: every class is covered above
    if (end == size_ || end - i == 1) return end;
    return end - 1;
  }

  const std::vector<Char>& chars_;
  size_t size_;
};

}  // namespace

std::optional<SplitRegex> recognize_split_regex(std::string_view pattern) {
  if (pattern == kGpt2Pattern) return SplitRegex::kGpt2;
  if (pattern == kLlama3Pattern) return SplitRegex::kLlama3;
  if (pattern == kQwen2Pattern) return SplitRegex::kQwen2;
  return std::nullopt;
}

void split_with_regex(SplitRegex regex, std::string_view text, std::vector<std::string>* pieces) {
  std::vector<Char> chars = decode_chars(text);
  Matcher matcher(chars);
  size_t count = chars.size() - 1;
  for (size_t i = 0; i < count;) {
    size_t end = regex == SplitRegex::kGpt2     ? matcher.match_gpt2(i)
                 : regex == SplitRegex::kLlama3 ? matcher.match_llama3(i, 3)
                                                : matcher.match_llama3(i, 1);
    pieces->emplace_back(text.substr(chars[i].offset, chars[end].offset - chars[i].offset));
    i = end;
  }
}

void split_digits(bool individual_digits, std::string_view text, std::vector<std::string>* pieces) {
  size_t piece_start = 0;
  bool in_number = false;
  for (size_t position = 0; position < text.size();) {
    size_t offset = position;
    bool is_number = unicode::char_class(unicode::next_codepoint(text, &position)) == CharClass::kNumber;
    if (offset > piece_start && (is_number != in_number || (is_number && individual_digits))) {
      pieces->emplace_back(text.substr(piece_start, offset - piece_start));
      piece_start = offset;
    }
    in_number = is_number;
  }
  if (piece_start < text.size()) pieces->emplace_back(text.substr(piece_start));
}

const std::vector<std::string>& byte_level_alphabet() {
  static const std::vector<std::string> alphabet = [] {
    std::vector<std::string> spelled(256);
    char32_t next_extra = 256;
    for (int byte = 0; byte < 256; ++byte) {
      bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
      unicode::append_utf8(printable ? char32_t(byte) : next_extra++, &spelled[byte]);
    }
    return spelled;
  }();
  return alphabet;
}

std::string byte_level_encode(std::string_view text) {
  const std::vector<std::string>& alphabet = byte_level_alphabet();
  std::string out;
  out.reserve(text.size() * 2);
  for (char c : text) out += alphabet[static_cast<unsigned char>(c)];
  return out;
}

std::optional<std::string> byte_level_decode(std::string_view token) {
  static const std::unordered_map<char32_t, char> byte_of = [] {
    std::unordered_map<char32_t, char> map;
    const std::vector<std::string>& alphabet = byte_level_alphabet();
    for (int byte = 0; byte < 256; ++byte) {
      size_t position = 0;
      map[unicode::next_codepoint(alphabet[byte], &position)] = static_cast<char>(byte);
    }
    return map;
  }();
  std::string bytes;
  bytes.reserve(token.size());
  for (size_t position = 0; position < token.size();) {
    auto it = byte_of.find(unicode::next_codepoint(token, &position));
    if (it == byte_of.end()) return std::nullopt;
    bytes.push_back(it->second);
  }
  return bytes;
}

}  // namespace llmft
