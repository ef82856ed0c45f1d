// TFRecord files, byte-compatible with TensorFlow's RecordWriter/RecordReader
// (tensorflow/core/lib/io/record_writer.cc, record_reader.cc). Each record is
//
//   uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
//
// all little-endian. Files may be GZIP- or ZLIB-compressed as a whole stream.
// TensorFlow does not detect compression: a reader there must be told
// (`tf.data.TFRecordDataset(path, compression_type="GZIP")`). Here the option
// kAuto picks it from the extension: `.gz` is GZIP, `.zlib` is ZLIB, anything
// else is uncompressed.
//
// Byte offsets (RecordPosition::offset, error messages) count bytes of the
// uncompressed record stream; for a compressed file they are not file offsets.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/file_system.h"

typedef struct z_stream_s z_stream;

namespace llmft::data {

enum class Compression { kAuto, kNone, kGzip, kZlib };

// kAuto resolved from the file name (see above).
Compression compression_for_path(const std::string& path, Compression requested);
const char* compression_name(Compression compression);

constexpr size_t kRecordHeaderBytes = 12;  // length + masked CRC of the length
constexpr size_t kRecordFooterBytes = 4;   // masked CRC of the data

// Where a record starts: its byte offset in the (uncompressed) stream and its
// index among the records of the file, counting corrupt ones that were skipped.
struct RecordPosition {
  uint64_t offset = 0;
  uint64_t record_index = 0;
  bool operator==(const RecordPosition&) const = default;
};

struct RecordWriterOptions {
  Compression compression = Compression::kAuto;
  int compression_level = 6;  // zlib's default trade-off
  size_t buffer_bytes = 1 << 20;
};

class RecordWriter {
 public:
  RecordWriter(const std::string& path, RecordWriterOptions options = {},
               FileSystem& file_system = local_file_system());
  ~RecordWriter();  // closes without throwing; call close() to see errors
  RecordWriter(const RecordWriter&) = delete;
  RecordWriter& operator=(const RecordWriter&) = delete;

  void write(std::string_view record);
  // Hands every record written so far to the file (write(2); for compressed
  // files a zlib Z_SYNC_FLUSH, so the bytes so far decompress), so a crash of
  // this process loses nothing already written. No fsync: close() does that.
  void flush();
  // Finishes the compressed stream, flushes and fsyncs. Idempotent.
  void close();

  uint64_t records_written() const { return records_written_; }
  uint64_t bytes_written() const { return uncompressed_bytes_; }  // uncompressed stream bytes
  const std::string& path() const { return path_; }

 private:
  void append(const void* data, size_t bytes);
  void deflate_pending(int flush_mode);
  void flush_buffer();

  std::string path_;
  Compression compression_;
  std::unique_ptr<WritableFile> file_;
  std::unique_ptr<z_stream> zstream_;
  std::vector<char> buffer_;       // uncompressed bytes waiting to be written/deflated
  std::vector<char> compressed_;   // deflate output
  size_t buffered_ = 0;
  uint64_t records_written_ = 0;
  uint64_t uncompressed_bytes_ = 0;
  bool closed_ = false;
};

// The bytes of one framed record (header, data, footer), for tests and fuzzers.
std::string frame_record(std::string_view data);

struct RecordReaderOptions {
  Compression compression = Compression::kAuto;
  // Check the masked CRCs of length and data (TensorFlow checks both too).
  bool verify_crc = true;
  // Count and skip corrupt records instead of throwing. A data CRC mismatch
  // skips just that record. A corrupt or absurd length, or a truncated tail,
  // cannot be resynchronised reliably (the next header's position is
  // unknown), so the reader stops reading the file there, counts one corrupt
  // record, and reports end of file. Corrupt gzip/zlib data is handled the
  // same way.
  bool skip_corrupt_records = false;
  // Lengths above this are "absurd" (corrupt), whatever the length CRC says.
  uint64_t max_record_bytes = uint64_t{1} << 30;
  // Parse uncompressed files in place in a read-only memory mapping of the
  // whole file (ReadableFile::map()), on the caller's thread: no copy at all,
  // but each 4 KiB page is mapped and unmapped, which costs more than the
  // copy unless the page cache holds the file in 2 MiB folios (PMD-mapped):
  // 37-42% of raw read() on the bench's files, 83-92% on files written in
  // 8 MiB writes (bench/RESULTS.md, data loader). Files that cannot be mapped
  // (wrapped ones, empty ones) and compressed files use read() below. The
  // mapping is populated kPopulateBytes at a time before the parser touches
  // it; a file that shrinks while being read is reported as a truncated
  // record rather than crashing the process, except for bytes already
  // populated (see ReadableFile::map()).
  bool memory_map = false;
  // The read() path. A background thread reads `read_ahead_chunks` chunks of
  // `read_ahead_chunk_bytes` ahead of the parser (read_ahead() in
  // data/file_system.h), so that reading (the kernel's copy out of the page
  // cache) and CRC checks run on two cores; for uncompressed files the parser
  // works in place in the thread's chunks, copying only records that
  // straddle two chunks. 256 KiB chunks measured 82-92% of raw read() with
  // CRC checks, 1 MiB chunks 62-68% (likely because the CRC then reads lines
  // still held in the other core's L2; bench/RESULTS.md). This needs a free
  // second core: while other work holds it, one thread (0 chunks) is faster.
  // 0 chunks reads on the caller's thread into `buffer_bytes` (records larger
  // than it grow it), also the buffer of decompressed bytes.
  size_t buffer_bytes = 4 << 20;
  size_t read_ahead_chunks = 16;
  size_t read_ahead_chunk_bytes = 256 << 10;
};

class RecordReader {
 public:
  RecordReader(const std::string& path, RecordReaderOptions options = {},
               FileSystem& file_system = local_file_system());
  ~RecordReader();
  RecordReader(const RecordReader&) = delete;
  RecordReader& operator=(const RecordReader&) = delete;

