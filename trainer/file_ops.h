// The file operations a crash-safe checkpoint is made of, behind a small
// interface so a test can make any one of them fail or stall (STYLE.md 12,
// after LevelDB's Env and its fault-injection tests).
//
// Why not data/file_system.h: its FileSystem opens, reads, writes and globs
// files, but the steps that make a checkpoint crash-safe are directory
// operations it does not have (mkdir, fsync of a directory, rename, recursive
// remove, listing), and its WritableFile::close() fuses fsync with close, so
// a test could not fail the fsync alone. This interface is those steps only.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace llmft::trainer {

class CheckpointFile {
 public:
  virtual ~CheckpointFile() = default;
  // Appends all of `bytes`, or throws llmft::Error (kRuntime) naming the file.
  virtual void append(const void* data, size_t bytes) = 0;
  // fsync(2): the bytes are on disk once this returns. Throws on failure.
  virtual void sync() = 0;
  // Closes the descriptor; throws on failure. Idempotent.
  virtual void close() = 0;
};

class FileOps {
 public:
  virtual ~FileOps() = default;
  // Creates (truncating) a file for writing.
  virtual std::unique_ptr<CheckpointFile> create(const std::string& path) = 0;
  // The whole file; throws llmft::Error (kBadInput) naming it when it cannot be
  // read.
  virtual std::string read(const std::string& path) = 0;
  // mkdir(2) of one directory; an existing one is fine.
  virtual void make_directory(const std::string& path) = 0;
  // fsync(2) of a directory, making renames and new entries in it durable.
  virtual void sync_directory(const std::string& path) = 0;
  // rename(2): atomic replacement of `to` (an empty directory or a file).
  virtual void rename(const std::string& from, const std::string& to) = 0;
  // Removes a file or a directory tree; a missing path is fine.
  virtual void remove_all(const std::string& path) = 0;
  // Entry names (not paths) in a directory, sorted; empty when it does not
  // exist.
  virtual std::vector<std::string> list(const std::string& directory) = 0;
  virtual bool exists(const std::string& path) = 0;
};

// POSIX file operations. Stateless: one instance is shared.
FileOps& local_file_ops();

}  // namespace llmft::trainer
