#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "core/error.h"
#include "core/json_depth.h"
#include "data/tokenizer_unicode.h"

namespace llmft {
namespace {

using nlohmann::json;

// A JSON node and its path in the file, for errors like
// "models/x/tokenizer.json: model.merges[12]: expected ...".
class Field {
 public:
  Field(const json& node, std::string path, const std::string& source) : node_(node), path_(std::move(path)), source_(source) {}

  const json& node() const { return node_; }
  const std::string& path() const { return path_; }

  template <typename... Args>
  [[noreturn]] void fail(Args&&... args) const {
    throw_bad_input(source_, ": ", path_, ": ", std::forward<Args>(args)...);
  }

  bool has(std::string_view key) const { return node_.is_object() && node_.contains(key); }
  // The member `key`, which must exist (null counts as existing).
  Field at(std::string_view key) const {
    if (!node_.is_object()) fail("expected an object, found ", node_.type_name());
    auto it = node_.find(key);
    if (it == node_.end()) Field(node_, child_path(key), source_).fail("missing");
    return Field(*it, child_path(key), source_);
  }
  Field at(size_t index) const { return Field(node_[index], path_ + "[" + std::to_string(index) + "]", source_); }

  std::string string() const {
    if (!node_.is_string()) fail("expected a string, found ", node_.type_name());
    return node_.get<std::string>();
  }
  bool boolean() const {
    if (!node_.is_boolean()) fail("expected true or false, found ", node_.type_name());
    return node_.get<bool>();
  }
  int64_t integer() const {
    if (!node_.is_number_integer()) fail("expected an integer, found ", node_.dump());
    return node_.get<int64_t>();
  }
  // Optional members with defaults.
  bool boolean_or(std::string_view key, bool fallback) const {
    return has(key) && !node_[std::string(key)].is_null() ? at(key).boolean() : fallback;
  }
  const json& array() const {
    if (!node_.is_array()) fail("expected an array, found ", node_.type_name());
    return node_;
  }
  std::string type() const { return at("type").string(); }

