// trainer/metrics: JSONL lines, TensorBoard event files read back through the
// TFRecord reader and the generated tensorboard.Event class, the first record's
// bytes written out by hand from the wire format, and the progress line.
#include "trainer/metrics.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include "core/error.h"
#include "proto/event.pb.h"

namespace llmft::trainer {
namespace {

namespace fs = std::filesystem;

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("llmft_metrics_" + std::to_string(getpid()) + "_" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A clock that starts at `start` and advances 0.25 s per call: exact in double.
  MetricsWriterOptions options_with_clock(double start) {
    MetricsWriterOptions options;
    options.tensorboard_dir = (dir_ / "tb").string();
    options.jsonl_path = (dir_ / "logs" / "metrics.jsonl").string();
    options.hostname = "testhost";
    auto next = std::make_shared<double>(start);
    options.wall_clock = [next] {
      double now = *next;
      *next += 0.25;
      return now;
    };
    return options;
  }

  std::vector<std::string> read_records(const std::string& path) {
    data::RecordReader reader(path);
    std::vector<std::string> records;
    std::string_view record;
    while (reader.read(record)) records.emplace_back(record);
    return records;
  }

  fs::path dir_;
};

TEST_F(MetricsTest, EventFileIsNamedAfterTheStartSecondAndHost) {
  MetricsWriter writer(options_with_clock(1764080000.75));
  EXPECT_EQ(writer.event_file_path(), (dir_ / "tb" / "events.out.tfevents.1764080000.testhost").string());
  EXPECT_TRUE(fs::exists(writer.event_file_path()));
  EXPECT_EQ(event_file_name(42, "h"), "events.out.tfevents.0000000042.h");
}

TEST_F(MetricsTest, FirstRecordIsTheFileVersionEventByteForByte) {
  const double start = 1764080000.5;
  MetricsWriter writer(options_with_clock(start));
  writer.close();
  // Wire format by hand (protobuf encoding): field 1 wall_time, wire type 1
  // (fixed64) -> tag 0x09 + 8 little-endian bytes; step 0 is omitted (proto3
  // default); field 3 file_version, wire type 2 -> tag 0x1a, length 13, bytes.
  std::string expected_data = "\x09";
  uint64_t bits;
  std::memcpy(&bits, &start, 8);
  for (int i = 0; i < 8; ++i) expected_data += static_cast<char>((bits >> (8 * i)) & 0xff);
  expected_data += "\x1a\x0d";
  expected_data += "brain.Event:2";
  ASSERT_EQ(expected_data.size(), 24u);

  std::ifstream file(writer.event_file_path(), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  // TFRecord framing: uint64 LE length, uint32 masked CRC, data, uint32 masked CRC.
  ASSERT_EQ(bytes.size(), 8u + 4u + 24u + 4u);
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = length << 8 | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(length, 24u);
  EXPECT_EQ(bytes.substr(12, 24), expected_data);
  // The CRCs are checked by the reader (RecordReader verifies both by default).
  EXPECT_EQ(read_records(writer.event_file_path()), std::vector<std::string>{expected_data});
}

TEST_F(MetricsTest, EveryScalarReadsBackThroughTheEventClass) {
  MetricsWriter writer(options_with_clock(1000.0));
  const int steps = 5;
  for (int step = 1; step <= steps; ++step)
    writer.log_scalars(step * 10, {{"loss", 3.0 / step}, {"lr", 1e-4 * step}, {"grad_norm", 0.5 + step}});
  writer.log_scalars(50, {{"eval_loss", 1.25}});
  writer.close();

  std::vector<std::string> records = read_records(writer.event_file_path());
  ASSERT_EQ(records.size(), 1u + steps + 1u);
  tensorboard::Event first;
  ASSERT_TRUE(first.ParseFromString(records[0]));
  EXPECT_EQ(first.wall_time(), 1000.0);
  EXPECT_EQ(first.file_version(), "brain.Event:2");
  EXPECT_EQ(first.step(), 0);

  for (int step = 1; step <= steps; ++step) {
    tensorboard::Event event;
    ASSERT_TRUE(event.ParseFromString(records[step]));
    SCOPED_TRACE(step);
    EXPECT_EQ(event.wall_time(), 1000.0 + 0.25 * step);  // one clock reading per call
    EXPECT_EQ(event.step(), step * 10);
    ASSERT_EQ(event.what_case(), tensorboard::Event::kSummary);
    ASSERT_EQ(event.summary().value_size(), 3);
    const char* tags[] = {"loss", "lr", "grad_norm"};
    float values[] = {static_cast<float>(3.0 / step), static_cast<float>(1e-4 * step), static_cast<float>(0.5 + step)};
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(event.summary().value(i).tag(), tags[i]);
      ASSERT_EQ(event.summary().value(i).value_case(), tensorboard::Summary::Value::kSimpleValue);
      EXPECT_EQ(event.summary().value(i).simple_value(), values[i]);
    }
  }
  tensorboard::Event eval;
  ASSERT_TRUE(eval.ParseFromString(records.back()));
  EXPECT_EQ(eval.step(), 50);
  ASSERT_EQ(eval.summary().value_size(), 1);
  EXPECT_EQ(eval.summary().value(0).tag(), "eval_loss");
  EXPECT_EQ(eval.summary().value(0).simple_value(), 1.25f);
}

TEST_F(MetricsTest, EventsAreOnDiskBeforeClose) {
  // A crash loses at most the event being written: every earlier event is
  // already in the file while the writer is still open.
  MetricsWriter writer(options_with_clock(5.0));
  writer.log_scalars(1, {{"loss", 2.0}});
  writer.log_scalars(2, {{"loss", 1.5}});
  EXPECT_EQ(read_records(writer.event_file_path()).size(), 3u);
  std::ifstream jsonl(writer.jsonl_path());
  std::string line;
  int lines = 0;
  while (std::getline(jsonl, line)) ++lines;
  EXPECT_EQ(lines, 2);
}

// RecordWriter::flush() (added for the metrics writer) on a GZIP file: after a
// flush, zlib itself inflates every record written so far although the
// stream has no end marker yet, as a crashed writer would leave it.
TEST_F(MetricsTest, FlushedGzipRecordsInflateBeforeClose) {
  fs::create_directories(dir_);
  std::string path = (dir_ / "flushed.tfrecord.gz").string();
  data::RecordWriter writer(path);
  writer.write("first");
  writer.write(std::string(3000, 'x'));
  writer.flush();
  std::ifstream file(path, std::ios::binary);
  std::string compressed((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(compressed.empty());

  z_stream stream{};
  ASSERT_EQ(inflateInit2(&stream, 16 + MAX_WBITS), Z_OK);  // 16: gzip wrapper
  std::string inflated(1 << 16, '\0');
  stream.next_in = reinterpret_cast<Bytef*>(compressed.data());
  stream.avail_in = static_cast<uInt>(compressed.size());
  stream.next_out = reinterpret_cast<Bytef*>(inflated.data());
  stream.avail_out = static_cast<uInt>(inflated.size());
  int status = inflate(&stream, Z_SYNC_FLUSH);
  inflated.resize(stream.total_out);
  inflateEnd(&stream);
  EXPECT_EQ(status, Z_OK);  // not Z_STREAM_END: the writer is still open
  EXPECT_EQ(inflated, data::frame_record("first") + data::frame_record(std::string(3000, 'x')));
  writer.close();
}

TEST_F(MetricsTest, JsonlLinesHoldStepWallTimeAndValuesAndAppendOnReopen) {
  {
    MetricsWriter writer(options_with_clock(100.0));
    writer.log_scalars(1, {{"loss", 2.5}, {"tokens_per_second", 7312.0}});
    writer.log_scalars(2, {{"loss", std::nan("")}});
  }
  {
    MetricsWriterOptions options = options_with_clock(200.0);
    options.tensorboard_dir.clear();  // JSONL only: no clock reading for a first event
    MetricsWriter writer(options);
    EXPECT_TRUE(writer.event_file_path().empty());
    writer.log_scalars(3, {{"eval_loss", 0.75}});
  }
  std::ifstream file(dir_ / "logs" / "metrics.jsonl");
  std::vector<nlohmann::json> lines;
  std::vector<std::string> raw_lines;
  std::string line;
  while (std::getline(file, line)) {
    raw_lines.push_back(line);
    lines.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], nlohmann::json::parse(R"({"step": 1, "wall_time": 100.25, "loss": 2.5,
                                                "tokens_per_second": 7312.0})"));
  EXPECT_EQ(lines[1], nlohmann::json::parse(R"({"step": 2, "wall_time": 100.5, "loss": null})"));
  EXPECT_EQ(lines[2], nlohmann::json::parse(R"({"step": 3, "wall_time": 200.0, "eval_loss": 0.75})"));
  // Keys in the order they were logged, step and wall_time first (parsed
  // objects compare unordered, so the raw text checks the order).
  EXPECT_EQ(raw_lines[0], R"({"step":1,"wall_time":100.25,"loss":2.5,"tokens_per_second":7312.0})");
}

TEST_F(MetricsTest, RejectsReservedEmptyAndRepeatedNames) {
  MetricsWriter writer(options_with_clock(1.0));
  for (const ScalarValues& bad :
       std::vector<ScalarValues>{{{"step", 1.0}}, {{"wall_time", 1.0}}, {{"", 1.0}}, {{"loss", 1.0}, {"loss", 2.0}}}) {
    try {
      writer.log_scalars(7, bad);
      ADD_FAILURE() << "accepted " << bad.front().first;
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
      EXPECT_NE(std::string(error.what()).find("metrics at step 7: scalar name \"" + bad.front().first + "\""),
                std::string::npos)
          << error.what();
    }
  }
}

TEST_F(MetricsTest, UncreatableDirectoryOrFileIsAnErrorNamingThePath) {
  fs::create_directories(dir_);
  std::ofstream(dir_ / "a_file") << "x";
  MetricsWriterOptions options = options_with_clock(1.0);
  options.tensorboard_dir = (dir_ / "a_file" / "tb").string();
  try {
    MetricsWriter writer(options);
    ADD_FAILURE() << "created a directory under a file";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find(options.tensorboard_dir + ": cannot create the TensorBoard directory"),
              std::string::npos)
        << error.what();
  }

  options = options_with_clock(1.0);
  options.jsonl_path = dir_.string();  // a directory, not a file
  try {
    MetricsWriter writer(options);
    ADD_FAILURE() << "opened a directory as the metrics file";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find(dir_.string() + ": cannot open the metrics file"), std::string::npos)
        << error.what();
  }
}

// A file system whose event files fail: at open, or after `append_budget`
// bytes (a disk filling up while the run goes on).
class FailingFileSystem : public data::FileSystem {
 public:
  explicit FailingFileSystem(long append_budget) : append_budget_(append_budget) {}
  std::unique_ptr<data::ReadableFile> open_read(const std::string& path) override {
    return data::local_file_system().open_read(path);
  }
  std::unique_ptr<data::WritableFile> open_write(const std::string& path) override {
    if (append_budget_ < 0) throw_runtime(path, ": open failed: injected");
    return std::make_unique<BudgetFile>(path, append_budget_);
  }
  std::vector<std::string> glob(const std::string& pattern) override { return data::local_file_system().glob(pattern); }

