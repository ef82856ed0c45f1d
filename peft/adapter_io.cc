#include "peft/adapter_io.h"

#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_depth.h"
#include "peft/bottleneck.h"
#include "peft/prefix_tuning.h"
#include "peft/prompt_tuning.h"

namespace llmft {

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

}  // namespace

void save_lora_adapter(const LoraModel& lora, const std::filesystem::path& directory,
                       const std::string& base_model_name_or_path, std::optional<DType> dtype) {
  std::filesystem::create_directories(directory);
  const LoraSettings& config = lora.config();
  // The fields peft 0.21's LoraConfig writes that matter for loading; the
  // target list is the resolved module names, as PEFT stores after injection.
  nlohmann::json json = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model_name_or_path},
      {"r", config.r},
      {"lora_alpha", config.alpha},
      {"lora_dropout", config.dropout},
      {"use_rslora", config.use_rslora},
      {"target_modules", config.resolved_target_modules()},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"init_lora_weights", true},
      {"inference_mode", true},
      {"use_dora", false},
      {"modules_to_save", nullptr},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", nlohmann::json::object()},
      {"alpha_pattern", nlohmann::json::object()},
      {"revision", nullptr},
  };
  std::vector<NamedTensor> tensors;
  for (const Parameter* parameter : lora.parameters().all()) {
    Tensor host = parameter->value.device().is_cpu() ? parameter->value : parameter->value.to(default_host_allocator());
    const DType out_dtype = dtype.value_or(host.dtype());
    if (out_dtype != host.dtype()) host = Tensor::from_floats(host.shape(), host.to_floats(), out_dtype);
    tensors.push_back({kPeftTensorPrefix + parameter->name, host});
  }
  write_safetensors(directory / kWeightsFile, tensors);
  write_file_atomically(directory / kConfigFile, json.dump(2) + "\n");
}

namespace {

nlohmann::json read_adapter_json(const std::filesystem::path& path) {
  const std::string file = path.string();
  std::ifstream in(path);
  if (!in) throw_bad_input(file, ": cannot open the adapter config");
  nlohmann::json json;
  try {
    json = parse_json(in, file);
  } catch (const nlohmann::json::exception& error) {
    throw_bad_input(file, ": not valid JSON (", error.what(), ")");
  }
  if (!json.is_object()) throw_bad_input(file, ": expected a JSON object at the top level");
  return json;
}

LoraSettings lora_config_from_json(const nlohmann::json& json, const std::string& file);

}  // namespace

LoraSettings read_lora_adapter_config(const std::filesystem::path& path) {
  return lora_config_from_json(read_adapter_json(path), path.string());
}

