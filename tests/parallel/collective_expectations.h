// Expectations every Communicator implementation must meet, from inputs
// each rank can compute for any rank: rank r's element i is r + 1 + i / 2
// (exact in every dtype used here), so sums, maxima, gathers and scatters
// have closed forms checked element by element.
#pragma once

#include <gtest/gtest.h>

#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace llmft::parallel::testing_support {

inline float input_value(int rank, int64_t i) { return static_cast<float>(rank + 1) + 0.5f * static_cast<float>(i); }

inline Tensor rank_input(int rank, int64_t count, DType dtype, int64_t first = 0) {
  std::vector<float> values;
  for (int64_t i = 0; i < count; ++i) values.push_back(input_value(rank, first + i));
  if (dtype == DType::kI64 || dtype == DType::kI32) {
    Tensor tensor = Tensor::empty_cpu({count}, dtype);
    for (int64_t i = 0; i < count; ++i) {
      const auto value = static_cast<int64_t>(values[static_cast<size_t>(i)] * 2);  // integers: twice the value
      if (dtype == DType::kI64) tensor.data<int64_t>()[i] = value;
      else tensor.data<int32_t>()[i] = static_cast<int32_t>(value);
    }
    return tensor;
  }
  return Tensor::from_floats({count}, values, dtype);
}

inline std::vector<float> as_floats(const Tensor& tensor) { return tensor.to_floats(); }

inline float scale_for(DType dtype) { return dtype == DType::kI64 || dtype == DType::kI32 ? 2.0f : 1.0f; }

inline void expect_collectives(Communicator& communicator) {
  const int rank = communicator.rank(), size = communicator.size();
  const int64_t count = 6;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kI64}) {
    SCOPED_TRACE(std::string("dtype ") + std::string(dtype_name(dtype)) + ", rank " + std::to_string(rank));
    const float scale = scale_for(dtype);

    Tensor sum = rank_input(rank, count, dtype);
    communicator.all_reduce(sum, ReduceOp::kSum, "test all_reduce sum");
    Tensor maximum = rank_input(rank, count, dtype);
    communicator.all_reduce(maximum, ReduceOp::kMax, "test all_reduce max");
    for (int64_t i = 0; i < count; ++i) {
      float expected_sum = 0.0f;
      for (int r = 0; r < size; ++r) expected_sum += input_value(r, i);
      EXPECT_EQ(as_floats(sum)[static_cast<size_t>(i)], scale * expected_sum) << "all_reduce sum, element " << i;
      EXPECT_EQ(as_floats(maximum)[static_cast<size_t>(i)], scale * input_value(size - 1, i))
          << "all_reduce max, element " << i;
    }

    // reduce_scatter: rank r gets elements [r*count, (r+1)*count) summed.
    Tensor full = rank_input(rank, count * size, dtype);
    Tensor shard = Tensor::empty_cpu({count}, dtype);
    communicator.reduce_scatter(full, shard, ReduceOp::kSum, "test reduce_scatter");
    for (int64_t i = 0; i < count; ++i) {
      float expected = 0.0f;
      for (int r = 0; r < size; ++r) expected += input_value(r, rank * count + i);
      EXPECT_EQ(as_floats(shard)[static_cast<size_t>(i)], scale * expected) << "reduce_scatter, element " << i;
    }

    // all_gather: every rank's input in rank order.
    Tensor mine = rank_input(rank, count, dtype);
    Tensor gathered = Tensor::empty_cpu({count * size}, dtype);
    communicator.all_gather(mine, gathered, "test all_gather");
    for (int r = 0; r < size; ++r)
      for (int64_t i = 0; i < count; ++i)
        EXPECT_EQ(as_floats(gathered)[static_cast<size_t>(r * count + i)], scale * input_value(r, i))
            << "all_gather, rank " << r << " element " << i;

    // broadcast from the last rank.
    Tensor broadcast = rank_input(rank, count, dtype);
    communicator.broadcast(broadcast, size - 1, "test broadcast");
    for (int64_t i = 0; i < count; ++i)
      EXPECT_EQ(as_floats(broadcast)[static_cast<size_t>(i)], scale * input_value(size - 1, i)) << "broadcast";
  }

  // Asynchronous: several in flight at once, waited in reverse order.
  std::vector<Tensor> tensors;
  std::vector<std::unique_ptr<Work>> works;
  for (int k = 0; k < 3; ++k) tensors.push_back(rank_input(rank, 1000, DType::kF32, k));
  for (Tensor& tensor : tensors) works.push_back(communicator.all_reduce_async(tensor, ReduceOp::kSum, "test async"));
  for (size_t k = works.size(); k-- > 0;) works[k]->wait();
  for (size_t k = 0; k < tensors.size(); ++k) {
    EXPECT_TRUE(works[k]->completed());
    float expected = 0.0f;
    for (int r = 0; r < size; ++r) expected += input_value(r, static_cast<int64_t>(k) + 999);
    EXPECT_EQ(tensors[k].to_floats().back(), expected);
  }
  communicator.barrier("test barrier");
}

inline void expect_split(Communicator& communicator) {
  const int rank = communicator.rank(), size = communicator.size();
  // Two colours (even/odd ranks), keys reversing the order inside each.
  std::unique_ptr<Communicator> half = communicator.split(rank % 2, size - rank);
  const int members = (size + 1 - rank % 2) / 2;
  EXPECT_EQ(half->size(), members);
  // Reversed by key: the highest world rank of the colour is rank 0.
  int position = 0;
  for (int r = rank + 2; r < size; r += 2) ++position;
  EXPECT_EQ(half->rank(), position);
  int64_t expected = 0;
  for (int r = rank % 2; r < size; r += 2) expected += r;
  EXPECT_EQ(half->all_reduce_sum(int64_t{rank}), expected);
  // Nested collectives on the parent still work after the split.
  EXPECT_EQ(communicator.all_reduce_sum(int64_t{1}), size);
}

}  // namespace llmft::parallel::testing_support
