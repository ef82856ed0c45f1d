// Helpers shared by the data tests: temporary directories, whole-file byte
// access for corrupting files, and a FileSystem that injects short reads and
// read failures (STYLE.md 12).
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "core/error.h"
#include "data/file_system.h"

namespace llmft::data::testing {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "llmft-data-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Serves at most `max_chunk` bytes per read() and throws once `fail_after`
// bytes have been read from a file (for files opened after the first
// `healthy_opens` opens), to prove callers handle short reads and propagate
// I/O errors with the file name. Set the fields before handing it out.
class FaultyFileSystem : public FileSystem {
 public:
  size_t max_chunk = 1;
  uint64_t fail_after = UINT64_MAX;
  int healthy_opens = 0;

  std::unique_ptr<ReadableFile> open_read(const std::string& path) override {
    bool faulty = opens_.fetch_add(1) >= healthy_opens;
    return std::make_unique<FaultyFile>(local_file_system().open_read(path), max_chunk,
                                        faulty ? fail_after : UINT64_MAX);
  }
  std::unique_ptr<WritableFile> open_write(const std::string& path) override {
    return local_file_system().open_write(path);
  }
  std::vector<std::string> glob(const std::string& pattern) override { return local_file_system().glob(pattern); }

 private:
  class FaultyFile : public ReadableFile {
   public:
    FaultyFile(std::unique_ptr<ReadableFile> inner, size_t max_chunk, uint64_t fail_after)
        : inner_(std::move(inner)), max_chunk_(max_chunk), fail_after_(fail_after) {}
    size_t read(void* buffer, size_t bytes) override {
      if (total_ >= fail_after_) throw_runtime(path(), ": injected read failure at byte ", total_);
      size_t got = inner_->read(buffer, std::min(bytes, max_chunk_));
      total_ += got;
      return got;
    }
    void seek(uint64_t offset) override { inner_->seek(offset); }
    uint64_t size() const override { return inner_->size(); }
    const std::string& path() const override { return inner_->path(); }

   private:
    std::unique_ptr<ReadableFile> inner_;
    size_t max_chunk_;
    uint64_t fail_after_;
    uint64_t total_ = 0;
  };
  std::atomic<int> opens_{0};
};

}  // namespace llmft::data::testing
