#include "trainer/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "proto/event.pb.h"

namespace llmft::trainer {
namespace {

double system_wall_clock() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string local_hostname() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

void create_directories(const std::filesystem::path& directory, const char* what) {
  if (directory.empty()) return;
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) throw_bad_input(directory.string(), ": cannot create the ", what, " directory: ", error.message());
}

void write_event(data::RecordWriter& writer, const tensorboard::Event& event) {
  std::string bytes;
  LLMFT_CHECK(event.SerializeToString(&bytes), writer.path(), ": cannot serialize a tensorboard.Event");
  writer.write(bytes);
  writer.flush();
}

}  // namespace

std::string event_file_name(int64_t unix_seconds, const std::string& hostname) {
  char seconds[32];
  std::snprintf(seconds, sizeof(seconds), "%010lld", static_cast<long long>(unix_seconds));
  return str_cat("events.out.tfevents.", seconds, ".", hostname);
}

MetricsWriter::MetricsWriter(MetricsWriterOptions options) : options_(std::move(options)) {
  if (!options_.wall_clock) options_.wall_clock = system_wall_clock;
  if (options_.hostname.empty()) options_.hostname = local_hostname();
  data::FileSystem& file_system = options_.file_system != nullptr ? *options_.file_system : data::local_file_system();

  if (!options_.jsonl_path.empty()) {
    create_directories(std::filesystem::path(options_.jsonl_path).parent_path(), "metrics");
    // Appending: a resumed run adds its lines after the ones already there.
    jsonl_file_ = std::fopen(options_.jsonl_path.c_str(), "a");
    if (jsonl_file_ == nullptr)
      throw_bad_input(options_.jsonl_path, ": cannot open the metrics file for appending: ", std::strerror(errno));
  }

  if (!options_.tensorboard_dir.empty()) {
    create_directories(options_.tensorboard_dir, "TensorBoard");
    double start = now();
    std::filesystem::path path = std::filesystem::path(options_.tensorboard_dir) /
                                 event_file_name(static_cast<int64_t>(std::floor(start)), options_.hostname);
    // A second writer started in the same second on the same host (e.g. a
    // quick restart) must not truncate the first one's events; TensorBoard
    // reads any name containing "tfevents", so a pid suffix keeps both.
    if (std::filesystem::exists(path)) path += str_cat(".", static_cast<long long>(getpid()));
    event_file_path_ = path.string();
    data::RecordWriterOptions writer_options;
    writer_options.compression = data::Compression::kNone;  // TensorBoard reads plain files
    try {
      event_writer_ = std::make_unique<data::RecordWriter>(event_file_path_, writer_options, file_system);
    } catch (const Error& error) {
      if (jsonl_file_ != nullptr) std::fclose(jsonl_file_);
      throw_bad_input(event_file_path_, ": cannot create the TensorBoard event file: ", error.what());
    }
    tensorboard::Event first;
    first.set_wall_time(start);
    first.set_file_version(kEventFileVersion);
    try {
      write_event(*event_writer_, first);
    } catch (const Error&) {
      // A file without its version record is not an event file (TensorBoard
      // skips it): on a full disk, leave none behind rather than an empty one.
      event_writer_.reset();
      std::error_code ignored;
      std::filesystem::remove(event_file_path_, ignored);
      if (jsonl_file_ != nullptr) std::fclose(jsonl_file_);
      jsonl_file_ = nullptr;
      throw;
    }
  }
}

MetricsWriter::~MetricsWriter() {
  try {
    close();
  } catch (...) {
    // Destructors must not throw; callers who care about the error call close().
  }
}

double MetricsWriter::now() const { return options_.wall_clock(); }

