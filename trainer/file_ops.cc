#include "trainer/file_ops.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "core/error.h"

namespace llmft::trainer {
namespace {

std::string errno_text() { return std::strerror(errno); }

class LocalFile : public CheckpointFile {
 public:
  LocalFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~LocalFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  void append(const void* data, size_t bytes) override {
    const char* cursor = static_cast<const char*>(data);
    while (bytes > 0) {
      ssize_t written = ::write(fd_, cursor, bytes);
      if (written < 0) {
        if (errno == EINTR) continue;
        throw_runtime(path_, ": write failed: ", errno_text());
      }
      cursor += written;
      bytes -= static_cast<size_t>(written);
    }
  }
  void sync() override {
    if (::fsync(fd_) != 0) throw_runtime(path_, ": fsync failed: ", errno_text());
  }
  void close() override {
    if (fd_ < 0) return;
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw_runtime(path_, ": close failed: ", errno_text());
  }

 private:
  std::string path_;
  int fd_;
};

class LocalFileOps : public FileOps {
 public:
  std::unique_ptr<CheckpointFile> create(const std::string& path) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw_runtime(path, ": cannot create: ", errno_text());
    return std::make_unique<LocalFile>(path, fd);
  }
  std::string read(const std::string& path) override {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw_bad_input(path, ": cannot open: ", errno_text());
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) throw_bad_input(path, ": read failed");
    return text.str();
  }
  void make_directory(const std::string& path) override {
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST)
      throw_runtime(path, ": cannot create directory: ", errno_text());
  }
  void sync_directory(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw_runtime(path, ": cannot open directory to fsync it: ", errno_text());
    int result = ::fsync(fd);
    int saved = errno;
    ::close(fd);
    errno = saved;
    if (result != 0) throw_runtime(path, ": directory fsync failed: ", errno_text());
  }
  void rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) throw_runtime("cannot rename ", from, " to ", to, ": ", errno_text());
  }
  void remove_all(const std::string& path) override {
    std::error_code error;
    std::filesystem::remove_all(path, error);
    if (error) throw_runtime(path, ": cannot remove: ", error.message());
  }
  std::vector<std::string> list(const std::string& directory) override {
    std::vector<std::string> names;
    std::error_code error;
    std::filesystem::directory_iterator it(directory, error);
    if (error) return names;
    for (const auto& entry : it) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  bool exists(const std::string& path) override {
    struct stat info;
    return ::stat(path.c_str(), &info) == 0;
  }
};

}  // namespace

FileOps& local_file_ops() {
  static LocalFileOps ops;
  return ops;
}

}  // namespace llmft::trainer
