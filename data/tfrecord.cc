#include "data/tfrecord.h"

#include <zlib.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "data/crc32c.h"

namespace llmft::data {
namespace {

bool ends_with(const std::string& text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void put_le64(char* out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(value >> (8 * i));
}
void put_le32(char* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(value >> (8 * i));
}
uint64_t get_le64(const char* in) {
  uint64_t value;
  std::memcpy(&value, in, 8);  // little-endian hosts only (x86-64, aarch64)
  return value;
}
uint32_t get_le32(const char* in) {
  uint32_t value;
  std::memcpy(&value, in, 4);
  return value;
}

std::string hex32(uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof(text), "0x%08" PRIx32, value);
  return text;
}

// zlib window bits: 15 (32 KiB window) plus 16 selects the gzip wrapper.
int window_bits(Compression compression) { return compression == Compression::kGzip ? 15 + 16 : 15; }

}  // namespace

Compression compression_for_path(const std::string& path, Compression requested) {
  if (requested != Compression::kAuto) return requested;
  if (ends_with(path, ".gz")) return Compression::kGzip;
  if (ends_with(path, ".zlib")) return Compression::kZlib;
  return Compression::kNone;
}

const char* compression_name(Compression compression) {
  switch (compression) {
    case Compression::kAuto: return "auto";
    case Compression::kNone: return "none";
    case Compression::kGzip: return "gzip";
    case Compression::kZlib: return "zlib";
  }
  return "?";
}

std::string frame_record(std::string_view data) {
  std::string framed(kRecordHeaderBytes + data.size() + kRecordFooterBytes, '\0');
  put_le64(framed.data(), data.size());
  put_le32(framed.data() + 8, crc32c::masked_value(framed.data(), 8));
  std::memcpy(framed.data() + kRecordHeaderBytes, data.data(), data.size());
  put_le32(framed.data() + kRecordHeaderBytes + data.size(), crc32c::masked_value(data.data(), data.size()));
  return framed;
}

// ---------------------------------------------------------------- writer ---

RecordWriter::RecordWriter(const std::string& path, RecordWriterOptions options, FileSystem& file_system)
    : path_(path), compression_(compression_for_path(path, options.compression)) {
  file_ = file_system.open_write(path);
  buffer_.resize(std::max<size_t>(options.buffer_bytes, 4096));
  if (compression_ != Compression::kNone) {
    zstream_ = std::make_unique<z_stream>();
    std::memset(zstream_.get(), 0, sizeof(z_stream));
    if (deflateInit2(zstream_.get(), options.compression_level, Z_DEFLATED, window_bits(compression_), 8,
                     Z_DEFAULT_STRATEGY) != Z_OK)
      throw_bad_input(path_, ": cannot start ", compression_name(compression_), " compression at level ",
                      options.compression_level);
    compressed_.resize(buffer_.size());
  }
}

RecordWriter::~RecordWriter() {
  try {
    close();
  } catch (...) {
    // Destructors must not throw; callers who care about the error call close().
  }
  if (zstream_) deflateEnd(zstream_.get());
}

void RecordWriter::write(std::string_view record) {
  LLMFT_CHECK(!closed_, path_, ": write after close");
  char header[kRecordHeaderBytes];
  put_le64(header, record.size());
  put_le32(header + 8, crc32c::masked_value(header, 8));
  char footer[kRecordFooterBytes];
  put_le32(footer, crc32c::masked_value(record.data(), record.size()));
  append(header, sizeof(header));
  append(record.data(), record.size());
  append(footer, sizeof(footer));
  ++records_written_;
}

void RecordWriter::append(const void* data, size_t bytes) {
  uncompressed_bytes_ += bytes;
  const char* in = static_cast<const char*>(data);
  while (bytes > 0) {
    size_t room = buffer_.size() - buffered_;
    size_t take = std::min(room, bytes);
    std::memcpy(buffer_.data() + buffered_, in, take);
    buffered_ += take;
    in += take;
    bytes -= take;
    if (buffered_ == buffer_.size()) flush_buffer();
  }
}

void RecordWriter::flush_buffer() {
  if (compression_ == Compression::kNone) {
    if (buffered_ > 0) file_->append(buffer_.data(), buffered_);
  } else {
    zstream_->next_in = reinterpret_cast<Bytef*>(buffer_.data());
    zstream_->avail_in = static_cast<uInt>(buffered_);
    deflate_pending(Z_NO_FLUSH);
  }
  buffered_ = 0;
}

void RecordWriter::deflate_pending(int flush_mode) {
  while (true) {
    zstream_->next_out = reinterpret_cast<Bytef*>(compressed_.data());
    zstream_->avail_out = static_cast<uInt>(compressed_.size());
    int status = deflate(zstream_.get(), flush_mode);
    if (status == Z_STREAM_ERROR) throw_runtime(path_, ": ", compression_name(compression_), " deflate failed");
    size_t produced = compressed_.size() - zstream_->avail_out;
    if (produced > 0) file_->append(compressed_.data(), produced);
    if (flush_mode == Z_FINISH ? status == Z_STREAM_END : zstream_->avail_in == 0 && zstream_->avail_out != 0)
      break;
  }
}

void RecordWriter::flush() {
  LLMFT_CHECK(!closed_, path_, ": flush after close");
  flush_buffer();
  if (compression_ != Compression::kNone) deflate_pending(Z_SYNC_FLUSH);
}

void RecordWriter::close() {
  if (closed_) return;
  closed_ = true;
  flush_buffer();
  if (compression_ != Compression::kNone) deflate_pending(Z_FINISH);
  file_->close();
}

// ---------------------------------------------------------------- reader ---

RecordReader::RecordReader(const std::string& path, RecordReaderOptions options, FileSystem& file_system)
    : path_(path),
      options_(options),
      compression_(compression_for_path(path, options.compression)),
      file_system_(file_system) {
  file_ = file_system_.open_read(path_);
  if (compression_ == Compression::kNone && options_.memory_map) mapped_ = file_->map();
  if (mapped_ == nullptr && options_.read_ahead_chunks > 0) {
    std::unique_ptr<ChunkedFile> chunked =
        read_ahead(std::move(file_), options_.read_ahead_chunk_bytes, options_.read_ahead_chunks);
    if (compression_ == Compression::kNone) chunked_ = chunked.get();
    file_ = std::move(chunked);
  }
  // Parsing in place (mapping, chunks) needs buffer_ only for straddling records.
  if (mapped_ == nullptr && chunked_ == nullptr) buffer_.resize(std::max<size_t>(options_.buffer_bytes, 64));
  if (compression_ != Compression::kNone) compressed_.resize(std::max<size_t>(options_.buffer_bytes / 4, 4096));
  restart_stream();
}

RecordReader::~RecordReader() {
  if (zstream_) inflateEnd(zstream_.get());
}

void RecordReader::restart_stream() {
  if (mapped_ != nullptr) {
    // The whole file is the window; nothing is ever read().
    source_eof_ = true;
    window_begin_ = 0;
    window_end_ = static_cast<size_t>(file_->size());
    buffer_stream_offset_ = 0;
    populated_end_ = 0;
    window_base_ = mapped_;
    return;
  }
  file_->seek(0);
  window_base_ = nullptr;
  pending_ = {};
  source_eof_ = false;
  stream_truncated_ = false;
  compressed_consumed_ = 0;
  window_begin_ = window_end_ = 0;
  buffer_stream_offset_ = 0;
  if (compression_ != Compression::kNone) {
    if (zstream_) inflateEnd(zstream_.get());
    zstream_ = std::make_unique<z_stream>();
    std::memset(zstream_.get(), 0, sizeof(z_stream));
    if (inflateInit2(zstream_.get(), window_bits(compression_)) != Z_OK)
      throw_runtime(path_, ": cannot start ", compression_name(compression_), " decompression");
  }
}

size_t RecordReader::read_source(char* out, size_t bytes) {
  if (source_eof_) return 0;
  if (compression_ == Compression::kNone) {
    size_t got = file_->read(out, bytes);
    if (got == 0) source_eof_ = true;
    return got;
  }
  size_t produced = 0;
  while (produced < bytes) {
    if (zstream_->avail_in == 0) {
      size_t got = file_->read(compressed_.data(), compressed_.size());
      if (got == 0) {
        // The compressed stream ended without its trailer: the file was cut.
        source_eof_ = true;
        stream_truncated_ = true;
        return produced;
      }
      zstream_->next_in = reinterpret_cast<Bytef*>(compressed_.data());
      zstream_->avail_in = static_cast<uInt>(got);
    }
    zstream_->next_out = reinterpret_cast<Bytef*>(out + produced);
    zstream_->avail_out = static_cast<uInt>(bytes - produced);
    uInt in_before = zstream_->avail_in;
    int status = inflate(zstream_.get(), Z_NO_FLUSH);
    compressed_consumed_ += in_before - zstream_->avail_in;
    produced = bytes - zstream_->avail_out;
    if (status == Z_STREAM_END) {
      // A gzip file may hold several concatenated members (gzip(1) and
      // TensorFlow's writer both produce one, but `cat a.gz b.gz` is valid).
      if (zstream_->avail_in == 0) {
        size_t got = file_->read(compressed_.data(), compressed_.size());
        if (got == 0) {
          source_eof_ = true;
          return produced;
        }
        zstream_->next_in = reinterpret_cast<Bytef*>(compressed_.data());
        zstream_->avail_in = static_cast<uInt>(got);
      }
      inflateReset(zstream_.get());
      continue;
    }
    if (status != Z_OK && status != Z_BUF_ERROR)
      throw_bad_input(path_, ": corrupt ", compression_name(compression_), " data near compressed byte ",
                      compressed_consumed_, ": ", zstream_->msg ? zstream_->msg : "inflate failed");
  }
  return produced;
}

size_t RecordReader::fill_mapped(size_t bytes) {
  const size_t available = window_end_ - window_begin_;
  // Populate before touching: a page the file no longer backs would raise
  // SIGBUS. Only read_record() calls fill() on a mapped file, so the record
  // being parsed is next_offset_ / next_record_index_.
  const uint64_t needed_end = window_begin_ + std::min(bytes, available);
  if (needed_end > populated_end_) {
    const uint64_t from = std::max<uint64_t>(populated_end_, window_begin_);
    const uint64_t to = std::min<uint64_t>(std::max<uint64_t>(needed_end, from + kPopulateBytes), window_end_);
    if (!file_->populate(from, static_cast<size_t>(to - from)))
      corrupt(str_cat("truncated record (the file shrank after it was opened with ", window_end_, " bytes: bytes ",
                      from, " to ", to, " are gone)"),
              next_offset_, next_record_index_);
    populated_end_ = to;
  }
  return available;
}

size_t RecordReader::fill_from_chunks(size_t bytes) {
  size_t available = window_end_ - window_begin_;
  if (available >= bytes) return available;
  if (available == 0) {
    // Nothing left in the window: work in place in the next chunk (the rest
    // of the one a straddling record's tail came from, or a fresh one).
    std::string_view chunk = pending_;
    pending_ = {};
    if (chunk.empty()) chunk = chunked_->read_view();
    buffer_stream_offset_ += window_end_;
    window_base_ = chunk.data();
    window_begin_ = 0;
    window_end_ = chunk.size();
    if (window_end_ >= bytes || chunk.empty()) return window_end_;
    available = window_end_;
  }
  // The record straddles chunks: assemble exactly its `bytes` in buffer_, so
  // that once it is consumed the window returns to the chunk in pending_.
  if (window_base_ != nullptr) {
    if (buffer_.size() < bytes) buffer_.resize(std::max(bytes, buffer_.size() * 2));
    std::memcpy(buffer_.data(), window_base_ + window_begin_, available);
    window_base_ = nullptr;
  } else {
    std::memmove(buffer_.data(), buffer_.data() + window_begin_, available);
    if (buffer_.size() < bytes) buffer_.resize(std::max(bytes, buffer_.size() * 2));
  }
  buffer_stream_offset_ += window_begin_;
  window_begin_ = 0;
  window_end_ = available;
  while (window_end_ < bytes) {
    if (pending_.empty()) pending_ = chunked_->read_view();
    if (pending_.empty()) break;  // end of file
    const size_t take = std::min(bytes - window_end_, pending_.size());
    std::memcpy(buffer_.data() + window_end_, pending_.data(), take);
    pending_.remove_prefix(take);
    window_end_ += take;
  }
  return window_end_;
}

size_t RecordReader::fill(size_t bytes) {
  if (mapped_ != nullptr) return fill_mapped(bytes);
  if (chunked_ != nullptr) return fill_from_chunks(bytes);
  size_t available = window_end_ - window_begin_;
  if (available >= bytes || source_eof_) return available;
  if (window_begin_ > 0) {
    std::memmove(buffer_.data(), buffer_.data() + window_begin_, available);
    buffer_stream_offset_ += window_begin_;
    window_begin_ = 0;
    window_end_ = available;
  }
  if (buffer_.size() < bytes) buffer_.resize(std::max(bytes, buffer_.size() * 2));
  // Read as much as fits: large reads keep the per-call cost negligible.
  while (window_end_ < bytes && !source_eof_) {
    size_t got = read_source(buffer_.data() + window_end_, buffer_.size() - window_end_);
    window_end_ += got;
  }
  return window_end_ - window_begin_;
}

std::string RecordReader::where(uint64_t offset, uint64_t record_index) const {
  if (compression_ == Compression::kNone) return str_cat(path_, ": record ", record_index, " at byte ", offset);
  return str_cat(path_, ": record ", record_index, " at byte ", offset, " of the ", compression_name(compression_),
                 "-decompressed stream");
}

void RecordReader::corrupt(const std::string& what, uint64_t offset, uint64_t record_index) {
  throw_bad_input(where(offset, record_index), ": ", what);
}

bool RecordReader::read(std::string_view& record) {
  if (!options_.skip_corrupt_records) return read_record(record);
  try {
    return read_record(record);
  } catch (const Error& error) {
    // Corrupt compressed data: like a corrupt length, nothing after it can be trusted.
    if (error.kind() != ErrorKind::kBadInput) throw;
    ++corrupt_records_skipped_;
    stopped_at_corruption_ = true;
    return false;
  }
}

bool RecordReader::read_record(std::string_view& record) {
  while (true) {
    if (stopped_at_corruption_) return false;
    const uint64_t offset = next_offset_;
    const uint64_t index = next_record_index_;
    // Unrecoverable corruption: with skipping on, count it and end the file.
    auto give_up = [&](const std::string& what) {
      if (!options_.skip_corrupt_records) corrupt(what, offset, index);
      ++corrupt_records_skipped_;
      stopped_at_corruption_ = true;
    };

    size_t available = fill(kRecordHeaderBytes);
    if (available == 0) {
      if (stream_truncated_)
        give_up(str_cat("truncated record (the ", compression_name(compression_), " stream ends after ",
                        compressed_consumed_, " compressed bytes without its end marker)"));
      return false;
    }
    if (available < kRecordHeaderBytes) {
      give_up(str_cat("truncated record (header has ", available, " of ", kRecordHeaderBytes, " bytes)"));
      return false;
    }
    const char* header = window_data() + window_begin_;
    const uint64_t length = get_le64(header);
    if (options_.verify_crc) {
      uint32_t stored = crc32c::unmask(get_le32(header + 8));
      uint32_t computed = crc32c::value(header, 8);
      if (stored != computed) {
        give_up(str_cat("corrupted record (length CRC mismatch: stored ", hex32(stored), ", computed ",
                        hex32(computed), "; length field reads ", length, ")"));
        return false;
      }
    }
    if (length > options_.max_record_bytes) {
      give_up(str_cat("corrupted record (length ", length, " exceeds the limit of ", options_.max_record_bytes,
                      " bytes)"));
      return false;
    }
    if (compression_ == Compression::kNone) {
      // Bound by the file size before allocating for the record.
      uint64_t remaining = file_->size() - std::min(file_->size(), offset + kRecordHeaderBytes);
      if (length > remaining) {
        give_up(str_cat("truncated record (length ", length, " but only ", remaining,
                        " bytes follow the header in a file of ", file_->size(), " bytes)"));
        return false;
      }
    }
    const size_t framed = kRecordHeaderBytes + static_cast<size_t>(length) + kRecordFooterBytes;
    available = fill(framed);
    if (available < kRecordHeaderBytes + length) {
      give_up(str_cat("truncated record (data has ", available - kRecordHeaderBytes, " of ", length, " bytes)"));
      return false;
    }
    if (available < framed) {
      give_up(str_cat("truncated record (data CRC has ", available - kRecordHeaderBytes - length, " of ",
                      kRecordFooterBytes, " bytes)"));
      return false;
    }
    const char* data = window_data() + window_begin_ + kRecordHeaderBytes;
    window_begin_ += framed;
    next_offset_ += framed;
    ++next_record_index_;
    if (options_.verify_crc) {
      uint32_t stored = crc32c::unmask(get_le32(data + length));
      uint32_t computed = crc32c::value(data, length);
      if (stored != computed) {
        std::string what = str_cat("corrupted record (data CRC mismatch: stored ", hex32(stored), ", computed ",
                                   hex32(computed), ")");
        if (!options_.skip_corrupt_records) corrupt(what, offset, index);
        // The length was intact, so the next record starts right after this one.
        ++corrupt_records_skipped_;
        continue;
      }
    }
    last_position_ = {offset, index};
    record = std::string_view(data, length);
    return true;
  }
}

void RecordReader::seek(RecordPosition position) {
  stopped_at_corruption_ = false;
  const uint64_t window_start = buffer_stream_offset_ + window_begin_;
  const uint64_t window_stop = buffer_stream_offset_ + window_end_;
  if (position.offset >= buffer_stream_offset_ && position.offset <= window_stop) {
    // Already buffered (the common case when a loader resumes nearby).
    window_begin_ = static_cast<size_t>(position.offset - buffer_stream_offset_);
  } else if (mapped_ != nullptr) {
    window_begin_ = window_end_;  // past the end of the file: read() reports end of file
  } else if (compression_ == Compression::kNone) {
    file_->seek(position.offset);
    source_eof_ = false;
    window_base_ = nullptr;
    pending_ = {};
    window_begin_ = window_end_ = 0;
    buffer_stream_offset_ = position.offset;
  } else {
    // A compressed stream only reads forward: restart if the target is behind.
    if (position.offset < window_start) restart_stream();
    while (buffer_stream_offset_ + window_end_ < position.offset) {
      window_begin_ = window_end_;  // drop everything buffered
      size_t available = fill(buffer_.size());
      if (available == 0)
        throw_bad_input(where(position.offset, position.record_index),
                        ": cannot seek there: the stream ends at byte ", buffer_stream_offset_ + window_end_);
    }
    window_begin_ = static_cast<size_t>(position.offset - buffer_stream_offset_);
  }
  next_offset_ = position.offset;
  next_record_index_ = position.record_index;
}

}  // namespace llmft::data