void MetricsWriter::log_scalars(int64_t step, const ScalarValues& values) {
  LLMFT_CHECK(!closed_, "metrics: log_scalars after close");
  std::set<std::string_view> names;
  for (const auto& [name, value] : values) {
    (void)value;
    if (name.empty() || name == "step" || name == "wall_time" || !names.insert(name).second)
      throw_bad_input("metrics at step ", step, ": scalar name \"", name,
                      "\" is empty, reserved (step, wall_time) or repeated in one call");
  }
  double wall_time = now();

  if (jsonl_file_ != nullptr) {
    nlohmann::ordered_json line;
    line["step"] = step;
    line["wall_time"] = wall_time;
    for (const auto& [name, value] : values) {
      if (std::isfinite(value))
        line[name] = value;
      else
        line[name] = nullptr;
    }
    std::string text = line.dump() + "\n";
    if (std::fwrite(text.data(), 1, text.size(), jsonl_file_) != text.size() || std::fflush(jsonl_file_) != 0)
      throw_runtime(options_.jsonl_path, ": cannot write the metrics line for step ", step, ": ", std::strerror(errno));
  }

  if (event_writer_) {
    tensorboard::Event event;
    event.set_wall_time(wall_time);
    event.set_step(step);
    tensorboard::Summary* summary = event.mutable_summary();
    for (const auto& [name, value] : values) {
      tensorboard::Summary::Value* summary_value = summary->add_value();
      summary_value->set_tag(name);
      // TensorBoard's scalar field is a float (summary.proto simple_value = 2).
      summary_value->set_simple_value(static_cast<float>(value));
    }
    write_event(*event_writer_, event);
  }
}

void MetricsWriter::close() {
  if (closed_) return;
  closed_ = true;
  std::FILE* jsonl_file = std::exchange(jsonl_file_, nullptr);
  bool jsonl_ok = true;
  if (jsonl_file != nullptr) {
    jsonl_ok = std::fflush(jsonl_file) == 0 && fsync(fileno(jsonl_file)) == 0;
    jsonl_ok = std::fclose(jsonl_file) == 0 && jsonl_ok;
  }
  if (event_writer_) event_writer_->close();
  if (!jsonl_ok)
    throw_runtime(options_.jsonl_path, ": cannot flush and close the metrics file: ", std::strerror(errno));
}

// ---------------------------------------------------------- progress line ---

std::string format_bytes(double bytes) {
  char text[32];
  const double gib = 1024.0 * 1024.0 * 1024.0;
  if (bytes >= gib) std::snprintf(text, sizeof text, "%.2f GiB", bytes / gib);
  else if (bytes >= 1024.0 * 1024.0) std::snprintf(text, sizeof text, "%.1f MiB", bytes / (1024.0 * 1024.0));
  else if (bytes >= 1024.0) std::snprintf(text, sizeof text, "%.1f KiB", bytes / 1024.0);
  else std::snprintf(text, sizeof text, "%.0f B", bytes);
  return text;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  long long total = std::llround(seconds);
  long long hours = total / 3600, minutes = total / 60 % 60, secs = total % 60;
  char text[64];
  if (hours > 0)
    std::snprintf(text, sizeof(text), "%lldh%02lldm%02llds", hours, minutes, secs);
  else if (minutes > 0)
    std::snprintf(text, sizeof(text), "%lldm%02llds", minutes, secs);
  else
    std::snprintf(text, sizeof(text), "%llds", secs);
  return text;
}

std::string format_grouped_integer(double value) {
  if (!std::isfinite(value)) return "?";
  long long rounded = std::llround(value);
  std::string digits = std::to_string(rounded < 0 ? -rounded : rounded);
  std::string grouped;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) grouped += ',';
    grouped += digits[i];
  }
  return rounded < 0 ? "-" + grouped : grouped;
}

std::string format_progress_line(const ProgressLine& line) {
  char text[256];
  std::snprintf(text, sizeof(text), "step %lld/%lld | loss %.4f | lr %.1e", static_cast<long long>(line.step),
                static_cast<long long>(line.total_steps), line.loss, line.learning_rate);
  std::string result = text;
  if (line.grad_norm) {
    std::snprintf(text, sizeof(text), " | grad_norm %.2f", *line.grad_norm);
    result += text;
  }
  result += str_cat(" | ", format_grouped_integer(line.tokens_per_second), " tok/s");
  if (line.packing_efficiency) {
    std::snprintf(text, sizeof(text), " | packing %.0f%%", *line.packing_efficiency * 100.0);
    result += text;
  }
  if (line.model_flops_utilization) {
    std::snprintf(text, sizeof(text), " | MFU %.0f%%", *line.model_flops_utilization * 100.0);
    result += text;
  }
  if (line.communication_hidden) {
    std::snprintf(text, sizeof(text), " | comm %.0f%% hidden", *line.communication_hidden * 100.0);
    result += text;
  }
  if (line.loss_scale) {
    std::snprintf(text, sizeof(text), " | scale %g", *line.loss_scale);
    result += text;
  }
  if (line.skipped_steps) result += str_cat(" | skipped ", *line.skipped_steps);
  if (line.eta_seconds) result += str_cat(" | ETA ", format_duration(*line.eta_seconds));
  return result;
}

}  // namespace llmft::trainer