  // Reads the next record. `record` views memory owned by the reader, valid
  // until the next call. Returns false at end of file (or, when skipping,
  // after a corruption that ends the file). Throws llmft::Error (kBadInput)
  // for corrupt data: "<path>: record <i> at byte <offset>: truncated record
  // (...)" or "...: corrupted record (data CRC mismatch: stored 0x..,
  // computed 0x..)".
  bool read(std::string_view& record);

  // True when the file is parsed in place in a memory mapping (see
  // RecordReaderOptions::memory_map).
  bool memory_mapped() const { return mapped_ != nullptr; }

  // Position of the next record read() will return.
  RecordPosition position() const { return {next_offset_, next_record_index_}; }
  // Position of the record most recently returned by read().
  RecordPosition last_record_position() const { return last_position_; }
  // Continues reading at a position previously reported by position() or
  // last_record_position(). Uncompressed files seek directly; compressed ones
  // restart the stream and decompress up to the offset.
  void seek(RecordPosition position);

  uint64_t corrupt_records_skipped() const { return corrupt_records_skipped_; }
  // True when skipping stopped early at an unrecoverable corruption.
  bool stopped_at_corruption() const { return stopped_at_corruption_; }
  const std::string& path() const { return path_; }
  Compression compression() const { return compression_; }

 private:
  // Makes at least `bytes` bytes available at window_begin_ (fewer only at
  // end of stream); returns how many are available.
  size_t fill(size_t bytes);
  bool read_record(std::string_view& record);
  size_t read_source(char* out, size_t bytes);  // raw or inflated bytes
  void restart_stream();
  std::string where(uint64_t offset, uint64_t record_index) const;
  [[noreturn]] void corrupt(const std::string& what, uint64_t offset, uint64_t record_index);

  std::string path_;
  RecordReaderOptions options_;
  Compression compression_;
  FileSystem& file_system_;
  std::unique_ptr<ReadableFile> file_;
  std::unique_ptr<z_stream> zstream_;
  std::vector<char> compressed_;    // input buffer for inflate
  bool source_eof_ = false;
  bool stream_truncated_ = false;   // compressed data ended without its end marker
  uint64_t compressed_consumed_ = 0;  // file bytes fed to inflate (for messages)

  // Bytes made resident per populate() call on a mapped file: in one (noisy)
  // measurement 4 MiB beat 1 and 16 MiB and whole-file MAP_POPULATE, and it
  // bounds the work done ahead of the parser on a cold file.
  static constexpr size_t kPopulateBytes = 4 << 20;
  const char* window_data() const { return window_base_ != nullptr ? window_base_ : buffer_.data(); }
  size_t fill_mapped(size_t bytes);
  size_t fill_from_chunks(size_t bytes);

  const char* mapped_ = nullptr;    // the whole file when memory-mapped, else null
  uint64_t populated_end_ = 0;      // mapped bytes before this offset were populated
  // Uncompressed files with a read-ahead thread: records are parsed in place
  // in the thread's chunks (chunked_->read_view()); only a record that
  // straddles two chunks is assembled in buffer_, and `pending_` holds the
  // rest of the chunk its tail came from.
  ChunkedFile* chunked_ = nullptr;
  std::string_view pending_;

  std::vector<char> buffer_;        // decoded stream bytes (read() path), straddling records (chunks)
  // Unread bytes are window_data()[window_begin_, window_end_): the mapping
  // (whole file, buffer_stream_offset_ stays 0), a read-ahead chunk, or
  // buffer_ when window_base_ is null.
  const char* window_base_ = nullptr;
  size_t window_begin_ = 0;
  size_t window_end_ = 0;
  uint64_t buffer_stream_offset_ = 0;  // stream offset of buffer_[0]

  uint64_t next_offset_ = 0;
  uint64_t next_record_index_ = 0;
  RecordPosition last_position_;
  uint64_t corrupt_records_skipped_ = 0;
  bool stopped_at_corruption_ = false;
};

}  // namespace llmft::data
