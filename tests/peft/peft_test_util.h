// Shared by the peft tests: the tiny golden checkpoint, logits, and a
// deterministic way to make every LoRA B nonzero (B = 0 at init hides bugs).
#pragma once

#include <filesystem>
#include <vector>

#include "core/philox.h"
#include "peft/lora.h"

namespace llmft::peft_test {

inline std::filesystem::path tiny_llama_dir() {
  return std::filesystem::path(LLMFT_SOURCE_DIR) / "tests" / "testdata" / "model" / "tiny_llama";
}

inline Batch tiny_batch() {
  Batch batch;
  batch.input_ids = Tensor::from_ints({2, 6}, std::vector<int32_t>{1, 17, 5, 42, 9, 88, 1, 4, 64, 8, 0, 33});
  batch.targets = Tensor::from_ints({2, 6}, std::vector<int32_t>{17, 5, 42, 9, 88, -100, 4, 64, 8, 0, 33, 71});
  return batch;
}

inline std::vector<float> logits_of(Context& context, LlamaModel& model, const Batch& batch) {
  Tensor logits;
  model.forward(context, batch, &logits);
  return logits.to_floats();
}

// Every B ~ stddev · N(0, 1) from Philox(seed).
inline void randomize_lora_b(LoraModel& lora, uint64_t seed, float stddev) {
  PhiloxGenerator generator(seed);
  for (Parameter* parameter : lora.parameters().all()) {
    if (!parameter->name.ends_with("lora_B.weight")) continue;
    std::vector<float> values(static_cast<size_t>(parameter->value.numel()));
    for (float& value : values) value = stddev * generator.next_normal();
    parameter->value.copy_from(Tensor::from_floats(parameter->value.shape(), values, parameter->value.dtype()));
  }
}

}  // namespace llmft::peft_test
