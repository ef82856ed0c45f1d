// The MPI communicator under mpirun (np 2 and 4): the same hand-computed
// expectations as the in-process communicator, the process grid as MPI
// builds it, and host-memory-only errors.
#include <gtest/gtest.h>

#include "collective_expectations.h"
#include "core/error.h"
#include "mpi_test_main.h"
#include "parallel/mpi_communicator.h"

namespace llmft::parallel {
namespace {

using testing_support::mpi_grid;

TEST(MpiCommunicator, LaunchedByMpirun) {
  EXPECT_TRUE(launched_by_mpi_launcher());
  ASSERT_TRUE(mpi_grid()->is_mpi());
  EXPECT_GE(mpi_grid()->world_size(), 2);
  EXPECT_EQ(mpi_grid()->dp_size(), mpi_grid()->world_size());
  EXPECT_EQ(mpi_grid()->tp_size(), 1);
  EXPECT_LT(mpi_grid()->local_rank(), mpi_grid()->local_size());
}

TEST(MpiCommunicator, CollectivesMatchHandComputedResults) {
  testing_support::expect_collectives(mpi_grid()->world());
  testing_support::expect_collectives(mpi_grid()->dp());
}

TEST(MpiCommunicator, SplitGroupsByColourOrderedByKey) { testing_support::expect_split(mpi_grid()->world()); }

TEST(MpiCommunicator, ScalarWrappersAndStrings) {
  Communicator& world = mpi_grid()->world();
  const int rank = world.rank(), size = world.size();
  EXPECT_EQ(world.all_reduce_sum(int64_t{rank + 1}), static_cast<int64_t>(size) * (size + 1) / 2);
  EXPECT_EQ(world.all_reduce_max(int64_t{rank}), size - 1);
  double expected = 0.0;
  for (int r = 0; r < size; ++r) expected += 0.1 * (r + 1);
  EXPECT_EQ(world.all_reduce_sum(0.1 * (rank + 1)), expected);  // rank order, bit for bit
  const std::vector<std::string> every = world.all_gather_strings(std::string(static_cast<size_t>(3 * rank), 'x'));
  ASSERT_EQ(every.size(), static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) EXPECT_EQ(every[static_cast<size_t>(r)].size(), static_cast<size_t>(3 * r));
}

TEST(MpiCommunicator, TensorParallelGridOfTwo) {
  Communicator& world = mpi_grid()->world();
  if (world.size() % 2 != 0) GTEST_SKIP() << "needs an even number of ranks";
  auto grid = ParallelContext::over(world.split(0, world.rank()), /*tp=*/2);
  EXPECT_EQ(grid->tp_rank(), world.rank() % 2);
  EXPECT_EQ(grid->dp_rank(), world.rank() / 2);
  EXPECT_EQ(grid->tp().all_reduce_sum(int64_t{world.rank()}), 4 * (world.rank() / 2) + 1);
  EXPECT_EQ(grid->dp().all_reduce_sum(int64_t{1}), world.size() / 2);
}

TEST(MpiCommunicator, OverlapsWithComputeWhileTheCallerWorks) {
  // A large all-reduce started asynchronously completes while this thread
  // computes, without the caller entering MPI.
  Communicator& world = mpi_grid()->world();
  Tensor big = Tensor::zeros_cpu({1 << 20}, DType::kF32);
  for (int64_t i = 0; i < big.numel(); ++i) big.data<float>()[i] = static_cast<float>(world.rank());
  std::unique_ptr<Work> work = world.all_reduce_async(big, ReduceOp::kSum, "overlap probe");
  volatile double sink = 0.0;
  for (int spin = 0; spin < 200 && !work->completed(); ++spin) {
    for (int k = 0; k < 100000; ++k) sink = sink + 1e-9 * k;
  }
  work->wait();
  const float expected = static_cast<float>(world.size() * (world.size() - 1) / 2);
  EXPECT_EQ(big.data<float>()[0], expected);
  EXPECT_EQ(big.data<float>()[big.numel() - 1], expected);
  EXPECT_GE(work->seconds(), 0.0);
}

TEST(MpiCommunicator, RejectsDeviceTensorsAndMismatchedShapesBeforeCommunicating) {
  Communicator& world = mpi_grid()->world();
  Tensor shard = Tensor::zeros_cpu({3}, DType::kF32);
  Tensor wrong = Tensor::zeros_cpu({3 * world.size() + 1}, DType::kF32);
  EXPECT_THROW(world.all_gather(shard, wrong, "bad gather"), Error);
  Tensor other = Tensor::zeros_cpu({3 * world.size()}, DType::kI64);
  EXPECT_THROW(world.all_gather(shard, other, "bad gather dtype"), Error);
}

}  // namespace
}  // namespace llmft::parallel

int main(int argc, char** argv) { return llmft::parallel::testing_support::run_mpi_tests(argc, argv); }