 private:
  class BudgetFile : public data::WritableFile {
   public:
    BudgetFile(std::string path, long budget) : path_(std::move(path)), budget_(budget) {}
    void append(const void*, size_t bytes) override {
      budget_ -= static_cast<long>(bytes);
      if (budget_ < 0) throw_runtime(path_, ": write failed: No space left on device (injected)");
    }
    void close() override {}
    const std::string& path() const override { return path_; }

   private:
    std::string path_;
    long budget_;
  };
  long append_budget_;
};

TEST_F(MetricsTest, EventFileThatCannotBeOpenedIsAnErrorNamingIt) {
  FailingFileSystem file_system(-1);
  MetricsWriterOptions options = options_with_clock(1764080000.0);
  options.file_system = &file_system;
  std::string path = (dir_ / "tb" / "events.out.tfevents.1764080000.testhost").string();
  try {
    MetricsWriter writer(options);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what())
                  .find(path + ": cannot create the TensorBoard event file: " + path + ": open failed: injected"),
              std::string::npos)
        << error.what();
  }
}

TEST_F(MetricsTest, FailedEventWriteIsAnErrorNamingTheFile) {
  FailingFileSystem file_system(8 + 4 + 24 + 4);  // room for the file_version record only
  MetricsWriterOptions options = options_with_clock(1764080000.0);
  options.file_system = &file_system;
  MetricsWriter writer(options);
  try {
    writer.log_scalars(1, {{"loss", 1.0}});
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(writer.event_file_path() + ": write failed: No space left on device"),
              std::string::npos)
        << error.what();
  }
}

