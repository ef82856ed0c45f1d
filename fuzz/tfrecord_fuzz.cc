// libFuzzer target for the TFRecord reader and the tf.Example decoder: any
// byte string, read as a TFRecord file (plain or gzip, CRC checks on and
// off, failing or skipping on corruption) and as an Example, must either
// decode or raise llmft::Error, never crash, hang or leak (ASan).
// Built and run by fuzz/run_fuzz.sh (ctest data.tfrecord_fuzz).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "core/error.h"
#include "data/example.h"
#include "data/file_system.h"
#include "data/tfrecord.h"

namespace {

using namespace llmft::data;

// One in-memory file: the fuzz input.
class MemoryFileSystem : public FileSystem {
 public:
  explicit MemoryFileSystem(std::string contents) : contents_(std::move(contents)) {}
  std::unique_ptr<ReadableFile> open_read(const std::string& path) override {
    return std::make_unique<MemoryFile>(path, contents_);
  }
  std::unique_ptr<WritableFile> open_write(const std::string& path) override {
    llmft::throw_runtime(path, ": the fuzzer's file system is read-only");
  }
  std::vector<std::string> glob(const std::string&) override { return {}; }

 private:
  class MemoryFile : public ReadableFile {
   public:
    MemoryFile(std::string path, const std::string& contents) : path_(std::move(path)), contents_(contents) {}
    size_t read(void* buffer, size_t bytes) override {
      // Short reads on purpose: at most 4 KiB at a time.
      size_t take = std::min({bytes, contents_.size() - position_, size_t{4096}});
      std::memcpy(buffer, contents_.data() + position_, take);
      position_ += take;
      return take;
    }
    void seek(uint64_t offset) override { position_ = std::min<uint64_t>(offset, contents_.size()); }
    uint64_t size() const override { return contents_.size(); }
    const std::string& path() const override { return path_; }

   private:
    std::string path_;
    const std::string& contents_;
    size_t position_ = 0;
  };
  std::string contents_;
};

void read_all(MemoryFileSystem& file_system, const std::string& path, const RecordReaderOptions& options) {
  DecodeOptions decode;
  decode.vocab_size = 50000;
  try {
    RecordReader reader(path, options, file_system);
    std::string_view record;
    RecordPosition second{};
    int count = 0;
    while (reader.read(record)) {
      if (count++ == 1) second = reader.last_record_position();
      try {
        decode_example(record, decode, {path, reader.last_record_position().record_index, 0});
      } catch (const llmft::Error&) {
      }
    }
    if (count > 1) {
      // Seeking back to a reported position must reproduce the same record.
      reader.seek(second);
      if (!reader.read(record) || reader.last_record_position() != second) __builtin_trap();
    }
  } catch (const llmft::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  MemoryFileSystem file_system(bytes);
  RecordReaderOptions options;
  options.max_record_bytes = 1 << 20;  // keep gzip bombs within the fuzzer's memory limit
  options.buffer_bytes = 256;
  for (bool verify_crc : {true, false})
    for (bool skip : {false, true}) {
      options.verify_crc = verify_crc;
      options.skip_corrupt_records = skip;
      // The read-ahead thread in one configuration only: a thread per input is slow.
      options.read_ahead_chunks = verify_crc && !skip ? 2 : 0;
      read_all(file_system, "input.tfrecord", options);
    }
  if (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) read_all(file_system, "input.tfrecord.gz", options);
  try {
    decode_example(bytes, {}, {"input", 0, 0});
  } catch (const llmft::Error&) {
  }
  return 0;
}
