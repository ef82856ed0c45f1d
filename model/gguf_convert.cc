// GGUF -> Hugging Face directory (see gguf_convert.h).
#include "model/gguf_convert.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "core/tensor.h"
#include "model/gguf_names.h"
#include "model/model_config.h"

namespace llmft::gguf {
namespace {

using json = nlohmann::ordered_json;

// llama.cpp token types (llama.h enum llama_token_type / gguf-py TokenType).
constexpr int64_t kTokenTypeControl = 3;
constexpr int64_t kTokenTypeUserDefined = 4;

// Pre-tokenizer split regexes by `tokenizer.ggml.pre`, as transformers'
// gguf_tokenizer_mapping.py GGUF_PRE_TOKENIZER_SPLITS has them (a subset: the
// ones llama-architecture files use).
constexpr const char* kLlama3Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
struct PreTokenizerSplit {
  const char* pre;
  const char* regex;
};
// The first name of each regex is the one the GGUF writer gives it: llama.cpp's
// converter names Llama 3's pre-tokenizer "llama-bpe" and Qwen2's "qwen2".
constexpr PreTokenizerSplit kPreTokenizerSplits[] = {
    {"llama-bpe", kLlama3Split}, {"llama3", kLlama3Split},   {"llama-v3", kLlama3Split},
    {"falcon3", kLlama3Split},   {"smaug-bpe", kLlama3Split}, {"dbrx", kLlama3Split},
    {"qwen2", kQwen2Split},      {"deepseek-r1-qwen", kQwen2Split},
};

json byte_level_pre_tokenizer(bool use_regex) {
  return json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

// The pre-tokenizer for `pre` (tokenizer.ggml.pre), and a note when it is not known.
json pre_tokenizer_for(const std::string& pre, std::vector<std::string>& notes) {
  // llama.cpp's SMOLLM pre-type (src/llama-vocab.cpp) isolates every \p{N}
  // character before the GPT-2 regex; SmolLM2's published tokenizer.json says
  // the same with Digits(individual_digits) + ByteLevel, which is how the model
  // was trained. transformers maps no split for "smollm" and uses ByteLevel
  // alone: its ids differ from these on numerals outside ASCII (x², ½), and
  // agree elsewhere since this vocabulary has no merges between ASCII digits.
  if (pre == "smollm")
    return json{{"type", "Sequence"},
                {"pretokenizers",
                 json::array({json{{"type", "Digits"}, {"individual_digits", true}}, byte_level_pre_tokenizer(true)})}};
  for (const PreTokenizerSplit& split : kPreTokenizerSplits) {
    if (pre != split.pre) continue;
    return json{{"type", "Sequence"},
                {"pretokenizers", json::array({json{{"type", "Split"},
                                                    {"pattern", json{{"Regex", split.regex}}},
                                                    {"behavior", "Isolated"},
                                                    {"invert", false}},
                                               byte_level_pre_tokenizer(false)})}};
  }
  if (!pre.empty() && pre != "gpt2" && pre != "default")
    notes.push_back(str_cat("tokenizer.ggml.pre '", pre, "' is not known: tokenizer.json uses the GPT-2 split"));
  return byte_level_pre_tokenizer(true);
}

}  // namespace

std::optional<std::string> gguf_pre_tokenizer_name(const nlohmann::json& pre_tokenizer) {
  auto is_type = [](const nlohmann::json& value, const char* type) {
    return value.is_object() && value.contains("type") && value["type"] == type;
  };
  auto byte_level_with_regex = [&](const nlohmann::json& value, bool use_regex) {
    return is_type(value, "ByteLevel") && value.value("use_regex", true) == use_regex;
  };
  if (byte_level_with_regex(pre_tokenizer, true)) return "gpt2";
  if (!is_type(pre_tokenizer, "Sequence") || !pre_tokenizer.contains("pretokenizers")) return std::nullopt;
  const nlohmann::json& steps = pre_tokenizer["pretokenizers"];
  if (!steps.is_array() || steps.size() != 2) return std::nullopt;
  if (is_type(steps[0], "Digits") && steps[0].value("individual_digits", false) && byte_level_with_regex(steps[1], true))
    return "smollm";
  if (!is_type(steps[0], "Split") || !byte_level_with_regex(steps[1], false) || !steps[0].contains("pattern") ||
      !steps[0]["pattern"].is_object() || !steps[0]["pattern"].contains("Regex") ||
      !steps[0]["pattern"]["Regex"].is_string())
    return std::nullopt;
  const std::string regex = steps[0]["pattern"]["Regex"].get<std::string>();
  for (const PreTokenizerSplit& split : kPreTokenizerSplits)
    if (regex == split.regex) return std::string(split.pre);
  return std::nullopt;
}

namespace {

// Decodes UTF-8 into code points; false when `text` is not valid UTF-8.
bool decode_utf8(const std::string& text, std::vector<char32_t>& out) {
  out.clear();
  for (size_t i = 0; i < text.size();) {
    const auto lead = static_cast<uint8_t>(text[i]);
    int length = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 0;
    if (length == 0 || i + static_cast<size_t>(length) > text.size()) return false;
    char32_t code = length == 1 ? lead : lead & (0x7F >> length);
    for (int k = 1; k < length; ++k) {
      const auto next = static_cast<uint8_t>(text[i + static_cast<size_t>(k)]);
      if ((next >> 6) != 2) return false;
      code = (code << 6) | (next & 0x3F);
    }
    if ((length == 2 && code < 0x80) || (length == 3 && code < 0x800) || (length == 4 && code < 0x10000) ||
        code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF))
      return false;
    out.push_back(code);
    i += static_cast<size_t>(length);
  }
  return true;
}

void append_utf8(std::string& out, char32_t code) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

bool in_byte_level_alphabet(char32_t code) {
  for (int byte = 0; byte < 256; ++byte)
    if (byte_level_char(static_cast<uint8_t>(byte)) == code) return true;
  return false;
}

// A token as the byte-level vocabulary spells it: unchanged when every
// character is in the byte alphabet, else each UTF-8 byte spelled (as
// transformers' byte_level_tokenizer does for tokens llama.cpp stored as text).
std::string byte_level_spelling(const std::string& token, bool& respelled) {
  std::vector<char32_t> codes;
  respelled = false;
  if (decode_utf8(token, codes) && std::all_of(codes.begin(), codes.end(), in_byte_level_alphabet)) return token;
  respelled = true;
  std::string spelled;
  for (char c : token) append_utf8(spelled, byte_level_char(static_cast<uint8_t>(c)));
  return spelled;
}

std::optional<int64_t> optional_token_id(const GgufFile& file, const char* key, size_t vocabulary) {
  if (file.find(key) == nullptr) return std::nullopt;
  const int64_t id = file.get_int(key);
  if (id < 0 || static_cast<uint64_t>(id) >= vocabulary)
    throw_bad_input(file.path(), ": metadata key '", key, "': token id ", id, " is outside the vocabulary of ",
                    vocabulary, " tokens");
  return id;
}

struct Tokenizer {
  json tokenizer;
  json tokenizer_config;
  std::optional<int64_t> bos, eos, pad, unk;
  size_t vocabulary = 0;
};

Tokenizer build_tokenizer(const GgufFile& file, int64_t context_length, std::vector<std::string>& notes) {
  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model != "gpt2")
    throw_bad_input(file.path(), ": metadata key 'tokenizer.ggml.model': '", model,
                    "' is not supported (llmft converts byte-level BPE tokenizers, 'gpt2')");
  const std::vector<std::string> tokens = file.get_string_array("tokenizer.ggml.tokens");
  const std::vector<std::string> merges = file.get_string_array("tokenizer.ggml.merges");
  std::vector<int64_t> token_types;
  if (file.find("tokenizer.ggml.token_type") != nullptr) {
    token_types = file.get_int_array("tokenizer.ggml.token_type");
    if (token_types.size() != tokens.size())
      throw_bad_input(file.path(), ": metadata key 'tokenizer.ggml.token_type': ", token_types.size(),
                      " entries, expected one per token (", tokens.size(), ")");
  }
  if (tokens.empty()) throw_bad_input(file.path(), ": metadata key 'tokenizer.ggml.tokens': the vocabulary is empty");

