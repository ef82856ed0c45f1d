// TFRecord framing: byte-exact against TensorFlow's documented vectors,
// round trips (plain, gzip, zlib), resumable positions, and one test per
// corruption case with its message (bytes of a written file are mutated).
#include "data/tfrecord.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "data/crc32c.h"
#include "tests/data/test_util.h"
#include "tests/test_util.h"

namespace llmft::data {
namespace {

using ::llmft::testing::bad_input_message;

using testing::FaultyFileSystem;
using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;

std::vector<std::string> sample_records() {
  PhiloxGenerator random(3);
  std::vector<std::string> records = {"", "abc", std::string(1, '\0')};
  for (size_t length : {5u, 100u, 4095u, 70000u, 12u, 700000u, 9u}) {
    std::string record(length, '\0');
    for (char& byte : record) byte = static_cast<char>(random.next_u32());
    records.push_back(record);
  }
  return records;
}

void write_records(const std::string& path, const std::vector<std::string>& records, RecordWriterOptions options = {}) {
  RecordWriter writer(path, options);
  for (const auto& record : records) writer.write(record);
  writer.close();
}

std::vector<std::string> read_all(const std::string& path, RecordReaderOptions options = {},
                                  FileSystem& file_system = local_file_system()) {
  RecordReader reader(path, options, file_system);
  std::vector<std::string> records;
  std::string_view record;
  while (reader.read(record)) records.emplace_back(record);
  return records;
}

void set_le64(std::string& bytes, size_t at, uint64_t value) {
  for (int i = 0; i < 8; ++i) bytes[at + i] = static_cast<char>(value >> (8 * i));
}
void set_le32(std::string& bytes, size_t at, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[at + i] = static_cast<char>(value >> (8 * i));
}

// The reader's three ways of getting at an uncompressed file's bytes.
enum class ReadPath { kMemoryMap, kReadAheadChunks, kReadOneThread };

RecordReaderOptions options_for(ReadPath read_path) {
  RecordReaderOptions options;
  options.memory_map = read_path == ReadPath::kMemoryMap;
  options.read_ahead_chunks = read_path == ReadPath::kReadAheadChunks ? 2 : 0;
  options.read_ahead_chunk_bytes = 32;  // small: every record straddles chunks
  return options;
}

std::string read_path_name(const ::testing::TestParamInfo<ReadPath>& info) {
  switch (info.param) {
    case ReadPath::kMemoryMap: return "MemoryMap";
    case ReadPath::kReadAheadChunks: return "ReadAheadChunks";
    case ReadPath::kReadOneThread: return "ReadOneThread";
  }
  return "?";
}

TEST(TfRecord, EmptyAndAbcRecordsMatchTensorFlowBytes) {
  // REFERENCES.md: the empty record and the record "abc" as TensorFlow writes them.
  const std::string expected_empty("\x00\x00\x00\x00\x00\x00\x00\x00\x29\x03\x98\x07\xd8\xea\x82\xa2", 16);
  const std::string expected_abc("\x03\x00\x00\x00\x00\x00\x00\x00\xb0\x99\x49\x0e\x61\x62\x63\x6e\x57\xf1\x21", 19);
  EXPECT_EQ(frame_record(""), expected_empty);
  EXPECT_EQ(frame_record("abc"), expected_abc);
  TempDir dir;
  write_records(dir.file("two.tfrecord"), {"", "abc"});
  EXPECT_EQ(read_bytes(dir.file("two.tfrecord")), expected_empty + expected_abc);
}

TEST(TfRecord, RoundTripsPlainGzipAndZlib) {
  TempDir dir;
  auto records = sample_records();
  for (const char* name : {"plain.tfrecord", "packed.tfrecord.gz", "packed.tfrecord.zlib"}) {
    std::string path = dir.file(name);
    write_records(path, records);
    EXPECT_EQ(read_all(path), records) << name;
    for (ReadPath read_path : {ReadPath::kMemoryMap, ReadPath::kReadAheadChunks, ReadPath::kReadOneThread})
      EXPECT_EQ(read_all(path, options_for(read_path)), records) << name << " path " << static_cast<int>(read_path);
    // A small buffer forces refills in the middle of headers and records.
    RecordReaderOptions small;
    small.buffer_bytes = 64;
    EXPECT_EQ(read_all(path, small), records) << name << " with a 64-byte buffer";
  }
  std::string gz = read_bytes(dir.file("packed.tfrecord.gz"));
  EXPECT_EQ(static_cast<unsigned char>(gz[0]), 0x1f);  // gzip magic
  EXPECT_EQ(static_cast<unsigned char>(gz[1]), 0x8b);
  std::string zl = read_bytes(dir.file("packed.tfrecord.zlib"));
  EXPECT_EQ(static_cast<unsigned char>(zl[0]) & 0x0f, 8);  // zlib header: deflate method
}

TEST(TfRecord, CompressionOptionOverridesExtension) {
  TempDir dir;
  RecordWriterOptions gzip;
  gzip.compression = Compression::kGzip;
  write_records(dir.file("data.bin"), {"hello", "world"}, gzip);
  RecordReaderOptions read_gzip;
  read_gzip.compression = Compression::kGzip;
  EXPECT_EQ(read_all(dir.file("data.bin"), read_gzip), (std::vector<std::string>{"hello", "world"}));
  // Read as plain (the extension says nothing), the gzip bytes are not records.
  std::string message = bad_input_message([&] { read_all(dir.file("data.bin")); });
  EXPECT_NE(message.find("record 0 at byte 0"), std::string::npos) << message;
}

TEST(TfRecord, ShortReadsFromTheFileAreHandled) {
  TempDir dir;
  auto records = sample_records();
  FaultyFileSystem trickle;
  trickle.max_chunk = 7;
  for (const char* name : {"plain.tfrecord", "packed.tfrecord.gz"}) {
    write_records(dir.file(name), records);
    RecordReaderOptions options;
    options.buffer_bytes = 100;
    EXPECT_EQ(read_all(dir.file(name), options, trickle), records) << name;
  }
}

TEST(TfRecord, ReadFailureNamesTheFile) {
  TempDir dir;
  write_records(dir.file("plain.tfrecord"), sample_records());
  FaultyFileSystem failing;
  failing.max_chunk = 1 << 20;
  failing.fail_after = 10;
  try {
    read_all(dir.file("plain.tfrecord"), {}, failing);
    FAIL() << "expected an injected failure";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(error.what()).find("plain.tfrecord: injected read failure"), std::string::npos);
  }
}

TEST(TfRecord, PositionsAllowSeekingBackExactly) {
  TempDir dir;
  auto records = sample_records();
  for (const char* name : {"plain.tfrecord", "packed.tfrecord.gz"}) {
   for (ReadPath read_path : {ReadPath::kMemoryMap, ReadPath::kReadAheadChunks, ReadPath::kReadOneThread}) {
    std::string path = dir.file(name);
    write_records(path, records);
    RecordReaderOptions options = options_for(read_path);
    options.buffer_bytes = 256;
    options.read_ahead_chunk_bytes = 1000;
    RecordReader reader(path, options);
    std::vector<RecordPosition> positions;
    std::string_view record;
    positions.push_back(reader.position());
    while (reader.read(record)) {
      EXPECT_EQ(reader.last_record_position(), positions.back());
      positions.push_back(reader.position());
    }
    ASSERT_EQ(positions.size(), records.size() + 1);
    EXPECT_EQ(positions[1].offset, 16u);  // the empty record is 16 bytes
    EXPECT_EQ(positions[2].offset, 16u + 19u);
    // Seek backwards and forwards to every record and read on from there.
    for (size_t start : {size_t{5}, size_t{1}, size_t{6}, size_t{0}, records.size()}) {
      reader.seek(positions[start]);
      for (size_t i = start; i < records.size(); ++i) {
        ASSERT_TRUE(reader.read(record)) << name << " from record " << start;
        EXPECT_EQ(std::string(record), records[i]);
        EXPECT_EQ(reader.last_record_position().record_index, i);
      }
      EXPECT_FALSE(reader.read(record));
    }
   }
  }
}

TEST(TfRecord, UsesTheReadPathItIsAskedFor) {
  TempDir dir;
  auto records = sample_records();
  write_records(dir.file("plain.tfrecord"), records);
  write_records(dir.file("packed.tfrecord.gz"), records);
  for (ReadPath read_path : {ReadPath::kMemoryMap, ReadPath::kReadAheadChunks, ReadPath::kReadOneThread}) {
    RecordReaderOptions options = options_for(read_path);
    RecordReader plain(dir.file("plain.tfrecord"), options);
    EXPECT_EQ(plain.memory_mapped(), read_path == ReadPath::kMemoryMap);
    EXPECT_EQ(read_all(dir.file("plain.tfrecord"), options), records);
    // Compressed files and files that cannot be mapped (here: wrapped for
    // fault injection) fall back to read().
    RecordReader packed(dir.file("packed.tfrecord.gz"), options);
    EXPECT_FALSE(packed.memory_mapped());
    FaultyFileSystem wrapped;
    wrapped.max_chunk = 1 << 20;
    RecordReader through_wrapper(dir.file("plain.tfrecord"), options, wrapped);
    EXPECT_FALSE(through_wrapper.memory_mapped());
  }
  // An empty file cannot be mapped (mmap rejects length 0) and has no records.
  write_records(dir.file("empty.tfrecord"), {});
  RecordReader empty(dir.file("empty.tfrecord"), options_for(ReadPath::kMemoryMap));
  std::string_view record;
  EXPECT_FALSE(empty.memory_mapped());
  EXPECT_FALSE(empty.read(record));
}

TEST(TfRecord, RecordsStraddlingReadAheadChunksAtEveryPositionReadBack) {
  // Records of 0..40 bytes (framed 16..56): with chunks of every size from 1
  // to 61 bytes, chunk boundaries fall at every byte of headers, data and
  // footers, including records spanning three or more chunks and records
  // ending exactly at a chunk's end. Short reads (FaultyFileSystem) make
  // chunks shorter than asked, at other positions again.
  TempDir dir;
  std::vector<std::string> records;
  for (size_t length = 0; length <= 40; ++length) {
    std::string record(length, '\0');
    for (size_t i = 0; i < length; ++i) record[i] = static_cast<char>('a' + (length * 7 + i) % 26);
    records.push_back(record);
  }
  records.push_back(std::string(3000, 'z'));  // far larger than any chunk
  write_records(dir.file("plain.tfrecord"), records);
  for (size_t chunk_bytes = 1; chunk_bytes <= 61; ++chunk_bytes) {
    RecordReaderOptions options = options_for(ReadPath::kReadAheadChunks);
    options.read_ahead_chunk_bytes = chunk_bytes;
    ASSERT_EQ(read_all(dir.file("plain.tfrecord"), options), records) << "chunks of " << chunk_bytes << " bytes";
    FaultyFileSystem trickle;
    trickle.max_chunk = 13;
    options.read_ahead_chunk_bytes = chunk_bytes * 3;
    ASSERT_EQ(read_all(dir.file("plain.tfrecord"), options, trickle), records)
        << "chunks of at most 13 of " << chunk_bytes * 3 << " bytes";
  }
}

TEST(TfRecord, ReadAheadChunksSeekInsideAStraddlingRecordAndBack) {
  // Positions taken while the window is the straddle buffer or a chunk must
  // both resume exactly, and a read failure of the thread still names the file.
  TempDir dir;
  auto records = sample_records();
  write_records(dir.file("plain.tfrecord"), records);
  for (size_t chunk_bytes : {size_t{61}, size_t{4096}, size_t{1} << 20}) {
    RecordReaderOptions options = options_for(ReadPath::kReadAheadChunks);
    options.read_ahead_chunk_bytes = chunk_bytes;
    RecordReader reader(dir.file("plain.tfrecord"), options);
    std::vector<RecordPosition> positions;
    std::string_view record;
    positions.push_back(reader.position());
    while (reader.read(record)) positions.push_back(reader.position());
    ASSERT_EQ(positions.size(), records.size() + 1);
    for (size_t start = 0; start <= records.size(); ++start) {
      reader.seek(positions[start]);
      for (size_t i = start; i < records.size(); ++i) {
        ASSERT_TRUE(reader.read(record)) << "chunks of " << chunk_bytes << " from record " << start;
        ASSERT_EQ(std::string(record), records[i]);
        // Read one record ahead and come back: a seek inside the window.
        if (i + 1 < records.size() && i == start) {
          RecordPosition next = reader.position();
          ASSERT_TRUE(reader.read(record));
          reader.seek(next);
        }
      }
      EXPECT_FALSE(reader.read(record));
    }
  }
  FaultyFileSystem failing;
  failing.max_chunk = 1 << 20;
  failing.fail_after = 70000;
  RecordReaderOptions options = options_for(ReadPath::kReadAheadChunks);
  options.read_ahead_chunk_bytes = 4096;
  try {
    read_all(dir.file("plain.tfrecord"), options, failing);
    FAIL() << "expected an injected failure";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(error.what()).find("plain.tfrecord: injected read failure"), std::string::npos);
  }
}

