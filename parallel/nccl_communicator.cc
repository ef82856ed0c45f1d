// The NCCL communicator (CUDA builds only; parallel/nccl_cpu_only.cc stands
// in elsewhere). Plain C++ against the CUDA runtime and NCCL.
#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/cuda_resources.h"
#include "core/error.h"

namespace llmft::parallel {
namespace {

using Clock = std::chrono::steady_clock;

// How often the watchdog looks at the in-flight collectives. Timeouts are
// minutes; this only bounds how late a hang or an NCCL error is reported.
constexpr auto kWatchdogPeriod = std::chrono::milliseconds(50);

std::string nccl_error_text(ncclResult_t result) {
  std::string text = str_cat("NCCL error ", static_cast<int>(result), " (", ncclGetErrorString(result), ")");
  const char* detail = ncclGetLastError(nullptr);  // the argument is unused by NCCL
  if (detail != nullptr && detail[0] != '\0') text += str_cat(": ", detail);
  return text;
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kBF16: return ncclBfloat16;
    case DType::kF16: return ncclFloat16;
    case DType::kI32: return ncclInt32;
    case DType::kI64: return ncclInt64;
  }
  return ncclFloat32;  // unreachable: check_collective_dtype ran first
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kSum ? ncclSum : ncclMax; }

[[noreturn]] void end_job(const std::string& message, ncclComm_t comm_to_abort,
                          const std::function<void(int)>& abort_job) {
  std::fprintf(stderr, "llmft: error: %s\n", message.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  // Frees this rank's NCCL kernels and proxy threads from a peer that will
  // never answer (the documented way out of a hung or failed communicator).
  if (comm_to_abort != nullptr) ncclCommAbort(comm_to_abort);
  if (abort_job) abort_job(1);
  std::_Exit(1);
}

// Ends the job when a blocking NCCL set-up call over the whole group
// (ncclCommInitRank, ncclCommSplit) has not returned within the timeout:
// they wait for every rank, and a rank that never arrives would hang the
// others with no message. No communicator to abort yet.
class SetupHangGuard {
 public:
  SetupHangGuard(std::string message, double timeout_seconds, const std::function<void(int)>& abort_job)
      : thread_([this, message = std::move(message), timeout_seconds, abort_job] {
          std::unique_lock lock(mutex_);
          if (!returned_.wait_for(lock, std::chrono::duration<double>(timeout_seconds), [&] { return done_; }))
            end_job(message, nullptr, abort_job);
        }) {}
  ~SetupHangGuard() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    returned_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable returned_;
  bool done_ = false;
  std::thread thread_;  // last: starts once the members it uses exist
};

// One collective queued on the NCCL stream.
struct Collective {
  std::string what;
  int64_t step = 0;
  cudaEvent_t start = nullptr;  // recorded on the NCCL stream just before the NCCL call
  cudaEvent_t done = nullptr;   // ... and just after it
  std::optional<Clock::time_point> started;  // when the watchdog first saw `start` complete

  ~Collective() {
    // Safe while pending: CUDA releases a recorded event once it completes.
    if (start != nullptr) cudaEventDestroy(start);
    if (done != nullptr) cudaEventDestroy(done);
  }
};

// What a communicator shares with its Works and its watchdog thread: the
// NCCL communicator, its stream, and the collectives in flight. Works hold
// it too, so a Work waited after its communicator is gone still finds it.
class NcclGroup {
 public:
  NcclGroup(ncclComm_t nccl_comm, Context& context, double timeout_seconds, std::function<void(int)> abort_job)
      : comm(nccl_comm),
        compute_stream(context.cuda_resources()->stream),
        device_index(context.cuda_resources()->device_index),
        allocator(context.allocator()),
        timeout_seconds(timeout_seconds),
        abort_job(std::move(abort_job)) {
    try {
      check_nccl(ncclCommUserRank(comm, &rank), "NCCL set-up", "ncclCommUserRank");
      check_nccl(ncclCommCount(comm, &size), "NCCL set-up", "ncclCommCount");
      check_cuda(cudaSetDevice(device_index), "NCCL set-up", "cudaSetDevice");
      // Non-blocking: the legacy default stream (cuda_copy's cudaMemcpy) must
      // not serialise with collectives; ordering is by events only.
      check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "NCCL set-up", "cudaStreamCreate");
      check_cuda(cudaEventCreateWithFlags(&compute_ready, cudaEventDisableTiming), "NCCL set-up", "cudaEventCreate");
      check_cuda(cudaMalloc(&barrier_value, sizeof(float)), "NCCL set-up", "cudaMalloc");
      check_cuda(cudaMemsetAsync(barrier_value, 0, sizeof(float), stream), "NCCL set-up", "cudaMemsetAsync");
    } catch (...) {
      release();
      ncclCommDestroy(nccl_comm);
      throw;
    }
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclGroup() {
    // Let queued collectives finish while the watchdog still guards them (a
    // peer that never arrives ends the job instead of hanging here), then
    // destroy the communicator; one in error is aborted instead, since
    // ncclCommDestroy would flush operations that can no longer complete.
    cudaSetDevice(device_index);
    ncclResult_t failure = ncclSuccess;
    while (ncclCommGetAsyncError(comm, &failure) == ncclSuccess && failure == ncclSuccess &&
           cudaStreamQuery(stream) == cudaErrorNotReady)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    stop_.notify_all();
    watchdog_.join();
    // The stream's work is done: blocks recorded on it may be reused now, and
    // its handle may be reused by a later stream.
    allocator.forget_stream(stream);
    if (failure != ncclSuccess) {
      ncclCommAbort(comm);
    } else {
      ncclCommDestroy(comm);
    }
    release();
  }

  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  // Queues `call(comm, stream)` on the NCCL stream after the compute
  // stream's queued work; `tensors` are recorded on the NCCL stream with the
  // allocator so that freeing them early cannot hand their memory to new
  // compute work while NCCL still uses it.
  template <typename Call>
  std::shared_ptr<Collective> launch(std::string_view what, int64_t step, const char* nccl_call,
                                     std::initializer_list<const Tensor*> tensors, Call&& call) {
    throw_if_failed(what, step);
    auto collective = std::make_shared<Collective>();
    collective->what = std::string(what);
    collective->step = step;
    check_cuda(cudaSetDevice(device_index), what, "cudaSetDevice");
    // Timing events (no cudaEventDisableTiming): Work::seconds() reads them.
    check_cuda(cudaEventCreate(&collective->start), what, "cudaEventCreate");
    check_cuda(cudaEventCreate(&collective->done), what, "cudaEventCreate");
    check_cuda(cudaEventRecord(compute_ready, compute_stream), what, "cudaEventRecord(compute stream)");
    check_cuda(cudaStreamWaitEvent(stream, compute_ready, 0), what, "cudaStreamWaitEvent(NCCL stream)");
    check_cuda(cudaEventRecord(collective->start, stream), what, "cudaEventRecord(start)");
    check_nccl(call(comm, stream), what, nccl_call, step);
    check_cuda(cudaEventRecord(collective->done, stream), what, "cudaEventRecord(done)");
    for (const Tensor* tensor : tensors) allocator.record_stream(tensor->raw_data(), stream);
    {
      std::lock_guard lock(mutex_);
      in_flight_.push_back(collective);
    }
    return collective;
  }

  // Blocks the host until `collective` has completed on the device, under
  // the watchdog's timeout.
  void wait_on_host(const Collective& collective) {
    for (int polls = 0;; ++polls) {
      const cudaError_t status = cudaEventQuery(collective.done);
      if (status == cudaSuccess) return;
      if (status != cudaErrorNotReady) check_cuda(status, collective.what, "cudaEventQuery", collective.step);
      throw_if_failed(collective.what, collective.step);
      if (polls < 64) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }

  // An asynchronous NCCL failure (a peer's network error, an abort) as an
  // llmft::Error naming `what`.
  void throw_if_failed(std::string_view what, int64_t step) const {
    ncclResult_t failure = ncclSuccess;
    const ncclResult_t result = ncclCommGetAsyncError(comm, &failure);
    if (result != ncclSuccess) failure = result;
    if (failure != ncclSuccess && failure != ncclInProgress)
      throw_runtime(failure_prefix(what, step), "the NCCL communicator failed: ", nccl_error_text(failure));
  }

  void check_nccl(ncclResult_t result, std::string_view what, const char* call, int64_t step = 0) const {
    if (result != ncclSuccess) throw_runtime(failure_prefix(what, step), call, ": ", nccl_error_text(result));
  }

  void check_cuda(cudaError_t status, std::string_view what, const char* call, int64_t step = 0) const {
    if (status != cudaSuccess) {
      cudaGetLastError();  // clear a non-sticky error
      throw_runtime(failure_prefix(what, step), call, ": ", cudaGetErrorString(status));
    }
  }

  std::string failure_prefix(std::string_view what, int64_t step) const {
    return str_cat(what, " failed at step ", step, " on rank ", rank, " of ", size, " (host ", host_name(), "): ");
  }

  const ncclComm_t comm;
  const cudaStream_t compute_stream;
  const int device_index;
  Allocator& allocator;
  const double timeout_seconds;
  const std::function<void(int)> abort_job;
  int rank = 0, size = 1;
  cudaStream_t stream = nullptr;
  cudaEvent_t compute_ready = nullptr;  // re-recorded for every collective
  float* barrier_value = nullptr;       // barrier's one-element all-reduce

 private:
  void release() {
    if (barrier_value != nullptr) cudaFree(barrier_value);
    if (compute_ready != nullptr) cudaEventDestroy(compute_ready);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  // The hang guard. The clock of a collective starts when it starts on the
  // device (its start event completes), not when it was queued: a collective
  // queued behind a long backward is not late. The first in-flight
  // collective past the timeout, or any NCCL asynchronous error while one is
  // in flight, ends the job with its name and step.
  void watch() {
    cudaSetDevice(device_index);
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      stop_.wait_for(lock, kWatchdogPeriod, [&] { return stopping_; });
      if (stopping_) break;
      ncclResult_t failure = ncclSuccess;
      if (ncclCommGetAsyncError(comm, &failure) != ncclSuccess) failure = ncclInternalError;
      const bool failed = failure != ncclSuccess && failure != ncclInProgress;
      const Clock::time_point now = Clock::now();
      std::erase_if(in_flight_, [&](const std::shared_ptr<Collective>& collective) {
        const cudaError_t status = cudaEventQuery(collective->done);
        if (status == cudaSuccess) return true;
        if (status != cudaErrorNotReady) {
          // A device error (sticky): the compute thread's next checked CUDA
          // call reports it; this collective is no longer ours to time.
          cudaGetLastError();
          return true;
        }
        if (failed)
          end_job(failure_prefix(collective->what, collective->step) + nccl_error_text(failure) +
                      "; aborting every rank",
                  comm, abort_job);
        if (!collective->started && cudaEventQuery(collective->start) == cudaSuccess) collective->started = now;
        if (collective->started &&
            std::chrono::duration<double>(now - *collective->started).count() > timeout_seconds)
          end_job(timeout_message(collective->what, timeout_seconds, collective->step, rank, size), comm,
                  abort_job);
        return false;
      });
    }
  }

  std::mutex mutex_;
  std::condition_variable stop_;
  bool stopping_ = false;
  std::vector<std::shared_ptr<Collective>> in_flight_;
  std::thread watchdog_;
};

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclGroup> group, std::shared_ptr<Collective> collective, bool blocks_host)
      : group_(std::move(group)), collective_(std::move(collective)), blocks_host_(blocks_host) {}

  // Orders the compute stream after the collective and returns at once: the
  // host goes on queueing kernels, which run after the collective, so a
  // bucket's all-reduce or a tensor-parallel reduction costs no host stall.
  // Blocking the host here (polling until done) would serialise the host
  // with the device at every wait, and would still not guard the places
  // where the host blocks later (Context::synchronize, downloads): the
  // watchdog thread guards every collective wherever the host waits. Only
  // barrier blocks, because its meaning is a host rendezvous.
  void wait() override {
    if (blocks_host_) group_->wait_on_host(*collective_);
    group_->throw_if_failed(collective_->what, collective_->step);
    group_->check_cuda(cudaStreamWaitEvent(group_->compute_stream, collective_->done, 0), collective_->what,
                       "cudaStreamWaitEvent(compute stream)", collective_->step);
  }

  bool completed() override { return cudaEventQuery(collective_->done) == cudaSuccess; }

  double seconds() const override {
    if (cudaEventQuery(collective_->done) != cudaSuccess) return 0.0;
    float milliseconds = 0.0f;
    if (cudaEventElapsedTime(&milliseconds, collective_->start, collective_->done) != cudaSuccess) {
      cudaGetLastError();
      return 0.0;
    }
    return milliseconds / 1000.0;
  }

 private:
  std::shared_ptr<NcclGroup> group_;
  std::shared_ptr<Collective> collective_;
  bool blocks_host_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<NcclGroup> group, Context& context)
      : group_(std::move(group)), context_(context) {}