  Tokenizer result;
  result.vocabulary = tokens.size();
  // Vocabulary: spelled in the byte alphabet; a repeated token keeps its last id
  // (a Python dict built in order, as transformers builds it).
  std::vector<std::string> spelled(tokens.size());
  std::unordered_map<std::string, int64_t> id_of;
  for (size_t id = 0; id < tokens.size(); ++id) {
    std::vector<char32_t> ignored;
    if (!decode_utf8(tokens[id], ignored))
      throw_bad_input(file.path(), ": metadata key 'tokenizer.ggml.tokens': token ", id, " is not valid UTF-8");
    bool respelled = false;
    spelled[id] = byte_level_spelling(tokens[id], respelled);
    id_of[spelled[id]] = static_cast<int64_t>(id);
  }
  json vocab = json::object();
  for (size_t id = 0; id < tokens.size(); ++id)
    if (id_of[spelled[id]] == static_cast<int64_t>(id)) vocab[spelled[id]] = id;
  json merge_pairs = json::array();
  for (size_t index = 0; index < merges.size(); ++index) {
    const std::string& merge = merges[index];
    const size_t space = merge.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == merge.size() ||
        merge.find(' ', space + 1) != std::string::npos)
      throw_bad_input(file.path(), ": metadata key 'tokenizer.ggml.merges': merge ", index, " '", merge,
                      "' is not two tokens separated by one space");
    merge_pairs.push_back(json::array({merge.substr(0, space), merge.substr(space + 1)}));
  }

