// main() for GoogleTest binaries that run under mpirun: MPI is initialised
// once per process (the grid outlives every test), each rank runs every test,
// and the collective timeout is short so that a rank stuck in a failed test
// ends the job instead of hanging it.
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "parallel/parallel_context.h"

namespace llmft::parallel::testing_support {

inline ParallelContext*& mpi_grid() {
  static ParallelContext* grid = nullptr;
  return grid;
}

inline int run_mpi_tests(int argc, char** argv, double timeout_seconds = 120.0) {
  ::testing::InitGoogleTest(&argc, argv);
  std::unique_ptr<ParallelContext> grid = ParallelContext::from_launcher(1, timeout_seconds);
  mpi_grid() = grid.get();
  // Only rank 0's report is printed in full; the others print failures only.
  if (grid->world_rank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    listeners.Release(listeners.default_result_printer());
  }
  const int failed = RUN_ALL_TESTS();
  // Every rank's verdict decides: one rank's failure fails the job.
  const int64_t any_failed = grid->world().all_reduce_max(int64_t{failed != 0}, "test verdict");
  mpi_grid() = nullptr;
  grid.reset();
  return any_failed != 0 ? 1 : 0;
}

}  // namespace llmft::parallel::testing_support
