// Run under mpirun by hang_guard.sh: a job in which one rank misbehaves.
//   skip  rank 1 skips the all-reduce of step 7 and stalls (as a rank stuck
//         in its data loader would): the job must end within the timeout
//         with the hang guard's message instead of waiting for it
//         (a rank that skips into a *different* collective is caught by MPI
//         itself: Open MPI reports the mismatch as MPI_ERR_TRUNCATE)
//   die   rank 1 dies (SIGKILL) at step 7 while rank 0 is in an all-reduce:
//         the other ranks must exit non-zero with a message
// usage: hang_probe skip|die TIMEOUT_SECONDS
#include <chrono>
#include <csignal>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "parallel/parallel_context.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: hang_probe skip|die TIMEOUT_SECONDS\n");
    return 2;
  }
  const std::string mode = argv[1];
  auto grid = llmft::parallel::ParallelContext::from_launcher(1, std::atof(argv[2]));
  llmft::parallel::Communicator& world = grid->world();
  for (int64_t step = 1; step <= 7; ++step) {
    grid->set_step(step);
    llmft::Tensor gradients = llmft::Tensor::zeros_cpu({1024}, llmft::DType::kF32);
    if (step == 7 && world.rank() == 1) {
      if (mode == "die") std::raise(SIGKILL);
      std::this_thread::sleep_for(std::chrono::seconds(120));  // stalls past every timeout
      continue;
    }
    world.all_reduce(gradients, llmft::parallel::ReduceOp::kSum, "data-parallel gradient all-reduce");
  }
  std::printf("hang_probe: rank %d finished all steps (the guard failed)\n", world.rank());
  return 0;
}
