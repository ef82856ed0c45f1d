// Hugging Face tokenizer.json with a BPE model: the byte-level tokenizers of
// GPT-2, Llama-3, Qwen2 and SmolLM2, and BPE with byte fallback. What it runs,
// in the order tokenizers (huggingface/tokenizers, tokenizer/mod.rs) runs it:
//   1. added tokens are cut out of the text first, leftmost-longest
//      (AddedVocabulary: non-normalized tokens on the raw text, normalized
//      ones after the normalizer);
//   2. normalizer: NFC, Prepend, Replace (string patterns), Sequence;
//   3. pre-tokenizer: ByteLevel (add_prefix_space, use_regex), Split with the
//      GPT-2 / Llama-3 / Qwen2 regex (behavior Isolated), Digits, Metaspace
//      (the sentencepiece-style files of Llama-2 / Mistral), Sequence;
//   4. BPE: ranked merges applied lowest rank first, leftmost on ties
//      (models/bpe/word.rs merge_all), ignore_merges, byte_fallback, unk;
//   5. post-processor: ByteLevel (no ids), TemplateProcessing, Sequence — or
//      add_bos_token / add_eos_token of tokenizer_config.json, which win when
//      present, as in transformers;
//   decoder: ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, Sequence.
// Anything else in the file is rejected at load time naming the file and field,
// rather than tokenizing differently from the reference.
#pragma once

#include <array>
#include <filesystem>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <unordered_map>

#include "data/tokenizer.h"
#include "data/tokenizer_pretokenizer.h"

namespace llmft {

class BpeTokenizer : public Tokenizer {
 public:
  // `tokenizer_config` is the parsed tokenizer_config.json, or null when there
  // is none; `source` names the file in error messages.
  BpeTokenizer(const nlohmann::json& tokenizer_json, const nlohmann::json& tokenizer_config, std::string source);

  std::vector<int32_t> encode(std::string_view text) const override;
  // No added-token matching: the whole text is normalized, pre-tokenized and merged.
  std::vector<int32_t> encode_ordinary(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(id_to_token_.size()); }
  std::string id_to_piece(int32_t id) const override;
  // Added tokens: their content; byte-fallback "<0xNN>": that byte; others:
  // the byte-level alphabet undone (ByteLevel) or "▁" read as a space (Metaspace).
  std::string token_text_bytes(int32_t id) const override;
  std::string description() const override;

  // The pieces the pre-tokenizer alone cuts `text` into (tokenizers'
  // pre_tokenize_str: no added tokens, no normalizer).
  std::vector<std::string> pre_tokenize(std::string_view text) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view text) const { return std::hash<std::string_view>()(text); }
  };
  using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  // Metaspace's prepend_scheme: put the replacement ("▁") in front of every
  // piece, only of the piece at the start of the text, or never.
  enum class PrependScheme { kAlways, kFirst, kNever };
  struct NormalizerStep {
    enum class Kind { kNfc, kPrepend, kReplace } kind;
    std::string pattern, content;  // Replace: pattern -> content; Prepend: content
  };
  struct PreTokenizerStep {
    enum class Kind { kByteLevel, kSplit, kDigits, kMetaspace } kind;
    bool add_prefix_space = false;   // ByteLevel
    bool use_regex = false;          // ByteLevel: split with the GPT-2 regex first
    SplitRegex regex = SplitRegex::kGpt2;  // Split
    bool individual_digits = false;  // Digits
    std::string replacement;         // Metaspace
    PrependScheme prepend_scheme = PrependScheme::kAlways;  // Metaspace
    bool split = false;              // Metaspace: split before each replacement
  };
  struct DecoderStep {
    enum class Kind { kByteLevel, kByteFallback, kFuse, kStrip, kReplace, kMetaspace } kind;
    std::string pattern, content;   // Replace; Strip uses content; Metaspace: pattern is the replacement
    size_t strip_start = 0, strip_stop = 0;
    PrependScheme prepend_scheme = PrependScheme::kAlways;  // Metaspace
  };
  // A piece of text during pre-tokenization; `at_text_start` when it begins at
  // offset 0 of the encoded text (Metaspace's prepend_scheme "first").
  struct Piece {
    std::string text;
    bool at_text_start;
  };
  struct AddedToken {
    std::string content;
    int32_t id;
  };
  // Added tokens by first byte, longest first, for leftmost-longest matching.
  struct AddedTokenIndex {
    std::array<std::vector<AddedToken>, 256> by_first_byte;
    bool empty = true;
  };
  struct MergeTarget {
    int32_t rank;
    int32_t merged_id;
  };

  void parse_normalizer(const nlohmann::json& node, const std::string& path);
  void parse_pre_tokenizer(const nlohmann::json& node, const std::string& path);
  void parse_model(const nlohmann::json& node);
  void parse_added_tokens(const nlohmann::json& node);
  void parse_post_processor(const nlohmann::json& node, const std::string& path);
  void parse_decoder(const nlohmann::json& node, const std::string& path);
  void apply_tokenizer_config(const nlohmann::json& config);

  // Calls emit(segment, added_id, offset) for the text between added tokens
  // (added_id -1) and for each added token; offset is the segment's in `text`.
  template <typename Emit>
  void split_added_tokens(std::string_view text, const AddedTokenIndex& index, Emit&& emit) const;
  std::string normalize(std::string_view text) const;
  void normalize_added_tokens();
  PrependScheme parse_prepend_scheme(const nlohmann::json& node, const std::string& path) const;
  std::vector<Piece> pre_tokenize_pieces(std::string_view text, bool at_text_start) const;
  void encode_segment(std::string_view text, bool at_text_start, std::vector<int32_t>* ids) const;
  void encode_piece(const std::string& piece, std::vector<int32_t>* ids) const;
  std::vector<int32_t> merge_piece(std::string_view piece) const;

  std::string source_;
  std::vector<NormalizerStep> normalizer_;
  std::vector<PreTokenizerStep> pre_tokenizer_;
  std::vector<DecoderStep> decoder_;
  bool has_decoder_ = false;

  TokenMap token_to_id_;  // model.vocab plus added tokens
  std::vector<std::string> id_to_token_;
  std::vector<uint8_t> is_special_;
  std::vector<uint8_t> is_added_;  // from added_tokens: the id stands for its content as written
  std::unordered_map<uint64_t, MergeTarget> merges_;  // key: left id << 32 | right id
  bool byte_fallback_ = false;
  std::array<int32_t, 256> byte_fallback_ids_{};  // <0xNN>, -1 where missing
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  AddedTokenIndex raw_added_tokens_;         // normalized: false
  AddedTokenIndex normalized_added_tokens_;  // normalized: true

  // Pieces repeat (" the", " of"), so their ids are cached.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> piece_cache_;
};

// Reads `tokenizer_json_path` and, when it exists, tokenizer_config.json next to it.
std::unique_ptr<BpeTokenizer> load_bpe_tokenizer(const std::filesystem::path& tokenizer_json_path);

}  // namespace llmft
