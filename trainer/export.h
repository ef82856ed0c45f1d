// `llmft export` as a library: a trained run as a Hugging Face model
// directory (merged) or a Hugging Face PEFT adapter directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/safetensors.h"
#include "trainer/training_setup.h"

namespace llmft::trainer {

// "5GB" -> 5'000'000'000, "2GiB" -> 2^31, "1000" -> 1000: transformers'
// max_shard_size convention (decimal KB/MB/GB, binary KiB/MiB/GiB).
// kBadInput naming `flag` for anything else or a size of 0.
uint64_t parse_byte_size(const std::string& text, const std::string& flag = "--max-shard-size");

// config.json and model.safetensors (sharded with model.safetensors.index.json
// above max_shard_bytes) of the model as trained: LoRA merged as W +
// scaling·B·A in fp32 and cast to `dtype` (default the compute dtype), or the
// fully fine-tuned weights; then the tokenizer and generation files of
// `base_dir`. Returns the names of the copied tokenizer files.
std::vector<std::string> export_merged(TrainingModel& model, const std::filesystem::path& base_dir,
                                       const std::filesystem::path& out, std::optional<DType> dtype = std::nullopt,
                                       uint64_t max_shard_bytes = kDefaultMaxShardBytes);

// adapter_config.json + adapter_model.safetensors (PEFT names). kBadInput for
// a full fine-tuning model, which has no adapter.
void export_adapter(TrainingModel& model, const std::string& base_model_name_or_path, const std::filesystem::path& out,
                    std::optional<DType> dtype = std::nullopt);

}  // namespace llmft::trainer
