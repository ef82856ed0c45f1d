#include "data/file_system.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.h"

namespace llmft::data {
namespace {

class PosixReadableFile : public ReadableFile {
 public:
  PosixReadableFile(std::string path, int fd, uint64_t size) : path_(std::move(path)), fd_(fd), size_(size) {}
  ~PosixReadableFile() override {
    if (mapping_ != nullptr) ::munmap(mapping_, size_);
    ::close(fd_);
  }

  size_t read(void* buffer, size_t bytes) override {
    size_t done = 0;
    auto* out = static_cast<char*>(buffer);
    while (done < bytes) {
      ssize_t got = ::read(fd_, out + done, bytes - done);
      if (got < 0) {
        if (errno == EINTR) continue;
        throw_runtime(path_, ": read failed: ", std::strerror(errno));
      }
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    return done;
  }

  void seek(uint64_t offset) override {
    if (::lseek(fd_, static_cast<off_t>(offset), SEEK_SET) < 0)
      throw_runtime(path_, ": seek to byte ", offset, " failed: ", std::strerror(errno));
  }
  uint64_t size() const override { return size_; }
  const std::string& path() const override { return path_; }

  const char* map() override {
    if (mapping_ != nullptr || map_failed_) return static_cast<const char*>(mapping_);
    // An empty file has nothing to map (mmap rejects length 0); a file larger
    // than the address space cannot be mapped whole. Both keep read().
    if (size_ == 0 || size_ > SIZE_MAX / 2) {
      map_failed_ = true;
      return nullptr;
    }
    void* mapping = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_SHARED, fd_, 0);
    if (mapping == MAP_FAILED) {
      map_failed_ = true;  // e.g. a pipe or a file system without mmap: read() still works
      return nullptr;
    }
    // Sequential access: aggressive kernel read-ahead for pages not yet cached.
    ::madvise(mapping, static_cast<size_t>(size_), MADV_SEQUENTIAL);
    mapping_ = mapping;
    return static_cast<const char*>(mapping_);
  }

  bool populate(uint64_t offset, size_t bytes) override {
    if (mapping_ == nullptr || offset >= size_) return true;
    bytes = static_cast<size_t>(std::min<uint64_t>(bytes, size_ - offset));
#ifdef MADV_POPULATE_READ
    // madvise wants a page-aligned start.
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t start = offset / page * page;
    char* begin = static_cast<char*>(mapping_) + start;
    const size_t length = static_cast<size_t>(offset + bytes - start);
    while (::madvise(begin, length, MADV_POPULATE_READ) != 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      // EFAULT: some page of the range would raise SIGBUS on access, i.e. the
      // file is now shorter than when it was opened.
      if (errno == EFAULT) return false;
      break;  // EINVAL (kernel before 5.14) or ENOMEM: accesses fault the pages in as usual
    }
#endif
    return true;
  }

 private:
  std::string path_;
  int fd_;
  uint64_t size_;
  void* mapping_ = nullptr;
  bool map_failed_ = false;
};

class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  void append(const void* data, size_t bytes) override {
    LLMFT_CHECK(fd_ >= 0, path_, ": append after close");
    const auto* in = static_cast<const char*>(data);
    while (bytes > 0) {
      ssize_t put = ::write(fd_, in, bytes);
      if (put < 0) {
        if (errno == EINTR) continue;
        throw_runtime(path_, ": write failed: ", std::strerror(errno));
      }
      in += put;
      bytes -= static_cast<size_t>(put);
    }
  }

  void close() override {
    if (fd_ < 0) return;
    int fd = fd_;
    fd_ = -1;
    if (::fsync(fd) != 0) {
      int saved = errno;
      ::close(fd);
      throw_runtime(path_, ": fsync failed: ", std::strerror(saved));
    }
    if (::close(fd) != 0) throw_runtime(path_, ": close failed: ", std::strerror(errno));
  }
  const std::string& path() const override { return path_; }

 private:
  std::string path_;
  int fd_;
};

class PosixFileSystem : public FileSystem {
 public:
  std::unique_ptr<ReadableFile> open_read(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw_bad_input(path, ": cannot open for reading: ", std::strerror(errno));
    struct stat info {};
    if (::fstat(fd, &info) != 0) {
      int saved = errno;
      ::close(fd);
      throw_runtime(path, ": stat failed: ", std::strerror(saved));
    }
    // Sequential access: ask the kernel for aggressive read-ahead.
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return std::make_unique<PosixReadableFile>(path, fd, static_cast<uint64_t>(info.st_size));
  }

  std::unique_ptr<WritableFile> open_write(const std::string& path) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw_bad_input(path, ": cannot open for writing: ", std::strerror(errno));
    return std::make_unique<PosixWritableFile>(path, fd);
  }

  std::vector<std::string> glob(const std::string& pattern) override {
    glob_t matches{};
    int status = ::glob(pattern.c_str(), 0, nullptr, &matches);
    std::vector<std::string> paths;
    if (status == 0) {
      for (size_t i = 0; i < matches.gl_pathc; ++i) paths.emplace_back(matches.gl_pathv[i]);
    }
    ::globfree(&matches);
    if (status != 0 && status != GLOB_NOMATCH) throw_runtime(pattern, ": glob failed (status ", status, ")");
    std::sort(paths.begin(), paths.end());
    return paths;
  }
};

class ReadAheadFile : public ChunkedFile {
 public:
  ReadAheadFile(std::unique_ptr<ReadableFile> inner, size_t chunk_bytes, size_t chunks)
      : inner_(std::move(inner)), chunk_bytes_(std::max<size_t>(chunk_bytes, 1)), depth_(std::max<size_t>(chunks, 1)) {}
  ~ReadAheadFile() override { stop(); }