TEST(TfRecord, MemoryMappedFileThatShrinksAfterOpeningIsReportedNotACrash) {
  // Reading a mapped page that truncation removed would raise SIGBUS; the
  // reader populates each range before touching it and reports the loss.
  TempDir dir;
  std::string path = dir.file("shrinks.tfrecord");
  write_records(path, {std::string(100000, 'a'), std::string(100000, 'b'), std::string(100000, 'c')});
  RecordReader reader(path, options_for(ReadPath::kMemoryMap));
  ASSERT_TRUE(reader.memory_mapped());
  std::filesystem::resize_file(path, 5000);
  std::string_view record;
  std::string message = bad_input_message([&] { reader.read(record); });
  EXPECT_NE(message.find(path + ": record 0 at byte 0: truncated record (the file shrank after it was opened "
                                "with 300048 bytes"),
            std::string::npos)
      << message;
  // With skipping, the same loss ends the file and counts one corrupt record.
  std::filesystem::resize_file(path, 0);
  write_records(path, {std::string(100000, 'a'), std::string(100000, 'b'), std::string(100000, 'c')});
  RecordReaderOptions skipping = options_for(ReadPath::kMemoryMap);
  skipping.skip_corrupt_records = true;
  RecordReader skipper(path, skipping);
  std::filesystem::resize_file(path, 5000);
  EXPECT_FALSE(skipper.read(record));
  EXPECT_EQ(skipper.corrupt_records_skipped(), 1u);
  EXPECT_TRUE(skipper.stopped_at_corruption());
}

