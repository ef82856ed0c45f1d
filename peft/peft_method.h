// The one interface every parameter-efficient fine-tuning method offers the
// trainer, checkpoints and commands (DESIGN.md "PEFT methods"): attached to a
// LlamaModel at construction (through the model's Linear adapters, its
// prompt-embedding hook or its attention-prefix hook), it owns the trainable
// parameters (fp32 gradients; every base parameter frozen, without gradient
// or optimizer state), describes itself for the checkpoint fingerprint, saves
// and loads the adapter directory its users' library reads, and merges into
// the base weights where the method allows.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/llama.h"

namespace llmft {

// Hugging Face PEFT's peft_type values (peft/utils/peft_types.py).
// kBottleneck is AdapterHub's bottleneck adapter (PEFT has none).
enum class PeftType { kLora, kPromptTuning, kPTuning, kPrefixTuning, kBottleneck };

// "LORA", "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"; "BOTTLENECK" (AdapterHub, not a PEFT type).
std::string_view peft_type_name(PeftType type);

// The PeftType of a run config's `peft` option (config::TrainOptions::peft:
// "lora", "prompt_tuning", "p_tuning", "prefix_tuning", "bottleneck");
// nullopt for "none" (full fine-tuning).
std::optional<PeftType> peft_type_of_option(std::string_view peft);

// Why an adapter of `type` cannot be merged into the base weights; empty for
// LoRA, which can. The methods' merge_unsupported_reason() and `llmft
// export`'s refusal before it loads anything both give this text.
std::string unmergeable_reason(PeftType type);

class PeftMethod {
 public:
  virtual ~PeftMethod() = default;
  PeftMethod(const PeftMethod&) = delete;
  PeftMethod& operator=(const PeftMethod&) = delete;

  virtual PeftType type() const = 0;
  // The model the method is attached to.
  LlamaModel& model() { return model_; }
  const LlamaModel& model() const { return model_; }
  // The method's own parameters (trainable, fp32 gradients), in a fixed
  // order; they are not in the model's registry.
  ParameterRegistry& parameters() { return parameters_; }
  const ParameterRegistry& parameters() const { return parameters_; }

  // Dropout (where the method has any) on while training, off for eval/export.
  virtual void set_training(bool training) {}
  // The micro-batch counter that keys dropout masks (trainer.h).
  virtual void set_dropout_step(uint64_t step) {}
  // Data parallelism: the rank whose rows of the global batch this is.
  virtual void set_data_parallel_rank(int rank) {}

  // The fields that shape or scale the method's tensors, as canonical text for
  // the checkpoint fingerprint ("lora(r=8,...)", "prompt_tuning(tokens=20)").
  virtual std::string fingerprint_text() const = 0;

  // Empty when the method folds into the base weights (LoRA); otherwise why
  // not, for `export --merged` to print.
  virtual std::string merge_unsupported_reason() const = 0;
  // The base model's weights with the method merged in fp32, cast to `dtype`
  // (default the compute dtype), as host tensors under HF names. Only when
  // merge_unsupported_reason() is empty.
  virtual std::vector<NamedTensor> merged_state_dict(std::optional<DType> dtype = std::nullopt) const = 0;

  // Writes the adapter directory its users' library loads (Hugging Face PEFT:
  // adapter_config.json + adapter_model.safetensors), tensors in `dtype`
  // (default the parameters' dtype).
  virtual void save_adapter(const std::filesystem::path& directory, const std::string& base_model_name_or_path,
                            std::optional<DType> dtype = std::nullopt) const = 0;
  // Reads the tensors of such a directory into the parameters; errors name the
  // file, the tensor and the expected shape.
  virtual void load_adapter_weights(const std::filesystem::path& directory) = 0;

 protected:
  // `model` must outlive the method.
  explicit PeftMethod(LlamaModel& model) : model_(model) {}

  LlamaModel& model_;
  ParameterRegistry parameters_;  // the method registers its parameters here
};

}  // namespace llmft
