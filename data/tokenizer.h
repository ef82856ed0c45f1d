// Text <-> token ids. Two implementations behind one interface: Hugging Face
// tokenizer.json byte-level BPE (data/bpe_tokenizer.h) and sentencepiece
// .model files (data/sentencepiece_tokenizer.h). load_tokenizer() picks one
// from a file or a model directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmft {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Ids of `text` without the ids the tokenizer adds around a sequence (BOS/EOS).
  // Special tokens written in the text (e.g. "<|im_end|>") become their ids, as
  // Hugging Face tokenizers does. Throws kBadInput for text that is not UTF-8.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;

  // Ids of `text` with special-token text treated as ordinary text (tiktoken's
  // encode_ordinary): for user content that must not inject control tokens
  // (data/chat_template.h). Sentencepiece already encodes "<s>" as text, so
  // the default is encode(); the BPE tokenizer overrides it.
  virtual std::vector<int32_t> encode_ordinary(std::string_view text) const { return encode(text); }

  // The ids put before and after every encoded sequence (e.g. [BOS] and []), as
  // the tokenizer's config says; see each implementation for where that is read.
  const std::vector<int32_t>& prefix_ids() const { return prefix_ids_; }
  const std::vector<int32_t>& suffix_ids() const { return suffix_ids_; }

  // prefix_ids() + encode(text) + suffix_ids(): HF's add_special_tokens=True.
  std::vector<int32_t> encode_with_special_tokens(std::string_view text) const;

  // Text of `ids`; bytes that do not form valid UTF-8 become U+FFFD. Throws
  // kBadInput for an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const = 0;

  // The bytes of the input text that token `id` stands for, to map tokens
  // back to text offsets (token_offsets). The default reads id_to_piece() the
  // sentencepiece way: "▁" is a space and a byte piece "<0xNN>" is that byte;
  // the BPE tokenizer also undoes the byte-level alphabet and gives added
  // tokens' content as it is.
  virtual std::string token_text_bytes(int32_t id) const;

  // The byte offset in `text` where each of `ids` starts, for an `ids` that
  // encodes `text` (encode, encode_ordinary, or pieces of both as encode_chat
  // makes; no prefix/suffix ids). The tokens' bytes are walked along the text:
  // each must continue the text where the previous one ended, except for a
  // space the tokenizer itself put in front (Metaspace's "▁" prefix), which
  // takes no text. Throws kBadInput naming the token and byte when they do not
  // spell the text (a normalizer that rewrites it, an unknown-token id).
  std::vector<size_t> token_offsets(std::string_view text, std::span<const int32_t> ids) const;

  // One past the largest id (vocabulary plus added tokens).
  virtual int32_t vocab_size() const = 0;
  virtual std::string id_to_piece(int32_t id) const = 0;
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }

  // Where it came from, for messages: "models/smollm2/tokenizer.json (BPE, 49152 ids)".
  virtual std::string description() const = 0;

 protected:
  std::vector<int32_t> prefix_ids_;
  std::vector<int32_t> suffix_ids_;
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
};

// Loads `path`: a tokenizer.json (with tokenizer_config.json from the same
// directory when present), a sentencepiece .model, or a directory holding
// tokenizer.json (preferred) or tokenizer.model. Throws kBadInput naming the
// file and field for anything malformed or unsupported.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);

}  // namespace llmft