// Three records of 10, 20 and 30 bytes: record 1 starts at byte 26 and
// record 2 at byte 26 + 36 = 62; the file is 62 + 46 = 108 bytes. Each case
// runs on every read path.
class CorruptionTest : public ::testing::TestWithParam<ReadPath> {
 protected:
  void SetUp() override {
    path_ = dir_.file("train-00000-of-00001.tfrecord");
    write_records(path_, {std::string(10, 'a'), std::string(20, 'b'), std::string(30, 'c')});
    original_ = read_bytes(path_);
    ASSERT_EQ(original_.size(), 108u);
  }
  std::string read_error(const std::string& bytes) {
    write_bytes(path_, bytes);
    return bad_input_message([&] { read_all(path_, options_for(GetParam())); });
  }
  // Reads with skip_corrupt_records; returns the records and the count.
  std::vector<std::string> read_skipping(const std::string& bytes, uint64_t& skipped, bool& stopped) {
    write_bytes(path_, bytes);
    RecordReaderOptions options = options_for(GetParam());
    options.skip_corrupt_records = true;
    RecordReader reader(path_, options);
    std::vector<std::string> records;
    std::string_view record;
    while (reader.read(record)) records.emplace_back(record);
    skipped = reader.corrupt_records_skipped();
    stopped = reader.stopped_at_corruption();
    return records;
  }
  void expect_contains(const std::string& message, const std::string& part) {
    EXPECT_NE(message.find(part), std::string::npos) << "message: " << message << "\nexpected part: " << part;
  }

