// Pre-tokenizers of Hugging Face tokenizer.json files: the steps that cut text
// into the pieces BPE runs on. The regexes are matched by hand-written code
// (no regex library here supports \p{L}); only the patterns listed in
// SplitRegex are accepted, and any other pattern is rejected when the
// tokenizer is loaded.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace llmft {

enum class SplitRegex {
  // GPT-2 (openai/gpt-2 encoder.py; tokenizers' ByteLevel with use_regex):
  //   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // Llama-3 (meta-llama/llama3 tokenizer.py):
  //   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
  // Qwen2 (transformers models/qwen2/tokenization_qwen2.py): Llama-3's with \p{N} single digits.
  kQwen2,
};

// The SplitRegex spelled by `pattern`, or nullopt for a pattern we do not match.
std::optional<SplitRegex> recognize_split_regex(std::string_view pattern);

// Appends the consecutive matches of `regex` in `text` to *pieces, leftmost-first
// as a backtracking engine (Oniguruma, which tokenizers uses) finds them. These
// patterns match every character, so the pieces concatenate back to `text`.
// `text` must be valid UTF-8.
void split_with_regex(SplitRegex regex, std::string_view text, std::vector<std::string>* pieces);

// tokenizers' Digits pre-tokenizer: numbers (\p{N}, Rust's char::is_numeric)
// become pieces of their own, one per digit when `individual_digits`, else one per run.
void split_digits(bool individual_digits, std::string_view text, std::vector<std::string>* pieces);

// GPT-2's reversible byte-to-unicode map (openai/gpt-2 encoder.py
// bytes_to_unicode): printable bytes map to themselves, the other 68 to U+0100...
// Returns the UTF-8 spelling of each byte's character.
const std::vector<std::string>& byte_level_alphabet();

// `text` with each byte replaced by its byte-level character.
std::string byte_level_encode(std::string_view text);

// The bytes a byte-level token stands for, or nullopt when a character of it is
// outside the byte-level alphabet (e.g. an added token such as "<|im_end|>"
// written with other characters).
std::optional<std::string> byte_level_decode(std::string_view token);

}  // namespace llmft
