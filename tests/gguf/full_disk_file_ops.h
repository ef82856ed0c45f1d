// FileOps that forward to the real file operations and fail the n-th append
// as a full disk would (trainer/file_ops.h is the fault-injection seam), for
// the GGUF export tests.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "trainer/file_ops.h"

namespace llmft {

class FullDiskFileOps : public trainer::FileOps {
 public:
  explicit FullDiskFileOps(int failing_append) : failing_append_(failing_append) {}
  std::unique_ptr<trainer::CheckpointFile> create(const std::string& path) override {
    return std::make_unique<File>(trainer::local_file_ops().create(path), path, *this);
  }
  std::string read(const std::string& path) override { return trainer::local_file_ops().read(path); }
  void make_directory(const std::string& path) override { trainer::local_file_ops().make_directory(path); }
  void sync_directory(const std::string& path) override { trainer::local_file_ops().sync_directory(path); }
  void rename(const std::string& from, const std::string& to) override { trainer::local_file_ops().rename(from, to); }
  void remove_all(const std::string& path) override { trainer::local_file_ops().remove_all(path); }
  std::vector<std::string> list(const std::string& directory) override {
    return trainer::local_file_ops().list(directory);
  }
  bool exists(const std::string& path) override { return trainer::local_file_ops().exists(path); }
  int appends = 0;

 private:
  class File : public trainer::CheckpointFile {
   public:
    File(std::unique_ptr<trainer::CheckpointFile> file, std::string path, FullDiskFileOps& owner)
        : file_(std::move(file)), path_(std::move(path)), owner_(owner) {}
    void append(const void* data, size_t bytes) override {
      if (++owner_.appends == owner_.failing_append_) throw_runtime(path_, ": write failed: No space left on device");
      file_->append(data, bytes);
    }
    void sync() override { file_->sync(); }
    void close() override { file_->close(); }

   private:
    std::unique_ptr<trainer::CheckpointFile> file_;
    std::string path_;
    FullDiskFileOps& owner_;
  };
  int failing_append_;
};

}  // namespace llmft
