#include "trainer/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_depth.h"

namespace llmft::trainer {
namespace {

using nlohmann::json;

constexpr const char* kTrainableFile = "trainable.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kFormatName = "llmft-checkpoint";
// Appends are cut to this size so a slow or failing write is observed (and a
// kill lands) between pieces of a large tensor, not only between tensors.
constexpr size_t kAppendBytes = 1 << 20;

// "step-<N>" -> N; nullopt for any other name.
std::optional<int64_t> parse_step_name(const std::string& name) {
  constexpr std::string_view kPrefix = "step-";
  if (name.size() <= kPrefix.size() || name.compare(0, kPrefix.size(), kPrefix) != 0) return std::nullopt;
  int64_t step = 0;
  const char* begin = name.data() + kPrefix.size();
  const char* end = name.data() + name.size();
  auto [next, error] = std::from_chars(begin, end, step);
  if (error != std::errc() || next != end || step < 0) return std::nullopt;
  return step;
}

// Leftovers of an interrupted write or prune: ".step-<N>.tmp-<pid>" or
// ".step-<N>.old-<pid>".
bool is_stale_name(const std::string& name) {
  return name.rfind(".step-", 0) == 0 &&
         (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos);
}

std::string shape_text(std::string_view dtype, const Shape& shape) {
  std::string text = str_cat(dtype, "[");
  for (size_t i = 0; i < shape.size(); ++i) text += str_cat(i ? ", " : "", shape[i]);
  return text + "]";
}

json state_to_json(const CheckpointState& state, const std::map<std::string, uint64_t>& file_bytes) {
  json rng = json::object();
  for (const auto& [name, position] : state.rng) rng[name] = {{"seed", position.seed}, {"position", position.position}};
  json files = json::object();
  for (const auto& [name, bytes] : file_bytes) files[name] = bytes;
  return {{"format", kFormatName},
          {"format_version", kCheckpointFormatVersion},
          {"step", state.step},
          {"schedule_position", state.schedule_position},
          {"loss_scaler",
           {{"scale", state.loss_scale},
            {"good_steps", state.loss_scale_good_steps},
            {"hysteresis_tracker", state.loss_scale_hysteresis_tracker},
            {"skipped_steps", state.skipped_steps}}},
          {"data_loader", state.data_loader_states.empty() ? std::string() : state.data_loader_states.front()},
          {"data_loader_ranks", state.data_loader_states},
          {"rng", rng},
          {"fingerprint", state.fingerprint},
          {"files", files}};
}

// Field access with errors naming the file and the field.
const json& field(const json& object, const std::string& key, const std::string& file, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end()) throw_bad_input(file, ": missing field '", where, key, "'");
  return *it;
}

int64_t int_field(const json& object, const std::string& key, const std::string& file, const std::string& where = "") {
  const json& value = field(object, key, file, where);
  if (!value.is_number_integer())
    throw_bad_input(file, ": field '", where, key, "' must be an integer, found ", value.dump());
  return value.get<int64_t>();
}

uint64_t uint_field(const json& object, const std::string& key, const std::string& file, const std::string& where) {
  const json& value = field(object, key, file, where);
  if (!value.is_number_unsigned())
    throw_bad_input(file, ": field '", where, key, "' must be a non-negative integer, found ", value.dump());
  return value.get<uint64_t>();
}

std::string string_field(const json& object, const std::string& key, const std::string& file,
                         const std::string& where = "") {
  const json& value = field(object, key, file, where);
  if (!value.is_string()) throw_bad_input(file, ": field '", where, key, "' must be a string, found ", value.dump());
  return value.get<std::string>();
}

const json& object_field(const json& object, const std::string& key, const std::string& file,
                         const std::string& where = "") {
  const json& value = field(object, key, file, where);
  if (!value.is_object()) throw_bad_input(file, ": field '", where, key, "' must be an object, found ", value.dump());
  return value;
}

// A fingerprint shortened for an error line: long hashes/config texts are cut.
std::string short_fingerprint(const std::string& fingerprint) {
  return fingerprint.size() <= 16 ? fingerprint : fingerprint.substr(0, 12) + "…";
}

}  // namespace

// ---- Writer -----------------------------------------------------------------

CheckpointWriter::CheckpointWriter(std::filesystem::path run_dir, int keep_last, FileOps& ops)
    : run_dir_(std::move(run_dir)), keep_last_(keep_last), ops_(ops) {
  if (keep_last_ < 1) throw_bad_input(run_dir_.string(), ": checkpoints to keep must be >= 1, found ", keep_last_);
}

