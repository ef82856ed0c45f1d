#include "trainer/export.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>

#include "core/error.h"
#include "model/safetensors.h"
#include "peft/adapter_io.h"

namespace llmft::trainer {

uint64_t parse_byte_size(const std::string& text, const std::string& flag) {
  size_t digits = 0;
  while (digits < text.size() && (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.'))
    ++digits;
  std::string unit = text.substr(digits);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double number = -1.0;
  try {
    size_t used = 0;
    if (digits > 0) number = std::stod(text.substr(0, digits), &used);
    if (used != digits) number = -1.0;
  } catch (const std::exception&) {
    number = -1.0;
  }
  double multiplier = 0.0;
  if (unit.empty() || unit == "B")
    multiplier = 1.0;
  else if (unit == "KB")
    multiplier = 1e3;
  else if (unit == "MB")
    multiplier = 1e6;
  else if (unit == "GB")
    multiplier = 1e9;
  else if (unit == "KIB")
    multiplier = 1024.0;
  else if (unit == "MIB")
    multiplier = 1024.0 * 1024.0;
  else if (unit == "GIB")
    multiplier = 1024.0 * 1024.0 * 1024.0;
  const double bytes = number * multiplier;
  if (!(bytes >= 1.0) || bytes > 1.8e19)
    throw_bad_input(flag, " '", text, "' is not a size (e.g. 5GB, 500MB, 2GiB, 1000000)");
  return static_cast<uint64_t>(bytes);
}

namespace {

// Writes a model directory in two phases, so that a failure while writing
// (a full disk) leaves an existing `out` exactly as it was: `write` fills a
// fresh staging directory beside `out` (".<name>.tmp-<pid>", same file
// system), every file of which is fsynced; only then is each file renamed into
// `out`, which needs no space. A failure before the renames removes the
// staging directory and nothing in `out` has changed; a crash during the
// renames leaves every file of `out` whole, some old and some new.
void write_directory_staged(const std::filesystem::path& out_path,
                            const std::function<void(const std::filesystem::path&)>& write, FileOps& files) {
  std::filesystem::path out = out_path.lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  const std::filesystem::path parent = out.parent_path().empty() ? std::filesystem::path(".") : out.parent_path();
  std::filesystem::create_directories(parent);
  const std::filesystem::path staging = parent / str_cat(".", out.filename().string(), ".tmp-", ::getpid());
  files.remove_all(staging.string());
  try {
    write(staging);
  } catch (...) {
    files.remove_all(staging.string());
    throw;
  }
  files.make_directory(out.string());
  const std::vector<std::string> names = files.list(staging.string());
  for (const std::string& name : names) files.rename((staging / name).string(), (out / name).string());
  // A single-file model and a sharded one must not sit side by side: the
  // index would shadow the new single file (transformers reads the index first).
  const bool single = std::find(names.begin(), names.end(), "model.safetensors") != names.end();
  const bool sharded = std::find(names.begin(), names.end(), "model.safetensors.index.json") != names.end();
  if (single) files.remove_all((out / "model.safetensors.index.json").string());
  if (sharded) files.remove_all((out / "model.safetensors").string());
  files.sync_directory(out.string());
  files.remove_all(staging.string());
}

}  // namespace

std::vector<std::string> export_merged(TrainingModel& model, const std::filesystem::path& base_dir,
                                       const std::filesystem::path& out, std::optional<DType> dtype,
                                       uint64_t max_shard_bytes) {
  std::vector<std::string> copied;
  write_directory_staged(
      out,
      [&](const std::filesystem::path& staging) {
        if (model.lora) {
          save_lora_merged(*model.lora, staging, dtype, max_shard_bytes);
        } else {
          model.model->save_pretrained(staging, dtype, max_shard_bytes);
        }
        copied = copy_tokenizer_files(base_dir, staging);
      },
      local_file_ops());
  return copied;
}

void export_adapter(TrainingModel& model, const std::string& base_model_name_or_path, const std::filesystem::path& out,
                    std::optional<DType> dtype) {
  if (!model.lora)
    throw_bad_input(
        "export --adapter: the run is full fine-tuning (peft none), which has no adapter; use --merged "
        "for the trained weights");
  write_directory_staged(
      out, [&](const std::filesystem::path& staging) { save_lora_adapter(*model.lora, staging, base_model_name_or_path, dtype); },
      local_file_ops());
}

void write_gguf_atomically(const gguf::GgufModelExport& plan, const std::filesystem::path& out, FileOps& files) {
  const std::filesystem::path directory = out.parent_path().empty() ? std::filesystem::path(".") : out.parent_path();
  const std::string temp = (directory / str_cat(".", out.filename().string(), ".tmp-", ::getpid())).string();
  try {
    std::unique_ptr<CheckpointFile> file = files.create(temp);
    plan.write([&](const void* data, size_t bytes) { file->append(data, bytes); });
    file->sync();
    file->close();
    files.rename(temp, out.string());
  } catch (...) {
    files.remove_all(temp);
    throw;
  }
  files.sync_directory(directory.string());
}

std::vector<std::string> export_gguf(TrainingModel& model, const std::filesystem::path& base_dir,
                                     const std::filesystem::path& out, const gguf::GgufExportOptions& options,
                                     FileOps& files) {
  // The merged fp32 weights, each handed to the writer when its turn comes.
  std::vector<NamedTensor> tensors =
      model.lora ? model.lora->merged_state_dict(DType::kF32) : model.model->state_dict(DType::kF32);
  std::map<std::string, const Tensor*> by_name;
  gguf::HfModelSource source;
  source.config = model.model->config();
  source.config_source = (base_dir / "config.json").string();
  source.directory = base_dir;
  for (const NamedTensor& tensor : tensors) {
    source.tensors.push_back({tensor.name, tensor.tensor.shape()});
    by_name[tensor.name] = &tensor.tensor;
  }
  source.load = [&](const std::string& name) { return by_name.at(name)->to_floats(); };
  const gguf::GgufModelExport plan = gguf::GgufModelExport::plan(std::move(source), options);
  write_gguf_atomically(plan, out, files);
  return plan.notes();
}

std::vector<std::string> convert_directory_to_gguf(const std::filesystem::path& hf_dir, const std::filesystem::path& out,
                                                   const gguf::GgufExportOptions& options, FileOps& files) {
  auto checkpoint = std::make_shared<SafetensorsCheckpoint>(SafetensorsCheckpoint::open(hf_dir));
  gguf::HfModelSource source;
  source.config = ModelConfig::load(hf_dir);
  source.config_source = (hf_dir / "config.json").string();
  source.directory = hf_dir;
  for (const std::string& name : checkpoint->tensor_names()) source.tensors.push_back({name, checkpoint->entry(name).shape});
  source.load = [checkpoint](const std::string& name) { return checkpoint->tensor_as(name, DType::kF32).to_floats(); };
  const gguf::GgufModelExport plan = gguf::GgufModelExport::plan(std::move(source), options);
  write_gguf_atomically(plan, out, files);
  return plan.notes();
}

}  // namespace llmft::trainer
