#include "model/model_config.h"

#include <cmath>
#include <fstream>
#include <numbers>
#include <sstream>

#include "core/error.h"
#include "core/json_depth.h"
#include "model/safetensors.h"  // write_file_atomically

namespace llmft {
namespace {

using nlohmann::json;

// "string \"abc\"", "number 3.5", ... : what was found, for error messages.
std::string describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return str_cat(value.type_name(), " ", text);
}

// Reads one config.json field with its type and range checked. Each reader
// returns `fallback` when the field is absent (or null, which transformers
// treats as "use the default") and `required` is false.
class FieldReader {
 public:
  FieldReader(const json& object, const std::string& source) : object_(object), source_(source) {}

  [[noreturn]] void fail(const std::string& name, const std::string& expected, const std::string& found) const {
    throw_bad_input(source_, ": field '", name, "': expected ", expected, ", found ", found);
  }

  const json* find(const std::string& name) const {
    auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  int64_t positive_int(const std::string& name, bool required, int64_t fallback = 0) const {
    const json* value = find(name);
    if (value == nullptr) {
      if (required) fail(name, "a positive integer", "nothing (field missing)");
      return fallback;
    }
    if (!value->is_number_integer()) fail(name, "a positive integer", describe(*value));
    int64_t number = value->get<int64_t>();
    if (number <= 0) fail(name, "a positive integer", describe(*value));
    return number;
  }

  double positive_number(const std::string& name, double fallback) const {
    const json* value = find(name);
    if (value == nullptr) return fallback;
    if (!value->is_number()) fail(name, "a positive number", describe(*value));
    double number = value->get<double>();
    if (!(number > 0.0) || !std::isfinite(number)) fail(name, "a positive number", describe(*value));
    return number;
  }

  bool boolean(const std::string& name, bool fallback) const {
    const json* value = find(name);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) fail(name, "true or false", describe(*value));
    return value->get<bool>();
  }

  std::string string(const std::string& name, const std::string& fallback) const {
    const json* value = find(name);
    if (value == nullptr) return fallback;
    if (!value->is_string()) fail(name, "a string", describe(*value));
    return value->get<std::string>();
  }

  // bos/eos_token_id: an integer or a list of integers (Llama 3 lists several eos ids).
  std::vector<int64_t> token_ids(const std::string& name) const {
    const json* value = find(name);
    if (value == nullptr) return {};
    auto read_one = [&](const json& item) {
      if (!item.is_number_integer() || item.get<int64_t>() < 0)
        fail(name, "a non-negative integer or a list of them", describe(*value));
      return item.get<int64_t>();
    };
    if (value->is_array()) {
      std::vector<int64_t> ids;
      for (const json& item : *value) ids.push_back(read_one(item));
      return ids;
    }
    return {read_one(*value)};
  }

