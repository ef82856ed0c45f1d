// The NCCL communicator on device tensors: every collective (all_reduce sum
// and max, reduce_scatter, all_gather, broadcast, barrier, split) in f32,
// bf16 and i64 against the same collective computed on the host, from known
// per-rank inputs (rank r holds r + 1 + 0.5 i; i64 values above 2^40 so that
// a 32-bit path would show), and against the host (MPI) communicator running
// it too. Also the CUDA caching allocator's stream-aware reuse, which makes
// freeing a tensor while NCCL still uses it safe.
//
// Runs as one process without MPI (ctest -L gpu), and under
// `mpirun -np 2` as users launch it (tests/gpu/CMakeLists.txt). Without the
// CUDA backend, a GPU, or one GPU per rank, every test skips and says why.
#include <gtest/gtest.h>

#if LLMFT_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "core/context.h"
#include "core/error.h"
#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "tests/gpu/gpu_test_util.h"

namespace llmft {
// Test names and failures print "bf16", not the enum's byte (found by ADL).
static void PrintTo(DType dtype, std::ostream* out) { *out << dtype_name(dtype); }
}  // namespace llmft

namespace llmft::parallel {
namespace {

// Short, so that a rank stuck by a failing test ends the job soon.
constexpr double kTimeoutSeconds = 120.0;

// The process's world (MPI under mpirun, one process otherwise) and, once a
// test needs them, a CUDA context on this rank's GPU and an NCCL
// communicator over the world. Torn down after the last test: NCCL before
// MPI finalizes.
class WorldEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (launched_by_mpi_launcher()) {
      MpiWorld mpi = start_mpi(kTimeoutSeconds);
      mpi_runtime_ = std::move(mpi.runtime);
      world_ = std::move(mpi.world);
      local_rank_ = mpi.local_rank;
      local_size_ = mpi.local_size;
    } else {
      world_ = std::make_unique<SingleProcessCommunicator>();
    }
  }
  void TearDown() override {
    nccl_.reset();
    context_.reset();
    world_.reset();
    mpi_runtime_.reset();
  }

  Communicator& world() { return *world_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }

  Context& context() {
    if (!context_) context_ = Context::cuda(local_rank_);
    return *context_;
  }
  Communicator& nccl() {
    if (!nccl_) {
      nccl_ = make_nccl_communicator(*world_, context(), kTimeoutSeconds, [this](int exit_code) {
        if (mpi_runtime_) abort_mpi_job(mpi_runtime_, exit_code);
      });
    }
    return *nccl_;
  }

 private:
  std::shared_ptr<MpiRuntime> mpi_runtime_;
  std::unique_ptr<Communicator> world_;
  int local_rank_ = 0, local_size_ = 1;
  std::unique_ptr<Context> context_;
  std::unique_ptr<Communicator> nccl_;
};

WorldEnvironment* const world_environment =
    static_cast<WorldEnvironment*>(::testing::AddGlobalTestEnvironment(new WorldEnvironment));

// Skips unless every rank of the node has a GPU of its own (NCCL refuses two
// ranks on one GPU). The answer is reduced over the world so that every rank
// skips together: one rank going on alone would wait for the others forever.
#define SKIP_WITHOUT_A_GPU_PER_RANK()                                                                    \
  do {                                                                                                   \
    SKIP_WITHOUT_CUDA();                                                                                 \
    const int64_t short_of_gpus = world_environment->world().all_reduce_max(                             \
        int64_t{world_environment->local_size() > ::llmft::cuda_device_count()}, "GPU count check");    \
    if (short_of_gpus != 0)                                                                              \
      GTEST_SKIP() << "no CUDA device for every rank: " << world_environment->local_size()               \
                   << " ranks on this node, " << ::llmft::cuda_device_count()                            \
                   << " GPU(s) visible (NCCL needs one GPU per rank)";                                   \
  } while (0)

// Rank r's element i (the collective contract's "known per-rank inputs").
double input_value(int rank, int64_t i, DType dtype) {
  if (dtype == DType::kI64) return static_cast<double>((int64_t{1} << 40) * (rank + 1) + 3 * i);
  return rank + 1 + 0.5 * static_cast<double>(i);
}