void CheckpointWriter::remove_stale() {
  for (const std::string& name : ops_.list(run_dir_.string()))
    if (is_stale_name(name)) ops_.remove_all((run_dir_ / name).string());
}

void CheckpointWriter::write_file(const std::string& path, const std::function<void(CheckpointFile&)>& body) {
  std::unique_ptr<CheckpointFile> file = ops_.create(path);
  body(*file);
  file->sync();
  file->close();
}

std::filesystem::path CheckpointWriter::write(const CheckpointState& state, std::span<const NamedTensor> trainable,
                                              std::span<const NamedTensor> optimizer) {
  if (state.step < 0) throw_bad_input(run_dir_.string(), ": checkpoint step must be >= 0, found ", state.step);
  // Parents as needed (std::filesystem reports failures as error codes, turned
  // into llmft::Error here); the run directory itself through ops_.
  std::error_code parent_error;
  if (run_dir_.has_parent_path()) std::filesystem::create_directories(run_dir_.parent_path(), parent_error);
  if (parent_error)
    throw_runtime(run_dir_.parent_path().string(), ": cannot create directory: ", parent_error.message());
  ops_.make_directory(run_dir_.string());
  remove_stale();

  const std::string pid = std::to_string(::getpid());
  const std::string step_name = str_cat("step-", state.step);
  const std::filesystem::path temp_dir = run_dir_ / str_cat(".", step_name, ".tmp-", pid);
  const std::filesystem::path final_dir = run_dir_ / step_name;
  std::filesystem::path displaced;  // a previous step-<N> moved aside, see below
  try {
    ops_.make_directory(temp_dir.string());
    std::map<std::string, uint64_t> file_bytes;
    auto write_tensors = [&](const char* file_name, std::span<const NamedTensor> tensors) {
      const std::string path = (temp_dir / file_name).string();
      write_file(path, [&](CheckpointFile& file) {
        file_bytes[file_name] =
            serialize_safetensors(path, tensors, {{"format", "pt"}}, [&](const void* data, size_t bytes) {
              const char* cursor = static_cast<const char*>(data);
              while (bytes > 0) {
                size_t piece = std::min(bytes, kAppendBytes);
                file.append(cursor, piece);
                cursor += piece;
                bytes -= piece;
              }
            });
      });
    };
    write_tensors(kTrainableFile, trainable);
    write_tensors(kOptimizerFile, optimizer);
    const std::string state_text = state_to_json(state, file_bytes).dump(2) + "\n";
    write_file((temp_dir / kStateFile).string(),
               [&](CheckpointFile& file) { file.append(state_text.data(), state_text.size()); });
    ops_.sync_directory(temp_dir.string());

    // rename(2) replaces only an empty directory, so an existing step-<N> is
    // moved aside first (into the stale namespace, cleaned by the next writer
    // should we die before removing it here).
    if (ops_.exists(final_dir.string())) {
      displaced = run_dir_ / str_cat(".", step_name, ".old-", pid);
      ops_.rename(final_dir.string(), displaced.string());
    }
    ops_.rename(temp_dir.string(), final_dir.string());
    ops_.sync_directory(run_dir_.string());
    if (!displaced.empty()) ops_.remove_all(displaced.string());
  } catch (...) {
    try {
      // A failed replacement puts the previous step-<N> back.
      if (!displaced.empty() && !ops_.exists(final_dir.string()) && ops_.exists(displaced.string()))
        ops_.rename(displaced.string(), final_dir.string());
      ops_.remove_all(temp_dir.string());
    } catch (...) {
      // The error being propagated matters more; the next writer removes it.
    }
    throw;
  }
  prune(state.step);
  return final_dir;
}

void CheckpointWriter::prune(int64_t just_written) {
  // The checkpoint just written is never a candidate: after a resume from an
  // older step-<M> (an explicit path), newer directories of the abandoned run
  // may outnumber it, and deleting the only copy of the current run's state
  // would be the one unrecoverable choice. Otherwise the oldest go first.
  std::vector<std::pair<int64_t, std::filesystem::path>> candidates;
  for (auto& checkpoint : list_checkpoints(run_dir_, ops_))
    if (checkpoint.first != just_written) candidates.push_back(std::move(checkpoint));
  const size_t keep_others = static_cast<size_t>(keep_last_) - 1;
  if (candidates.size() <= keep_others) return;
  const std::string pid = std::to_string(::getpid());
  std::vector<std::filesystem::path> doomed;
  for (size_t i = 0; i < candidates.size() - keep_others; ++i) {
    // Out of the step-* namespace first (atomic), so a reader never meets a
    // half-deleted checkpoint.
    std::filesystem::path aside = run_dir_ / str_cat(".step-", candidates[i].first, ".old-", pid);
    ops_.rename(candidates[i].second.string(), aside.string());
    doomed.push_back(aside);
  }
  ops_.sync_directory(run_dir_.string());
  for (const auto& path : doomed) ops_.remove_all(path.string());
}

