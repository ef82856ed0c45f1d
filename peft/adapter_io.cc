#include "peft/adapter_io.h"

#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_depth.h"

namespace llmft {

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

}  // namespace

void save_lora_adapter(const LoraModel& lora, const std::filesystem::path& directory,
                       const std::string& base_model_name_or_path, std::optional<DType> dtype) {
  std::filesystem::create_directories(directory);
  const LoraConfig& config = lora.config();
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

LoraConfig read_lora_adapter_config(const std::filesystem::path& path) {
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
  auto field = [&](const char* name) -> const nlohmann::json& {
    if (!json.contains(name)) throw_bad_input(file, ": field '", name, "' is missing");
    return json.at(name);
  };
  const nlohmann::json& peft_type = field("peft_type");
  if (!peft_type.is_string() || peft_type.get<std::string>() != "LORA")
    throw_bad_input(file, ": field 'peft_type': expected \"LORA\", found ", peft_type.dump());
  LoraConfig config;
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

std::unique_ptr<LoraModel> load_lora_adapter(Context& context, LlamaModel& model,
                                             const std::filesystem::path& directory) {
  const LoraConfig config = read_lora_adapter_config(directory / kConfigFile);
  auto lora = std::make_unique<LoraModel>(context, model, config);
  load_lora_adapter_weights(*lora, directory);
  return lora;
}

void save_lora_merged(const LoraModel& lora, const std::filesystem::path& directory, std::optional<DType> dtype,
                      uint64_t max_shard_bytes) {
  std::filesystem::create_directories(directory);
  const DType out_dtype = dtype.value_or(lora.model().options().compute_dtype);
  write_safetensors_checkpoint(directory, lora.merged_state_dict(out_dtype), max_shard_bytes);
  ModelConfig saved = lora.model().config();
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
