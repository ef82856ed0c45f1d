#include "data/tokenizer.h"

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