 private:
  const json& object_;
  const std::string& source_;
};

struct ArchitectureInfo {
  const char* architecture;
  const char* model_type;
};
constexpr ArchitectureInfo kArchitectures[] = {
    {"LlamaForCausalLM", "llama"},
    {"MistralForCausalLM", "mistral"},
    {"Qwen2ForCausalLM", "qwen2"},
};

// `field`: "rope_scaling" (transformers 4) or "rope_parameters" (transformers
// 5, which also holds rope_theta there).
RopeScaling parse_rope_scaling(const json& value, const std::string& source, const std::string& field = "rope_scaling") {
  auto fail = [&](const std::string& name, const std::string& expected, const std::string& found) {
    throw_bad_input(source, ": field '", name, "': expected ", expected, ", found ", found);
  };
  if (!value.is_object()) fail(field, "null or an object", describe(value));
  // transformers accepts both "rope_type" (current) and "type" (older configs).
  std::string type;
  if (value.contains("rope_type") && value["rope_type"].is_string()) type = value["rope_type"].get<std::string>();
  else if (value.contains("type") && value["type"].is_string()) type = value["type"].get<std::string>();
  else fail(field + ".rope_type", "a string", value.contains("rope_type") ? describe(value["rope_type"]) : "nothing");

  FieldReader reader(value, source);
  auto number = [&](const std::string& name, bool required, double fallback) -> double {
    const json* item = reader.find(name);
    if (item == nullptr) {
      if (required) fail(field + "." + name, "a positive number", "nothing (field missing)");
      return fallback;
    }
    if (!item->is_number() || !(item->get<double>() > 0.0)) fail(field + "." + name, "a positive number", describe(*item));
    return item->get<double>();
  };

  RopeScaling scaling;
  if (type == "default") return scaling;
  if (type == "linear") {
    scaling.type = RopeScalingType::kLinear;
    scaling.factor = number("factor", true, 1.0);
    return scaling;
  }
  if (type == "llama3") {
    scaling.type = RopeScalingType::kLlama3;
    scaling.factor = number("factor", true, 1.0);
    scaling.low_freq_factor = number("low_freq_factor", true, 1.0);
    scaling.high_freq_factor = number("high_freq_factor", true, 4.0);
    scaling.original_max_position_embeddings =
        static_cast<int64_t>(number("original_max_position_embeddings", true, 8192));
    if (!(scaling.high_freq_factor > scaling.low_freq_factor))
      fail(field + ".high_freq_factor", str_cat("a value above low_freq_factor (", scaling.low_freq_factor, ")"),
           str_cat(scaling.high_freq_factor));
    return scaling;
  }
  throw_bad_input(source, ": field '", field, ".rope_type': expected \"default\", \"linear\" or \"llama3\" (others "
                  "are not supported), found ", describe(json(type)));
}

json rope_scaling_to_json(const RopeScaling& scaling) {
  switch (scaling.type) {
    case RopeScalingType::kNone: return nullptr;
    case RopeScalingType::kLinear: return {{"rope_type", "linear"}, {"type", "linear"}, {"factor", scaling.factor}};
    case RopeScalingType::kLlama3:
      return {{"rope_type", "llama3"},
              {"factor", scaling.factor},
              {"low_freq_factor", scaling.low_freq_factor},
              {"high_freq_factor", scaling.high_freq_factor},
              {"original_max_position_embeddings", scaling.original_max_position_embeddings}};
  }
  return nullptr;
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& object, const std::string& source) {
  if (!object.is_object()) throw_bad_input(source, ": expected a JSON object, found ", describe(object));
  FieldReader reader(object, source);
  ModelConfig config;

  const json* architectures = reader.find("architectures");
  std::string known = "a list holding one of LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";
  bool found_architecture = false;
  if (architectures == nullptr) {
    // Some configs carry only model_type; AutoModelForCausalLM maps it the same way.
    std::string model_type = reader.string("model_type", "");
    for (const ArchitectureInfo& info : kArchitectures) {
      if (model_type == info.model_type) {
        config.architecture = info.architecture;
        config.model_type = info.model_type;
        found_architecture = true;
      }
    }
    if (!found_architecture)
      reader.fail("architectures", known + " (or model_type llama, mistral or qwen2)", "nothing (field missing)");
  } else {
    if (!architectures->is_array() || architectures->empty() || !(*architectures)[0].is_string())
      reader.fail("architectures", known, describe(*architectures));
    config.architecture = (*architectures)[0].get<std::string>();
    for (const ArchitectureInfo& info : kArchitectures) {
      if (config.architecture == info.architecture) {
        config.model_type = info.model_type;
        found_architecture = true;
      }
    }
    if (!found_architecture) reader.fail("architectures", known, describe(*architectures));
  }

  config.hidden_size = reader.positive_int("hidden_size", true);
  config.intermediate_size = reader.positive_int("intermediate_size", true);
  config.num_hidden_layers = reader.positive_int("num_hidden_layers", true);
  config.num_attention_heads = reader.positive_int("num_attention_heads", true);
  config.num_key_value_heads = reader.positive_int("num_key_value_heads", false, config.num_attention_heads);
  if (config.num_attention_heads % config.num_key_value_heads != 0)
    reader.fail("num_key_value_heads",
                str_cat("a divisor of num_attention_heads (", config.num_attention_heads, ")"),
                str_cat(config.num_key_value_heads));
  if (reader.find("head_dim") == nullptr && config.hidden_size % config.num_attention_heads != 0)
    reader.fail("hidden_size", str_cat("a multiple of num_attention_heads (", config.num_attention_heads,
                                       ") when head_dim is not given"),
                str_cat(config.hidden_size));
  config.head_dim = reader.positive_int("head_dim", false, config.hidden_size / config.num_attention_heads);
  if (config.head_dim % 2 != 0) reader.fail("head_dim", "an even number (RoPE rotates pairs)", str_cat(config.head_dim));
  config.vocab_size = reader.positive_int("vocab_size", true);
  config.max_position_embeddings = reader.positive_int("max_position_embeddings", false, 2048);
  config.rms_norm_eps = reader.positive_number("rms_norm_eps", 1e-6);
  // transformers 5 writes RoPE's base and scaling together as rope_parameters
  // ({"rope_theta", "rope_type", "factor", ...}); transformers 4 as rope_theta
  // and rope_scaling. rope_parameters wins where both are present, as there.
  if (const json* parameters = reader.find("rope_parameters"); parameters != nullptr && !parameters->is_null()) {
    if (!parameters->is_object()) reader.fail("rope_parameters", "an object", describe(*parameters));
    FieldReader rope(*parameters, source);
    const json* theta = rope.find("rope_theta");
    if (theta != nullptr && (!theta->is_number() || !(theta->get<double>() > 0.0)))
      reader.fail("rope_parameters.rope_theta", "a positive number", describe(*theta));
    config.rope_theta = theta != nullptr ? theta->get<double>() : reader.positive_number("rope_theta", 10000.0);
    config.rope_scaling = parse_rope_scaling(*parameters, source, "rope_parameters");
  } else {
    config.rope_theta = reader.positive_number("rope_theta", 10000.0);
    if (const json* scaling = reader.find("rope_scaling")) config.rope_scaling = parse_rope_scaling(*scaling, source);
  }
  config.tie_word_embeddings = reader.boolean("tie_word_embeddings", false);

  std::string activation = reader.string("hidden_act", "silu");
  if (activation != "silu") reader.fail("hidden_act", "\"silu\" (SwiGLU MLP)", describe(json(activation)));
  if (reader.boolean("mlp_bias", false)) reader.fail("mlp_bias", "false (MLP biases are not supported)", "true");

  if (config.model_type == "qwen2") {
    // Qwen2Attention: q/k/v projections always carry a bias, o_proj never does.
    config.qkv_bias = true;
    config.o_bias = false;
    if (reader.boolean("use_sliding_window", false))
      config.sliding_window = reader.positive_int("sliding_window", false, 0);
  } else {
    bool attention_bias = reader.boolean("attention_bias", false);
    config.qkv_bias = attention_bias;
    config.o_bias = attention_bias;
    if (config.model_type == "mistral") config.sliding_window = reader.positive_int("sliding_window", false, 0);
  }

  config.bos_token_ids = reader.token_ids("bos_token_id");
  config.eos_token_ids = reader.token_ids("eos_token_id");
  config.torch_dtype = reader.string("torch_dtype", "float32");
  static const char* kDtypes[] = {"float32", "bfloat16", "float16"};
  bool known_dtype = false;
  for (const char* name : kDtypes) known_dtype |= config.torch_dtype == name;
  if (!known_dtype) reader.fail("torch_dtype", "\"float32\", \"bfloat16\" or \"float16\"", describe(json(config.torch_dtype)));
  return config;
}

const char* torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return "bfloat16";
    case DType::kF16: return "float16";
    default: return "float32";
  }
}