  TempDir dir_;
  std::string path_;
  std::string original_;
};

TEST_P(CorruptionTest, RejectsATruncatedHeader) {
  std::string message = read_error(original_.substr(0, 62 + 5));
  expect_contains(message, path_ + ": record 2 at byte 62: truncated record (header has 5 of 12 bytes)");
}

TEST_P(CorruptionTest, RejectsTruncatedData) {
  std::string message = read_error(original_.substr(0, 62 + 12 + 7));
  expect_contains(message, path_ + ": record 2 at byte 62: truncated record (length 30 but only 7 bytes follow");
}

TEST_P(CorruptionTest, RejectsATruncatedDataCrc) {
  std::string message = read_error(original_.substr(0, 108 - 2));
  expect_contains(message, path_ + ": record 2 at byte 62: truncated record (data CRC has 2 of 4 bytes)");
}

TEST_P(CorruptionTest, RejectsATruncatedGzipStream) {
  std::string gz_path = dir_.file("cut.tfrecord.gz");
  write_records(gz_path, {std::string(1000, 'x'), std::string(1000, 'y')});
  std::string bytes = read_bytes(gz_path);
  write_bytes(gz_path, bytes.substr(0, bytes.size() - 12));
  std::string message = bad_input_message([&] { read_all(gz_path); });
  expect_contains(message, gz_path + ": record ");
  expect_contains(message, "truncated record");
}

TEST_P(CorruptionTest, RejectsCorruptGzipData) {
  std::string gz_path = dir_.file("bad.tfrecord.gz");
  write_records(gz_path, {std::string(1000, 'x')});
  std::string bytes = read_bytes(gz_path);
  for (size_t i = 12; i < bytes.size() - 8; ++i) bytes[i] = static_cast<char>(0xff);
  write_bytes(gz_path, bytes);
  std::string message = bad_input_message([&] { read_all(gz_path); });
  expect_contains(message, gz_path + ": corrupt gzip data near compressed byte");
  RecordReaderOptions skipping;
  skipping.skip_corrupt_records = true;
  RecordReader reader(gz_path, skipping);
  std::string_view record;
  EXPECT_FALSE(reader.read(record));
  EXPECT_EQ(reader.corrupt_records_skipped(), 1u);
  EXPECT_TRUE(reader.stopped_at_corruption());
}

