// `llmft export` as a library: a trained run as a Hugging Face model
// directory (merged) or a Hugging Face PEFT adapter directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/gguf_export.h"
#include "model/gguf_lora_export.h"
#include "model/safetensors.h"
#include "trainer/file_ops.h"
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
// The files are written into a staging directory beside `out` and moved in
// only when all are on disk: a failure (a full disk) leaves `out` as it was.
// Staging directories of killed earlier exports to `out` (their pid gone) are
// removed first.
std::vector<std::string> export_merged(TrainingModel& model, const std::filesystem::path& base_dir,
                                       const std::filesystem::path& out, std::optional<DType> dtype = std::nullopt,
                                       uint64_t max_shard_bytes = kDefaultMaxShardBytes);

// adapter_config.json + adapter_model.safetensors (PEFT names), staged as
// export_merged's files are. kBadInput for a full fine-tuning model, which has
// no adapter.
void export_adapter(TrainingModel& model, const std::string& base_model_name_or_path, const std::filesystem::path& out,
                    std::optional<DType> dtype = std::nullopt);

// Streams a GGUF file (`write_file` hands its bytes to the sink in order,
// e.g. GgufModelExport::write) into `out` through `files`: a temporary file
// beside it (".<name>.tmp-<pid>"), fsynced, renamed into place, the directory
// fsynced. Any failure (a full disk mid-write included) removes the temporary
// file, so `out` is the old file or the whole new one, never part of one; the
// error names the file. Temporaries of killed earlier exports to `out` (their
// pid gone) are removed first.
void write_gguf_atomically(const std::function<void(const gguf::GgufWriter::Sink&)>& write_file,
                           const std::filesystem::path& out, FileOps& files = local_file_ops());

// The model as trained (LoRA merged in fp32, or the fully fine-tuned weights)
// as one GGUF file, with the tokenizer and chat template of `base_dir`.
// Returns notes for the user (gguf_export.h).
std::vector<std::string> export_gguf(TrainingModel& model, const std::filesystem::path& base_dir,
                                     const std::filesystem::path& out, const gguf::GgufExportOptions& options,
                                     FileOps& files = local_file_ops());

// The run's LoRA adapter as one llama.cpp adapter GGUF (gguf_lora_export.h)
// for `llama-cli -m base.gguf --lora out`, from the fp32 LoRA matrices, with
// adapter.lora.alpha = scaling · r so llama.cpp's alpha / r is the run's
// scaling (alpha / r, or alpha / sqrt(r) with rsLoRA). kBadInput for a full
// fine-tuning model, which has no adapter. Returns notes for the user.
std::vector<std::string> export_gguf_adapter(TrainingModel& model, const std::filesystem::path& base_dir,
                                             const std::filesystem::path& out,
                                             const gguf::GgufLoraExportOptions& options,
                                             FileOps& files = local_file_ops());

// A Hugging Face directory (config.json, safetensors, tokenizer files) as one
// GGUF file, read and written one tensor at a time.
std::vector<std::string> convert_directory_to_gguf(const std::filesystem::path& hf_dir, const std::filesystem::path& out,
                                                   const gguf::GgufExportOptions& options,
                                                   FileOps& files = local_file_ops());

}  // namespace llmft::trainer