// ---- Resolution
// ---------------------------------------------------------------

std::vector<std::pair<int64_t, std::filesystem::path>> list_checkpoints(const std::filesystem::path& run_dir,
                                                                        FileOps& ops) {
  std::vector<std::pair<int64_t, std::filesystem::path>> checkpoints;
  for (const std::string& name : ops.list(run_dir.string()))
    if (auto step = parse_step_name(name)) checkpoints.emplace_back(*step, run_dir / name);
  std::sort(checkpoints.begin(), checkpoints.end());
  return checkpoints;
}

std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir, FileOps& ops) {
  auto checkpoints = list_checkpoints(run_dir, ops);
  if (checkpoints.empty()) return std::nullopt;
  return checkpoints.back().second;
}

// ---- Reader
// -------------------------------------------------------------------

CheckpointReader CheckpointReader::open(const std::string& where, const std::filesystem::path& run_dir,
                                        const std::string& expected_fingerprint, FileOps& ops) {
  CheckpointReader reader;
  if (where == "latest") {
    auto latest = latest_checkpoint(run_dir, ops);
    if (!latest) throw_bad_input(run_dir.string(), ": no checkpoint (step-<N> directory) to resume from");
    reader.directory_ = *latest;
  } else {
    reader.directory_ = where;
  }
  const std::string dir = reader.directory_.string();
  if (!ops.exists(dir)) throw_bad_input(dir, ": checkpoint directory does not exist");
  const std::string state_path = (reader.directory_ / kStateFile).string();
  if (!ops.exists(state_path)) throw_bad_input(state_path, ": missing (not a complete llmft checkpoint)");

  json root;
  try {
    root = parse_json(ops.read(state_path), state_path);
  } catch (const json::exception& error) {  // parse_error, and out_of_range for a number like 1e999
    throw_bad_input(state_path, ": not valid JSON: ", error.what());
  }
  if (!root.is_object()) throw_bad_input(state_path, ": expected a JSON object, found ", root.type_name());
  if (std::string format = string_field(root, "format", state_path); format != kFormatName)
    throw_bad_input(state_path, ": field 'format' must be \"", kFormatName, "\", found \"", format, "\"");
  if (int64_t version = int_field(root, "format_version", state_path); version != kCheckpointFormatVersion)
    throw_bad_input(state_path, ": format_version ", version, " is not supported (this llmft reads version ",
                    kCheckpointFormatVersion, ")");

  CheckpointState& state = reader.state_;
  state.fingerprint = string_field(root, "fingerprint", state_path);
  if (state.fingerprint != expected_fingerprint)
    throw_bad_input(dir,
                    ": checkpoint was written for a different model/PEFT "
                    "config (fingerprint ",
                    short_fingerprint(state.fingerprint), " vs ", short_fingerprint(expected_fingerprint), ")");
  state.step = int_field(root, "step", state_path);
  state.schedule_position = int_field(root, "schedule_position", state_path);
  const json& scaler = object_field(root, "loss_scaler", state_path);
  const json& scale = field(scaler, "scale", state_path, "loss_scaler.");
  if (!scale.is_number())
    throw_bad_input(state_path, ": field 'loss_scaler.scale' must be a number, found ", scale.dump());
  state.loss_scale = scale.get<double>();
  state.loss_scale_good_steps = int_field(scaler, "good_steps", state_path, "loss_scaler.");
  if (scaler.contains("hysteresis_tracker"))
    state.loss_scale_hysteresis_tracker = int_field(scaler, "hysteresis_tracker", state_path, "loss_scaler.");
  if (scaler.contains("skipped_steps"))
    state.skipped_steps = int_field(scaler, "skipped_steps", state_path, "loss_scaler.");
  if (root.contains("data_loader_ranks")) {
    const json& ranks = root["data_loader_ranks"];
    if (!ranks.is_array() || ranks.empty())
      throw_bad_input(state_path, ": field 'data_loader_ranks' must be a non-empty array of strings, found ",
                      ranks.dump().substr(0, 80));
    for (const json& position : ranks) {
      if (!position.is_string())
        throw_bad_input(state_path, ": field 'data_loader_ranks' must hold strings, found ", position.dump().substr(0, 80));
      state.data_loader_states.push_back(position.get<std::string>());
    }
  } else {
    state.data_loader_states = {string_field(root, "data_loader", state_path)};
  }
  for (const auto& [name, position] : object_field(root, "rng", state_path).items()) {
    const std::string where_rng = str_cat("rng.", name, ".");
    if (!position.is_object()) throw_bad_input(state_path, ": field 'rng.", name, "' must be an object");
    state.rng[name] = {uint_field(position, "seed", state_path, where_rng),
                       uint_field(position, "position", state_path, where_rng)};
  }
  const json& files = object_field(root, "files", state_path);
  for (const char* file_name : {kTrainableFile, kOptimizerFile}) {
    uint64_t expected = uint_field(files, file_name, state_path, "files.");
    const std::filesystem::path path = reader.directory_ / file_name;
    std::error_code error;
    uint64_t found = std::filesystem::file_size(path, error);
    if (error) throw_bad_input(path.string(), ": missing from the checkpoint (", error.message(), ")");
    if (found != expected)
      throw_bad_input(path.string(), ": ", found, " bytes, but state.json records ", expected,
                      " (truncated or replaced)");
  }
  return reader;
}

