// The dataset builder's handling of each JSONL record form and of bad records,
// in a process that also holds libprotobuf (tf.Example) next to sentencepiece.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "data/dataset_builder.h"
#include "data/example.h"
#include "data/file_system.h"
#include "data/tfrecord.h"

namespace llmft::data {
namespace {

namespace fs = std::filesystem;
const fs::path kTestData = fs::path(LLMFT_SOURCE_DIR) / "tests/testdata/tokenizer";

class DatasetBuilder : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmft_dataset_builder_test_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  DatasetBuildOptions options_for(const std::string& jsonl) {
    fs::path input = dir_ / "input.jsonl";
    std::ofstream(input, std::ios::binary) << jsonl;
    DatasetBuildOptions options;
    options.input_path = input.string();
    options.output_prefix = (dir_ / "out/train").string();
    return options;
  }
  std::string error_for(const Tokenizer& tokenizer, const std::string& jsonl) {
    try {
      build_dataset(tokenizer, options_for(jsonl));
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
      return error.what();
    }
    ADD_FAILURE() << "no error for " << jsonl;
    return "";
  }
  std::vector<TokenExample> read_all(const std::string& path) {
    std::vector<TokenExample> records;
    RecordReader reader(path);
    std::string_view bytes;
    while (reader.read(bytes)) records.push_back(decode_example(bytes, {}, {path, 0, 0}));
    return records;
  }

  fs::path dir_;
};

TEST_F(DatasetBuilder, EachBadRecordNamesFileAndLine) {
  auto tokenizer = load_tokenizer(kTestData / "smollm2");
  std::string input = (dir_ / "input.jsonl").string();
  const std::string good = "{\"text\": \"ok\"}\n";
  EXPECT_EQ(error_for(*tokenizer, good + "{\"text\": \"a\", \"id\": 3}\n"),
            input + ":2: unexpected key \"id\" (expected {\"text\"} or {\"prompt\", \"completion\"})");
  EXPECT_EQ(error_for(*tokenizer, good + good + "{\"text\": \"a\", \"prompt\": \"b\", \"completion\": \"c\"}\n"),
            input + ":3: mixes \"text\" with \"prompt\"/\"completion\" (expected {\"text\"} or {\"prompt\", \"completion\"})");
  EXPECT_EQ(error_for(*tokenizer, "{\"completion\": \"c\"}\n"),
            input + ":1: missing \"prompt\" (expected {\"text\"} or {\"prompt\", \"completion\"})");
  EXPECT_EQ(error_for(*tokenizer, "{\"text\": 5}\n"), input + ":1: \"text\": expected a string, found number");
  EXPECT_EQ(error_for(*tokenizer, "[1, 2]\n"), input + ":1: expected a JSON object, found array");
  EXPECT_NE(error_for(*tokenizer, good + "\n{\"text\": \"\xC3\"}\n").find(input + ":3: not valid JSON"),
            std::string::npos);
  // A number beyond a double's range is nlohmann's out_of_range, not a
  // parse_error (fuzz/safetensors_fuzz found it in the safetensors header).
  EXPECT_NE(error_for(*tokenizer, "{\"text\": \"a\", \"x\": 1e999}\n").find(input + ":1: not valid JSON"),
            std::string::npos);
  EXPECT_EQ(error_for(*tokenizer, "{\"text\": \"\"}\n"), input + ":1: no tokens (empty text and no BOS/EOS)");
  EXPECT_EQ(error_for(*tokenizer, "\n\n"), input + ": no records (the file is empty)");
}

TEST_F(DatasetBuilder, RejectsBadOptions) {
  auto tokenizer = load_tokenizer(kTestData / "smollm2");
  DatasetBuildOptions options = options_for("{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n");
  options.val_fraction = 1.0;
  EXPECT_THROW(build_dataset(*tokenizer, options), Error);
  options.val_fraction = 0.0;
  options.seq_len = -1;
  EXPECT_THROW(build_dataset(*tokenizer, options), Error);
}

TEST_F(DatasetBuilder, SentencepieceRecordsGetBosAndCompletionEos) {
  // tiny.model: BOS 1 added (no tokenizer_config.json), EOS 2 after the completion.
  auto tokenizer = load_tokenizer(kTestData / "sp/tiny.model");
  std::vector<int32_t> hello = tokenizer->encode("Hello world."), answer = tokenizer->encode("yes");
  DatasetBuildSummary summary =
      build_dataset(*tokenizer, options_for("{\"text\": \"Hello world.\"}\n{\"prompt\": \"Hello world.\", \"completion\": \"yes\"}\n"));
  ASSERT_EQ(summary.records_written, 2u);
  std::vector<TokenExample> records = read_all(shard_file_name((dir_ / "out/train").string(), 0, 1));
  ASSERT_EQ(records.size(), 2u);
  std::vector<int64_t> text_ids = {1};
  text_ids.insert(text_ids.end(), hello.begin(), hello.end());
  EXPECT_EQ(records[0].input_ids, text_ids);
  EXPECT_EQ(records[0].loss_mask, std::vector<int64_t>(text_ids.size(), 1));
  std::vector<int64_t> chat_ids = text_ids;
  chat_ids.insert(chat_ids.end(), answer.begin(), answer.end());
  chat_ids.push_back(2);
  std::vector<int64_t> chat_mask(text_ids.size(), 0);
  chat_mask.resize(chat_ids.size(), 1);
  EXPECT_EQ(records[1].input_ids, chat_ids);
  EXPECT_EQ(records[1].loss_mask, chat_mask);
}

// The local file system with a disk that fills up: appends succeed until
// `free_bytes` have been written (by all files together), then each one throws
// as a write(2) with ENOSPC does; with `fail_sync`, close() (the fsync) fails
// instead, as on file systems that report a full disk only there.
class FullDiskFileSystem : public FileSystem {
 public:
  FullDiskFileSystem(int64_t free_bytes, bool fail_sync) : free_bytes_(free_bytes), fail_sync_(fail_sync) {}
  std::unique_ptr<ReadableFile> open_read(const std::string& path) override {
    return local_file_system().open_read(path);
  }
  std::unique_ptr<WritableFile> open_write(const std::string& path) override {
    return std::make_unique<File>(*this, local_file_system().open_write(path));
  }
  std::vector<std::string> glob(const std::string& pattern) override { return local_file_system().glob(pattern); }