// Creates real files, as the local file system does, on a disk with
// `free_bytes` of room: appends beyond it fail as write(2) does with ENOSPC.
class FullDiskFileSystem : public data::FileSystem {
 public:
  explicit FullDiskFileSystem(long free_bytes) : free_bytes_(free_bytes) {}
  std::unique_ptr<data::ReadableFile> open_read(const std::string& path) override {
    return data::local_file_system().open_read(path);
  }
  std::unique_ptr<data::WritableFile> open_write(const std::string& path) override {
    return std::make_unique<File>(data::local_file_system().open_write(path), free_bytes_);
  }
  std::vector<std::string> glob(const std::string& pattern) override { return data::local_file_system().glob(pattern); }

 private:
  class File : public data::WritableFile {
   public:
    File(std::unique_ptr<data::WritableFile> file, long& free_bytes) : file_(std::move(file)), free_bytes_(free_bytes) {}
    void append(const void* data, size_t bytes) override {
      if ((free_bytes_ -= static_cast<long>(bytes)) < 0) throw_runtime(path(), ": write failed: No space left on device");
      file_->append(data, bytes);
    }
    void close() override { file_->close(); }
    const std::string& path() const override { return file_->path(); }

   private:
    std::unique_ptr<data::WritableFile> file_;
    long& free_bytes_;
  };
  long free_bytes_;
};