void CheckpointReader::load_trainable(std::span<const NamedTensor> into) const { load(kTrainableFile, into); }
void CheckpointReader::load_optimizer(std::span<const NamedTensor> into) const { load(kOptimizerFile, into); }

void CheckpointReader::load_fp32_weights(std::span<const NamedTensor> into) const {
  SafetensorsFile optimizer = SafetensorsFile::open(directory_ / kOptimizerFile);
  SafetensorsFile trainable = SafetensorsFile::open(directory_ / kTrainableFile);
  for (const NamedTensor& named : into) {
    LLMFT_CHECK(named.tensor.dtype() == DType::kF32, "load_fp32_weights into ", named.tensor.to_string());
    const std::string master = named.name + ".master";
    SafetensorsFile& file = optimizer.contains(master) ? optimizer : trainable;
    const std::string& name = optimizer.contains(master) ? master : named.name;
    if (!file.contains(name))
      throw_bad_input(trainable.path(), ": no tensor '", named.name, "' (expected ",
                      shape_text(dtype_name(named.tensor.dtype()), named.tensor.shape()), ")");
    const SafetensorsEntry& entry = file.entry(name);
    if (entry.dtype != DType::kF32 || entry.shape != named.tensor.shape())
      throw_bad_input(file.path(), ": tensor '", name, "': expected ",
                      shape_text(dtype_name(DType::kF32), named.tensor.shape()), ", found ",
                      shape_text(entry.dtype ? dtype_name(*entry.dtype) : entry.dtype_name, entry.shape));
    Tensor destination = named.tensor;
    destination.copy_from(file.tensor(name));
  }
}

void CheckpointReader::load(const std::string& file_name, std::span<const NamedTensor> into) const {
  SafetensorsFile file = SafetensorsFile::open(directory_ / file_name);
  std::map<std::string, const NamedTensor*> wanted;
  for (const NamedTensor& named : into) wanted[named.name] = &named;
  for (const SafetensorsEntry& entry : file.entries())
    if (!wanted.count(entry.name))
      throw_bad_input(file.path(), ": holds tensor '", entry.name, "' that the model being resumed does not have");
  for (const NamedTensor& named : into) {
    if (!file.contains(named.name))
      throw_bad_input(file.path(), ": no tensor '", named.name, "' (expected ",
                      shape_text(dtype_name(named.tensor.dtype()), named.tensor.shape()), ")");
    const SafetensorsEntry& entry = file.entry(named.name);
    if (entry.dtype != named.tensor.dtype() || entry.shape != named.tensor.shape())
      throw_bad_input(file.path(), ": tensor '", named.name, "': expected ",
                      shape_text(dtype_name(named.tensor.dtype()), named.tensor.shape()), ", found ",
                      shape_text(entry.dtype ? dtype_name(*entry.dtype) : entry.dtype_name, entry.shape));
    Tensor destination = named.tensor;  // a handle: writes go to the caller's storage
    destination.copy_from(file.tensor(named.name));
  }
}

}  // namespace llmft::trainer
