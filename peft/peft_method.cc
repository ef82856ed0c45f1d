#include "peft/peft_method.h"

#include "core/error.h"

namespace llmft {

std::string_view peft_type_name(PeftType type) {
  switch (type) {
    case PeftType::kLora: return "LORA";
    case PeftType::kPromptTuning: return "PROMPT_TUNING";
    case PeftType::kPTuning: return "P_TUNING";
    case PeftType::kPrefixTuning: return "PREFIX_TUNING";
    case PeftType::kBottleneck: return "BOTTLENECK";
  }
  return "UNKNOWN";
}

std::optional<PeftType> peft_type_of_option(std::string_view peft) {
  if (peft == "none") return std::nullopt;
  if (peft == "lora") return PeftType::kLora;
  if (peft == "prompt_tuning") return PeftType::kPromptTuning;
  if (peft == "p_tuning") return PeftType::kPTuning;
  if (peft == "prefix_tuning") return PeftType::kPrefixTuning;
  if (peft == "bottleneck") return PeftType::kBottleneck;
  throw_runtime("peft option '", peft, "' is not a PEFT method");
}

std::string unmergeable_reason(PeftType type) {
  switch (type) {
    case PeftType::kLora: return {};
    case PeftType::kPromptTuning:
    case PeftType::kPTuning:
      return str_cat(peft_type_name(type),
                     " puts trained virtual-token embeddings in front of every input; no base weight can hold them");
    case PeftType::kPrefixTuning:
      return "PREFIX_TUNING adds trained key/value positions to every layer's attention; no base weight can hold them";
    case PeftType::kBottleneck:
      return "bottleneck adapters add a non-linear module to every layer; no base weight can hold it";
  }
  return "unknown PEFT type";
}

}  // namespace llmft
