// Ranks as threads of one process (unit tests of everything above the
// communicator, and of the collectives' contract itself). Every collective
// blocks until all ranks of the group have called it, reduces in rank order
// (so every rank gets identical bits) and returns completed Work. Host
// tensors only. A rank that does not arrive within the group's timeout makes
// the waiting ranks throw llmft::Error with parallel::timeout_message, so the
// hang guard is testable in-process.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "parallel/communicator.h"

namespace llmft::parallel {

class InProcessGroup : public std::enable_shared_from_this<InProcessGroup> {
 public:
  static std::shared_ptr<InProcessGroup> create(int size, double timeout_seconds = 600.0);
  // The communicator of `rank` (each rank's thread uses its own).
  std::unique_ptr<Communicator> communicator(int rank);
  int size() const { return size_; }
  double timeout_seconds() const { return timeout_seconds_; }

 private:
  friend class InProcessCommunicator;
  InProcessGroup(int size, double timeout_seconds);

  struct Posted {
    const void* input = nullptr;
    int64_t count = 0;  // elements of `input`
    DType dtype = DType::kF32;
    int color = 0, key = 0;
  };
  // Blocks until every rank has arrived (a reusable generation barrier).
  void arrive_and_wait(int rank, std::string_view what, int64_t step);

  const int size_;
  const double timeout_seconds_;
  std::mutex mutex_;
  std::condition_variable arrived_all_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  std::vector<Posted> posted_;
  // Sub-groups made by split, by (split number, colour).
  std::map<std::pair<int64_t, int>, std::shared_ptr<InProcessGroup>> children_;
};

}  // namespace llmft::parallel
