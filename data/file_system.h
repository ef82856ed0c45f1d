// File access for the data pipeline through a small interface, so tests can
// inject short reads, failing reads/writes and vanishing files (STYLE.md 12,
// after LevelDB's Env). The loader and the TFRecord reader/writer take a
// FileSystem&; production code passes local_file_system().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
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

  // The whole file (its size() bytes at open) as read-only memory, so that a
  // reader can check and parse records in place with no copy at all; nullptr
  // when this file cannot be mapped, which is the default: wrappers (fault
  // injection, read_ahead(), in-memory files) serve read() only. Valid while
  // the file object lives; read()/seek() are unaffected by it.
  //
  // Why: from the page cache, read() is a kernel memcpy (DRAM -> user buffer)
  // that the CRC pass then reads again; on a mapping the CRC reads the page
  // cache itself, once. It pays instead per page mapped, so it only wins
  // where the page cache holds 2 MiB folios (bench/RESULTS.md, data loader).
  //
  // Touching a mapped page that a concurrent truncation removed raises
  // SIGBUS, so callers populate() a range before reading it, which reports
  // that case instead. Like LevelDB's mmap reads (util/env_posix.cc), the
  // mapping assumes files are not rewritten while being read: the check
  // narrows that window to the time between populate() and the access, but
  // cannot close it.
  virtual const char* map() { return nullptr; }
  // Makes the mapped bytes [offset, offset + bytes) resident: page tables
  // filled in one call instead of one fault per few pages. Returns false when
  // part of the range is no longer backed by the file (it shrank after it was
  // opened), where reading would raise SIGBUS. Only meaningful after map()
  // returned non-null; the default does nothing.
  virtual bool populate(uint64_t offset, size_t bytes) {
    (void)offset;
    (void)bytes;
    return true;
  }
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

// A file read in chunks that it can hand out without copying them.
class ChunkedFile : public ReadableFile {
 public:
  // The next bytes at the current position (the rest of the current chunk),
  // as a view of memory the file owns: valid until the next call of any
  // method of this file. Empty at end of file. Errors as read().
  virtual std::string_view read_view() = 0;
};

// Wraps `file` so that a background thread reads the next `chunks` chunks of
// `chunk_bytes` while the caller works on the current ones: reading a file
// from the page cache (a memcpy in the kernel) then overlaps with checking
// and parsing it on another core. read() returns the same bytes as `file`
// would (copied out of the chunks); read_view() hands the chunks themselves
// over, so a parser can work in them with no second copy. An error of the
// thread is rethrown after the bytes before it; seek() drains the thread and
// restarts it lazily at the new offset. Waiting for a chunk polls (yielding
// the core) briefly before it sleeps: waking a sleeping thread costs tens of
// microseconds on a VM, the time it takes to read a whole chunk from the
// page cache.
std::unique_ptr<ChunkedFile> read_ahead(std::unique_ptr<ReadableFile> file, size_t chunk_bytes = 256 << 10,
                                        size_t chunks = 16);

}  // namespace llmft::data