TEST_P(CorruptionTest, RejectsALengthCrcMismatch) {
  std::string bytes = original_;
  uint32_t stored = crc32c::unmask(crc32c::masked_value(bytes.data() + 26, 8));
  bytes[26 + 8] ^= 0x01;  // one bit of record 1's masked length CRC
  uint32_t now_stored = 0;
  for (int i = 0; i < 4; ++i) now_stored |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[26 + 8 + i])) << (8 * i);
  char expected[160];
  std::snprintf(expected, sizeof(expected),
                ": record 1 at byte 26: corrupted record (length CRC mismatch: stored 0x%08x, computed 0x%08x",
                crc32c::unmask(now_stored), stored);
  expect_contains(read_error(bytes), path_ + expected);
}

TEST_P(CorruptionTest, RejectsADataCrcMismatch) {
  std::string bytes = original_;
  bytes[26 + 12 + 3] = 'Z';  // one data byte of record 1
  std::string corrupted_data = bytes.substr(26 + 12, 20);
  char expected[160];
  std::snprintf(expected, sizeof(expected),
                ": record 1 at byte 26: corrupted record (data CRC mismatch: stored 0x%08x, computed 0x%08x)",
                crc32c::value(std::string(20, 'b').data(), 20), crc32c::value(corrupted_data.data(), 20));
  expect_contains(read_error(bytes), path_ + expected);
}

TEST_P(CorruptionTest, RejectsAnAbsurdLengthEvenWithAValidLengthCrc) {
  std::string bytes = original_;
  set_le64(bytes, 26, uint64_t{1} << 40);
  set_le32(bytes, 26 + 8, crc32c::masked_value(bytes.data() + 26, 8));
  expect_contains(read_error(bytes),
                  path_ + ": record 1 at byte 26: corrupted record (length 1099511627776 exceeds the limit of "
                          "1073741824 bytes)");
}

TEST_P(CorruptionTest, RejectsALengthBeyondTheEndOfTheFile) {
  std::string bytes = original_;
  set_le64(bytes, 26, 5000);
  set_le32(bytes, 26 + 8, crc32c::masked_value(bytes.data() + 26, 8));
  expect_contains(read_error(bytes), path_ + ": record 1 at byte 26: truncated record (length 5000 but only 70 bytes "
                                             "follow the header in a file of 108 bytes)");
}

TEST_P(CorruptionTest, SkipsADataCrcMismatchAndCountsIt) {
  std::string bytes = original_;
  bytes[26 + 12] ^= 0x40;
  uint64_t skipped = 0;
  bool stopped = false;
  auto records = read_skipping(bytes, skipped, stopped);
  EXPECT_EQ(records, (std::vector<std::string>{std::string(10, 'a'), std::string(30, 'c')}));
  EXPECT_EQ(skipped, 1u);
  EXPECT_FALSE(stopped);
}

TEST_P(CorruptionTest, StopsTheFileAtACorruptLengthWhenSkipping) {
  std::string bytes = original_;
  bytes[26 + 1] ^= 0x10;  // length of record 1
  uint64_t skipped = 0;
  bool stopped = false;
  auto records = read_skipping(bytes, skipped, stopped);
  EXPECT_EQ(records, (std::vector<std::string>{std::string(10, 'a')}));
  EXPECT_EQ(skipped, 1u);
  EXPECT_TRUE(stopped);
}

TEST_P(CorruptionTest, CountsATruncatedTailWhenSkipping) {
  uint64_t skipped = 0;
  bool stopped = false;
  auto records = read_skipping(original_.substr(0, 100), skipped, stopped);
  EXPECT_EQ(records.size(), 2u);
  EXPECT_EQ(skipped, 1u);
  EXPECT_TRUE(stopped);
}

TEST_P(CorruptionTest, ReadsCorruptDataWhenCrcChecksAreOff) {
  std::string bytes = original_;
  bytes[26 + 12] = 'Q';
  write_bytes(path_, bytes);
  RecordReaderOptions options = options_for(GetParam());
  options.verify_crc = false;
  auto records = read_all(path_, options);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[1][0], 'Q');
}

INSTANTIATE_TEST_SUITE_P(AllReadPaths, CorruptionTest,
                         ::testing::Values(ReadPath::kMemoryMap, ReadPath::kReadAheadChunks,
                                           ReadPath::kReadOneThread),
                         read_path_name);

}  // namespace
}  // namespace llmft::data
