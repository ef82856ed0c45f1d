// Communicators on Tensors (DESIGN.md parallel/): the collectives data and
// tensor parallelism are built from, each blocking or asynchronous.
//
//   all_reduce      sum or max of one tensor over the group, in place
//   reduce_scatter  input [size * n] -> output [n]: rank r gets the reduced
//                   slice r (elements [r*n, (r+1)*n) of the flattened input)
//   all_gather      input [n] -> output [size * n]: every rank's input, in
//                   rank order
//   broadcast       root's tensor to every rank, in place
//   barrier         returns once every rank has entered it
//   split           sub-groups (MPI_Comm_split's colour/key contract)
//
// Implementations: InProcessGroup (ranks as threads of one process; tests),
// MpiCommunicator (host memory, Open MPI; parallel/mpi_communicator.h),
// NcclCommunicator (device memory; parallel/nccl_communicator.h) and
// SingleProcessCommunicator (size 1: every collective is the identity).
//
// The collective contract (MPI's): every rank of a group makes the same
// sequence of calls, with tensors of equal dtype and element count. Tensors
// are contiguous; dtypes f32, bf16, f16 (summed in fp32 and rounded once,
// where the implementation can), i32, i64. Each call names itself (`what`)
// so that a failure or a timeout can say which collective, at which step, on
// which rank and host, did not complete.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace llmft::parallel {

enum class ReduceOp { kSum, kMax };
const char* reduce_op_name(ReduceOp op);

// What an asynchronous collective returns. The tensors it was given must
// stay alive and untouched until wait() returns. wait() throws llmft::Error
// (kRuntime) when the collective failed; a collective that has not finished
// within the communicator's timeout ends the process (see hang guard below).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  // True once the collective has completed (never blocks).
  virtual bool completed() = 0;
  // Seconds the collective itself took once completed (from the moment the
  // implementation started it to its end), for overlap measurements.
  virtual double seconds() const = 0;
};

// A Work that is already complete (size-1 groups, empty tensors).
class CompletedWork final : public Work {
 public:
  void wait() override {}
  bool completed() override { return true; }
  double seconds() const override { return 0.0; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Whether collectives take device (CUDA) tensors (NCCL) or host ones.
  virtual bool device_memory() const { return false; }

  virtual std::unique_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op, std::string_view what) = 0;
  virtual std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp op,
                                                     std::string_view what) = 0;
  virtual std::unique_ptr<Work> all_gather_async(const Tensor& input, Tensor& output, std::string_view what) = 0;
  virtual std::unique_ptr<Work> broadcast_async(Tensor& tensor, int root, std::string_view what) = 0;
  virtual std::unique_ptr<Work> barrier_async(std::string_view what) = 0;
  // Ranks with equal `color` form one new group, ranked by (key, rank).
  // Collective over this group.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // The optimizer step the caller is in, for hang and failure messages.
  void set_step(int64_t step) { step_ = step; }
  int64_t step() const { return step_; }

  // Blocking forms.
  void all_reduce(Tensor& tensor, ReduceOp op, std::string_view what) { all_reduce_async(tensor, op, what)->wait(); }
  void reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op, std::string_view what) {
    reduce_scatter_async(input, output, op, what)->wait();
  }
  void all_gather(const Tensor& input, Tensor& output, std::string_view what) {
    all_gather_async(input, output, what)->wait();
  }
  void broadcast(Tensor& tensor, int root, std::string_view what) { broadcast_async(tensor, root, what)->wait(); }
  void barrier(std::string_view what) { barrier_async(what)->wait(); }

  // Thin scalar and host-buffer wrappers over all_reduce.
  void all_reduce_sum(std::span<float> values, std::string_view what = "all_reduce_sum(f32)");
  // Doubles are all-gathered and summed in rank order, so every rank gets
  // the same bits whatever the implementation's reduction order.
  double all_reduce_sum(double value, std::string_view what = "all_reduce_sum(f64)");
  int64_t all_reduce_sum(int64_t value, std::string_view what = "all_reduce_sum(i64)");
  int64_t all_reduce_max(int64_t value, std::string_view what = "all_reduce_max(i64)");
  // Every rank's string, in rank order (lengths all-gathered, then the bytes
  // padded to the longest).
  std::vector<std::string> all_gather_strings(const std::string& value, std::string_view what = "all_gather_strings");

 private:
  int64_t step_ = 0;
};

// One process: rank 0 of 1; every collective is the identity (all_gather
// and reduce_scatter copy).
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  bool device_memory() const override { return true; }  // any tensor: nothing moves
  std::unique_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op, std::string_view what) override;
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp op,
                                             std::string_view what) override;
  std::unique_ptr<Work> all_gather_async(const Tensor& input, Tensor& output, std::string_view what) override;
  std::unique_ptr<Work> broadcast_async(Tensor& tensor, int root, std::string_view what) override;
  std::unique_ptr<Work> barrier_async(std::string_view what) override;
  std::unique_ptr<Communicator> split(int color, int key) override;
};

// Argument checks shared by the implementations: equal dtypes, the element
// counts reduce_scatter/all_gather need, a supported dtype, root in range.
// Each throws llmft::Error (kRuntime) naming the collective.
void check_collective_dtype(const Tensor& tensor, std::string_view what);
void check_gather_shapes(const Tensor& shard, const Tensor& full, int group_size, std::string_view what);

// The host name for failure messages ("localhost" if unknown).
std::string host_name();

// The hang guard's message: "<what> did not complete within <T> s at step
// <S> on rank <R> of <N> (host <H>)...".
std::string timeout_message(std::string_view what, double timeout_seconds, int64_t step, int rank, int size);

}  // namespace llmft::parallel