// Exact values (as the tests' inputs are) as a host tensor of `dtype`.
Tensor host_tensor(const std::vector<double>& values, DType dtype) {
  const auto count = static_cast<int64_t>(values.size());
  if (dtype == DType::kI64) {
    Tensor tensor = Tensor::empty_cpu({count}, DType::kI64);
    for (int64_t i = 0; i < count; ++i)
      tensor.data<int64_t>()[i] = static_cast<int64_t>(values[static_cast<size_t>(i)]);
    return tensor;
  }
  const std::vector<float> floats(values.begin(), values.end());
  return Tensor::from_floats({count}, floats, dtype);
}

// Rank `rank`'s elements [offset, offset + count) as a host tensor.
Tensor host_input(int rank, int64_t offset, int64_t count, DType dtype) {
  std::vector<double> values;
  for (int64_t i = 0; i < count; ++i) values.push_back(input_value(rank, offset + i, dtype));
  return host_tensor(values, dtype);
}

// Exact host values (i64 below 2^53 and these floats are exact in double).
std::vector<double> read_back(const Tensor& tensor) {
  const Tensor host = tensor.device().is_cpu() ? tensor : tensor.to(default_host_allocator());
  std::vector<double> values;
  if (host.dtype() == DType::kI64) {
    for (int64_t i = 0; i < host.numel(); ++i) values.push_back(static_cast<double>(host.data<int64_t>()[i]));
  } else {
    for (float value : host.to_floats()) values.push_back(value);
  }
  return values;
}

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_A_GPU_PER_RANK(); }
  Communicator& nccl() { return world_environment->nccl(); }
  Communicator& host() { return world_environment->world(); }
  Context& context() { return world_environment->context(); }
  int rank() { return nccl().rank(); }
  int size() { return nccl().size(); }
};

class NcclCollectiveTest : public NcclTest, public ::testing::WithParamInterface<DType> {};

TEST_P(NcclCollectiveTest, AllReduceSumEqualsTheHostSum) {
  const DType dtype = GetParam();
  const int64_t count = 4 * size() + 3;
  Tensor device = context().upload(host_input(rank(), 0, count, dtype));
  nccl().all_reduce(device, ReduceOp::kSum, "test all_reduce sum");
  Tensor on_host = host_input(rank(), 0, count, dtype);
  host().all_reduce(on_host, ReduceOp::kSum, "test all_reduce sum (host)");

  std::vector<double> expected(static_cast<size_t>(count), 0.0);
  for (int r = 0; r < size(); ++r)
    for (int64_t i = 0; i < count; ++i) expected[static_cast<size_t>(i)] += input_value(r, i, dtype);
  EXPECT_EQ(read_back(device), expected);
  EXPECT_EQ(read_back(on_host), expected) << "the host communicator is the reference";
}

TEST_P(NcclCollectiveTest, AllReduceMaxEqualsTheHostMax) {
  const DType dtype = GetParam();
  const int64_t count = 7;
  // Odd ranks hold their values reversed, so the maximum comes from different ranks per element.
  auto value = [&](int r, int64_t i) { return input_value(r, r % 2 ? count - 1 - i : i, dtype); };
  std::vector<double> mine;
  for (int64_t i = 0; i < count; ++i) mine.push_back(value(rank(), i));
  Tensor device = context().upload(host_tensor(mine, dtype));
  nccl().all_reduce(device, ReduceOp::kMax, "test all_reduce max");
  Tensor on_host = host_tensor(mine, dtype);
  host().all_reduce(on_host, ReduceOp::kMax, "test all_reduce max (host)");

  std::vector<double> expected(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    double best = value(0, i);
    for (int r = 1; r < size(); ++r) best = std::max(best, value(r, i));
    expected[static_cast<size_t>(i)] = best;
  }
  EXPECT_EQ(read_back(device), expected);
  EXPECT_EQ(read_back(on_host), expected);
}

