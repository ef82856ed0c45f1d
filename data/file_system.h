// File access for the data pipeline through a small interface, so tests can
// inject short reads, failing reads/writes and vanishing files (STYLE.md 12,
// after LevelDB's Env). The loader and the TFRecord reader/writer take a
// FileSystem&; production code passes local_file_system().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace llmft::data {

class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  // Reads up to `bytes` bytes at the current position; returns how many were
  // read (fewer only at end of file or on a short read; 0 means end of file).
  // Throws llmft::Error (kRuntime) naming the file on an I/O error.
  virtual size_t read(void* buffer, size_t bytes) = 0;
  // Moves the read position to an absolute byte offset.
  virtual void seek(uint64_t offset) = 0;
  virtual uint64_t size() const = 0;
  virtual const std::string& path() const = 0;
};

class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `bytes`, or throws llmft::Error naming the file.
  virtual void append(const void* data, size_t bytes) = 0;
  // Flushes, fsyncs and closes; throws on failure. Idempotent.
  virtual void close() = 0;
  virtual const std::string& path() const = 0;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  // Throws llmft::Error (kBadInput) naming the path when it cannot be opened.
  virtual std::unique_ptr<ReadableFile> open_read(const std::string& path) = 0;
  virtual std::unique_ptr<WritableFile> open_write(const std::string& path) = 0;
  // Paths matching a shell glob pattern (`*`, `?`, `[...]`), sorted.
  virtual std::vector<std::string> glob(const std::string& pattern) = 0;
};

// The POSIX file system (open/read/pread/glob). Stateless: one instance is shared.
FileSystem& local_file_system();

// Wraps `file` so that a background thread reads the next `chunks` chunks of
// `chunk_bytes` while the caller works on the current ones: reading a file
// from the page cache (a memcpy in the kernel) then overlaps with checking
// and parsing it on another core. Reads return the same bytes as `file`
// would; an error of the thread is rethrown by read() after the bytes before
// it; seek() drains the thread and restarts it lazily at the new offset.
std::unique_ptr<ReadableFile> read_ahead(std::unique_ptr<ReadableFile> file, size_t chunk_bytes = 1 << 20,
                                         size_t chunks = 4);

}  // namespace llmft::data
