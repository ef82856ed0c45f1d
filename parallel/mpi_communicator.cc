#include "parallel/mpi_communicator.h"

#include <mpi.h>
#include <sys/prctl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "core/clock.h"
#include "core/error.h"
#include "parallel/host_reduce.h"

namespace llmft::parallel {
namespace {

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, static_cast<size_t>(length));
}

// bf16/f16 through MPI user operations on 16-bit words (MPI has no such
// types): one operation per dtype and reduction.
template <DType kDType, ReduceOp kOp>
void reduce_16bit(void* input, void* inout, int* length, MPI_Datatype*) {
  reduce_host(inout, input, *length, kDType, kOp);
}

struct MpiOps {
  MPI_Op bf16_sum, bf16_max, f16_sum, f16_max;
};

}  // namespace

// One queued collective.
struct MpiJob {
  std::string what;
  int64_t step = 0;
  int rank = 0, size = 1;
  // Runs on the MPI thread: starts the collective (a non-blocking call, or a
  // blocking one that leaves MPI_REQUEST_NULL) and returns its MPI error code.
  std::function<int(MPI_Request*)> start;

  // Set once a thread blocks in wait(): from then on nothing competes for the
  // core, and the MPI thread polls without sleeping.
  std::atomic<bool> waited{false};

  std::mutex mutex;
  std::condition_variable finished;
  bool done = false;
  std::string error;
  double seconds = 0.0;
};

class MpiRuntime {
 public:
  explicit MpiRuntime(double timeout_seconds) : timeout_seconds_(timeout_seconds) {
    thread_ = std::thread([this] { run(); });
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return started_; });
    if (!start_error_.empty()) {
      lock.unlock();
      thread_.join();
      throw_runtime("MPI could not start: ", start_error_);
    }
  }

  ~MpiRuntime() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  std::shared_ptr<MpiJob> submit(std::shared_ptr<MpiJob> job) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(job);
    }
    changed_.notify_all();
    return job;
  }

  // Runs `body` on the MPI thread and waits for it (communicator set-up).
  void call(const std::string& what, std::function<int()> body) {
    auto job = std::make_shared<MpiJob>();
    job->what = what;
    job->start = [body = std::move(body)](MPI_Request* request) {
      *request = MPI_REQUEST_NULL;
      return body();
    };
    wait(*submit(job));
  }

  static void wait(MpiJob& job) {
    job.waited.store(true);
    std::unique_lock lock(job.mutex);
    job.finished.wait(lock, [&] { return job.done; });
    if (!job.error.empty()) throw_runtime(job.what, " failed on rank ", job.rank, " of ", job.size, " (host ",
                                          host_name(), "): ", job.error);
  }

  [[noreturn]] void abort_job(int exit_code) {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, exit_code);  // the funneled-thread rule yields to ending the job
    std::_Exit(exit_code);
  }

  int world_rank = 0, world_size = 1, local_rank = 0, local_size = 1;
  MpiOps ops{};

 private:
  void run() {
    // Short sleeps between polls: the default 50 us timer slack would stretch
    // each one to the slack, and a large message needs a poll per fragment.
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    int provided = 0;
    int code = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    if (code == MPI_SUCCESS) {
      MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
      MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
      MPI_Comm_size(MPI_COMM_WORLD, &world_size);
      MPI_Comm node = MPI_COMM_NULL;
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node);
      MPI_Comm_rank(node, &local_rank);
      MPI_Comm_size(node, &local_size);
      MPI_Comm_free(&node);
      MPI_Op_create(&reduce_16bit<DType::kBF16, ReduceOp::kSum>, 1, &ops.bf16_sum);
      MPI_Op_create(&reduce_16bit<DType::kBF16, ReduceOp::kMax>, 1, &ops.bf16_max);
      MPI_Op_create(&reduce_16bit<DType::kF16, ReduceOp::kSum>, 1, &ops.f16_sum);
      MPI_Op_create(&reduce_16bit<DType::kF16, ReduceOp::kMax>, 1, &ops.f16_max);
    }
    {
      std::lock_guard lock(mutex_);
      started_ = true;
      if (code != MPI_SUCCESS) start_error_ = "MPI_Init_thread: error " + std::to_string(code);
    }
    changed_.notify_all();
    if (code != MPI_SUCCESS) return;

    for (;;) {
      std::shared_ptr<MpiJob> job;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) break;  // stopping, nothing left
        job = queue_.front();
        queue_.pop_front();
      }
      execute(*job);
    }
    MPI_Op_free(&ops.bf16_sum);
    MPI_Op_free(&ops.bf16_max);
    MPI_Op_free(&ops.f16_sum);
    MPI_Op_free(&ops.f16_max);
    MPI_Finalize();
  }

  void execute(MpiJob& job) {
    const double start = steady_seconds();
    MPI_Request request = MPI_REQUEST_NULL;
    int code = job.start(&request);
    int flag = 0;
    for (int polls = 0; code == MPI_SUCCESS && !flag; ++polls) {
      code = MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
      if (flag || code != MPI_SUCCESS) break;
      if (steady_seconds() - start > timeout_seconds_) {
        std::fprintf(stderr, "llmft: error: %s\n",
                     timeout_message(job.what, timeout_seconds_, job.step, job.rank, job.size).c_str());
        abort_job(1);
      }
      // While the caller computes (the backward), sleep between polls so its
      // thread keeps the core; once it waits for this collective, or for
      // the first polls (latency of small collectives), only yield. A large
      // message moves in many fragments, each needing a poll to progress.
      if (polls < 64 || job.waited.load(std::memory_order_relaxed)) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(10));
      }
    }
    std::lock_guard lock(job.mutex);
    job.seconds = steady_seconds() - start;
    if (code != MPI_SUCCESS) job.error = mpi_error_text(code);
    job.done = true;
    job.finished.notify_all();
  }

  const double timeout_seconds_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::shared_ptr<MpiJob>> queue_;
  bool started_ = false, stopping_ = false;
  std::string start_error_;
};

