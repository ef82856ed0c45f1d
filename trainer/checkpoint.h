// Crash-safe training checkpoints: RUN_DIR/step-<N>/ holding
//   trainable.safetensors  the trainable weights, by name
//   optimizer.safetensors  the optimizer's fp32 state tensors, by name
//   state.json             step, schedule position, loss scaler, every
//                          data-parallel rank's data-loader state, RNG
//                          positions, model/PEFT fingerprint,
//                          format version and the byte size of each file
//
// Writing (after LevelDB's env_posix.cc: fsync the file, rename, then fsync
// the directory, since fsync(2) of a file does not make its directory entry
// durable): every file goes into
// RUN_DIR/.step-<N>.tmp-<pid>/ and is fsynced; the temp directory is fsynced;
// it is renamed to step-<N> (the single commit point: rename(2) of a directory
// is atomic); RUN_DIR is fsynced. Only then are checkpoints beyond the last K
// removed — each first renamed out of the step-* namespace, so a crash while
// deleting never leaves a half-deleted step-<M> that looks like a checkpoint.
// A kill at any moment leaves either the previous set of checkpoints or the
// previous set plus the complete new one; leftovers (.step-*.tmp-*,
// .step-*.old-*) are ignored by readers and removed by the next writer.
//
// "latest" is resolved by scanning RUN_DIR for step-<N> directories and taking
// the largest N, not by a pointer file: a step-<N> directory exists only once
// it is complete, so the scan cannot disagree with what is on disk, whereas a
// pointer file is a second commit point that a crash between the directory
// rename and the pointer update (or a pruned target) would leave stale.
//
// One writer per RUN_DIR at a time (the trainer's rank 0): stale-directory
// cleanup assumes no other live process is writing there.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "model/safetensors.h"
#include "trainer/file_ops.h"

namespace llmft::trainer {

// Bumped whenever the layout or state.json's fields change incompatibly.
constexpr int kCheckpointFormatVersion = 1;

struct RngPosition {
  uint64_t seed = 0;
  uint64_t position = 0;  // PhiloxGenerator position (core/philox.h)
};

struct CheckpointState {
  int64_t step = 0;                        // optimizer steps completed
  int64_t schedule_position = 0;           // the LR schedule's step counter
  double loss_scale = 1.0;                 // dynamic loss scaler: current scale
  int64_t loss_scale_good_steps = 0;       // steps since the scale last changed
  int64_t loss_scale_hysteresis_tracker = 1;  // overflows still tolerated before backing off (optional
                                             // in state.json; 1 when absent)
  int64_t skipped_steps = 0;               // overflow-skipped steps so far (optional; 0 when absent)
  // Each data-parallel rank's loader position, by dp rank (opaque to the
  // checkpoint: the loader's own encoding). state.json keeps them under
  // "data_loader_ranks", and rank 0's also under "data_loader", the field
  // of one-process checkpoints, which are read as one rank.
  std::vector<std::string> data_loader_states;
  std::map<std::string, RngPosition> rng;  // named random streams (dropout, shuffling, ...)
  // Identifies the model + PEFT configuration the tensors belong to (the
  // caller's hash or canonical text); a reader with a different one refuses.
  std::string fingerprint;
};

class CheckpointWriter {
 public:
  // Checkpoints go into `run_dir` (created if missing); after each write
  // `keep_last` (>= 1) step-* directories remain: the one just written and the
  // newest others. (A run resumed from an older checkpoint should start from
  // a run directory without the abandoned newer ones, or "latest" finds them.)
  CheckpointWriter(std::filesystem::path run_dir, int keep_last, FileOps& ops = local_file_ops());

  // Writes step-<state.step> and returns its path. On failure (an exception
  // from any file operation) the temp directory is removed as far as
  // possible, the previous checkpoints are untouched and the error rethrown.
  // An existing step-<N> of the same N is replaced (resuming from an older
  // checkpoint re-reaches its steps): moved aside, the new one renamed in,
  // the old one removed; a failure in between puts the old one back, but a
  // crash in that window loses both copies of step-<N> (the other
  // checkpoints are untouched), as rename(2) cannot swap directories.
  std::filesystem::path write(const CheckpointState& state, std::span<const NamedTensor> trainable,
                              std::span<const NamedTensor> optimizer);

  // Removes leftovers of interrupted writes (.step-*.tmp-*, .step-*.old-*).
  // write() calls it first; exposed for tests and for start-up.
  void remove_stale();

  const std::filesystem::path& run_dir() const { return run_dir_; }

 private:
  void write_file(const std::string& path, const std::function<void(CheckpointFile&)>& body);
  void prune(int64_t just_written);

  std::filesystem::path run_dir_;
  int keep_last_;
  FileOps& ops_;
};

// step-<N> directories of `run_dir` (complete checkpoints), ascending by N.
std::vector<std::pair<int64_t, std::filesystem::path>> list_checkpoints(const std::filesystem::path& run_dir,
                                                                        FileOps& ops = local_file_ops());
// The newest step-<N> of `run_dir`, or nullopt when there is none.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir,
                                                       FileOps& ops = local_file_ops());

class CheckpointReader {
 public:
  // `where` is a checkpoint directory (step-<N>), or "latest" resolved in
  // `run_dir`. Validates state.json (parses, format version, fields), that
  // every file is present with the recorded size, and that the fingerprint
  // equals `expected_fingerprint`; each failure is one llmft::Error
  // (kBadInput) naming the checkpoint and what differs.
  static CheckpointReader open(const std::string& where, const std::filesystem::path& run_dir,
                               const std::string& expected_fingerprint, FileOps& ops = local_file_ops());

  const std::filesystem::path& directory() const { return directory_; }
  const CheckpointState& state() const { return state_; }

  // Copies the stored tensors into the caller's (any device), which must
  // match them exactly in name set, dtype and shape: no conversion, so a
  // resume is bit-exact. Errors name the file, the tensor and the expected
  // vs found dtype/shape.
  void load_trainable(std::span<const NamedTensor> into) const;
  void load_optimizer(std::span<const NamedTensor> into) const;
  // The fp32 value of each trainable tensor into f32 `into`: its AdamW master
  // ("<name>.master" in optimizer.safetensors) where the run kept one (16-bit
  // compute), else the trainable value itself, which is then f32.
  void load_fp32_weights(std::span<const NamedTensor> into) const;

 private:
  void load(const std::string& file_name, std::span<const NamedTensor> into) const;

  std::filesystem::path directory_;
  CheckpointState state_;
};

}  // namespace llmft::trainer