namespace {

LoraSettings lora_config_from_json(const nlohmann::json& json, const std::string& file) {
  auto field = [&](const char* name) -> const nlohmann::json& {
    if (!json.contains(name)) throw_bad_input(file, ": field '", name, "' is missing");
    return json.at(name);
  };
  const nlohmann::json& peft_type = field("peft_type");
  if (!peft_type.is_string() || peft_type.get<std::string>() != "LORA")
    throw_bad_input(file, ": field 'peft_type': expected \"LORA\", found ", peft_type.dump());
  LoraSettings config;
  const nlohmann::json& r = field("r");
  if (!r.is_number_integer()) throw_bad_input(file, ": field 'r': expected an integer, found ", r.dump());
  config.r = r.get<int64_t>();
  const nlohmann::json& alpha = field("lora_alpha");
  if (!alpha.is_number()) throw_bad_input(file, ": field 'lora_alpha': expected a number, found ", alpha.dump());
  config.alpha = alpha.get<float>();
  if (json.contains("lora_dropout")) {
    const nlohmann::json& dropout = json.at("lora_dropout");
    if (!dropout.is_number())
      throw_bad_input(file, ": field 'lora_dropout': expected a number, found ", dropout.dump());
    config.dropout = dropout.get<float>();
  }
  if (json.contains("use_rslora")) {
    const nlohmann::json& rslora = json.at("use_rslora");
    if (!rslora.is_boolean())
      throw_bad_input(file, ": field 'use_rslora': expected true or false, found ", rslora.dump());
    config.use_rslora = rslora.get<bool>();
  }
  if (json.contains("bias") && json.at("bias") != "none")
    throw_bad_input(file, ": field 'bias': expected \"none\" (LoRA bias training is not supported), found ",
                    json.at("bias").dump());
  if (json.contains("lora_bias") && json.at("lora_bias") == true)
    throw_bad_input(file, ": field 'lora_bias': expected false (LoRA-B biases are not supported), found true");
  for (const char* name : {"modules_to_save", "trainable_token_indices", "layer_replication"})
    if (json.contains(name) && !json.at(name).is_null())
      throw_bad_input(file, ": field '", name, "': expected null (not supported by llmft's LoRA), found ",
                      json.at(name).dump());
  if (json.contains("use_dora") && json.at("use_dora") == true)
    throw_bad_input(file, ": field 'use_dora': expected false (DoRA is not supported), found true");
  // Per-module ranks/alphas and layer subsets change which tensors exist and
  // how they scale; refusing them beats loading an adapter that computes
  // something else than PEFT does.
  for (const char* name : {"rank_pattern", "alpha_pattern"})
    if (json.contains(name) && !json.at(name).is_null() && !json.at(name).empty())
      throw_bad_input(file, ": field '", name, "': expected {} (per-module ", name, " is not supported), found ",
                      json.at(name).dump());
  for (const char* name : {"layers_to_transform", "layers_pattern"})
    if (json.contains(name) && !json.at(name).is_null())
      throw_bad_input(file, ": field '", name,
                      "': expected null (adapting a subset of layers is not supported), found ", json.at(name).dump());
  const nlohmann::json& targets = field("target_modules");
  config.target_modules.clear();
  if (targets.is_string()) {
    config.target_modules.push_back(targets.get<std::string>());
  } else if (targets.is_array()) {
    for (const nlohmann::json& target : targets) {
      if (!target.is_string())
        throw_bad_input(file, ": field 'target_modules': expected module name strings, found ", target.dump());
      config.target_modules.push_back(target.get<std::string>());
    }
  } else {
    throw_bad_input(file, ": field 'target_modules': expected a list of module names or \"all-linear\", found ",
                    targets.dump());
  }
  config.validate(file);
  return config;
}

// An integer field of a prompt-learning adapter config that must equal what
// `model` implies (the adapter was made for this base).
int64_t integer_field(const nlohmann::json& json, const std::string& file, const char* name,
                      std::optional<int64_t> expected, const char* meaning) {
  if (!json.contains(name)) throw_bad_input(file, ": field '", name, "' is missing");
  const nlohmann::json& value = json.at(name);
  if (!value.is_number_integer()) throw_bad_input(file, ": field '", name, "': expected an integer, found ", value.dump());
  const int64_t result = value.get<int64_t>();
  if (expected && result != *expected)
    throw_bad_input(file, ": field '", name, "': expected ", *expected, " (", meaning, "), found ", result,
                    "; the adapter was made for another base model");
  return result;
}

}  // namespace

std::unique_ptr<PeftMethod> load_peft_adapter(Context& context, LlamaModel& model,
                                              const std::filesystem::path& directory) {
  const std::filesystem::path path = directory / kConfigFile;
  const std::string file = path.string();
  const nlohmann::json json = read_adapter_json(path);
  // AdapterHub's directories have no peft_type but a "config" object.
  if (!json.contains("peft_type") && json.contains("config") && json.at("config").is_object()) {
    auto method = std::make_unique<BottleneckAdapters>(
        context, model, BottleneckAdapters::from_adapterhub_config(json, file, model.config()));
    method->load_adapter_weights(directory);
    return method;
  }
  if (!json.contains("peft_type")) throw_bad_input(file, ": field 'peft_type' is missing");
  const nlohmann::json& type = json.at("peft_type");
  const std::string name = type.is_string() ? type.get<std::string>() : type.dump();
  if (name == "LORA") {
    auto lora = std::make_unique<LoraModel>(context, model, lora_config_from_json(json, file));
    load_lora_adapter_weights(*lora, directory);
    return lora;
  }
  const ModelConfig& base = model.config();
  const bool prefix = name == "PREFIX_TUNING";
  if (name != "PROMPT_TUNING" && name != "P_TUNING" && !prefix)
    throw_bad_input(file, ": field 'peft_type': expected \"LORA\", \"PROMPT_TUNING\", \"P_TUNING\" or \"PREFIX_TUNING\", "
                    "found ", type.dump());
  const int64_t tokens = integer_field(json, file, "num_virtual_tokens", std::nullopt, "");
  if (tokens < 1) throw_bad_input(file, ": field 'num_virtual_tokens': expected an integer >= 1, found ", tokens);
  integer_field(json, file, "num_layers", base.num_hidden_layers, "the base model's num_hidden_layers");
  if (json.contains("num_transformer_submodules"))
    integer_field(json, file, "num_transformer_submodules", 1, "a decoder-only model");
  if (prefix) {
    integer_field(json, file, "token_dim", base.kv_size(), "the base model's num_key_value_heads x head_dim");
    integer_field(json, file, "num_attention_heads", base.num_key_value_heads, "the base model's num_key_value_heads");
    PrefixTuning::Config config;
    config.num_virtual_tokens = tokens;
    config.encoder = false;
    auto method = std::make_unique<PrefixTuning>(context, model, config);
    method->load_adapter_weights(directory);
    return method;
  }
  integer_field(json, file, "token_dim", base.hidden_size, "the base model's hidden_size");
  PromptTuning::Config config;
  config.type = name == "P_TUNING" ? PeftType::kPTuning : PeftType::kPromptTuning;
  config.num_virtual_tokens = tokens;
  config.encoder = false;
  auto method = std::make_unique<PromptTuning>(context, model, config);
  method->load_adapter_weights(directory);
  return method;
}

