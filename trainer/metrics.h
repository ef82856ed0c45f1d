// Training metrics: a JSONL file, TensorBoard event files, and the live
// progress line.
//
// TensorBoard event files are TFRecord files (data/tfrecord.h) of serialized
// tensorboard.Event messages (proto/event.proto, field numbers from
// tensorflow/tensorboard tensorboard/compat/proto/event.proto): the first
// record is Event{wall_time, file_version: "brain.Event:2"}, then each
// log_scalars() call writes one Event{wall_time, step, summary{value{tag,
// simple_value}, ...}}. The name is events.out.tfevents.<unix seconds>.<host>,
// as TensorFlow's EventsWriter names them; TensorBoard reads every file in the
// directory whose name contains "tfevents".
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/file_system.h"
#include "data/tfrecord.h"

namespace llmft::trainer {

// Scalars logged at one step, in the order they are written.
using ScalarValues = std::vector<std::pair<std::string, double>>;

inline constexpr const char* kEventFileVersion = "brain.Event:2";

struct MetricsWriterOptions {
  // Directory of the TensorBoard event file (created with its parents).
  // Empty: no event file.
  std::string tensorboard_dir;
  // The JSONL file, one object per log_scalars() call:
  //   {"step": 120, "wall_time": 1764080000.25, "loss": 2.31, ...}
  // Opened for appending, so a resumed run continues it. Its directory is
  // created. Empty: no JSONL file.
  std::string jsonl_path;
  // Host name in the event file's name; empty: gethostname().
  std::string hostname;
  // Seconds since the Unix epoch; injectable so tests can pin times.
  std::function<double()> wall_clock;
  data::FileSystem* file_system = nullptr;  // null: data::local_file_system()
};

class MetricsWriter {
 public:
  // Throws llmft::Error (kBadInput) naming the path when a directory or file
  // cannot be created.
  explicit MetricsWriter(MetricsWriterOptions options);
  ~MetricsWriter();  // closes without throwing; call close() to see errors
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Writes one JSONL line and one TensorBoard event holding all `values`, and
  // flushes both to the kernel, so a crash of the process loses at most the
  // call in progress. Names must be non-empty, unique within the call, and
  // not "step" or "wall_time" (the JSONL keys). Non-finite values are written
  // to TensorBoard as they are and as null in JSON (JSON has no NaN/Inf).
  void log_scalars(int64_t step, const ScalarValues& values);

  // Flushes and fsyncs both files. Idempotent.
  void close();

  // Empty when the file is not written.
  const std::string& event_file_path() const { return event_file_path_; }
  const std::string& jsonl_path() const { return options_.jsonl_path; }

 private:
  double now() const;

  MetricsWriterOptions options_;
  std::string event_file_path_;
  std::unique_ptr<data::RecordWriter> event_writer_;
  std::FILE* jsonl_file_ = nullptr;
  bool closed_ = false;
};

// The event file name TensorFlow's EventsWriter uses:
// "events.out.tfevents.<unix seconds, 10 digits>.<hostname>".
std::string event_file_name(int64_t unix_seconds, const std::string& hostname);

// One live progress line, e.g.
//   step 120/1000 | loss 2.3141 | lr 1.9e-04 | grad_norm 0.83 | 7,312 tok/s | packing 93% | MFU 41% | ETA 3m12s
// Optional parts are left out when unknown (no MFU on the CPU, no grad norm
// before the first optimizer step, no ETA before timing is known).
struct ProgressLine {
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0.0;
  double learning_rate = 0.0;
  std::optional<double> grad_norm;
  double tokens_per_second = 0.0;
  // The share of row positions holding a document's token rather than
  // padding: what packing buys ("packing 93%").
  std::optional<double> packing_efficiency;
  std::optional<double> model_flops_utilization;  // a fraction: 0.41 prints "41%"
  std::optional<double> eta_seconds;
  // Data parallelism: the share of the gradient all-reduce time that ran
  // behind the backward.
  std::optional<double> communication_hidden;
  // With loss scaling: the current scale and the overflow-skipped steps.
  std::optional<double> loss_scale;
  std::optional<int64_t> skipped_steps;
};

std::string format_progress_line(const ProgressLine& line);

// "42s", "3m12s", "2h05m09s" (rounded to whole seconds); "?" when negative or
// not finite.
std::string format_duration(double seconds);
// "12.3 MiB", "1.50 GiB", "512 B": sizes for people (powers of 1024).
std::string format_bytes(double bytes);

// 7312.4 -> "7,312" (rounded to an integer, thousands grouped with commas).
std::string format_grouped_integer(double value);

}  // namespace llmft::trainer