 private:
  std::string child_path(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  const json& node_;
  std::string path_;
  const std::string& source_;
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// "<0x41>" -> 0x41, as tokenizers' ByteFallback spells bytes.
std::optional<unsigned char> parse_byte_token(std::string_view token) {
  if (token.size() != 6 || !token.starts_with("<0x") || token[5] != '>') return std::nullopt;
  int value = 0;
  for (char c : token.substr(3, 2)) {
    int digit = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (digit < 0) return std::nullopt;
    value = value * 16 + digit;
  }
  return static_cast<unsigned char>(value);
}

std::string replace_all(std::string text, std::string_view pattern, std::string_view replacement) {
  if (pattern.empty()) return text;
  for (size_t at = text.find(pattern); at != std::string::npos; at = text.find(pattern, at + replacement.size()))
    text.replace(at, pattern.size(), replacement);
  return text;
}

}  // namespace

BpeTokenizer::BpeTokenizer(const json& tokenizer_json, const json& tokenizer_config, std::string source)
    : source_(std::move(source)) {
  Field root(tokenizer_json, "", source_);
  if (!tokenizer_json.is_object()) throw_bad_input(source_, ": expected a JSON object at the top level");
  parse_model(root.at("model").node());
  if (root.has("added_tokens")) parse_added_tokens(root.at("added_tokens").node());
  if (root.has("normalizer")) parse_normalizer(root.at("normalizer").node(), "normalizer");
  normalize_added_tokens();
  if (root.has("pre_tokenizer")) parse_pre_tokenizer(root.at("pre_tokenizer").node(), "pre_tokenizer");
  if (root.has("post_processor")) parse_post_processor(root.at("post_processor").node(), "post_processor");
  if (root.has("decoder") && !tokenizer_json["decoder"].is_null()) {
    has_decoder_ = true;
    parse_decoder(root.at("decoder").node(), "decoder");
  }
  if (!tokenizer_config.is_null()) apply_tokenizer_config(tokenizer_config);
}

void BpeTokenizer::parse_model(const json& node) {
  Field model(node, "model", source_);
  std::string type = model.has("type") ? model.at("type").string() : "BPE";
  if (type != "BPE") model.at("type").fail("\"", type, "\" is not supported (supported: BPE)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.has(key) && !node[key].is_null() && !model.at(key).string().empty())
      model.at(key).fail("\"", node[key].get<std::string>(), "\" is not supported (only null or \"\")");
  }
  if (model.has("dropout") && !node["dropout"].is_null() && node["dropout"] != 0.0)
    model.at("dropout").fail("BPE dropout is for training only and not supported here");

  Field vocab = model.at("vocab");
  if (!vocab.node().is_object()) vocab.fail("expected an object {token: id}, found ", vocab.node().type_name());
  int32_t max_id = -1;
  for (auto it = vocab.node().begin(); it != vocab.node().end(); ++it) {
    Field id_field = vocab.at(it.key());
    int64_t id = id_field.integer();
    if (id < 0 || id >= (int64_t{1} << 31)) id_field.fail("id ", id, " out of range");
    token_to_id_[it.key()] = static_cast<int32_t>(id);
    max_id = std::max(max_id, static_cast<int32_t>(id));
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& [token, id] : token_to_id_) id_to_token_[static_cast<size_t>(id)] = token;

  Field merges = model.at("merges");
  const json& merge_list = merges.array();
  for (size_t rank = 0; rank < merge_list.size(); ++rank) {
    Field entry = merges.at(rank);
    std::string left, right;
    if (entry.node().is_string()) {
      // Older files: "left right", one space (tokens never contain a space in byte-level BPE).
      std::string text = entry.node().get<std::string>();
      size_t space = text.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == text.size() ||
          text.find(' ', space + 1) != std::string::npos)
        entry.fail("expected \"LEFT RIGHT\" with exactly one space, found \"", text, "\"");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (entry.node().is_array() && entry.node().size() == 2 && entry.node()[0].is_string() &&
               entry.node()[1].is_string()) {
      left = entry.node()[0].get<std::string>();
      right = entry.node()[1].get<std::string>();
    } else {
      entry.fail("expected \"LEFT RIGHT\" or [\"LEFT\", \"RIGHT\"], found ", entry.node().dump());
    }
    auto left_id = token_to_id(left), right_id = token_to_id(right), merged_id = token_to_id(left + right);
    if (!left_id || !right_id || !merged_id)
      entry.fail("token \"", !left_id ? left : !right_id ? right : left + right, "\" is not in model.vocab");
    // A repeated pair keeps its last rank, as tokenizers' HashMap collect does.
    merges_.insert_or_assign(pair_key(*left_id, *right_id),
                             MergeTarget{static_cast<int32_t>(rank), *merged_id});
  }

  byte_fallback_ = model.boolean_or("byte_fallback", false);
  byte_fallback_ids_.fill(-1);
  for (int byte = 0; byte < 256; ++byte) {
    char name[7];
    std::snprintf(name, sizeof(name), "<0x%02X>", byte);
    if (auto id = token_to_id(name)) byte_fallback_ids_[static_cast<size_t>(byte)] = *id;
  }
  fuse_unk_ = model.boolean_or("fuse_unk", false);
  ignore_merges_ = model.boolean_or("ignore_merges", false);
  if (model.has("unk_token") && !node["unk_token"].is_null()) {
    std::string unk = model.at("unk_token").string();
    unk_id_ = token_to_id(unk);
    if (!unk_id_) model.at("unk_token").fail("\"", unk, "\" is not in model.vocab");
  }
}

void BpeTokenizer::parse_added_tokens(const json& node) {
  Field list(node, "added_tokens", source_);
  const json& entries = list.array();
  std::vector<std::pair<AddedToken, bool>> tokens;  // token, normalized
  for (size_t i = 0; i < entries.size(); ++i) {
    Field entry = list.at(i);
    int64_t id = entry.at("id").integer();
    if (id < 0 || id >= (int64_t{1} << 31)) entry.at("id").fail("id ", id, " out of range");
    std::string content = entry.at("content").string();
    if (content.empty()) entry.at("content").fail("empty");
    for (const char* flag : {"single_word", "lstrip", "rstrip"})
      if (entry.boolean_or(flag, false)) entry.at(flag).fail("true is not supported (token \"", content, "\")");
    bool special = entry.boolean_or("special", false);
    bool normalized = entry.boolean_or("normalized", !special);
    auto index = static_cast<size_t>(id);
    if (index >= id_to_token_.size()) {
      id_to_token_.resize(index + 1);
    }
    id_to_token_[index] = content;
    token_to_id_[content] = static_cast<int32_t>(id);
    if (is_special_.size() < id_to_token_.size()) is_special_.resize(id_to_token_.size(), 0);
    is_special_[index] = special ? 1 : 0;
    if (is_added_.size() < id_to_token_.size()) is_added_.resize(id_to_token_.size(), 0);
    is_added_[index] = 1;
    tokens.push_back({AddedToken{content, static_cast<int32_t>(id)}, normalized});
  }
  is_special_.resize(id_to_token_.size(), 0);
  is_added_.resize(id_to_token_.size(), 0);
  // Normalized tokens are matched in normalized text, so they are normalized too
  // (done after the normalizer is known, in the constructor order below).
  for (auto& [token, normalized] : tokens) {
    AddedTokenIndex& index = normalized ? normalized_added_tokens_ : raw_added_tokens_;
    index.by_first_byte[static_cast<unsigned char>(token.content[0])].push_back(token);
    index.empty = false;
  }
  for (AddedTokenIndex* index : {&raw_added_tokens_, &normalized_added_tokens_})
    for (auto& bucket : index->by_first_byte)
      std::stable_sort(bucket.begin(), bucket.end(),
                       [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
}

void BpeTokenizer::parse_normalizer(const json& node, const std::string& path) {
  if (node.is_null()) return;
  Field field(node, path, source_);
  std::string type = field.type();
  if (type == "NFC") {
    normalizer_.push_back({NormalizerStep::Kind::kNfc, "", ""});
  } else if (type == "Prepend") {
    normalizer_.push_back({NormalizerStep::Kind::kPrepend, "", field.at("prepend").string()});
  } else if (type == "Replace") {
    Field pattern = field.at("pattern");
    if (!pattern.has("String")) pattern.fail("only {\"String\": ...} patterns are supported, found ", node["pattern"].dump());
    std::string from = pattern.at("String").string();
    if (from.empty()) pattern.at("String").fail("empty");
    normalizer_.push_back({NormalizerStep::Kind::kReplace, from, field.at("content").string()});
  } else if (type == "Sequence") {
    Field steps = field.at("normalizers");
    for (size_t i = 0; i < steps.array().size(); ++i) parse_normalizer(steps.at(i).node(), steps.at(i).path());
  } else {
    field.at("type").fail("\"", type, "\" is not supported (supported: NFC, Prepend, Replace, Sequence, or null)");
  }
}

// Metaspace's "prepend_scheme", or in older files "add_prefix_space" (true: always).
BpeTokenizer::PrependScheme BpeTokenizer::parse_prepend_scheme(const json& node, const std::string& path) const {
  Field field(node, path, source_);
  if (field.has("prepend_scheme")) {
    std::string scheme = field.at("prepend_scheme").string();
    if (scheme == "always") return PrependScheme::kAlways;
    if (scheme == "first") return PrependScheme::kFirst;
    if (scheme == "never") return PrependScheme::kNever;
    field.at("prepend_scheme").fail(""", scheme, "" is not one of always, first, never");
  }
  return field.boolean_or("add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
}

// Normalized added tokens are matched in normalized text, so their contents are
// normalized the same way (tokenizers' AddedVocabulary does this too).
void BpeTokenizer::normalize_added_tokens() {
  if (normalizer_.empty() || normalized_added_tokens_.empty) return;
  AddedTokenIndex renormalized;
  for (auto& bucket : normalized_added_tokens_.by_first_byte) {
    for (AddedToken token : bucket) {
      token.content = normalize(token.content);
      renormalized.by_first_byte[static_cast<unsigned char>(token.content[0])].push_back(token);
      renormalized.empty = false;
    }
  }
  for (auto& bucket : renormalized.by_first_byte)
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  normalized_added_tokens_ = std::move(renormalized);
}

std::string BpeTokenizer::normalize(std::string_view text) const {
  std::string out(text);
  for (const NormalizerStep& step : normalizer_) {
    switch (step.kind) {
      case NormalizerStep::Kind::kNfc:
        out = unicode::nfc(out);
        break;
      case NormalizerStep::Kind::kPrepend:
        if (!out.empty()) out.insert(0, step.content);
        break;
      case NormalizerStep::Kind::kReplace:
        out = replace_all(std::move(out), step.pattern, step.content);
        break;
    }
  }
  return out;
}

void BpeTokenizer::parse_pre_tokenizer(const json& node, const std::string& path) {
  if (node.is_null()) return;
  Field field(node, path, source_);
  std::string type = field.type();
  PreTokenizerStep step{};
  if (type == "Sequence") {
    Field steps = field.at("pretokenizers");
    for (size_t i = 0; i < steps.array().size(); ++i) parse_pre_tokenizer(steps.at(i).node(), steps.at(i).path());
    return;
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = field.boolean_or("add_prefix_space", true);
    step.use_regex = field.boolean_or("use_regex", true);
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    Field pattern = field.at("pattern");
    if (!pattern.has("Regex")) pattern.fail("only {\"Regex\": ...} patterns are supported, found ", node["pattern"].dump());
    std::string regex = pattern.at("Regex").string();
    auto recognized = recognize_split_regex(regex);
    if (!recognized)
      pattern.at("Regex").fail("regex \"", regex, "\" is not supported (supported: the GPT-2, Llama-3 and Qwen2 "
                               "pre-tokenizer regexes)");
    step.regex = *recognized;
    std::string behavior = field.at("behavior").string();
    if (behavior != "Isolated") field.at("behavior").fail("\"", behavior, "\" is not supported (supported: Isolated)");
    if (field.boolean_or("invert", false)) field.at("invert").fail("true is not supported");
  } else if (type == "Digits") {
    step.kind = PreTokenizerStep::Kind::kDigits;
    step.individual_digits = field.boolean_or("individual_digits", false);
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    step.replacement = field.at("replacement").string();
    if (step.replacement.empty()) field.at("replacement").fail("empty");
    step.prepend_scheme = parse_prepend_scheme(node, path);
    step.split = field.boolean_or("split", true);
  } else {
    field.at("type").fail("\"", type, "\" is not supported (supported: ByteLevel, Split, Digits, Metaspace, Sequence)");
  }
  pre_tokenizer_.push_back(step);
}

void BpeTokenizer::parse_post_processor(const json& node, const std::string& path) {
  if (node.is_null()) return;
  Field field(node, path, source_);
  std::string type = field.type();
  if (type == "ByteLevel") return;  // only moves offsets; no ids
  if (type == "Sequence") {
    Field steps = field.at("processors");
    for (size_t i = 0; i < steps.array().size(); ++i) parse_post_processor(steps.at(i).node(), steps.at(i).path());
    return;
  }
  if (type != "TemplateProcessing")
    field.at("type").fail("\"", type, "\" is not supported (supported: TemplateProcessing, ByteLevel, Sequence)");
  // single: [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}, ...]; the
  // special tokens before the sequence are the prefix, the ones after the suffix.
  Field single = field.at("single");
  Field special_tokens = field.at("special_tokens");
  bool seen_sequence = false;
  std::vector<int32_t> prefix, suffix;
  for (size_t i = 0; i < single.array().size(); ++i) {
    Field piece = single.at(i);
    if (piece.has("Sequence")) {
      seen_sequence = true;
      continue;
    }
    std::string name = piece.at("SpecialToken").at("id").string();
    if (!special_tokens.has(name)) special_tokens.fail("no entry for \"", name, "\" used in ", single.path());
    Field ids = special_tokens.at(name).at("ids");
    for (size_t k = 0; k < ids.array().size(); ++k) {
      int64_t id = ids.at(k).integer();
      if (id < 0 || id >= vocab_size()) ids.at(k).fail("id ", id, " outside the vocabulary [0, ", vocab_size(), ")");
      (seen_sequence ? suffix : prefix).push_back(static_cast<int32_t>(id));
    }
  }
  if (!seen_sequence) single.fail("no {\"Sequence\": {\"id\": \"A\"}} entry");
  prefix_ids_.insert(prefix_ids_.end(), prefix.begin(), prefix.end());
  suffix_ids_.insert(suffix_ids_.begin(), suffix.begin(), suffix.end());
  if (!prefix.empty()) bos_id_ = prefix.front();
  if (!suffix.empty()) eos_id_ = suffix.back();
}

void BpeTokenizer::parse_decoder(const json& node, const std::string& path) {
  Field field(node, path, source_);
  std::string type = field.type();
  DecoderStep step{};
  if (type == "Sequence") {
    Field steps = field.at("decoders");
    for (size_t i = 0; i < steps.array().size(); ++i) parse_decoder(steps.at(i).node(), steps.at(i).path());
    return;
  } else if (type == "ByteLevel") {
    step.kind = DecoderStep::Kind::kByteLevel;
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::Kind::kFuse;
  } else if (type == "Strip") {
    step.kind = DecoderStep::Kind::kStrip;
    step.content = field.at("content").string();
    step.strip_start = static_cast<size_t>(std::max<int64_t>(0, field.at("start").integer()));
    step.strip_stop = static_cast<size_t>(std::max<int64_t>(0, field.at("stop").integer()));
  } else if (type == "Replace") {
    step.kind = DecoderStep::Kind::kReplace;
    Field pattern = field.at("pattern");
    if (!pattern.has("String")) pattern.fail("only {\"String\": ...} patterns are supported");
    step.pattern = pattern.at("String").string();
    step.content = field.at("content").string();
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::Kind::kMetaspace;
    step.pattern = field.at("replacement").string();
    if (step.pattern.empty()) field.at("replacement").fail("empty");
    step.prepend_scheme = parse_prepend_scheme(node, path);
  } else {
    field.at("type").fail("\"", type, "\" is not supported (supported: ByteLevel, ByteFallback, Fuse, Strip, Replace, "
                          "Metaspace, Sequence)");
  }
  decoder_.push_back(step);
}

void BpeTokenizer::apply_tokenizer_config(const json& config) {
  std::string config_source = (std::filesystem::path(source_).parent_path() / "tokenizer_config.json").string();
  Field root(config, "", config_source);
  if (!config.is_object()) throw_bad_input(config_source, ": expected a JSON object at the top level");
  // bos_token / eos_token: "<s>" or {"content": "<s>", ...} (a serialized AddedToken).
  auto token_id = [&](const char* key) -> std::optional<int32_t> {
    if (!root.has(key) || config[key].is_null()) return std::nullopt;
    Field field = root.at(key);
    std::string content = field.node().is_object() ? field.at("content").string() : field.string();
    auto id = token_to_id(content);
    if (!id) field.fail("\"", content, "\" is not a token of ", source_);
    return id;
  };
  if (auto bos = token_id("bos_token")) bos_id_ = bos;
  if (auto eos = token_id("eos_token")) eos_id_ = eos;
  // transformers rebuilds the post-processor from these flags when they are set.
  if (root.has("add_bos_token") && !config["add_bos_token"].is_null()) {
    prefix_ids_.clear();
    if (root.at("add_bos_token").boolean()) {
      if (!bos_id_) root.at("bos_token").fail("needed because add_bos_token is true");
      prefix_ids_.push_back(*bos_id_);
    }
  }
  if (root.has("add_eos_token") && !config["add_eos_token"].is_null()) {
    suffix_ids_.clear();
    if (root.at("add_eos_token").boolean()) {
      if (!eos_id_) root.at("eos_token").fail("needed because add_eos_token is true");
      suffix_ids_.push_back(*eos_id_);
    }
  }
}

std::optional<int32_t> BpeTokenizer::token_to_id(std::string_view token) const {
  auto it = token_to_id_.find(token);
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

std::string BpeTokenizer::id_to_piece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) throw_bad_input(source_, ": token id ", id, " outside [0, ", vocab_size(), ")");
  return id_to_token_[static_cast<size_t>(id)];
}

std::string BpeTokenizer::token_text_bytes(int32_t id) const {
  const std::string token = id_to_piece(id);
  if (static_cast<size_t>(id) < is_added_.size() && is_added_[static_cast<size_t>(id)]) return token;
  if (byte_fallback_)
    if (auto byte = parse_byte_token(token)) return std::string(1, static_cast<char>(*byte));
  std::string bytes = token;
  for (const PreTokenizerStep& step : pre_tokenizer_) {
    if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
      if (auto decoded = byte_level_decode(token)) return *decoded;
    } else if (step.kind == PreTokenizerStep::Kind::kMetaspace) {
      bytes = replace_all(std::move(bytes), step.replacement, " ");
    }
  }
  return bytes;
}

std::string BpeTokenizer::description() const {
  return str_cat(source_, " (BPE, ", vocab_size(), " ids)");
}

template <typename Emit>
void BpeTokenizer::split_added_tokens(std::string_view text, const AddedTokenIndex& index, Emit&& emit) const {
  if (index.empty) {
    if (!text.empty()) emit(text, -1, size_t{0});
    return;
  }
  size_t segment_start = 0;
  for (size_t position = 0; position < text.size();) {
    const auto& candidates = index.by_first_byte[static_cast<unsigned char>(text[position])];
    const AddedToken* match = nullptr;
    for (const AddedToken& token : candidates) {  // longest first
      if (text.substr(position).starts_with(token.content)) {
        match = &token;
        break;
      }
    }
    if (!match) {
      ++position;
      continue;
    }
    if (position > segment_start) emit(text.substr(segment_start, position - segment_start), -1, segment_start);
    emit(text.substr(position, match->content.size()), match->id, position);
    position += match->content.size();
    segment_start = position;
  }
  if (segment_start < text.size()) emit(text.substr(segment_start), -1, segment_start);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  if (auto bad = unicode::find_invalid_utf8(text)) throw_bad_input("text is not valid UTF-8 at byte ", *bad);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  split_added_tokens(text, raw_added_tokens_, [&](std::string_view segment, int32_t added_id, size_t offset) {
    if (added_id >= 0) {
      ids.push_back(added_id);
      return;
    }
    auto encode_part = [&](std::string_view part, int32_t id, size_t part_offset) {
      if (id >= 0) ids.push_back(id);
      else encode_segment(part, offset == 0 && part_offset == 0, &ids);
    };
    if (normalizer_.empty()) {
      split_added_tokens(segment, normalized_added_tokens_, encode_part);
    } else {
      std::string normalized = normalize(segment);
      split_added_tokens(normalized, normalized_added_tokens_, encode_part);
    }
  });
  return ids;
}

std::vector<int32_t> BpeTokenizer::encode_ordinary(std::string_view text) const {
  if (auto bad = unicode::find_invalid_utf8(text)) throw_bad_input("text is not valid UTF-8 at byte ", *bad);
  std::vector<int32_t> ids;
  if (normalizer_.empty()) encode_segment(text, /*at_text_start=*/true, &ids);
  else encode_segment(normalize(text), /*at_text_start=*/true, &ids);
  return ids;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(std::string_view text) const {
  std::vector<std::string> out;
  for (Piece& piece : pre_tokenize_pieces(text, /*at_text_start=*/true)) out.push_back(std::move(piece.text));
  return out;
}

std::vector<BpeTokenizer::Piece> BpeTokenizer::pre_tokenize_pieces(std::string_view text, bool at_text_start) const {
  std::vector<Piece> pieces;
  if (!text.empty()) pieces.push_back({std::string(text), at_text_start});
  std::vector<Piece> next;
  std::vector<std::string> split, parts;
  for (const PreTokenizerStep& step : pre_tokenizer_) {
    next.clear();
    for (Piece& piece : pieces) {
      split.clear();
      switch (step.kind) {
        case PreTokenizerStep::Kind::kSplit:
          split_with_regex(step.regex, piece.text, &split);
          break;
        case PreTokenizerStep::Kind::kDigits:
          split_digits(step.individual_digits, piece.text, &split);
          break;
        case PreTokenizerStep::Kind::kByteLevel: {
          // tokenizers adds the prefix space to every piece it is given, not only the first.
          if (step.add_prefix_space && !piece.text.starts_with(' ')) {
            std::string prefixed(1, ' ');  // not insert(0, ...): GCC 12 warns falsely (-Wrestrict)
            prefixed += piece.text;
            piece.text.swap(prefixed);
          }
          parts.clear();
          if (step.use_regex) split_with_regex(SplitRegex::kGpt2, piece.text, &parts);
          else parts.push_back(std::move(piece.text));
          for (const std::string& part : parts) split.push_back(byte_level_encode(part));
          break;
        }
        case PreTokenizerStep::Kind::kMetaspace: {
          std::string replaced = replace_all(std::move(piece.text), " ", step.replacement);
          bool prepend = step.prepend_scheme == PrependScheme::kAlways ||
                         (step.prepend_scheme == PrependScheme::kFirst && piece.at_text_start);
          if (prepend && !replaced.starts_with(step.replacement)) replaced.insert(0, step.replacement);
          if (!step.split) {
            split.push_back(std::move(replaced));
            break;
          }
          // Split before every replacement, which starts the next piece (MergedWithNext).
          size_t start = 0;
          for (size_t at = replaced.find(step.replacement, 1); at != std::string::npos;
               at = replaced.find(step.replacement, at + step.replacement.size())) {
            split.push_back(replaced.substr(start, at - start));
            start = at;
          }
          split.push_back(replaced.substr(start));
          break;
        }
      }
      for (size_t i = 0; i < split.size(); ++i)
        if (!split[i].empty()) next.push_back({std::move(split[i]), piece.at_text_start && i == 0});
    }
    pieces.swap(next);
  }
  return pieces;
}

void BpeTokenizer::encode_segment(std::string_view text, bool at_text_start, std::vector<int32_t>* ids) const {
  for (const Piece& piece : pre_tokenize_pieces(text, at_text_start)) encode_piece(piece.text, ids);
}

void BpeTokenizer::encode_piece(const std::string& piece, std::vector<int32_t>* ids) const {
  {
    std::lock_guard lock(cache_mutex_);
    auto it = piece_cache_.find(piece);
    if (it != piece_cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> piece_ids = merge_piece(piece);
  ids->insert(ids->end(), piece_ids.begin(), piece_ids.end());
  std::lock_guard lock(cache_mutex_);
  if (piece_cache_.size() >= (1u << 18)) piece_cache_.clear();  // bound memory on huge corpora
  piece_cache_.emplace(piece, std::move(piece_ids));
}

std::vector<int32_t> BpeTokenizer::merge_piece(std::string_view piece) const {
  if (ignore_merges_) {
    if (auto id = token_to_id(piece)) return {*id};
  }
  // Symbols in a doubly linked list; merged-away symbols get id -1.
  struct Symbol {
    int32_t id;
    int32_t previous;
    int32_t next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  bool previous_was_unknown = false;
  auto push = [&](int32_t id) {
    int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, index + 1});
  };
  for (size_t position = 0; position < piece.size();) {
    size_t start = position;
    unicode::next_codepoint(piece, &position);
    std::string_view character = piece.substr(start, position - start);
    if (auto id = token_to_id(character)) {
      push(*id);
      previous_was_unknown = false;
      continue;
    }
    if (byte_fallback_ && std::all_of(character.begin(), character.end(), [&](char c) {
          return byte_fallback_ids_[static_cast<unsigned char>(c)] >= 0;
        })) {
      for (char c : character) push(byte_fallback_ids_[static_cast<unsigned char>(c)]);
      previous_was_unknown = false;
      continue;
    }
    // Without an unk token tokenizers drops the character (models/bpe/model.rs merge_word).
    if (unk_id_ && !(fuse_unk_ && previous_was_unknown)) push(*unk_id_);
    previous_was_unknown = unk_id_.has_value();
  }
  if (symbols.empty()) return {};
  symbols.back().next = -1;

  // Lowest rank first; on equal ranks the leftmost pair (tokenizers' Merge ordering).
  struct Candidate {
    int32_t rank;
    int32_t position;
    int32_t merged_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : position > other.position;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int32_t left) {
    int32_t right = symbols[static_cast<size_t>(left)].next;
    if (right < 0) return;
    auto it = merges_.find(pair_key(symbols[static_cast<size_t>(left)].id, symbols[static_cast<size_t>(right)].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.merged_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<size_t>(top.position)];
    if (left.id < 0 || left.next < 0) continue;
    Symbol& right = symbols[static_cast<size_t>(left.next)];
    // Skip candidates made stale by an earlier merge of either symbol.
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;
    left.id = top.merged_id;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].previous = top.position;
    right.id = -1;
    if (left.previous >= 0) consider(left.previous);
    consider(top.position);
  }
  std::vector<int32_t> ids;
  for (int32_t i = 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) ids.push_back(symbols[static_cast<size_t>(i)].id);
  return ids;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) throw_bad_input(source_, ": token id ", id, " outside [0, ", vocab_size(), ")");
    if (skip_special_tokens && is_special_[static_cast<size_t>(id)]) continue;
    tokens.push_back(id_to_token_[static_cast<size_t>(id)]);
  }
  if (!has_decoder_) {  // tokenizers joins the raw tokens with spaces when there is no decoder
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) joined += (i ? " " : "") + tokens[i];
    return joined;
  }
  for (const DecoderStep& step : decoder_) {
    std::vector<std::string> next;
    switch (step.kind) {
      case DecoderStep::Kind::kByteLevel: {
        std::string bytes;
        for (const std::string& token : tokens) {
          auto decoded = byte_level_decode(token);
          bytes += decoded ? *decoded : token;  // tokens outside the alphabet pass through
        }
        next.push_back(unicode::utf8_lossy(bytes));
        break;
      }
      case DecoderStep::Kind::kByteFallback: {
        std::string pending;
        size_t pending_count = 0;
        auto flush = [&] {
          if (pending_count == 0) return;
          if (unicode::find_invalid_utf8(pending)) {
            for (size_t i = 0; i < pending_count; ++i) next.push_back("\xEF\xBF\xBD");  // one U+FFFD per byte
          } else {
            next.push_back(pending);
          }
          pending.clear();
          pending_count = 0;
        };
        for (const std::string& token : tokens) {
          if (auto byte = parse_byte_token(token)) {
            pending.push_back(static_cast<char>(*byte));
            ++pending_count;
          } else {
            flush();
            next.push_back(token);
          }
        }
        flush();
        break;
      }
      case DecoderStep::Kind::kFuse: {
        std::string fused;
        for (const std::string& token : tokens) fused += token;
        next.push_back(std::move(fused));
        break;
      }
      case DecoderStep::Kind::kStrip:
        for (std::string token : tokens) {
          for (size_t i = 0; i < step.strip_start && token.starts_with(step.content); ++i)
            token.erase(0, step.content.size());
          for (size_t i = 0; i < step.strip_stop && token.ends_with(step.content); ++i)
            token.erase(token.size() - step.content.size());
          next.push_back(std::move(token));
        }
        break;
      case DecoderStep::Kind::kReplace:
        for (const std::string& token : tokens) next.push_back(replace_all(token, step.pattern, step.content));
        break;
      case DecoderStep::Kind::kMetaspace:
        // The replacement becomes a space, except in the first token, where the
        // pre-tokenizer put it (unless prepend_scheme is never) and it is dropped.
        for (size_t i = 0; i < tokens.size(); ++i) {
          bool drop = i == 0 && step.prepend_scheme != PrependScheme::kNever;
          next.push_back(replace_all(tokens[i], step.pattern, drop ? "" : " "));
        }
        break;
    }
    tokens.swap(next);
  }
  std::string text;
  for (const std::string& token : tokens) text += token;
  return text;
}

std::unique_ptr<BpeTokenizer> load_bpe_tokenizer(const std::filesystem::path& tokenizer_json_path) {
  auto read_json = [](const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw_bad_input(path.string(), ": cannot open");
    std::stringstream buffer;
    buffer << in.rdbuf();
    try {
      return parse_json<json>(buffer.str(), path.string());
    } catch (const json::exception& error) {  // parse_error, and out_of_range for a number like 1e999
      throw_bad_input(path.string(), ": not valid JSON: ", error.what());
    }
  };
  json tokenizer_json = read_json(tokenizer_json_path);
  json config;  // null when absent
  std::filesystem::path config_path = tokenizer_json_path.parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) config = read_json(config_path);
  return std::make_unique<BpeTokenizer>(tokenizer_json, config, tokenizer_json_path.string());
}

}  // namespace llmft