namespace {

class MpiWork final : public Work {
 public:
  explicit MpiWork(std::shared_ptr<MpiJob> job) : job_(std::move(job)) {}
  void wait() override { MpiRuntime::wait(*job_); }
  bool completed() override {
    std::lock_guard lock(job_->mutex);
    return job_->done;
  }
  double seconds() const override {
    std::lock_guard lock(job_->mutex);
    return job_->seconds;
  }

 private:
  std::shared_ptr<MpiJob> job_;
};

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kBF16:
    case DType::kF16: return MPI_UINT16_T;
    case DType::kI32: return MPI_INT32_T;
    case DType::kI64: return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(std::shared_ptr<MpiRuntime> runtime, MPI_Comm comm, int rank, int size)
      : runtime_(std::move(runtime)), comm_(comm), rank_(rank), size_(size) {}
  ~MpiCommunicator() override {
    if (comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) {
      MPI_Comm comm = comm_;
      try {
        runtime_->call("MPI_Comm_free", [comm]() mutable { return MPI_Comm_free(&comm); });
      } catch (...) {
      }
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  std::unique_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op, std::string_view what) override {
    check_host(tensor, what);
    if (size_ == 1 || tensor.numel() == 0) return std::make_unique<CompletedWork>();
    void* data = tensor.raw_data();
    const int count = element_count(tensor, what);
    const MPI_Datatype type = mpi_type(tensor.dtype());
    const MPI_Op mpi_op = reduce_operation(tensor.dtype(), op);
    return enqueue(what, [=, comm = comm_](MPI_Request* request) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, count, type, mpi_op, comm, request);
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp op,
                                             std::string_view what) override {
    check_gather_shapes(output, input, size_, what);
    check_host(input, what);
    if (size_ == 1) return SingleProcessCommunicator().reduce_scatter_async(input, output, op, what);
    const void* source = input.raw_data();
    void* destination = output.raw_data();
    const int count = element_count(output, what);
    const MPI_Datatype type = mpi_type(input.dtype());
    const MPI_Op mpi_op = reduce_operation(input.dtype(), op);
    return enqueue(what, [=, comm = comm_](MPI_Request* request) {
      return MPI_Ireduce_scatter_block(source, destination, count, type, mpi_op, comm, request);
    });
  }

  std::unique_ptr<Work> all_gather_async(const Tensor& input, Tensor& output, std::string_view what) override {
    check_gather_shapes(input, output, size_, what);
    check_host(input, what);
    if (size_ == 1) return SingleProcessCommunicator().all_gather_async(input, output, what);
    const void* source = input.raw_data();
    void* destination = output.raw_data();
    const int count = element_count(input, what);
    const MPI_Datatype type = mpi_type(input.dtype());
    return enqueue(what, [=, comm = comm_](MPI_Request* request) {
      return MPI_Iallgather(source, count, type, destination, count, type, comm, request);
    });
  }

  std::unique_ptr<Work> broadcast_async(Tensor& tensor, int root, std::string_view what) override {
    check_host(tensor, what);
    if (root < 0 || root >= size_) throw_runtime(what, ": broadcast root ", root, " outside a group of ", size_);
    if (size_ == 1 || tensor.numel() == 0) return std::make_unique<CompletedWork>();
    void* data = tensor.raw_data();
    const int count = element_count(tensor, what);
    const MPI_Datatype type = mpi_type(tensor.dtype());
    return enqueue(what, [=, comm = comm_](MPI_Request* request) {
      return MPI_Ibcast(data, count, type, root, comm, request);
    });
  }

  std::unique_ptr<Work> barrier_async(std::string_view what) override {
    if (size_ == 1) return std::make_unique<CompletedWork>();
    return enqueue(what, [comm = comm_](MPI_Request* request) { return MPI_Ibarrier(comm, request); });
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm child = MPI_COMM_NULL;
    int child_rank = 0, child_size = 1;
    runtime_->call("MPI_Comm_split", [&, comm = comm_]() {
      int code = MPI_Comm_split(comm, color, key, &child);
      if (code != MPI_SUCCESS) return code;
      MPI_Comm_set_errhandler(child, MPI_ERRORS_RETURN);
      MPI_Comm_rank(child, &child_rank);
      return MPI_Comm_size(child, &child_size);
    });
    return std::make_unique<MpiCommunicator>(runtime_, child, child_rank, child_size);
  }

 private:
  static void check_host(const Tensor& tensor, std::string_view what) {
    check_collective_dtype(tensor, what);
    if (!tensor.device().is_cpu())
      throw_runtime(what, ": the MPI communicator takes host tensors, not ", tensor.to_string(),
                    " (device tensors go through NCCL)");
  }

  static int element_count(const Tensor& tensor, std::string_view what) {
    if (tensor.numel() > std::numeric_limits<int>::max())
      throw_runtime(what, ": ", tensor.to_string(), " has more elements than one MPI call takes (2^31 - 1)");
    return static_cast<int>(tensor.numel());
  }

  MPI_Op reduce_operation(DType dtype, ReduceOp op) const {
    switch (dtype) {
      case DType::kBF16: return op == ReduceOp::kSum ? runtime_->ops.bf16_sum : runtime_->ops.bf16_max;
      case DType::kF16: return op == ReduceOp::kSum ? runtime_->ops.f16_sum : runtime_->ops.f16_max;
      default: return op == ReduceOp::kSum ? MPI_SUM : MPI_MAX;
    }
  }

  std::unique_ptr<Work> enqueue(std::string_view what, std::function<int(MPI_Request*)> start) {
    auto job = std::make_shared<MpiJob>();
    job->what = std::string(what);
    job->step = step();
    job->rank = rank_;
    job->size = size_;
    job->start = std::move(start);
    return std::make_unique<MpiWork>(runtime_->submit(std::move(job)));
  }

  std::shared_ptr<MpiRuntime> runtime_;
  MPI_Comm comm_;
  int rank_, size_;
};

}  // namespace

bool launched_by_mpi_launcher() {
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(variable) != nullptr) return true;
  return false;
}

MpiWorld start_mpi(double timeout_seconds) {
  MpiWorld world;
  world.runtime = std::make_shared<MpiRuntime>(timeout_seconds);
  world.world = std::make_unique<MpiCommunicator>(world.runtime, MPI_COMM_WORLD, world.runtime->world_rank,
                                                  world.runtime->world_size);
  world.local_rank = world.runtime->local_rank;
  world.local_size = world.runtime->local_size;
  return world;
}

void abort_mpi_job(const std::shared_ptr<MpiRuntime>& runtime, int exit_code) {
  if (runtime) runtime->abort_job(exit_code);
}

}  // namespace llmft::parallel