ModelConfig ModelConfig::load(const std::filesystem::path& path) {
  std::filesystem::path file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  std::ifstream in(file);
  if (!in) throw_bad_input(file.string(), ": cannot open the model config (config.json)");
  json object;
  try {
    object = parse_json<json>(in, file.string());
  } catch (const json::exception& error) {  // parse_error, and out_of_range for a number like 1e999
    throw_bad_input(file.string(), ": not valid JSON: ", error.what());
  }
  return from_json(object, file.string());
}

json ModelConfig::to_json() const {
  json object = {
      {"architectures", {architecture}},
      {"model_type", model_type},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"rope_scaling", rope_scaling_to_json(rope_scaling)},
      {"tie_word_embeddings", tie_word_embeddings},
      {"hidden_act", "silu"},
      {"torch_dtype", torch_dtype},
  };
  if (model_type == "qwen2") {
    object["use_sliding_window"] = sliding_window > 0;
    object["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
  } else {
    object["attention_bias"] = qkv_bias;
    object["mlp_bias"] = false;
    if (model_type == "mistral") object["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
  }
  auto ids = [](const std::vector<int64_t>& values) -> json {
    if (values.empty()) return nullptr;
    if (values.size() == 1) return values[0];
    return values;
  };
  object["bos_token_id"] = ids(bos_token_ids);
  object["eos_token_id"] = ids(eos_token_ids);
  return object;
}

void ModelConfig::save(const std::filesystem::path& path) const {
  std::string text = to_json().dump(2) + "\n";
  write_file_atomically(path, text);
}

std::vector<float> ModelConfig::rope_inv_freq() const {
  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // transformers: 1 / base^(arange(0, dim, 2) / dim).
    double frequency = 1.0 / std::pow(rope_theta, static_cast<double>(2 * i) / static_cast<double>(head_dim));
    switch (rope_scaling.type) {
      case RopeScalingType::kNone: break;
      case RopeScalingType::kLinear: frequency /= rope_scaling.factor; break;
      case RopeScalingType::kLlama3: {
        // _compute_llama3_parameters in transformers' modeling_rope_utils.py:
        // long wavelengths are slowed by `factor`, short ones kept, and the
        // band in between interpolated smoothly.
        const double old_context = static_cast<double>(rope_scaling.original_max_position_embeddings);
        const double low_freq_wavelen = old_context / rope_scaling.low_freq_factor;
        const double high_freq_wavelen = old_context / rope_scaling.high_freq_factor;
        const double wavelen = 2.0 * std::numbers::pi / frequency;
        if (wavelen > low_freq_wavelen) {
          frequency /= rope_scaling.factor;
        } else if (wavelen >= high_freq_wavelen) {
          double smooth = (old_context / wavelen - rope_scaling.low_freq_factor) /
                          (rope_scaling.high_freq_factor - rope_scaling.low_freq_factor);
          frequency = (1.0 - smooth) * frequency / rope_scaling.factor + smooth * frequency;
        }
        break;
      }
    }
    inv_freq[static_cast<size_t>(i)] = static_cast<float>(frequency);
  }
  return inv_freq;
}

}  // namespace llmft