  int rank() const override { return group_->rank; }
  int size() const override { return group_->size; }
  bool device_memory() const override { return true; }

  std::unique_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op, std::string_view what) override {
    check_device(tensor, what);
    if (tensor.numel() == 0) return std::make_unique<CompletedWork>();
    void* data = tensor.raw_data();
    const size_t count = static_cast<size_t>(tensor.numel());
    const ncclDataType_t type = nccl_type(tensor.dtype());
    return launch(what, "ncclAllReduce", {&tensor}, false, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclAllReduce(data, data, count, type, nccl_op(op), comm, stream);
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp op,
                                             std::string_view what) override {
    check_gather_shapes(output, input, size(), what);
    check_device(input, what);
    check_device(output, what);
    check_overlap(output, input, what);
    if (output.numel() == 0) return std::make_unique<CompletedWork>();
    const void* source = input.raw_data();
    void* destination = output.raw_data();
    const size_t count = static_cast<size_t>(output.numel());  // NCCL's recvcount
    const ncclDataType_t type = nccl_type(input.dtype());
    return launch(what, "ncclReduceScatter", {&input, &output}, false, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclReduceScatter(source, destination, count, type, nccl_op(op), comm, stream);
    });
  }

  std::unique_ptr<Work> all_gather_async(const Tensor& input, Tensor& output, std::string_view what) override {
    check_gather_shapes(input, output, size(), what);
    check_device(input, what);
    check_device(output, what);
    check_overlap(input, output, what);
    if (input.numel() == 0) return std::make_unique<CompletedWork>();
    const void* source = input.raw_data();
    void* destination = output.raw_data();
    const size_t count = static_cast<size_t>(input.numel());  // NCCL's sendcount
    const ncclDataType_t type = nccl_type(input.dtype());
    return launch(what, "ncclAllGather", {&input, &output}, false, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclAllGather(source, destination, count, type, comm, stream);
    });
  }

  std::unique_ptr<Work> broadcast_async(Tensor& tensor, int root, std::string_view what) override {
    check_device(tensor, what);
    if (root < 0 || root >= size()) throw_runtime(what, ": broadcast root ", root, " outside a group of ", size());
    if (tensor.numel() == 0) return std::make_unique<CompletedWork>();
    void* data = tensor.raw_data();
    const size_t count = static_cast<size_t>(tensor.numel());
    const ncclDataType_t type = nccl_type(tensor.dtype());
    return launch(what, "ncclBroadcast", {&tensor}, false, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclBroadcast(data, data, count, type, root, comm, stream);
    });
  }

  // NCCL has no barrier: an all-reduce of one float completes on a rank only
  // once every rank has joined it. Its wait() blocks the host until then (a
  // barrier is a host rendezvous), and orders the compute stream after it.
  std::unique_ptr<Work> barrier_async(std::string_view what) override {
    float* value = group_->barrier_value;
    return launch(what, "ncclAllReduce(barrier)", {}, true, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclAllReduce(value, value, 1, ncclFloat32, ncclSum, comm, stream);
    });
  }

  // ncclCommSplit ranks each new group by (key, parent rank), as
  // MPI_Comm_split does. Every rank must pass a colour >= 0 (NCCL's "no
  // group" colour, like MPI_UNDEFINED, has no place in this interface).
  std::unique_ptr<Communicator> split(int color, int key) override {
    if (color < 0) throw_runtime("split: colour ", color, " must be >= 0");
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
    group_->throw_if_failed("ncclCommSplit", step());
    group_->check_cuda(cudaSetDevice(group_->device_index), "ncclCommSplit", "cudaSetDevice", step());
    ncclComm_t child = nullptr;
    {
      SetupHangGuard guard(timeout_message("ncclCommSplit", group_->timeout_seconds, step(), rank(), size()),
                           group_->timeout_seconds, group_->abort_job);
      // A null config inherits the parent's (blocking) configuration.
      group_->check_nccl(ncclCommSplit(group_->comm, color, key, &child, nullptr), "ncclCommSplit", "ncclCommSplit",
                         step());
    }
    auto communicator = std::make_unique<NcclCommunicator>(
        std::make_shared<NcclGroup>(child, context_, group_->timeout_seconds, group_->abort_job), context_);
    communicator->set_step(step());
    return communicator;
#else
    (void)key;
    throw_runtime("split: ncclCommSplit needs NCCL >= 2.18; this build has NCCL ", NCCL_MAJOR, ".", NCCL_MINOR, ".",
                  NCCL_PATCH);
#endif
  }

 private:
  template <typename Call>
  std::unique_ptr<Work> launch(std::string_view what, const char* nccl_call,
                               std::initializer_list<const Tensor*> tensors, bool blocks_host, Call&& call) {
    std::shared_ptr<Collective> collective =
        group_->launch(what, step(), nccl_call, tensors, std::forward<Call>(call));
    return std::make_unique<NcclWork>(group_, std::move(collective), blocks_host);
  }

  void check_device(const Tensor& tensor, std::string_view what) const {
    check_collective_dtype(tensor, what);
    if (tensor.device() != Device::cuda(group_->device_index))
      throw_runtime(what, ": the NCCL communicator takes CUDA tensors on cuda:", group_->device_index, ", not ",
                    tensor.to_string(), " (host tensors go through the MPI communicator)");
  }

  // NCCL allows one overlap of a gather's or scatter's buffers, its in-place
  // form: the shard is this rank's slice of the full tensor.
  void check_overlap(const Tensor& shard, const Tensor& full, std::string_view what) const {
    const auto shard_begin = reinterpret_cast<uintptr_t>(shard.raw_data());
    const auto full_begin = reinterpret_cast<uintptr_t>(full.raw_data());
    const bool overlap = shard_begin < full_begin + full.nbytes() && full_begin < shard_begin + shard.nbytes();
    if (overlap && shard_begin != full_begin + static_cast<uintptr_t>(rank()) * shard.nbytes())
      throw_runtime(what, ": the shard ", shard.to_string(), " overlaps the full tensor ", full.to_string(),
                    " other than as rank ", rank(), "'s slice of it (NCCL's only in-place form)");
  }

  std::shared_ptr<NcclGroup> group_;
  Context& context_;
};

}  // namespace

