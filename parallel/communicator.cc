#include "parallel/communicator.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cstring>

#include "core/error.h"

namespace llmft::parallel {

const char* reduce_op_name(ReduceOp op) { return op == ReduceOp::kSum ? "sum" : "max"; }

// ---- Scalar and host-buffer wrappers ---------------------------------------------

void Communicator::all_reduce_sum(std::span<float> values, std::string_view what) {
  if (size() == 1 || values.empty()) return;
  Tensor view = Tensor::borrow(values.data(), {static_cast<int64_t>(values.size())}, DType::kF32, Device::cpu());
  all_reduce(view, ReduceOp::kSum, what);
}

double Communicator::all_reduce_sum(double value, std::string_view what) {
  if (size() == 1) return value;
  Tensor mine = Tensor::empty_cpu({1}, DType::kI64);
  mine.data<int64_t>()[0] = std::bit_cast<int64_t>(value);
  Tensor every = Tensor::empty_cpu({size()}, DType::kI64);
  all_gather(mine, every, what);
  double sum = 0.0;
  for (int r = 0; r < size(); ++r) sum += std::bit_cast<double>(every.data<int64_t>()[r]);
  return sum;
}

namespace {
int64_t reduce_scalar(Communicator& communicator, int64_t value, ReduceOp op, std::string_view what) {
  if (communicator.size() == 1) return value;
  Tensor scalar = Tensor::empty_cpu({1}, DType::kI64);
  scalar.data<int64_t>()[0] = value;
  communicator.all_reduce(scalar, op, what);
  return scalar.data<int64_t>()[0];
}
}  // namespace

int64_t Communicator::all_reduce_sum(int64_t value, std::string_view what) {
  return reduce_scalar(*this, value, ReduceOp::kSum, what);
}

int64_t Communicator::all_reduce_max(int64_t value, std::string_view what) {
  return reduce_scalar(*this, value, ReduceOp::kMax, what);
}

std::vector<std::string> Communicator::all_gather_strings(const std::string& value, std::string_view what) {
  if (size() == 1) return {value};
  Tensor length = Tensor::empty_cpu({1}, DType::kI64);
  length.data<int64_t>()[0] = static_cast<int64_t>(value.size());
  Tensor lengths = Tensor::empty_cpu({size()}, DType::kI64);
  all_gather(length, lengths, what);
  int64_t longest = 0;
  for (int r = 0; r < size(); ++r) longest = std::max(longest, lengths.data<int64_t>()[r]);
  const int64_t words = std::max<int64_t>(1, (longest + 7) / 8);  // bytes carried in i64 words
  Tensor mine = Tensor::zeros_cpu({words}, DType::kI64);
  std::memcpy(mine.raw_data(), value.data(), value.size());
  Tensor every = Tensor::empty_cpu({size() * words}, DType::kI64);
  all_gather(mine, every, what);
  std::vector<std::string> strings;
  for (int r = 0; r < size(); ++r) {
    const char* begin = static_cast<const char*>(every.raw_data()) + static_cast<size_t>(r * words * 8);
    strings.emplace_back(begin, static_cast<size_t>(lengths.data<int64_t>()[r]));
  }
  return strings;
}

// ---- Single process ---------------------------------------------------------------

std::unique_ptr<Work> SingleProcessCommunicator::all_reduce_async(Tensor&, ReduceOp, std::string_view) {
  return std::make_unique<CompletedWork>();
}

std::unique_ptr<Work> SingleProcessCommunicator::reduce_scatter_async(const Tensor& input, Tensor& output, ReduceOp,
                                                                      std::string_view what) {
  check_gather_shapes(output, input, 1, what);
  if (output.raw_data() != input.raw_data()) output.copy_from(input.reshape(output.shape()));
  return std::make_unique<CompletedWork>();
}

std::unique_ptr<Work> SingleProcessCommunicator::all_gather_async(const Tensor& input, Tensor& output,
                                                                  std::string_view what) {
  check_gather_shapes(input, output, 1, what);
  if (output.raw_data() != input.raw_data()) output.copy_from(input.reshape(output.shape()));
  return std::make_unique<CompletedWork>();
}

std::unique_ptr<Work> SingleProcessCommunicator::broadcast_async(Tensor&, int root, std::string_view what) {
  if (root != 0) throw_runtime(what, ": broadcast root ", root, " outside a group of 1");
  return std::make_unique<CompletedWork>();
}

std::unique_ptr<Work> SingleProcessCommunicator::barrier_async(std::string_view) {
  return std::make_unique<CompletedWork>();
}

std::unique_ptr<Communicator> SingleProcessCommunicator::split(int, int) {
  return std::make_unique<SingleProcessCommunicator>();
}

// ---- Shared checks and messages -----------------------------------------------------

void check_collective_dtype(const Tensor& tensor, std::string_view what) {
  if (!tensor.defined()) throw_runtime(what, ": undefined tensor");
  switch (tensor.dtype()) {
    case DType::kF32:
    case DType::kBF16:
    case DType::kF16:
    case DType::kI32:
    case DType::kI64:
      return;
  }
  throw_runtime(what, ": unsupported dtype in ", tensor.to_string());
}

void check_gather_shapes(const Tensor& shard, const Tensor& full, int group_size, std::string_view what) {
  check_collective_dtype(shard, what);
  check_collective_dtype(full, what);
  if (shard.dtype() != full.dtype())
    throw_runtime(what, ": dtypes differ: shard ", shard.to_string(), ", full ", full.to_string());
  if (full.numel() != shard.numel() * group_size)
    throw_runtime(what, ": the full tensor ", full.to_string(), " must hold ", group_size, " x the shard ",
                  shard.to_string());
  if (shard.device() != full.device())
    throw_runtime(what, ": shard and full tensor on different devices: ", shard.to_string(), ", ", full.to_string());
}

std::string host_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

std::string timeout_message(std::string_view what, double timeout_seconds, int64_t step, int rank, int size) {
  return str_cat(what, " did not complete within ", timeout_seconds, " s at step ", step, " on rank ", rank, " of ",
                 size, " (host ", host_name(),
                 "): another rank stopped, died or took a different path; aborting every rank "
                 "(parallel.timeout_s sets the limit)");
}

}  // namespace llmft::parallel
