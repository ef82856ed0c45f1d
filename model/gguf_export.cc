// Hugging Face directory -> GGUF (see gguf_export.h).
#include "model/gguf_export.h"

#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "model/gguf_convert.h"
#include "model/gguf_names.h"
#include "model/gguf_quantize.h"

namespace llmft::gguf {
namespace {

using json = nlohmann::json;

// llama.cpp token types (gguf-py TokenType).
constexpr int32_t kTokenNormal = 1, kTokenControl = 3, kTokenUserDefined = 4, kTokenUnused = 5;

json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_bad_input(path.string(), ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const json::exception& failure) {
    throw_bad_input(path.string(), ": not valid JSON: ", failure.what());
  }
}

// A special-token entry of tokenizer_config.json: "<s>" or {"content": "<s>", ...}.
std::optional<std::string> special_token_text(const json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const json& value = config[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  return std::nullopt;
}

struct GgufTokenizer {
  std::string pre;
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  std::optional<int64_t> bos, eos, unk, pad;
  bool add_bos = false;
  bool add_eos = false;
  std::optional<std::string> chat_template;
};

GgufTokenizer read_tokenizer(const std::filesystem::path& directory, const ModelConfig& config,
                             std::vector<std::string>& notes) {
  const std::filesystem::path tokenizer_path = directory / "tokenizer.json";
  if (!std::filesystem::exists(tokenizer_path))
    throw_bad_input(tokenizer_path.string(), ": missing: the GGUF export needs the Hugging Face tokenizer.json");
  const std::string file = tokenizer_path.string();
  const json tokenizer = read_json_file(tokenizer_path);
  if (!tokenizer.contains("model") || !tokenizer["model"].is_object())
    throw_bad_input(file, ": field 'model': missing");
  const json& model = tokenizer["model"];
  const std::string model_type = model.value("type", "");
  if (model_type != "BPE")
    throw_bad_input(file, ": field 'model.type': '", model_type,
                    "', expected 'BPE' (the GGUF export writes byte-level BPE tokenizers, tokenizer.ggml.model 'gpt2')");
  if (model.value("byte_fallback", false))
    throw_bad_input(file, ": field 'model.byte_fallback': true (a SentencePiece-style BPE); the GGUF export writes "
                          "byte-level BPE tokenizers (tokenizer.ggml.model 'gpt2') only");

  GgufTokenizer result;
  const json pre_tokenizer = tokenizer.contains("pre_tokenizer") ? tokenizer["pre_tokenizer"] : json();
  const std::optional<std::string> pre = gguf_pre_tokenizer_name(pre_tokenizer);
  if (!pre)
    throw_bad_input(file, ": field 'pre_tokenizer': ", pre_tokenizer.dump().substr(0, 120),
                    " is not a byte-level pre-tokenizer llama.cpp knows by name (gpt2, smollm, llama-bpe, qwen2)");
  result.pre = *pre;

  // Tokens by id: the BPE vocabulary plus the added tokens; ids without a
  // token become "[PAD<id>]" of type UNUSED, as convert_hf_to_gguf's get_vocab_base.
  const int64_t vocab_size = config.vocab_size;
  std::vector<std::optional<std::string>> by_id(static_cast<size_t>(vocab_size));
  std::vector<int32_t> types(static_cast<size_t>(vocab_size), kTokenNormal);
  auto place = [&](const std::string& token, const json& id_value, const std::string& field) {
    if (!id_value.is_number_integer()) throw_bad_input(file, ": field '", field, "': token id is not an integer");
    const int64_t id = id_value.get<int64_t>();
    if (id < 0 || id >= vocab_size)
      throw_bad_input(file, ": field '", field, "': token '", token, "' has id ", id,
                      ", outside config.json's vocab_size ", vocab_size, " (the rows of the embedding)");
    by_id[static_cast<size_t>(id)] = token;
    return static_cast<size_t>(id);
  };
  if (!model.contains("vocab") || !model["vocab"].is_object()) throw_bad_input(file, ": field 'model.vocab': missing");
  for (auto entry = model["vocab"].begin(); entry != model["vocab"].end(); ++entry)
    place(entry.key(), entry.value(), "model.vocab");
  if (tokenizer.contains("added_tokens") && tokenizer["added_tokens"].is_array()) {
    for (const json& added : tokenizer["added_tokens"]) {
      const std::string content = added.value("content", "");
      const size_t id = place(content, added.contains("id") ? added["id"] : json(), "added_tokens");
      types[id] = added.value("special", false) ? kTokenControl : kTokenUserDefined;
    }
  }
  int64_t unused = 0;
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (by_id[static_cast<size_t>(id)]) {
      result.tokens.push_back(*by_id[static_cast<size_t>(id)]);
    } else {
      result.tokens.push_back(str_cat("[PAD", id, "]"));
      types[static_cast<size_t>(id)] = kTokenUnused;
      ++unused;
    }
  }
  result.types = std::move(types);
  if (unused > 0) notes.push_back(str_cat(unused, " ids without a token are written as [PAD<id>] (type UNUSED)"));

  // Merges: "a b" strings (the older tokenizers format) or [a, b] pairs; GGUF
  // keeps "a b", so a part that holds a space cannot be written.
  if (!model.contains("merges") || !model["merges"].is_array()) throw_bad_input(file, ": field 'model.merges': missing");
  size_t index = 0;
  for (const json& merge : model["merges"]) {
    if (merge.is_string()) {
      result.merges.push_back(merge.get<std::string>());
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      const std::string first = merge[0].get<std::string>(), second = merge[1].get<std::string>();
      if (first.find(' ') != std::string::npos || second.find(' ') != std::string::npos)
        throw_bad_input(file, ": field 'model.merges': merge ", index, " ['", first, "', '", second,
                        "'] holds a space, which tokenizer.ggml.merges (\"a b\" strings) cannot express");
      result.merges.push_back(first + " " + second);
    } else {
      throw_bad_input(file, ": field 'model.merges': merge ", index, " is neither \"a b\" nor [a, b]");
    }
    ++index;
  }

  std::map<std::string, int64_t> id_of;
  for (size_t id = 0; id < result.tokens.size(); ++id) id_of.emplace(result.tokens[id], static_cast<int64_t>(id));
  const std::filesystem::path config_path = directory / "tokenizer_config.json";
  const json tokenizer_config = std::filesystem::exists(config_path) ? read_json_file(config_path) : json::object();
  auto special_id = [&](const char* key) -> std::optional<int64_t> {
    const std::optional<std::string> text = special_token_text(tokenizer_config, key);
    if (!text) return std::nullopt;
    auto found = id_of.find(*text);
    if (found == id_of.end()) {
      notes.push_back(str_cat("tokenizer_config.json: ", key, " '", *text, "' is not in the vocabulary: left out"));
      return std::nullopt;
    }
    return found->second;
  };
  result.bos = special_id("bos_token");
  result.eos = special_id("eos_token");
  result.unk = special_id("unk_token");
  result.pad = special_id("pad_token");
  if (!result.bos && !config.bos_token_ids.empty()) result.bos = config.bos_token_ids.front();
  if (!result.eos && !config.eos_token_ids.empty()) result.eos = config.eos_token_ids.front();

  // add_bos/add_eos: tokenizer_config.json's flags, else what the post-processor adds.
  auto template_adds = [&](std::optional<int64_t> id, bool first) {
    if (!id || !tokenizer.contains("post_processor") || !tokenizer["post_processor"].is_object()) return false;
    const json& processor = tokenizer["post_processor"];
    if (processor.value("type", "") != "TemplateProcessing" || !processor.contains("single")) return false;
    const json& single = processor["single"];
    if (!single.is_array() || single.empty()) return false;
    const json& piece = first ? single.front() : single.back();
    return piece.contains("SpecialToken") && piece["SpecialToken"].value("id", "") == result.tokens[*id];
  };
  result.add_bos = tokenizer_config.contains("add_bos_token") && tokenizer_config["add_bos_token"].is_boolean()
                       ? tokenizer_config["add_bos_token"].get<bool>()
                       : template_adds(result.bos, true);
  result.add_eos = tokenizer_config.contains("add_eos_token") && tokenizer_config["add_eos_token"].is_boolean()
                       ? tokenizer_config["add_eos_token"].get<bool>()
                       : template_adds(result.eos, false);

  if (std::filesystem::exists(directory / "chat_template.jinja")) {
    std::ifstream in(directory / "chat_template.jinja", std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    result.chat_template = text.str();
  } else if (tokenizer_config.contains("chat_template") && tokenizer_config["chat_template"].is_string()) {
    result.chat_template = tokenizer_config["chat_template"].get<std::string>();
  } else if (tokenizer_config.contains("chat_template")) {
    throw_bad_input(config_path.string(), ": field 'chat_template': expected a string (named templates are not supported)");
  }
  return result;
}

}  // namespace

uint32_t llama_file_type(GgmlType type) {
  switch (type) {  // llama.h enum llama_ftype / gguf-py LlamaFileType
    case GgmlType::kF32: return 0;
    case GgmlType::kF16: return 1;
    case GgmlType::kQ4_0: return 2;
    case GgmlType::kQ4_1: return 3;
    case GgmlType::kQ8_0: return 7;
    case GgmlType::kQ5_0: return 8;
    case GgmlType::kQ5_1: return 9;
    case GgmlType::kBF16: return 32;
    default: throw_runtime("GGUF: no llama file type for ", ggml_type_name(static_cast<uint32_t>(type)));
  }
}

std::string gguf_architecture(const ModelConfig& config, const std::string& where) {
  // convert_hf_to_gguf.py's MistralModel writes the llama architecture.
  if (config.model_type == "llama" || config.model_type == "mistral") return "llama";
  if (config.model_type == "qwen2") return "qwen2";
  throw_bad_input(where, ": field 'model_type': '", config.model_type,
                  "' is not supported by the GGUF export (llama, mistral, qwen2)");
}

std::vector<std::pair<std::string, Shape>> gguf_model_tensors(const ModelConfig& config) {
  const int64_t hidden = config.hidden_size;
  std::vector<std::pair<std::string, Shape>> expected = {{"model.embed_tokens.weight", {config.vocab_size, hidden}}};
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string prefix = str_cat("model.layers.", layer, ".");
    expected.push_back({prefix + "input_layernorm.weight", {hidden}});
    expected.push_back({prefix + "self_attn.q_proj.weight", {config.q_size(), hidden}});
    expected.push_back({prefix + "self_attn.k_proj.weight", {config.kv_size(), hidden}});
    expected.push_back({prefix + "self_attn.v_proj.weight", {config.kv_size(), hidden}});
    if (config.qkv_bias) {
      expected.push_back({prefix + "self_attn.q_proj.bias", {config.q_size()}});
      expected.push_back({prefix + "self_attn.k_proj.bias", {config.kv_size()}});
      expected.push_back({prefix + "self_attn.v_proj.bias", {config.kv_size()}});
    }
    expected.push_back({prefix + "self_attn.o_proj.weight", {hidden, config.q_size()}});
    expected.push_back({prefix + "post_attention_layernorm.weight", {hidden}});
    expected.push_back({prefix + "mlp.gate_proj.weight", {config.intermediate_size, hidden}});
    expected.push_back({prefix + "mlp.up_proj.weight", {config.intermediate_size, hidden}});
    expected.push_back({prefix + "mlp.down_proj.weight", {hidden, config.intermediate_size}});
  }
  expected.push_back({"model.norm.weight", {hidden}});
  if (!config.tie_word_embeddings) expected.push_back({"lm_head.weight", {config.vocab_size, hidden}});
  return expected;
}

