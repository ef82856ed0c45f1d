#include "data/file_system.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace llmft::data {
namespace {

class PosixReadableFile : public ReadableFile {
 public:
  PosixReadableFile(std::string path, int fd, uint64_t size) : path_(std::move(path)), fd_(fd), size_(size) {}
  ~PosixReadableFile() override { ::close(fd_); }

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

 private:
  std::string path_;
  int fd_;
  uint64_t size_;
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

}  // namespace

FileSystem& local_file_system() {
  static PosixFileSystem file_system;
  return file_system;
}

}  // namespace llmft::data