TEST_P(NcclCollectiveTest, ReduceScatterGivesEachRankItsReducedSlice) {
  const DType dtype = GetParam();
  const int64_t shard = 5;
  Tensor input = context().upload(host_input(rank(), 0, shard * size(), dtype));
  Tensor output = context().empty({shard}, dtype);
  nccl().reduce_scatter(input, output, ReduceOp::kSum, "test reduce_scatter");
  Tensor host_output = Tensor::empty_cpu({shard}, dtype);
  host().reduce_scatter(host_input(rank(), 0, shard * size(), dtype), host_output, ReduceOp::kSum,
                        "test reduce_scatter (host)");

  std::vector<double> expected(static_cast<size_t>(shard), 0.0);
  for (int r = 0; r < size(); ++r)
    for (int64_t j = 0; j < shard; ++j) expected[static_cast<size_t>(j)] += input_value(r, rank() * shard + j, dtype);
  EXPECT_EQ(read_back(output), expected);
  EXPECT_EQ(read_back(host_output), expected);
}

TEST_P(NcclCollectiveTest, AllGatherConcatenatesEveryRankInRankOrder) {
  const DType dtype = GetParam();
  const int64_t shard = 6;
  Tensor input = context().upload(host_input(rank(), 0, shard, dtype));
  Tensor output = context().empty({size(), shard}, dtype);  // any shape of size x shard elements
  nccl().all_gather(input, output, "test all_gather");
  Tensor host_output = Tensor::empty_cpu({size() * shard}, dtype);
  host().all_gather(host_input(rank(), 0, shard, dtype), host_output, "test all_gather (host)");

  std::vector<double> expected;
  for (int r = 0; r < size(); ++r)
    for (int64_t j = 0; j < shard; ++j) expected.push_back(input_value(r, j, dtype));
  EXPECT_EQ(read_back(output), expected);
  EXPECT_EQ(read_back(host_output), expected);
}

TEST_P(NcclCollectiveTest, AllGatherInPlaceFromThisRanksSlice) {
  const DType dtype = GetParam();
  const int64_t shard = 3;
  Tensor full = context().upload(host_input(rank(), 0, shard * size(), dtype).reshape({size(), shard}));
  Tensor mine = full.slice_rows(rank(), rank() + 1);  // NCCL's in-place form
  nccl().all_gather(mine, full, "test all_gather in place");
  std::vector<double> expected;
  for (int r = 0; r < size(); ++r)
    for (int64_t j = 0; j < shard; ++j) expected.push_back(input_value(r, r * shard + j, dtype));
  EXPECT_EQ(read_back(full), expected);
}