  size_t read(void* buffer, size_t bytes) override {
    auto* out = static_cast<char*>(buffer);
    size_t done = 0;
    while (done < bytes) {
      if (current_used_ == current_.size) {
        if (at_end_) break;
        next_chunk();
        if (current_.error) {
          std::exception_ptr error = current_.error;
          current_ = Chunk{};
          at_end_ = true;
          if (done > 0) {
            pending_error_ = error;  // deliver the bytes first, the error on the next call
            break;
          }
          std::rethrow_exception(error);
        }
        if (current_.size == 0) {
          at_end_ = true;
          break;
        }
      }
      size_t take = std::min(bytes - done, current_.size - current_used_);
      std::memcpy(out + done, current_.data.get() + current_used_, take);
      current_used_ += take;
      done += take;
    }
    if (done == 0 && pending_error_) {
      std::exception_ptr error = pending_error_;
      pending_error_ = nullptr;
      std::rethrow_exception(error);
    }
    return done;
  }

  std::string_view read_view() override {
    if (pending_error_) {
      std::exception_ptr error = pending_error_;
      pending_error_ = nullptr;
      std::rethrow_exception(error);
    }
    if (current_used_ == current_.size) {
      if (at_end_) return {};
      next_chunk();
      if (current_.error) {
        std::exception_ptr error = current_.error;
        current_ = Chunk{};
        at_end_ = true;
        std::rethrow_exception(error);
      }
      if (current_.size == 0) {
        at_end_ = true;
        return {};
      }
    }
    std::string_view view(current_.data.get() + current_used_, current_.size - current_used_);
    current_used_ = current_.size;
    return view;
  }

  void seek(uint64_t offset) override {
    stop();
    inner_->seek(offset);
    at_end_ = false;
    pending_error_ = nullptr;
  }
  uint64_t size() const override { return inner_->size(); }
  const std::string& path() const override { return inner_->path(); }

 private:
  struct Chunk {
    // Not zero-filled (unlike std::vector): that would cost a pass over
    // every buffer for each file opened.
    std::unique_ptr<char[]> data;
    size_t size = 0;
    std::exception_ptr error;
  };

  void next_chunk() {
    if (!worker_.joinable()) {
      stopping_ = false;
      worker_ = std::thread([this] { run(); });
    }
    // Poll first (see read_ahead()): the thread usually delivers within the
    // time of one chunk's read, far less than a futex sleep and wake-up.
    // Yielding, not pausing: when another process holds the other core, the
    // reading thread may be waiting for this one's core, which a busy spin
    // would hold (no difference was measurable on the bench VM either way).
    if (ready_count_.load(std::memory_order_acquire) == 0) {
      const auto give_up = std::chrono::steady_clock::now() + kSpinBeforeSleep;
      while (ready_count_.load(std::memory_order_acquire) == 0 && std::chrono::steady_clock::now() < give_up)
        std::this_thread::yield();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    if (current_.data) spare_.push_back(std::move(current_.data));
    changed_.wait(lock, [&] { return !ready_.empty(); });
    current_ = std::move(ready_.front());
    ready_.pop_front();
    ready_count_.store(ready_.size(), std::memory_order_release);
    current_used_ = 0;
    lock.unlock();
    changed_.notify_all();
  }

  void run() {
    while (true) {
      Chunk chunk;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!spare_.empty()) {
          chunk.data = std::move(spare_.back());
          spare_.pop_back();
        }
      }
      if (!chunk.data) chunk.data.reset(new char[chunk_bytes_]);
      try {
        chunk.size = inner_->read(chunk.data.get(), chunk_bytes_);
      } catch (...) {
        chunk.error = std::current_exception();
      }
      const bool last = chunk.size == 0 || chunk.error;
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || ready_.size() < depth_; });
      if (stopping_) return;
      ready_.push_back(std::move(chunk));
      ready_count_.store(ready_.size(), std::memory_order_release);
      lock.unlock();
      changed_.notify_all();
      if (last) return;
    }
  }

  // Joins the thread and forgets what it read ahead (the inner file's position is then past it).
  void stop() {
    if (worker_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
      }
      changed_.notify_all();
      worker_.join();
    }
    for (Chunk& chunk : ready_)
      if (chunk.data) spare_.push_back(std::move(chunk.data));
    ready_.clear();
    ready_count_.store(0, std::memory_order_release);
    if (current_.data) spare_.push_back(std::move(current_.data));
    current_ = Chunk{};
    current_used_ = 0;
  }

  std::unique_ptr<ReadableFile> inner_;
  const size_t chunk_bytes_;
  const size_t depth_;
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable changed_;
  // A few times the time to read one 256 KiB chunk from the page cache
  // (~8 µs at 30 GB/s): long enough to catch the next chunk when both cores
  // are free, short enough not to compete with the reading thread for long
  // when they are not.
  static constexpr std::chrono::microseconds kSpinBeforeSleep{25};
  std::deque<Chunk> ready_;             // read ahead, in file order
  std::atomic<size_t> ready_count_{0};  // ready_.size(), readable without the lock
  std::vector<std::unique_ptr<char[]>> spare_;  // buffers of chunk_bytes_ to reuse
  bool stopping_ = false;
  Chunk current_;                        // being handed out by read()
  size_t current_used_ = 0;
  bool at_end_ = false;
  std::exception_ptr pending_error_;
};

}  // namespace

std::unique_ptr<ChunkedFile> read_ahead(std::unique_ptr<ReadableFile> file, size_t chunk_bytes, size_t chunks) {
  return std::make_unique<ReadAheadFile>(std::move(file), chunk_bytes, chunks);
}

FileSystem& local_file_system() {
  static PosixFileSystem file_system;
  return file_system;
}

}  // namespace llmft::data