  // Added tokens: control tokens (type 3) as special tokens, user-defined ones
  // (type 4) as plain added tokens, as transformers' add_gguf_special_tokens;
  // a control token outside the byte alphabet is a llama.cpp mislabel and is
  // skipped there too.
  std::map<int64_t, json> added;
  for (size_t id = 0; id < token_types.size(); ++id) {
    const bool control = token_types[id] == kTokenTypeControl;
    const bool user_defined = token_types[id] == kTokenTypeUserDefined;
    if (!control && !user_defined) continue;
    bool respelled = false;
    byte_level_spelling(tokens[id], respelled);
    if (respelled) continue;
    const int64_t vocab_id = id_of[tokens[id]];
    if (added.count(vocab_id) != 0) continue;
    added[vocab_id] = json{{"id", vocab_id},  {"content", tokens[id]}, {"single_word", false}, {"lstrip", false},
                           {"rstrip", false}, {"normalized", false},   {"special", control}};
  }
  json added_tokens = json::array();
  for (auto& [id, token] : added) added_tokens.push_back(token);

  result.bos = optional_token_id(file, "tokenizer.ggml.bos_token_id", tokens.size());
  result.eos = optional_token_id(file, "tokenizer.ggml.eos_token_id", tokens.size());
  result.unk = optional_token_id(file, "tokenizer.ggml.unknown_token_id", tokens.size());
  result.pad = optional_token_id(file, "tokenizer.ggml.padding_token_id", tokens.size());
  const bool add_bos = file.find("tokenizer.ggml.add_bos_token") ? file.get_bool("tokenizer.ggml.add_bos_token") : false;
  const bool add_eos = file.find("tokenizer.ggml.add_eos_token") ? file.get_bool("tokenizer.ggml.add_eos_token") : false;
  if (add_bos && !result.bos)
    throw_bad_input(file.path(), ": metadata key 'tokenizer.ggml.add_bos_token' is true but there is no bos_token_id");
  if (add_eos && !result.eos)
    throw_bad_input(file.path(), ": metadata key 'tokenizer.ggml.add_eos_token' is true but there is no eos_token_id");

