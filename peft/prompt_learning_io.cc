#include "peft/prompt_learning_io.h"

#include "core/error.h"
#include "model/safetensors.h"

namespace llmft {

nlohmann::json prompt_learning_config_json(PeftType type, const ModelConfig& model, int64_t num_virtual_tokens,
                                           const std::string& base_model_name_or_path) {
  const bool prefix = type == PeftType::kPrefixTuning;
  const int64_t heads = prefix ? model.num_key_value_heads : model.num_attention_heads;
  const int64_t token_dim = prefix ? model.num_key_value_heads * model.head_dim : model.hidden_size;
  return nlohmann::json{
      {"peft_type", std::string(peft_type_name(type))},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model_name_or_path},
      {"num_virtual_tokens", num_virtual_tokens},
      {"token_dim", token_dim},
      {"num_transformer_submodules", 1},
      {"num_attention_heads", heads},
      {"num_layers", model.num_hidden_layers},
      {"inference_mode", true},
      {"modules_to_save", nullptr},
      {"revision", nullptr},
      {"auto_mapping", nullptr},
  };
}

void write_prompt_learning_adapter(const std::filesystem::path& directory, const nlohmann::json& json,
                                   const Tensor& embeddings, std::optional<DType> dtype) {
  std::filesystem::create_directories(directory);
  Tensor stored = embeddings;
  if (dtype && *dtype != stored.dtype()) stored = Tensor::from_floats(stored.shape(), stored.to_floats(), *dtype);
  const NamedTensor tensors[] = {{kPromptEmbeddingsTensor, stored}};
  write_safetensors(directory / "adapter_model.safetensors", tensors);
  write_file_atomically(directory / "adapter_config.json", json.dump(2) + "\n");
}

Tensor read_prompt_embeddings(const std::filesystem::path& directory, const Shape& expected, DType dtype) {
  const SafetensorsFile weights = SafetensorsFile::open(directory / "adapter_model.safetensors");
  const std::string& file = weights.path();
  if (!weights.contains(kPromptEmbeddingsTensor))
    throw_bad_input(file, ": tensor '", kPromptEmbeddingsTensor, "' is missing (expected shape ",
                    shape_to_string(expected), ")");
  for (const SafetensorsEntry& entry : weights.entries())
    if (entry.name != kPromptEmbeddingsTensor)
      throw_bad_input(file, ": unexpected tensor '", entry.name, "' (a prompt-learning adapter holds only '",
                      kPromptEmbeddingsTensor, "')");
  const SafetensorsEntry& entry = weights.entry(kPromptEmbeddingsTensor);
  if (entry.shape != expected)
    throw_bad_input(file, ": tensor '", kPromptEmbeddingsTensor, "': expected shape ", shape_to_string(expected),
                    ", found ", shape_to_string(entry.shape));
  return weights.tensor_as(kPromptEmbeddingsTensor, dtype);
}

}  // namespace llmft