bool nccl_communicator_built() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, Context& context, double timeout_seconds,
                                                     std::function<void(int)> abort_job) {
  if (!context.is_cuda() || context.cuda_resources() == nullptr)
    throw_runtime("NCCL communicator: needs a CUDA context, not one on ", context.device().to_string());
  if (!(timeout_seconds > 0.0)) throw_runtime("NCCL communicator: timeout ", timeout_seconds, " s must be > 0");
  const int rank = bootstrap.rank(), size = bootstrap.size();
  const int device_index = context.cuda_resources()->device_index;

  // Rank 0's ncclUniqueId to every rank, as 16 i64 words after a status word
  // (so that a failure on rank 0 reaches the others as an error, not a hang).
  static_assert(sizeof(ncclUniqueId) == NCCL_UNIQUE_ID_BYTES && NCCL_UNIQUE_ID_BYTES % 8 == 0);
  constexpr int64_t kIdWords = NCCL_UNIQUE_ID_BYTES / 8;
  Tensor message = Tensor::zeros_cpu({1 + kIdWords}, DType::kI64);
  ncclUniqueId id{};
  if (rank == 0) {
    const ncclResult_t result = ncclGetUniqueId(&id);
    message.data<int64_t>()[0] = static_cast<int64_t>(result);
    if (result == ncclSuccess) std::memcpy(message.data<int64_t>() + 1, &id, sizeof(id));
  }
  bootstrap.broadcast(message, 0, "NCCL bootstrap (broadcast of the ncclUniqueId)");
  if (const auto status = static_cast<ncclResult_t>(message.data<int64_t>()[0]); status != ncclSuccess)
    throw_runtime("NCCL bootstrap failed on rank ", rank, " of ", size, " (host ", host_name(),
                  "): rank 0's ncclGetUniqueId: ", nccl_error_text(status));
  std::memcpy(&id, message.data<int64_t>() + 1, sizeof(id));

  cudaError_t status = cudaSetDevice(device_index);
  if (status != cudaSuccess)
    throw_runtime("NCCL bootstrap on rank ", rank, ": cudaSetDevice(", device_index, "): ", cudaGetErrorString(status));
  ncclComm_t comm = nullptr;
  ncclResult_t result = ncclSuccess;
  {
    SetupHangGuard guard(timeout_message("ncclCommInitRank", timeout_seconds, bootstrap.step(), rank, size),
                         timeout_seconds, abort_job);
    result = ncclCommInitRank(&comm, size, id, rank);
  }
  if (result != ncclSuccess)
    throw_runtime("ncclCommInitRank failed on rank ", rank, " of ", size, " (host ", host_name(), ", cuda:",
                  device_index, "): ", nccl_error_text(result));
  auto communicator = std::make_unique<NcclCommunicator>(
      std::make_shared<NcclGroup>(comm, context, timeout_seconds, std::move(abort_job)), context);
  communicator->set_step(bootstrap.step());
  return communicator;
}

}  // namespace llmft::parallel