  // Post-processor: ByteLevel (offsets only) unless the file asks for BOS/EOS,
  // then a template that adds them.
  json post_processor;
  if (!add_bos && !add_eos) {
    post_processor = json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  } else {
    // tokenizers' TemplateProcessing: "$A" / "$B" sequences with BOS before and EOS after each.
    auto special = [&](int64_t id, int type_id) {
      return json{{"SpecialToken", {{"id", tokens[id]}, {"type_id", type_id}}}};
    };
    auto sequence = [](const char* id, int type_id) { return json{{"Sequence", {{"id", id}, {"type_id", type_id}}}}; };
    auto segment = [&](const char* id, int type_id) {
      json pieces = json::array();
      if (add_bos) pieces.push_back(special(*result.bos, type_id));
      pieces.push_back(sequence(id, type_id));
      if (add_eos) pieces.push_back(special(*result.eos, type_id));
      return pieces;
    };
    json single = segment("A", 0);
    json pair = segment("A", 0);
    for (json& piece : segment("B", 1)) pair.push_back(piece);
    json special_tokens = json::object();
    for (std::optional<int64_t> id : {add_bos ? result.bos : std::nullopt, add_eos ? result.eos : std::nullopt})
      if (id) special_tokens[tokens[*id]] = json{{"id", tokens[*id]}, {"ids", json::array({*id})}, {"tokens", json::array({tokens[*id]})}};
    post_processor = json{{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", special_tokens}};
  }

  result.tokenizer = json{
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added_tokens},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tokenizer_for(file.find("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre") : "", notes)},
      {"post_processor", post_processor},
      {"decoder", json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model", json{{"type", "BPE"},
                     {"dropout", nullptr},
                     {"unk_token", nullptr},
                     {"continuing_subword_prefix", ""},
                     {"end_of_word_suffix", ""},
                     {"fuse_unk", false},
                     {"byte_fallback", false},
                     {"ignore_merges", false},
                     {"vocab", vocab},
                     {"merges", merge_pairs}}},
  };

  json& config = result.tokenizer_config;
  config["add_bos_token"] = add_bos;
  config["add_eos_token"] = add_eos;
  if (result.bos) config["bos_token"] = tokens[*result.bos];
  if (result.eos) config["eos_token"] = tokens[*result.eos];
  if (result.pad) config["pad_token"] = tokens[*result.pad];
  if (result.unk) config["unk_token"] = tokens[*result.unk];
  if (file.find("tokenizer.chat_template") != nullptr) config["chat_template"] = file.get_string("tokenizer.chat_template");
  config["clean_up_tokenization_spaces"] = false;
  config["model_max_length"] = context_length;
  config["tokenizer_class"] = "PreTrainedTokenizerFast";
  return result;
}

int64_t positive_key(const GgufFile& file, const std::string& key) {
  const int64_t value = file.get_int(key);
  if (value <= 0) throw_bad_input(file.path(), ": metadata key '", key, "': expected a positive integer, found ", value);
  return value;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t axis = 0; axis < shape.size(); ++axis) text += str_cat(axis ? ", " : "", shape[axis]);
  return text + "]";
}

}  // namespace

char32_t byte_level_char(uint8_t byte) {
  // Printable Latin-1 bytes spell themselves; the other 68 (controls, space,
  // DEL, NBSP, soft hyphen, ...) map in order to U+0100 onwards.
  auto printable = [](int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); };
  if (printable(byte)) return byte;
  char32_t next = 256;
  for (int b = 0; b < byte; ++b)
    if (!printable(b)) ++next;
  return next;
}

double shortest_float32(double value) {
  const float target = static_cast<float>(value);
  char buffer[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(buffer, sizeof buffer, "%.*g", digits, static_cast<double>(target));
    if (std::strtof(buffer, nullptr) == target) return std::strtod(buffer, nullptr);
  }
  return value;
}

