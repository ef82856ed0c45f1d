// The process grid (DESIGN.md "Distributed design"): the world, its
// data-parallel and tensor-parallel groups and this process's place on the
// node, built once per process and passed down like Context; nothing reads
// ranks from globals.
//
// Layout (Megatron's): the tp ranks of one model replica are consecutive
// world ranks, so a replica stays on one node's fast links:
//   world rank = dp_rank * tp + tp_rank.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace llmft::parallel {

class ParallelContext {
 public:
  // From the launcher: MPI when the process runs under mpirun/srun, a
  // single process otherwise (no MPI needed). `tp` must divide the world
  // size; `timeout_seconds` is the hang guard's limit for every collective.
  // Throws llmft::Error (kBadInput) when tp does not divide the world.
  static std::unique_ptr<ParallelContext> from_launcher(int64_t tp = 1, double timeout_seconds = 600.0);
  // Size 1, no MPI.
  static std::unique_ptr<ParallelContext> single_process();
  // Over a given world communicator (tests: one in-process rank per thread).
  static std::unique_ptr<ParallelContext> over(std::unique_ptr<Communicator> world, int64_t tp = 1,
                                               int local_rank = 0, int local_size = 1);

  ~ParallelContext();

  Communicator& world() { return *world_; }
  Communicator& dp() { return *dp_; }
  Communicator& tp() { return *tp_; }
  int world_rank() const { return world_->rank(); }
  int world_size() const { return world_->size(); }
  int dp_rank() const { return dp_->rank(); }
  int dp_size() const { return dp_->size(); }
  int tp_rank() const { return tp_->rank(); }
  int tp_size() const { return tp_->size(); }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  bool is_mpi() const { return mpi_runtime_ != nullptr; }
  // "rank 1 of 4 (dp 1/2, tp 0/2) on host h": for messages.
  std::string describe() const;

  // Sets the step every communicator of the grid names in hang messages.
  void set_step(int64_t step);

  // A failed rank ends the whole job (MPI_Abort) so that the others do not
  // wait for it in a collective; returns only without MPI.
  void abort_job(int exit_code);

  // The GPU this rank binds to: local_rank. kBadInput when the node has more
  // ranks than GPUs.
  int cuda_device_for_rank(int visible_devices) const;

 private:
  ParallelContext() = default;
  std::shared_ptr<MpiRuntime> mpi_runtime_;
  std::unique_ptr<Communicator> world_, dp_, tp_;
  int local_rank_ = 0, local_size_ = 1;
};

}  // namespace llmft::parallel
