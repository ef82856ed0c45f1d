// The collectives' contract, checked on the in-process communicator (ranks
// as threads) against values computed by hand from each rank's known input,
// plus the gradient buckets' launch order and the hang guard. The MPI
// implementation runs the same expectations under mpirun
// (mpi_communicator_test.cc, label mpi).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

#include "core/error.h"
#include "collective_expectations.h"
#include "parallel/gradient_buckets.h"
#include "in_process_ranks.h"
#include "parallel/in_process_communicator.h"
#include "parallel/parallel_context.h"

namespace llmft::parallel {
namespace {

using testing_support::on_ranks;

class InProcessCollectives : public ::testing::TestWithParam<int> {};

TEST_P(InProcessCollectives, MatchHandComputedResults) {
  on_ranks(GetParam(), [](Communicator& communicator) { testing_support::expect_collectives(communicator); });
}

TEST_P(InProcessCollectives, SplitGroupsByColourOrderedByKey) {
  on_ranks(GetParam(), [](Communicator& communicator) { testing_support::expect_split(communicator); });
}

INSTANTIATE_TEST_SUITE_P(Sizes, InProcessCollectives, ::testing::Values(1, 2, 3, 4));

TEST(ProcessGrid, PutsConsecutiveRanksInOneTensorParallelGroup) {
  for (int size : {2, 4}) {
    on_ranks(size, [](Communicator& world) {
      const int rank = world.rank();
      auto grid = ParallelContext::over(world.split(0, rank), /*tp=*/2);
      EXPECT_EQ(grid->tp_size(), 2);
      EXPECT_EQ(grid->dp_size(), world.size() / 2);
      EXPECT_EQ(grid->tp_rank(), rank % 2);
      EXPECT_EQ(grid->dp_rank(), rank / 2);
      // The tp group of a replica (world ranks 2k, 2k + 1) sums to 4k + 1.
      EXPECT_EQ(grid->tp().all_reduce_sum(int64_t{rank}), 4 * (rank / 2) + 1);
    });
  }
}

TEST(ProcessGrid, ATensorParallelSizeThatDoesNotDivideTheWorldIsABadInput) {
  on_ranks(3, [](Communicator& world) {
    try {
      ParallelContext::over(world.split(0, world.rank()), /*tp=*/2);
      ADD_FAILURE() << "no error";
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
      EXPECT_NE(std::string(error.what()).find("parallel.tp: 2 does not divide the 3 launched process(es)"),
                std::string::npos);
    }
  });
}

TEST(InProcessCommunicator, ScalarWrappersGiveEveryRankTheSameValue) {
  on_ranks(3, [](Communicator& communicator) {
    const int rank = communicator.rank();
    EXPECT_EQ(communicator.all_reduce_sum(int64_t{rank + 1}), 6);
    EXPECT_EQ(communicator.all_reduce_max(int64_t{10 * rank}), 20);
    // Doubles are summed in rank order: (0.1 + 0.2) + 0.3, bit for bit.
    const double values[] = {0.1, 0.2, 0.3};
    EXPECT_EQ(communicator.all_reduce_sum(values[rank]), (0.1 + 0.2) + 0.3);
    std::vector<float> buffer = {static_cast<float>(rank), 1.0f};
    communicator.all_reduce_sum(std::span<float>(buffer));
    EXPECT_EQ(buffer, (std::vector<float>{3.0f, 3.0f}));
    const std::string mine = std::string(static_cast<size_t>(rank * 5), 'a' + static_cast<char>(rank));
    const std::vector<std::string> every = communicator.all_gather_strings(mine);
    ASSERT_EQ(every.size(), 3u);
    EXPECT_EQ(every[0], "");
    EXPECT_EQ(every[1], "bbbbb");
    EXPECT_EQ(every[2], "cccccccccc");
  });
}

TEST(InProcessCommunicator, MismatchedElementCountsAreAnErrorNamingTheCollective) {
  EXPECT_THROW(on_ranks(2,
                        [](Communicator& communicator) {
                          Tensor tensor = Tensor::zeros_cpu({communicator.rank() + 1}, DType::kF32);
                          communicator.all_reduce(tensor, ReduceOp::kSum, "gradient all-reduce");
                        }),
               Error);
}

// The hang guard: rank 1 skips a collective; rank 0 gives up after the
// timeout with the collective, the step, the rank and the host.
TEST(InProcessCommunicator, ACollectiveOneRankSkipsTimesOutNamingItStepRankAndHost) {
  std::string message;
  const auto start = std::chrono::steady_clock::now();
  try {
    on_ranks(
        2,
        [](Communicator& communicator) {
          communicator.set_step(7);
          if (communicator.rank() == 1) return;  // skips it
          Tensor tensor = Tensor::zeros_cpu({4}, DType::kF32);
          communicator.all_reduce(tensor, ReduceOp::kSum, "data-parallel gradient all-reduce");
        },
        /*timeout_seconds=*/0.5);
  } catch (const Error& error) {
    message = error.what();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 5.0);
  EXPECT_NE(message.find("data-parallel gradient all-reduce did not complete within 0.5 s at step 7 on rank 0 of 2 "
                         "(host "),
            std::string::npos)
      << message;
}

// ---- Gradient buckets ---------------------------------------------------------

TEST(GradientBuckets, LaunchEachBucketOnceItsLastStageCompletesAndSumOverRanks) {
  on_ranks(2, [](Communicator& communicator) {
    auto context = Context::cpu();
    // Four parameters of 4 floats (16 bytes) and stages as a 2-layer model
    // reports them: the head (2), layer 1, layer 0, the embedding (-1).
    std::vector<Parameter> storage(4);
    const int64_t stage_of[] = {-1, 0, 1, 2};
    std::vector<Parameter*> parameters;
    std::vector<int64_t> stages;
    for (size_t i = 0; i < storage.size(); ++i) {
      storage[i].name = "p" + std::to_string(i);
      storage[i].value = Tensor::zeros_cpu({2, 2}, DType::kF32);
      parameters.push_back(&storage[i]);
      stages.push_back(stage_of[i]);
    }
    // 32-byte buckets in completion order: [p3 p2] [p1] [p0]; p0, final only
    // at the end of the backward, gets a bucket of its own.
    GradientBuckets buckets(*context, communicator, parameters, stages, 32);
    ASSERT_EQ(buckets.num_buckets(), 3);
    EXPECT_EQ(buckets.total_bytes(), 64);
    for (size_t i = 0; i < storage.size(); ++i) {
      ASSERT_EQ(storage[i].grad.shape(), (Shape{2, 2}));
      for (int k = 0; k < 4; ++k)
        storage[i].grad.data<float>()[k] = static_cast<float>(100 * communicator.rank() + 10 * i + k);
    }
    buckets.begin_reduction();
    buckets.stage_complete(2);  // only p3 done: no bucket complete
    EXPECT_EQ(buckets.last_stats().buckets, 0);
    buckets.stage_complete(1);  // p3, p2: the first bucket
    EXPECT_EQ(buckets.last_stats().buckets, 1);
    buckets.stage_complete(0);  // p1 too
    EXPECT_EQ(buckets.last_stats().buckets, 2);
    buckets.stage_complete(-1);  // the end: p0, not counted as overlapping
    EXPECT_EQ(buckets.last_stats().buckets, 3);
    const BucketStepStats& stats = buckets.finish();
    EXPECT_EQ(stats.buckets, 3);
    EXPECT_EQ(stats.launched_during_backward, 2);
    EXPECT_EQ(stats.bytes, 64);
    for (size_t i = 0; i < storage.size(); ++i)
      for (int k = 0; k < 4; ++k)
        EXPECT_EQ(storage[i].grad.data<float>()[k], static_cast<float>(100 + 2 * (10 * i + k))) << "p" << i;
  });
}

TEST(GradientBuckets, TheFirstBucketIsCappedLikeDdpsSoCommunicationStartsEarly) {
  auto context = Context::cpu();
  SingleProcessCommunicator communicator;
  // Ten 512 KiB parameters of one stage, 25 MiB buckets: the first bucket
  // stops at 1 MiB (two parameters), the rest share the second.
  std::vector<Parameter> storage(10);
  std::vector<Parameter*> parameters;
  for (Parameter& parameter : storage) {
    parameter.value = Tensor::zeros_cpu({128 * 1024}, DType::kF32);
    parameters.push_back(&parameter);
  }
  GradientBuckets buckets(*context, communicator, parameters, std::vector<int64_t>(10, 0), size_t{25} << 20);
  EXPECT_EQ(buckets.num_buckets(), 2);
}

TEST(GradientBuckets, AParameterLargerThanABucketGetsOneOfItsOwn) {
  auto context = Context::cpu();
  SingleProcessCommunicator communicator;
  std::vector<Parameter> storage(3);
  std::vector<Parameter*> parameters;
  for (size_t i = 0; i < storage.size(); ++i) {
    storage[i].value = Tensor::zeros_cpu({i == 1 ? 100 : 2}, DType::kF32);
    parameters.push_back(&storage[i]);
  }
  GradientBuckets buckets(*context, communicator, parameters, {0, 0, 0}, 64);
  EXPECT_EQ(buckets.num_buckets(), 3);  // [p2] [p1 (400 bytes)] [p0]
}

}  // namespace
}  // namespace llmft::parallel
