#include "peft/peft_method.h"

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

}  // namespace llmft
