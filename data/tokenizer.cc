#include "data/tokenizer.h"

#include "core/json_depth.h"

#include <cctype>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"

namespace llmft {

std::vector<int32_t> Tokenizer::encode_with_special_tokens(std::string_view text) const {
  std::vector<int32_t> ids = prefix_ids_;
  std::vector<int32_t> body = encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string Tokenizer::token_text_bytes(int32_t id) const {
  std::string piece = id_to_piece(id);
  // "<0xNN>": sentencepiece's byte pieces (byte_fallback).
  if (piece.size() == 6 && piece.starts_with("<0x") && piece.back() == '>' && std::isxdigit(piece[3]) &&
      std::isxdigit(piece[4]))
    return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
  static constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 "▁"
  std::string bytes;
  for (size_t at = 0; at < piece.size();) {
    if (std::string_view(piece).substr(at).starts_with(kMetaspace)) {
      bytes += ' ';
      at += kMetaspace.size();
    } else {
      bytes += piece[at++];
    }
  }
  return bytes;
}

std::vector<size_t> Tokenizer::token_offsets(std::string_view text, std::span<const int32_t> ids) const {
  std::vector<size_t> offsets;
  offsets.reserve(ids.size());
  size_t at = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string bytes = token_text_bytes(ids[i]);
    const std::string_view rest = text.substr(at);
    offsets.push_back(at);
    if (rest.starts_with(bytes)) {
      at += bytes.size();
    } else if (bytes.starts_with(' ') && rest.starts_with(std::string_view(bytes).substr(1))) {
      at += bytes.size() - 1;  // the tokenizer's own prefix space
    } else {
      throw_bad_input(description(), ": token ", i, " (id ", ids[i], ", ", dump_json(nlohmann::json(bytes)),
                      ") does not continue the text at byte ", at,
                      ": cannot map tokens to text offsets (does the tokenizer's normalizer rewrite the text?)");
    }
  }
  if (at != text.size())
    throw_bad_input(description(), ": the tokens spell ", at, " of the text's ", text.size(),
                    " bytes: cannot map tokens to text offsets");
  return offsets;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::is_directory(path, error)) {
    if (fs::exists(path / "tokenizer.json")) return load_bpe_tokenizer(path / "tokenizer.json");
    if (fs::exists(path / "tokenizer.model")) return load_sentencepiece_tokenizer(path / "tokenizer.model");
    throw_bad_input(path.string(), ": no tokenizer.json or tokenizer.model in this directory");
  }
  if (!fs::exists(path, error)) throw_bad_input(path.string(), ": tokenizer file not found");
  if (path.extension() == ".json") return load_bpe_tokenizer(path);
  if (path.extension() == ".model") return load_sentencepiece_tokenizer(path);
  throw_bad_input(path.string(), ": unknown tokenizer file type (expected tokenizer.json, a sentencepiece .model, ",
                  "or a directory holding one)");
}

}  // namespace llmft