int64_t gguf_rope_permute_heads(const std::string& arch, const ModelConfig& config, const std::string& hf_name) {
  if (arch != "llama") return 0;
  if (hf_name.ends_with("self_attn.q_proj.weight")) return config.num_attention_heads;
  if (hf_name.ends_with("self_attn.k_proj.weight")) return config.num_key_value_heads;
  return 0;
}

GgufModelExport GgufModelExport::plan(HfModelSource source, const GgufExportOptions& options) {
  const ModelConfig& config = source.config;
  const std::string& where = source.config_source;
  if (!can_quantize(options.type))
    throw_bad_input("GGUF export: type ", ggml_type_name(static_cast<uint32_t>(options.type)),
                    " is not supported (supported: ", quantize_type_names(), ")");
  const std::string arch = gguf_architecture(config, where);
  if (arch == "llama" && (config.qkv_bias || config.o_bias))
    throw_bad_input(where, ": field 'attention_bias': true is not supported by the GGUF export of ", config.model_type);
  if (arch == "qwen2" && config.o_bias)
    throw_bad_input(where, ": field 'attention_bias': an o_proj bias is not supported for qwen2");
  if (config.rope_scaling.type == RopeScalingType::kLlama3)
    throw_bad_input(where, ": field 'rope_scaling': type llama3 is not supported by the GGUF export (llama.cpp needs "
                           "a rope_freqs tensor for it)");

  GgufModelExport result;
  result.source_ = std::move(source);
  const HfModelSource& hf = result.source_;
  GgufTokenizer tokenizer = read_tokenizer(hf.directory, config, result.notes_);

  GgufWriter& writer = result.writer_;
  writer.add_string("general.architecture", arch);
  writer.add_string("general.type", "model");
  if (!options.name.empty()) writer.add_string("general.name", options.name);
  writer.add_u32("general.file_type", llama_file_type(options.type));
  writer.add_u32("general.quantization_version", 2);  // GGML_QNT_VERSION
  const std::string p = arch + ".";
  writer.add_u32(p + "vocab_size", static_cast<uint32_t>(config.vocab_size));
  writer.add_u32(p + "context_length", static_cast<uint32_t>(config.max_position_embeddings));
  writer.add_u32(p + "embedding_length", static_cast<uint32_t>(config.hidden_size));
  writer.add_u32(p + "block_count", static_cast<uint32_t>(config.num_hidden_layers));
  writer.add_u32(p + "feed_forward_length", static_cast<uint32_t>(config.intermediate_size));
  writer.add_u32(p + "attention.head_count", static_cast<uint32_t>(config.num_attention_heads));
  writer.add_u32(p + "attention.head_count_kv", static_cast<uint32_t>(config.num_key_value_heads));
  writer.add_f32(p + "rope.freq_base", static_cast<float>(config.rope_theta));
  writer.add_f32(p + "attention.layer_norm_rms_epsilon", static_cast<float>(config.rms_norm_eps));
  writer.add_u32(p + "rope.dimension_count", static_cast<uint32_t>(config.head_dim));
  if (config.head_dim * config.num_attention_heads != config.hidden_size) {
    writer.add_u32(p + "attention.key_length", static_cast<uint32_t>(config.head_dim));
    writer.add_u32(p + "attention.value_length", static_cast<uint32_t>(config.head_dim));
  }
  if (config.rope_scaling.type == RopeScalingType::kLinear) {
    writer.add_string(p + "rope.scaling.type", "linear");
    writer.add_f32(p + "rope.scaling.factor", static_cast<float>(config.rope_scaling.factor));
  }

  writer.add_string("tokenizer.ggml.model", "gpt2");
  writer.add_string("tokenizer.ggml.pre", tokenizer.pre);
  writer.add_string_array("tokenizer.ggml.tokens", tokenizer.tokens);
  writer.add_i32_array("tokenizer.ggml.token_type", tokenizer.types);
  writer.add_string_array("tokenizer.ggml.merges", tokenizer.merges);
  if (tokenizer.bos) writer.add_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(*tokenizer.bos));
  if (tokenizer.eos) writer.add_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(*tokenizer.eos));
  if (tokenizer.unk) writer.add_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(*tokenizer.unk));
  if (tokenizer.pad) writer.add_u32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(*tokenizer.pad));
  writer.add_bool("tokenizer.ggml.add_bos_token", tokenizer.add_bos);
  writer.add_bool("tokenizer.ggml.add_eos_token", tokenizer.add_eos);
  if (tokenizer.chat_template) writer.add_string("tokenizer.chat_template", *tokenizer.chat_template);

  // Tensors, in the converter's order: embedding, blocks, final norm, head.
  std::map<std::string, Shape> available;
  for (const auto& [name, shape] : hf.tensors) available[name] = shape;
  const std::vector<std::pair<std::string, Shape>> expected = gguf_model_tensors(config);
  std::map<std::string, bool> used;
  const std::optional<GgmlTypeTraits> traits = ggml_type_traits(static_cast<uint32_t>(options.type));
  int64_t fallbacks = 0;
  for (const auto& [name, shape] : expected) {
    auto found = available.find(name);
    if (found == available.end()) throw_bad_input(hf.directory.string(), ": no tensor ", name);
    if (found->second != shape)
      throw_bad_input(hf.directory.string(), ": tensor ", name, ": shape ", shape_to_string(found->second),
                      ", expected ", shape_to_string(shape), " from config.json");
    used[name] = true;
    GgmlType type = GgmlType::kF32;
    if (shape.size() == 2) {
      type = options.type;
      if (shape[1] % traits->block_size != 0) {
        type = GgmlType::kF16;
        ++fallbacks;
      }
    }
    const int64_t heads = gguf_rope_permute_heads(arch, config, name);
    writer.add_tensor(gguf_tensor_name(name), shape, type);
    result.tensors_.push_back({name, shape, type, heads});
  }
  for (const auto& [name, shape] : hf.tensors)
    if (!used.count(name) && !name.ends_with("rotary_emb.inv_freq"))
      throw_bad_input(hf.directory.string(), ": tensor ", name, " has no place in a GGUF ", arch, " model");
  if (fallbacks > 0)
    result.notes_.push_back(str_cat(fallbacks, " matrices have rows that are not whole ", traits->name,
                                    " blocks: written as F16"));
  return result;
}

void GgufModelExport::write(const GgufWriter::Sink& sink) const {
  writer_.write(sink, [&](size_t index, std::span<uint8_t> out) {
    const PlannedTensor& tensor = tensors_[index];
    std::vector<float> values = source_.load(tensor.hf_name);
    LLMFT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(tensor.shape), "tensor ", tensor.hf_name,
                ": loader gave ", values.size(), " values");
    if (tensor.permute_heads > 0)
      values = permute_rope_rows(values, tensor.shape[0], tensor.shape[1], tensor.permute_heads);
    quantize_row(tensor.type, values, out);
  });
}

}  // namespace llmft::gguf
