// Hugging Face PEFT adapter directories in and out, and merged export.
// (The prompt-learning methods' format: peft/prompt_learning_io.h.)
//
// An adapter directory (peft PeftModel.save_pretrained, 0.21) holds
//  * adapter_config.json: LoraConfig's fields ("peft_type": "LORA",
//    "task_type": "CAUSAL_LM", "r", "lora_alpha", "lora_dropout",
//    "target_modules", "use_rslora", "bias": "none", ...);
//  * adapter_model.safetensors: one tensor per LoRA matrix, named
//    "base_model.model." + the module path + ".lora_A.weight" ([r, in]) or
//    ".lora_B.weight" ([out, r]) — peft's get_peft_model_state_dict drops the
//    adapter name ("default") from the in-memory name "...lora_A.default.weight".
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "peft/lora.h"

namespace llmft {

// The tensor-name prefix PEFT puts in front of the model's own module paths.
inline constexpr const char* kPeftTensorPrefix = "base_model.model.";

// Writes adapter_config.json and adapter_model.safetensors (tensors in
// `dtype`, default the compute dtype) into `directory` (created if needed).
void save_lora_adapter(const LoraModel& lora, const std::filesystem::path& directory,
                       const std::string& base_model_name_or_path, std::optional<DType> dtype = std::nullopt);

// Parses `path` (an adapter_config.json). Each problem is one kBadInput error
// naming the file and the field with the expected value: malformed JSON,
// peft_type other than "LORA", missing/mistyped r, lora_alpha, target_modules,
// bias other than "none", lora_bias, use_dora, modules_to_save,
// trainable_token_indices, layer_replication, non-empty rank_pattern/alpha_pattern,
// layers_to_transform/layers_pattern, and anything LoraSettings::validate refuses.
LoraSettings read_lora_adapter_config(const std::filesystem::path& path);

// Copies the tensors of `directory`/adapter_model.safetensors into `lora`'s
// parameters. Every LoRA parameter must be present with its exact shape and no
// other tensor may be there; errors name the file, the tensor and the
// expected shape.
void load_lora_adapter_weights(LoraModel& lora, const std::filesystem::path& directory);

// read_lora_adapter_config + a LoraModel on `model` + load_lora_adapter_weights.
std::unique_ptr<LoraModel> load_lora_adapter(Context& context, LlamaModel& model,
                                             const std::filesystem::path& directory);

// Any adapter directory llmft reads, by its adapter_config.json's peft_type:
// LORA (load_lora_adapter), PROMPT_TUNING and P_TUNING (peft/prompt_tuning.h)
// or PREFIX_TUNING (peft/prefix_tuning.h), the latter three for inference as
// PEFT loads them (the stored embeddings, no encoder); an AdapterHub
// directory (a "config" object, no peft_type) is a bottleneck adapter
// (peft/bottleneck.h). A config made for
// another base (num_layers, token_dim, num_attention_heads) or an unknown
// peft_type is one kBadInput line naming the file and the field.
std::unique_ptr<PeftMethod> load_peft_adapter(Context& context, LlamaModel& model,
                                              const std::filesystem::path& directory);

// A transformers-loadable model directory (config.json + model.safetensors,
// sharded above max_shard_bytes) whose weights are `method`'s
// merged_state_dict (LoRA: W + scaling · B A merged in fp32), cast to `dtype`
// (default the compute dtype). The model in memory is not modified. A method
// that cannot merge is a kBadInput saying why.
void save_merged_model(const PeftMethod& method, const std::filesystem::path& directory,
                       std::optional<DType> dtype = std::nullopt, uint64_t max_shard_bytes = kDefaultMaxShardBytes);

// Copies the tokenizer and generation files transformers keeps beside a model
// (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
// generation_config.json, chat_template.jinja, vocab.json, merges.txt,
// tokenizer.model) from `from` to `to`, those that exist; returns their names.
std::vector<std::string> copy_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace llmft
