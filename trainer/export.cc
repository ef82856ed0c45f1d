#include "trainer/export.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
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

void refuse_unless_mergeable(const PeftMethod& method, const char* command) {
  const std::string reason = method.merge_unsupported_reason();
  if (!reason.empty()) throw_bad_input(command, ": cannot merge: ", reason, "; export it with --adapter");
}

std::vector<NamedTensor> merged_or_refuse(const PeftMethod& method, const char* command) {
  refuse_unless_mergeable(method, command);
  return method.merged_state_dict(DType::kF32);
}

// Removes what SIGKILLed exports into `out` left beside it: ".<name>.tmp-<pid>"
// entries whose process is gone (kill(pid, 0) says ESRCH). A live pid's
// entry may be another export writing now and is kept; so is anything not
// of that exact form. (PIDs are per host: two hosts exporting into one
// shared directory at once is not supported either way.)
void remove_stale_staging(const std::filesystem::path& parent, const std::string& name, FileOps& files) {
  const std::string prefix = str_cat(".", name, ".tmp-");
  if (!files.exists(parent.string())) return;
  for (const std::string& entry : files.list(parent.string())) {
    if (!entry.starts_with(prefix) || entry.size() == prefix.size() || entry.size() - prefix.size() > 9) continue;
    const std::string digits = entry.substr(prefix.size());
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(digits));
    if (pid <= 0 || pid == ::getpid()) continue;  // our own is cleared by the caller
    if (::kill(pid, 0) == -1 && errno == ESRCH) files.remove_all((parent / entry).string());
  }
}

// Writes a model directory in two phases, so that a failure while writing
// (a full disk) leaves an existing `out` exactly as it was: `write` fills a
// fresh staging directory beside `out` (".<name>.tmp-<pid>", same file
// system), every file of which is fsynced; only then does it become `out`:
// by one rename of the directory when `out` does not exist yet (so a kill at
// any moment leaves no `out` or a complete one), else by renaming each file
// into `out`, which needs no space. A failure before that removes the
// staging directory and nothing in `out` has changed; a crash during the
// per-file renames leaves every file of `out` whole, some old and some new. A
// SIGKILL leaves its staging directory behind (never `out` half-written); the
// next export to `out` removes it (remove_stale_staging).
void write_directory_staged(const std::filesystem::path& out_path,
                            const std::function<void(const std::filesystem::path&)>& write, FileOps& files) {
  std::filesystem::path out = out_path.lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  const std::filesystem::path parent = out.parent_path().empty() ? std::filesystem::path(".") : out.parent_path();
  std::filesystem::create_directories(parent);
  const std::filesystem::path staging = parent / str_cat(".", out.filename().string(), ".tmp-", ::getpid());
  remove_stale_staging(parent, out.filename().string(), files);
  files.remove_all(staging.string());
  try {
    write(staging);
  } catch (...) {
    files.remove_all(staging.string());
    throw;
  }
  files.sync_directory(staging.string());  // its entries, before it or they are renamed
  if (!files.exists(out.string())) {
    files.rename(staging.string(), out.string());
    files.sync_directory(parent.string());
    return;
  }
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
  if (model.peft) refuse_unless_mergeable(*model.peft, "export --merged");  // the one-line refusal before anything is written
  write_directory_staged(
      out,
      [&](const std::filesystem::path& staging) {
        if (model.peft) {
          save_merged_model(*model.peft, staging, dtype, max_shard_bytes);
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
  if (!model.peft)
    throw_bad_input(
        "export --adapter: the run is full fine-tuning (peft none), which has no adapter; use --merged "
        "for the trained weights");
  write_directory_staged(
      out,
      [&](const std::filesystem::path& staging) { model.peft->save_adapter(staging, base_model_name_or_path, dtype); },
      local_file_ops());
}

void write_gguf_atomically(const std::function<void(const gguf::GgufWriter::Sink&)>& write_file,
                           const std::filesystem::path& out, FileOps& files) {
  const std::filesystem::path directory = out.parent_path().empty() ? std::filesystem::path(".") : out.parent_path();
  const std::string temp = (directory / str_cat(".", out.filename().string(), ".tmp-", ::getpid())).string();
  remove_stale_staging(directory, out.filename().string(), files);
  try {
    std::unique_ptr<CheckpointFile> file = files.create(temp);
    write_file([&](const void* data, size_t bytes) { file->append(data, bytes); });
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
      model.peft ? merged_or_refuse(*model.peft, "export --gguf") : model.model->state_dict(DType::kF32);
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
  write_gguf_atomically([&](const gguf::GgufWriter::Sink& sink) { plan.write(sink); }, out, files);
  return plan.notes();
}

std::vector<std::string> export_gguf_adapter(TrainingModel& model, const std::filesystem::path& base_dir,
                                             const std::filesystem::path& out,
                                             const gguf::GgufLoraExportOptions& options, FileOps& files) {
  if (!model.peft)
    throw_bad_input(
        "export --gguf-adapter: the run is full fine-tuning (peft none), which has no adapter; use --gguf for the "
        "trained weights");
  const auto* lora = dynamic_cast<const LoraModel*>(model.peft.get());
  if (lora == nullptr)
    throw_bad_input("export --gguf-adapter: the run trains ", peft_type_name(model.peft->type()),
                    "; llama.cpp's adapter GGUF holds LoRA only (use --adapter)");
  const LoraSettings& config = lora->config();
  gguf::LoraAdapterSource source;
  source.config = model.model->config();
  source.config_source = (base_dir / "config.json").string();
  source.adapter_source = str_cat("LoRA of ", base_dir.string(), " (r ", config.r, ")");
  // llama.cpp scales by alpha / r (get_scale in src/llama-adapter.h); rsLoRA's
  // alpha / sqrt(r) is the same scale with alpha·sqrt(r), computed in double
  // as LoraSettings::scaling does.
  source.alpha = config.use_rslora ? static_cast<float>(config.alpha * std::sqrt(static_cast<double>(config.r)))
                                   : config.alpha;
  std::vector<const LoraAdapter*> adapters;
  for (const auto& adapter : lora->adapters()) {
    source.pairs.push_back({adapter->base().weight().name, adapter->lora_a().value.shape(),
                            adapter->lora_b().value.shape()});
    adapters.push_back(adapter.get());
  }
  source.load = [&](size_t index, bool b) {
    const Parameter& matrix = b ? adapters[index]->lora_b() : adapters[index]->lora_a();
    return matrix.value.to_floats();
  };
  const gguf::GgufLoraExport plan = gguf::GgufLoraExport::plan(std::move(source), options);
  write_gguf_atomically([&](const gguf::GgufWriter::Sink& sink) { plan.write(sink); }, out, files);
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
  write_gguf_atomically([&](const gguf::GgufWriter::Sink& sink) { plan.write(sink); }, out, files);
  return plan.notes();
}

}  // namespace llmft::trainer