TEST_P(NcclCollectiveTest, BroadcastCopiesTheRootsTensorToEveryRank) {
  const DType dtype = GetParam();
  const int root = size() > 1 ? 1 : 0;
  const int64_t count = 9;
  Tensor device = context().upload(host_input(rank(), 0, count, dtype));
  nccl().broadcast(device, root, "test broadcast");
  std::vector<double> expected;
  for (int64_t i = 0; i < count; ++i) expected.push_back(input_value(root, i, dtype));
  EXPECT_EQ(read_back(device), expected);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, NcclCollectiveTest, ::testing::Values(DType::kF32, DType::kBF16, DType::kI64),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

class NcclCommunicatorTest : public NcclTest {};

TEST_F(NcclCommunicatorTest, AsyncWorkCompletesAndTimesItself) {
  Tensor device = context().upload(host_input(rank(), 0, 1 << 16, DType::kF32));
  std::unique_ptr<Work> work = nccl().all_reduce_async(device, ReduceOp::kSum, "test async all_reduce");
  work->wait();  // orders the compute stream after it
  context().synchronize();
  EXPECT_TRUE(work->completed());
  EXPECT_GE(work->seconds(), 0.0);
  if (size() > 1) {
    EXPECT_GT(work->seconds(), 0.0) << "timed between events around the NCCL call";
  }
  EXPECT_LT(work->seconds(), kTimeoutSeconds);
  EXPECT_EQ(read_back(device)[5], size() * (size() + 1) / 2.0 + size() * 2.5);
}

TEST_F(NcclCommunicatorTest, BarrierReturnsOnceEveryRankHasEnteredIt) {
  nccl().barrier("test barrier");
  std::unique_ptr<Work> work = nccl().barrier_async("test barrier (async)");
  work->wait();
  EXPECT_TRUE(work->completed()) << "a barrier's wait blocks the host until it is done";
}

TEST_F(NcclCommunicatorTest, SplitRanksEachGroupByKeyThenRank) {
  // One group, ranked in reverse by key.
  std::unique_ptr<Communicator> reversed = nccl().split(0, -rank());
  ASSERT_EQ(reversed->size(), size());
  EXPECT_EQ(reversed->rank(), size() - 1 - rank());
  EXPECT_TRUE(reversed->device_memory());
  Tensor mine = context().upload(host_input(rank(), 0, 1, DType::kI64));
  Tensor every = context().empty({size()}, DType::kI64);
  reversed->all_gather(mine, every, "test all_gather over the reversed group");
  std::vector<double> expected;
  for (int r = size() - 1; r >= 0; --r) expected.push_back(input_value(r, 0, DType::kI64));
  EXPECT_EQ(read_back(every), expected) << "gathered in the new group's rank order";

  // One group per rank: reductions are the identity.
  std::unique_ptr<Communicator> alone = nccl().split(rank(), 0);
  EXPECT_EQ(alone->size(), 1);
  EXPECT_EQ(alone->rank(), 0);
  Tensor value = context().upload(host_input(rank(), 0, 4, DType::kF32));
  alone->all_reduce(value, ReduceOp::kSum, "test all_reduce over a group of one");
  EXPECT_EQ(read_back(value), read_back(host_input(rank(), 0, 4, DType::kF32)));
}

TEST_F(NcclCommunicatorTest, RejectsHostTensorsNamingTheCollective) {
  Tensor host_tensor = host_input(rank(), 0, 4, DType::kF32);
  try {
    nccl().all_reduce(host_tensor, ReduceOp::kSum, "gradient bucket 3");
    ADD_FAILURE() << "a host tensor must be refused";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(error.what()).find("gradient bucket 3"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("CUDA tensors"), std::string::npos) << error.what();
  }
  // Control: the same values on the device go through.
  Tensor device = context().upload(host_tensor);
  EXPECT_NO_THROW(nccl().all_reduce(device, ReduceOp::kSum, "gradient bucket 3"));
}

TEST_F(NcclCommunicatorTest, RejectsAFullTensorOfTheWrongSize) {
  Tensor input = context().upload(host_input(rank(), 0, 4, DType::kF32));
  Tensor output = context().empty({4 * size() + 1}, DType::kF32);
  EXPECT_THROW(nccl().all_gather(input, output, "test all_gather of the wrong size"), Error);
}

#if LLMFT_WITH_CUDA
// Blocks a stream on the host until released (cudaLaunchHostFunc), so a test
// controls exactly when the work queued behind it completes. Released on
// destruction, so a failing assertion cannot leave the stream stuck.
class StreamGate {
 public:
  explicit StreamGate(cudaStream_t stream) {
    EXPECT_EQ(cudaLaunchHostFunc(stream, &StreamGate::hold, &open_), cudaSuccess);
  }
  ~StreamGate() { open(); }
  void open() { open_.store(true); }

 private:
  static void hold(void* open) {
    while (!static_cast<std::atomic<bool>*>(open)->load()) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  std::atomic<bool> open_{false};
};
#endif

// The communicator records every tensor it hands NCCL on its stream: a
// tensor freed while its collective is still queued keeps its block until
// the collective has run. The compute stream is held shut, so the NCCL call
// (which waits for it) cannot have started when the tensor is freed.
TEST_F(NcclCommunicatorTest, ATensorFreedBeforeItsCollectiveRanIsNotReused) {
#if LLMFT_WITH_CUDA
  const Shape shape = {5 << 18};  // 5 MiB of f32: a size class no other test here uses
  {
    // Warm-up of the same collective, so that NCCL's lazy connection set-up
    // (which may synchronise with the device) is done before the gate shuts.
    Tensor warm_up = context().empty(shape, DType::kF32);
    nccl().all_reduce(warm_up, ReduceOp::kSum, "test all_reduce warm-up");
    context().synchronize();
  }
  void* first = nullptr;
  std::unique_ptr<Work> work;
  auto gate = std::make_unique<StreamGate>(static_cast<cudaStream_t>(context().cuda_stream()));
  {
    Tensor device = context().empty(shape, DType::kF32);
    first = device.raw_data();
    work = nccl().all_reduce_async(device, ReduceOp::kSum, "test all_reduce of a tensor freed early");
  }
  Tensor meanwhile = context().empty(shape, DType::kF32);
  EXPECT_NE(meanwhile.raw_data(), first) << "reused while NCCL may still write it";
  EXPECT_FALSE(work->completed());
  gate->open();
  work->wait();
  context().synchronize();
  EXPECT_TRUE(work->completed());
  Tensor after = context().empty(shape, DType::kF32);
  EXPECT_EQ(after.raw_data(), first) << "once the collective has run, the block is free again";
  gate.reset();
#else
  GTEST_SKIP() << "no CUDA device: this binary was built without the CUDA backend";
#endif
}

// ---- The caching allocator's stream-aware reuse, alone ------------------------------------------------
class CudaAllocatorStreamTest : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA(); }
};

