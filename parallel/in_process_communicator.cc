#include "parallel/in_process_communicator.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <tuple>

#include "core/error.h"
#include "parallel/host_reduce.h"

namespace llmft::parallel {

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<InProcessGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }

  std::unique_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op, std::string_view what) override {
    check_host(tensor, what);
    return run(tensor.raw_data(), tensor.numel(), tensor.dtype(), what, [&](std::vector<std::byte>& result) {
      const size_t bytes = tensor.nbytes();
      result.resize(bytes);
      std::memcpy(result.data(), posted(0).input, bytes);
      for (int r = 1; r < size(); ++r) reduce_host(result.data(), posted(r).input, tensor.numel(), tensor.dtype(), op);
      return tensor.raw_data();
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp op,
                                             std::string_view what) override {
    check_gather_shapes(output, input, size(), what);
    check_host(input, what);
    const int64_t count = output.numel();
    const size_t bytes = output.nbytes();
    return run(input.raw_data(), input.numel(), input.dtype(), what, [&](std::vector<std::byte>& result) {
      result.resize(bytes);
      auto slice_of = [&](int r) { return static_cast<const std::byte*>(posted(r).input) + rank_ * bytes; };
      std::memcpy(result.data(), slice_of(0), bytes);
      for (int r = 1; r < size(); ++r) reduce_host(result.data(), slice_of(r), count, input.dtype(), op);
      return output.raw_data();
    });
  }

  std::unique_ptr<Work> all_gather_async(const Tensor& input, Tensor& output, std::string_view what) override {
    check_gather_shapes(input, output, size(), what);
    check_host(input, what);
    const size_t bytes = input.nbytes();
    return run(input.raw_data(), input.numel(), input.dtype(), what, [&](std::vector<std::byte>& result) {
      result.resize(bytes * static_cast<size_t>(size()));
      for (int r = 0; r < size(); ++r) std::memcpy(result.data() + r * bytes, posted(r).input, bytes);
      return output.raw_data();
    });
  }

  std::unique_ptr<Work> broadcast_async(Tensor& tensor, int root, std::string_view what) override {
    check_host(tensor, what);
    if (root < 0 || root >= size()) throw_runtime(what, ": broadcast root ", root, " outside a group of ", size());
    return run(tensor.raw_data(), tensor.numel(), tensor.dtype(), what, [&](std::vector<std::byte>& result) {
      result.resize(tensor.nbytes());
      std::memcpy(result.data(), posted(root).input, tensor.nbytes());
      return tensor.raw_data();
    });
  }

  std::unique_ptr<Work> barrier_async(std::string_view what) override {
    group_->arrive_and_wait(rank_, what, step());
    return std::make_unique<CompletedWork>();
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    InProcessGroup& group = *group_;
    {
      std::lock_guard lock(group.mutex_);
      group.posted_[rank_] = {nullptr, 0, DType::kI32, color, key};
    }
    group.arrive_and_wait(rank_, "split", step());
    std::vector<std::tuple<int, int>> members;  // (key, rank) of my colour
    for (int r = 0; r < size(); ++r)
      if (group.posted_[r].color == color) members.emplace_back(group.posted_[r].key, r);
    std::sort(members.begin(), members.end());
    const int new_rank = static_cast<int>(
        std::find(members.begin(), members.end(), std::make_tuple(key, rank_)) - members.begin());
    std::shared_ptr<InProcessGroup> child;
    {
      std::lock_guard lock(group.mutex_);
      auto& slot = group.children_[{splits_, color}];
      if (!slot) slot.reset(new InProcessGroup(static_cast<int>(members.size()), group.timeout_seconds_));
      child = slot;
    }
    ++splits_;
    group.arrive_and_wait(rank_, "split", step());
    return std::make_unique<InProcessCommunicator>(child, new_rank);
  }

 private:
  const InProcessGroup::Posted& posted(int rank) const { return group_->posted_[rank]; }

  static void check_host(const Tensor& tensor, std::string_view what) {
    check_collective_dtype(tensor, what);
    if (!tensor.device().is_cpu()) throw_runtime(what, ": the in-process communicator takes host tensors, not ",
                                                 tensor.to_string());
  }

  // Post the input, wait for every rank, compute this rank's result from
  // every rank's input into a private buffer (`body` returns where it goes),
  // wait until all have read, then write it: all_reduce and broadcast write
  // the very memory other ranks read.
  template <typename Body>
  std::unique_ptr<Work> run(const void* input, int64_t count, DType dtype, std::string_view what, Body&& body) {
    {
      std::lock_guard lock(group_->mutex_);
      group_->posted_[rank_] = {input, count, dtype, 0, 0};
    }
    group_->arrive_and_wait(rank_, what, step());
    for (int r = 0; r < size(); ++r) {
      if (posted(r).dtype != dtype || posted(r).count != count)
        throw_runtime(what, ": rank ", rank_, " passed ", count, " ", dtype_name(dtype), " elements, rank ", r,
                      " passed ", posted(r).count, " ", dtype_name(posted(r).dtype));
    }
    std::vector<std::byte> result;
    void* destination = body(result);
    group_->arrive_and_wait(rank_, what, step());
    std::memcpy(destination, result.data(), result.size());
    return std::make_unique<CompletedWork>();
  }

  std::shared_ptr<InProcessGroup> group_;
  int rank_;
  int64_t splits_ = 0;
};

std::shared_ptr<InProcessGroup> InProcessGroup::create(int size, double timeout_seconds) {
  if (size < 1) throw_runtime("InProcessGroup: size ", size, " < 1");
  return std::shared_ptr<InProcessGroup>(new InProcessGroup(size, timeout_seconds));
}

InProcessGroup::InProcessGroup(int size, double timeout_seconds)
    : size_(size), timeout_seconds_(timeout_seconds), posted_(static_cast<size_t>(size)) {}

std::unique_ptr<Communicator> InProcessGroup::communicator(int rank) {
  if (rank < 0 || rank >= size_) throw_runtime("InProcessGroup: rank ", rank, " outside a group of ", size_);
  return std::make_unique<InProcessCommunicator>(shared_from_this(), rank);
}

void InProcessGroup::arrive_and_wait(int rank, std::string_view what, int64_t step) {
  std::unique_lock lock(mutex_);
  const uint64_t generation = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    arrived_all_.notify_all();
    return;
  }
  const auto timeout = std::chrono::duration<double>(timeout_seconds_);
  if (!arrived_all_.wait_for(lock, timeout, [&] { return generation_ != generation; }))
    throw Error(ErrorKind::kRuntime, timeout_message(what, timeout_seconds_, step, rank, size_));
}

}  // namespace llmft::parallel
