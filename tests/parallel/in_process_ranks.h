// Runs a test body once per rank, the ranks as threads of this process joined
// by an in-process group (parallel/in_process_communicator.h).
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "parallel/in_process_communicator.h"

namespace llmft::parallel::testing_support {

// Runs body(rank communicator) on `size` threads; rethrows the first failure.
inline void on_ranks(int size, const std::function<void(Communicator&)>& body, double timeout_seconds = 30.0) {
  std::shared_ptr<InProcessGroup> group = InProcessGroup::create(size, timeout_seconds);
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  for (int rank = 0; rank < size; ++rank)
    threads.emplace_back([&, rank] {
      try {
        std::unique_ptr<Communicator> communicator = group->communicator(rank);
        body(*communicator);
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  for (std::thread& thread : threads) thread.join();
  for (const std::exception_ptr& error : errors)
    if (error) std::rethrow_exception(error);
}

}  // namespace llmft::parallel::testing_support