std::vector<float> permute_rope_rows(std::span<const float> hf_rows, int64_t rows, int64_t columns, int64_t heads) {
  LLMFT_CHECK(heads > 0 && rows % (2 * heads) == 0 && static_cast<int64_t>(hf_rows.size()) == rows * columns,
              "rows ", rows, " do not split into ", heads, " heads of pairs");
  const int64_t head_rows = rows / heads;
  const int64_t half = head_rows / 2;
  std::vector<float> gguf(hf_rows.size());
  for (int64_t head = 0; head < heads; ++head)
    for (int64_t part = 0; part < 2; ++part)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf_row = head * head_rows + part * half + i;
        const int64_t gguf_row = head * head_rows + 2 * i + part;
        std::copy_n(hf_rows.begin() + hf_row * columns, columns, gguf.begin() + gguf_row * columns);
      }
  return gguf;
}

std::vector<float> unpermute_rope_rows(std::span<const float> gguf_rows, int64_t rows, int64_t columns, int64_t heads) {
  LLMFT_CHECK(heads > 0 && rows % (2 * heads) == 0 && static_cast<int64_t>(gguf_rows.size()) == rows * columns,
              "rows ", rows, " do not split into ", heads, " heads of pairs");
  const int64_t head_rows = rows / heads;
  const int64_t half = head_rows / 2;
  std::vector<float> hf(gguf_rows.size());
  for (int64_t head = 0; head < heads; ++head)
    for (int64_t part = 0; part < 2; ++part)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf_row = head * head_rows + part * half + i;
        const int64_t gguf_row = head * head_rows + 2 * i + part;
        std::copy_n(gguf_rows.begin() + gguf_row * columns, columns, hf.begin() + hf_row * columns);
      }
  return hf;
}