void load_lora_adapter_weights(LoraModel& lora, const std::filesystem::path& directory) {
  const SafetensorsFile weights = SafetensorsFile::open(directory / kWeightsFile);
  const std::string& file = weights.path();
  std::set<std::string> expected;
  for (Parameter* parameter : lora.parameters().all()) {
    const std::string name = kPeftTensorPrefix + parameter->name;
    expected.insert(name);
    if (!weights.contains(name))
      throw_bad_input(file, ": tensor '", name, "' is missing (expected shape ", shape_to_string(parameter->value.shape()),
                      ")");
    const SafetensorsEntry& entry = weights.entry(name);
    if (entry.shape != parameter->value.shape())
      throw_bad_input(file, ": tensor '", name, "': expected shape ", shape_to_string(parameter->value.shape()), ", found ",
                      shape_to_string(entry.shape));
    Tensor host = weights.tensor_as(name, parameter->value.dtype());
    parameter->value.copy_from(host);
  }
  for (const SafetensorsEntry& entry : weights.entries())
    if (!expected.count(entry.name))
      throw_bad_input(file, ": unexpected tensor '", entry.name, "' (no such LoRA parameter for target modules of ",
                      "this adapter; expected names like '", kPeftTensorPrefix,
                      "model.layers.0.self_attn.q_proj.lora_A.weight')");
}

void LoraModel::save_adapter(const std::filesystem::path& directory, const std::string& base_model_name_or_path,
                             std::optional<DType> dtype) const {
  save_lora_adapter(*this, directory, base_model_name_or_path, dtype);
}

void LoraModel::load_adapter_weights(const std::filesystem::path& directory) {
  load_lora_adapter_weights(*this, directory);
}

std::unique_ptr<LoraModel> load_lora_adapter(Context& context, LlamaModel& model,
                                             const std::filesystem::path& directory) {
  const LoraSettings config = read_lora_adapter_config(directory / kConfigFile);
  auto lora = std::make_unique<LoraModel>(context, model, config);
  load_lora_adapter_weights(*lora, directory);
  return lora;
}

void save_merged_model(const PeftMethod& method, const std::filesystem::path& directory, std::optional<DType> dtype,
                       uint64_t max_shard_bytes) {
  const std::string reason = method.merge_unsupported_reason();
  if (!reason.empty()) throw_bad_input("merge: ", reason);
  std::filesystem::create_directories(directory);
  const DType out_dtype = dtype.value_or(method.model().options().compute_dtype);
  write_safetensors_checkpoint(directory, method.merged_state_dict(out_dtype), max_shard_bytes);
  ModelConfig saved = method.model().config();
  saved.torch_dtype = torch_dtype_name(out_dtype);
  saved.save(directory / "config.json");
}

std::vector<std::string> copy_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to) {
  static const char* const kNames[] = {"tokenizer.json",
                                       "tokenizer_config.json",
                                       "special_tokens_map.json",
                                       "generation_config.json",
                                       "chat_template.jinja",
                                       "vocab.json",
                                       "merges.txt",
                                       "tokenizer.model"};
  std::filesystem::create_directories(to);
  std::vector<std::string> copied;
  for (const char* name : kNames) {
    if (!std::filesystem::exists(from / name)) continue;
    // Read whole and written atomically (temp file, fsync, rename) rather
    // than copy_file(overwrite_existing), which truncates the previous copy
    // first: a full disk would leave an exported model without a readable
    // tokenizer.json. The files are at most a few MB.
    std::ifstream in(from / name, std::ios::binary);
    std::ostringstream bytes;
    if (in) bytes << in.rdbuf();
    if (!in || in.bad()) throw_runtime((from / name).string(), ": cannot read (copying it to ", to.string(), ")");
    write_file_atomically(to / name, bytes.str());
    copied.push_back(name);
  }
  return copied;
}

}  // namespace llmft