TEST_F(MetricsTest, AFullDiskAtTheVersionRecordLeavesNoEventFile) {
  for (long free_bytes : {0L, 1L << 20}) {  // no room; and the control, with room
    SCOPED_TRACE(free_bytes);
    std::filesystem::remove_all(dir_ / "tb");
    FullDiskFileSystem file_system(free_bytes);
    MetricsWriterOptions options = options_with_clock(1764080000.0);
    options.file_system = &file_system;
    const std::filesystem::path path = dir_ / "tb" / "events.out.tfevents.1764080000.testhost";
    if (free_bytes == 0) {
      try {
        MetricsWriter writer(options);
        ADD_FAILURE() << "no error";
      } catch (const Error& error) {
        EXPECT_NE(std::string(error.what()).find(path.string() + ": write failed: No space left on device"),
                  std::string::npos)
            << error.what();
      }
      EXPECT_FALSE(std::filesystem::exists(path));
    } else {
      MetricsWriter writer(options);
      writer.close();
      EXPECT_GT(std::filesystem::file_size(path), 0u);
    }
  }
}

TEST(ProgressLine, MatchesTheDocumentedExample) {
  ProgressLine line;
  line.step = 120;
  line.total_steps = 1000;
  line.loss = 2.31414;
  line.learning_rate = 1.9e-4;
  line.grad_norm = 0.8312;
  line.tokens_per_second = 7312.4;
  line.packing_efficiency = 0.9312;
  line.model_flops_utilization = 0.41;
  line.eta_seconds = 192.0;
  EXPECT_EQ(format_progress_line(line),
            "step 120/1000 | loss 2.3141 | lr 1.9e-04 | grad_norm 0.83 | 7,312 tok/s | packing 93% | MFU 41% | "
            "ETA 3m12s");
}

TEST(ProgressLine, LeavesOutUnknownParts) {
  ProgressLine line;
  line.step = 1;
  line.total_steps = 10;
  line.loss = 10.0;
  line.learning_rate = 0.0;
  line.tokens_per_second = 999.6;
  EXPECT_EQ(format_progress_line(line), "step 1/10 | loss 10.0000 | lr 0.0e+00 | 1,000 tok/s");
}

TEST(ProgressLine, DataParallelAndLossScalingParts) {
  ProgressLine line;
  line.step = 7;
  line.total_steps = 10;
  line.loss = 1.5;
  line.learning_rate = 1e-3;
  line.tokens_per_second = 2000;
  line.communication_hidden = 0.436;
  line.loss_scale = 32768.0;
  line.skipped_steps = 2;
  line.eta_seconds = 3.0;
  EXPECT_EQ(format_progress_line(line),
            "step 7/10 | loss 1.5000 | lr 1.0e-03 | 2,000 tok/s | comm 44% hidden | scale 32768 | skipped 2 | ETA 3s");
}

TEST(ProgressLine, DurationsInHoursMinutesAndSeconds) {
  EXPECT_EQ(format_duration(0.0), "0s");
  EXPECT_EQ(format_duration(0.4), "0s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(192.0), "3m12s");
  EXPECT_EQ(format_duration(3599.0), "59m59s");
  EXPECT_EQ(format_duration(3600.0), "1h00m00s");
  EXPECT_EQ(format_duration(2 * 3600 + 5 * 60 + 9), "2h05m09s");
  EXPECT_EQ(format_duration(250 * 3600.0), "250h00m00s");
  EXPECT_EQ(format_duration(-1.0), "?");
  EXPECT_EQ(format_duration(INFINITY), "?");
  EXPECT_EQ(format_duration(NAN), "?");
}

TEST(ProgressLine, LargeNumbersAreGroupedInThousands) {
  EXPECT_EQ(format_grouped_integer(0.0), "0");
  EXPECT_EQ(format_grouped_integer(999.0), "999");
  EXPECT_EQ(format_grouped_integer(1000.0), "1,000");
  EXPECT_EQ(format_grouped_integer(123456.0), "123,456");
  EXPECT_EQ(format_grouped_integer(1234567.0), "1,234,567");
  EXPECT_EQ(format_grouped_integer(9876543210.0), "9,876,543,210");
  EXPECT_EQ(format_grouped_integer(-1234.0), "-1,234");
  EXPECT_EQ(format_grouped_integer(NAN), "?");
}

}  // namespace
}  // namespace llmft::trainer