HfModel convert_gguf(const GgufFile& file, const ConvertOptions& options) {
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16)
    throw_bad_input("convert: --dtype must be f32 or bf16, found ", dtype_name(options.dtype));
  const std::string architecture = file.get_string("general.architecture");
  if (architecture != "llama")
    throw_bad_input(file.path(), ": metadata key 'general.architecture' is '", architecture,
                    "': llmft converts 'llama' GGUF files only");
  HfModel model;

  const int64_t hidden = positive_key(file, "llama.embedding_length");
  const int64_t intermediate = positive_key(file, "llama.feed_forward_length");
  const int64_t layers = positive_key(file, "llama.block_count");
  const int64_t heads = positive_key(file, "llama.attention.head_count");
  const int64_t kv_heads = file.find("llama.attention.head_count_kv") ? positive_key(file, "llama.attention.head_count_kv") : heads;
  const int64_t context_length = positive_key(file, "llama.context_length");
  if (heads % kv_heads != 0)
    throw_bad_input(file.path(), ": metadata key 'llama.attention.head_count_kv': ", kv_heads,
                    " does not divide the head count ", heads);
  int64_t head_dim = hidden / heads;
  if (file.find("llama.attention.key_length") != nullptr) {
    head_dim = positive_key(file, "llama.attention.key_length");
  } else if (hidden % heads != 0) {
    throw_bad_input(file.path(), ": metadata key 'llama.attention.head_count': ", heads,
                    " heads do not divide the embedding length ", hidden);
  }
  if (file.find("llama.attention.value_length") != nullptr && positive_key(file, "llama.attention.value_length") != head_dim)
    throw_bad_input(file.path(), ": metadata key 'llama.attention.value_length': ",
                    file.get_int("llama.attention.value_length"), ", expected the key length ", head_dim);
  if (head_dim % 2 != 0)
    throw_bad_input(file.path(), ": head dimension ", head_dim, " is odd: RoPE needs pairs");
  if (file.find("llama.rope.dimension_count") != nullptr && file.get_int("llama.rope.dimension_count") != head_dim)
    throw_bad_input(file.path(), ": metadata key 'llama.rope.dimension_count': ", file.get_int("llama.rope.dimension_count"),
                    ", expected the head dimension ", head_dim, " (partial rotary embeddings are not supported)");
  const double rms_eps = file.find("llama.attention.layer_norm_rms_epsilon")
                             ? shortest_float32(file.get_float("llama.attention.layer_norm_rms_epsilon"))
                             : 1e-5;
  const double rope_theta = file.find("llama.rope.freq_base") ? shortest_float32(file.get_float("llama.rope.freq_base")) : 10000.0;
  json rope_scaling = nullptr;
  if (file.find("llama.rope.scaling.type") != nullptr) {
    const std::string type = file.get_string("llama.rope.scaling.type");
    if (type == "linear") {
      rope_scaling = json{{"rope_type", "linear"}, {"type", "linear"},
                          {"factor", shortest_float32(file.get_float("llama.rope.scaling.factor"))}};
    } else if (type != "none") {
      throw_bad_input(file.path(), ": metadata key 'llama.rope.scaling.type': '", type,
                      "' is not supported (expected none or linear)");
    }
  }
  if (file.find_tensor("rope_freqs.weight") != nullptr)
    throw_bad_input(file.path(), ": tensor 'rope_freqs.weight': per-dimension RoPE frequency factors (Llama 3.1 "
                                 "scaling) are not supported");

  Tokenizer tokenizer = build_tokenizer(file, context_length, model.notes);
  const TensorInfo& embedding = file.tensor("token_embd.weight");
  const int64_t vocab_size = static_cast<int64_t>(embedding.ne.size() == 2 ? embedding.ne[1] : 0);
  if (file.find("llama.vocab_size") != nullptr && file.get_int("llama.vocab_size") != vocab_size)
    throw_bad_input(file.path(), ": metadata key 'llama.vocab_size': ", file.get_int("llama.vocab_size"),
                    ", but tensor 'token_embd.weight' has ", vocab_size, " rows");
  if (static_cast<int64_t>(tokenizer.vocabulary) > vocab_size)
    throw_bad_input(file.path(), ": metadata key 'tokenizer.ggml.tokens': ", tokenizer.vocabulary,
                    " tokens, but tensor 'token_embd.weight' has only ", vocab_size, " rows");
  const bool tied = file.find_tensor("output.weight") == nullptr;

  // Expected HF shapes.
  std::map<std::string, std::vector<int64_t>> expected_shapes = {
      {"model.embed_tokens.weight", {vocab_size, hidden}}, {"model.norm.weight", {hidden}}};
  if (!tied) expected_shapes["lm_head.weight"] = {vocab_size, hidden};
  for (int64_t layer = 0; layer < layers; ++layer) {
    const std::string prefix = str_cat("model.layers.", layer, ".");
    expected_shapes[prefix + "input_layernorm.weight"] = {hidden};
    expected_shapes[prefix + "post_attention_layernorm.weight"] = {hidden};
    expected_shapes[prefix + "self_attn.q_proj.weight"] = {heads * head_dim, hidden};
    expected_shapes[prefix + "self_attn.k_proj.weight"] = {kv_heads * head_dim, hidden};
    expected_shapes[prefix + "self_attn.v_proj.weight"] = {kv_heads * head_dim, hidden};
    expected_shapes[prefix + "self_attn.o_proj.weight"] = {hidden, heads * head_dim};
    expected_shapes[prefix + "mlp.gate_proj.weight"] = {intermediate, hidden};
    expected_shapes[prefix + "mlp.up_proj.weight"] = {intermediate, hidden};
    expected_shapes[prefix + "mlp.down_proj.weight"] = {hidden, intermediate};
  }

  std::set<std::string> written;
  for (const TensorInfo& tensor : file.tensors()) {
    const std::string name = hf_tensor_name(tensor.name);
    // The shared name table also maps Qwen2's q/k/v biases, which a llama model has not.
    if (name.empty() || name.ends_with(".bias"))
      throw_bad_input(file.path(), ": tensor '", tensor.name, "' has no Hugging Face Llama counterpart");
    auto expected = expected_shapes.find(name);
    if (expected == expected_shapes.end())
      throw_bad_input(file.path(), ": tensor '", tensor.name, "' is beyond the model described by the metadata (",
                      layers, " blocks)");
    const std::vector<int64_t> shape = tensor.shape();
    if (shape != expected->second)
      throw_bad_input(file.path(), ": tensor '", tensor.name, "': shape ", shape_text(shape), " (as ", name,
                      "), expected ", shape_text(expected->second), " from the llama.* metadata");
    std::vector<float> values = file.dequantize(tensor);
    // llama.cpp permuted q with the query head count and k with the KV head count.
    if (tensor.name.ends_with(".attn_q.weight")) values = unpermute_rope_rows(values, shape[0], shape[1], heads);
    if (tensor.name.ends_with(".attn_k.weight")) values = unpermute_rope_rows(values, shape[0], shape[1], kv_heads);
    model.tensors.push_back({name, Tensor::from_floats(shape, values, options.dtype)});
    written.insert(name);
  }
  for (const auto& [name, shape] : expected_shapes)
    if (written.count(name) == 0)
      throw_bad_input(file.path(), ": no tensor for ", name, " (shape ", shape_text(shape), ")");

  json& config = model.config;
  config["architectures"] = json::array({"LlamaForCausalLM"});
  config["model_type"] = "llama";
  config["hidden_size"] = hidden;
  config["intermediate_size"] = intermediate;
  config["num_hidden_layers"] = layers;
  config["num_attention_heads"] = heads;
  config["num_key_value_heads"] = kv_heads;
  config["head_dim"] = head_dim;
  config["hidden_act"] = "silu";
  config["max_position_embeddings"] = context_length;
  config["rms_norm_eps"] = rms_eps;
  config["rope_theta"] = rope_theta;
  config["rope_scaling"] = rope_scaling;
  config["attention_bias"] = false;
  config["attention_dropout"] = 0.0;
  config["mlp_bias"] = false;
  config["initializer_range"] = 0.02;
  config["pretraining_tp"] = 1;
  config["use_cache"] = true;
  config["tie_word_embeddings"] = tied;
  config["vocab_size"] = vocab_size;
  if (tokenizer.bos) config["bos_token_id"] = *tokenizer.bos;
  if (tokenizer.eos) config["eos_token_id"] = *tokenizer.eos;
  if (tokenizer.pad) config["pad_token_id"] = *tokenizer.pad;
  config["torch_dtype"] = torch_dtype_name(options.dtype);

  json& generation = model.generation_config;
  if (tokenizer.bos) generation["bos_token_id"] = *tokenizer.bos;
  if (tokenizer.eos) generation["eos_token_id"] = *tokenizer.eos;
  if (tokenizer.pad) generation["pad_token_id"] = *tokenizer.pad;

  model.tokenizer = std::move(tokenizer.tokenizer);
  model.tokenizer_config = std::move(tokenizer.tokenizer_config);
  return model;
}

void write_hf_directory(const HfModel& model, const std::filesystem::path& directory) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) throw_bad_input(directory.string(), ": cannot create the output directory: ", error.message());
  // A sharded checkpoint's index left there would win over the new
  // model.safetensors in every loader (transformers' and llmft's).
  if (std::filesystem::exists(directory / "model.safetensors.index.json"))
    throw_bad_input((directory / "model.safetensors.index.json").string(),
                    ": the output directory holds a sharded checkpoint; convert into an empty directory");
  auto write_json = [&](const char* name, const json& value) {
    std::string text;
    try {
      text = value.dump(2, ' ', false, json::error_handler_t::strict) + "\n";
    } catch (const json::exception& failure) {
      throw_bad_input((directory / name).string(), ": cannot be written as JSON: ", failure.what());
    }
    write_file_atomically(directory / name, text);
  };
  write_json("config.json", model.config);
  write_json("generation_config.json", model.generation_config);
  write_json("tokenizer.json", model.tokenizer);
  write_json("tokenizer_config.json", model.tokenizer_config);
  write_safetensors(directory / "model.safetensors", model.tensors);
}

}  // namespace llmft::gguf