 private:
  class File : public WritableFile {
   public:
    File(FullDiskFileSystem& owner, std::unique_ptr<WritableFile> file) : owner_(owner), file_(std::move(file)) {}
    void append(const void* data, size_t bytes) override {
      if (!owner_.fail_sync_ && (owner_.free_bytes_ -= static_cast<int64_t>(bytes)) < 0)
        throw_runtime(path(), ": write failed: No space left on device");
      file_->append(data, bytes);
    }
    void close() override {
      if (owner_.fail_sync_) throw_runtime(path(), ": fsync failed: No space left on device");
      file_->close();
    }
    const std::string& path() const override { return file_->path(); }

   private:
    FullDiskFileSystem& owner_;
    std::unique_ptr<WritableFile> file_;
  };
  int64_t free_bytes_;
  bool fail_sync_;
};

std::map<std::string, std::string> directory_contents(const fs::path& directory) {
  std::map<std::string, std::string> contents;
  for (const auto& entry : fs::directory_iterator(directory)) {
    std::ostringstream bytes;
    bytes << std::ifstream(entry.path(), std::ios::binary).rdbuf();
    contents[entry.path().filename().string()] = bytes.str();
  }
  return contents;
}

TEST_F(DatasetBuilder, AFullDiskFailsWithOneLineAndLeavesThePreviousShardsAsTheyWere) {
  auto tokenizer = load_tokenizer(kTestData / "smollm2");
  std::string first, second;
  for (int i = 0; i < 8; ++i) first += "{\"text\": \"first build, record " + std::to_string(i) + "\"}\n";
  for (int i = 0; i < 200; ++i) second += "{\"text\": \"second build, a longer record " + std::to_string(i) + "\"}\n";
  DatasetBuildOptions options = options_for(first);
  options.shards = 2;
  options.val_fraction = 0.25;
  build_dataset(*tokenizer, options);
  const std::map<std::string, std::string> before = directory_contents(dir_ / "out");
  ASSERT_EQ(before.size(), 3u);  // two train shards and the validation file

  // Control: with room to spare, the second build replaces the shards.
  DatasetBuildOptions roomy = options_for(second);
  roomy.shards = 2;
  roomy.val_fraction = 0.25;
  FullDiskFileSystem plenty(1 << 30, /*fail_sync=*/false);
  roomy.file_system = &plenty;
  fs::copy(dir_ / "out", dir_ / "control");
  roomy.output_prefix = (dir_ / "control/train").string();
  build_dataset(*tokenizer, roomy);
  EXPECT_NE(directory_contents(dir_ / "control"), before);

  for (bool fail_sync : {false, true}) {
    for (int64_t free_bytes : {0, 100, 5000}) {
      if (fail_sync && free_bytes > 0) continue;
      SCOPED_TRACE(testing::Message() << (fail_sync ? "fsync fails" : "writes fail after ") << free_bytes);
      FullDiskFileSystem full(free_bytes, fail_sync);
      DatasetBuildOptions failing = options_for(second);
      failing.shards = 2;
      failing.val_fraction = 0.25;
      failing.file_system = &full;
      try {
        build_dataset(*tokenizer, failing);
        ADD_FAILURE() << "no error";
      } catch (const Error& error) {
        const std::string message = error.what();
        EXPECT_EQ(error.kind(), ErrorKind::kRuntime);  // exit code 1, as any I/O failure
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
        EXPECT_NE(message.find(".tfrecord.partial: "), std::string::npos) << message;
        EXPECT_NE(message.find("No space left on device"), std::string::npos) << message;
      }
      EXPECT_EQ(directory_contents(dir_ / "out"), before);  // no .partial file, no shard touched
    }
  }
}

}  // namespace
}  // namespace llmft::data