TEST_F(CudaAllocatorStreamTest, ABlockUsedOnAnotherStreamWaitsForThatStreamBeforeReuse) {
#if LLMFT_WITH_CUDA
  std::unique_ptr<Context> context = Context::cuda(world_environment->local_rank());  // its own cache
  Allocator& allocator = context->allocator();
  cudaStream_t side = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), cudaSuccess);
  const Shape shape = {3 << 18};  // 3 MiB of f32: the 4 MiB class

  // Control: a block used only on the context's stream is reused at once.
  void* unrecorded = nullptr;
  {
    Tensor tensor = context->empty(shape, DType::kF32);
    unrecorded = tensor.raw_data();
  }
  {
    Tensor again = context->empty(shape, DType::kF32);
    EXPECT_EQ(again.raw_data(), unrecorded);
  }

  void* recorded = nullptr;
  auto gate = std::make_unique<StreamGate>(side);
  {
    Tensor tensor = context->empty(shape, DType::kF32);
    recorded = tensor.raw_data();
    // A view's address names the whole block.
    allocator.record_stream(tensor.slice_rows(1 << 18, 2 << 18).raw_data(), side);
    const size_t in_use = allocator.bytes_in_use();
    tensor = Tensor();
    EXPECT_EQ(allocator.bytes_in_use(), in_use - (4u << 20)) << "a parked block has left bytes_in_use";
  }
  Tensor meanwhile = context->empty(shape, DType::kF32);
  EXPECT_NE(meanwhile.raw_data(), recorded) << "handed out while the side stream's work is pending";
  gate->open();
  ASSERT_EQ(cudaStreamSynchronize(side), cudaSuccess);
  Tensor after = context->empty(shape, DType::kF32);
  EXPECT_EQ(after.raw_data(), recorded) << "free again once the side stream has passed the free";

  // A stream forgotten before its destruction holds nothing back.
  void* forgotten = nullptr;
  {
    Tensor tensor = context->empty(shape, DType::kF32);
    forgotten = tensor.raw_data();
    allocator.record_stream(tensor.raw_data(), side);
    allocator.forget_stream(side);
  }
  Tensor reused = context->empty(shape, DType::kF32);
  EXPECT_EQ(reused.raw_data(), forgotten);

  // A pointer the allocator never handed out is ignored.
  int host_value = 0;
  allocator.record_stream(&host_value, side);
  gate.reset();
  EXPECT_EQ(cudaStreamDestroy(side), cudaSuccess);
#else
  GTEST_SKIP() << "no CUDA device: this binary was built without the CUDA backend";
#endif
}

}  // namespace
}  // namespace llmft::parallel
