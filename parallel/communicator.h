// The communicator the trainer reduces over (DESIGN.md parallel/). Only what
// the training loop needs today: the rank, the number of ranks, and sum
// all-reduces of an fp32 buffer (gradients), a double (the summed loss) and
// an int64 (trained-token counts). MPI and NCCL implementations plug in
// behind this interface; SingleProcessCommunicator is the size-1 case, where
// every reduction is the identity.
//
// Every rank must make the same sequence of calls with the same buffer sizes
// (the MPI collective contract); the trainer's loop does so by construction.
#pragma once

#include <cstdint>
#include <span>

namespace llmft::parallel {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every element becomes the sum of that element over all ranks.
  // Host memory, fp32.
  virtual void all_reduce_sum(std::span<float> values) = 0;
  // The sum of `value` over all ranks, returned on every rank.
  virtual double all_reduce_sum(double value) = 0;
  virtual int64_t all_reduce_sum(int64_t value) = 0;
};

// One process: rank 0 of 1; reductions return their input.
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(std::span<float>) override {}
  double all_reduce_sum(double value) override { return value; }
  int64_t all_reduce_sum(int64_t value) override { return value; }
};

}  // namespace llmft::parallel
