// MPI communicators on host memory (Open MPI), and the process's MPI runtime.
//
// Every MPI call of the process is made by one dedicated thread, which also
// calls MPI_Init_thread (so MPI_THREAD_FUNNELED suffices) and MPI_Finalize.
// Collectives are queued to it in call order (the MPI matching order), and
// it starts each one as a non-blocking MPI collective and polls it to
// completion, sleeping briefly between polls so that a rank's compute thread
// keeps its core: that is what lets a gradient bucket's all-reduce run while
// the backward goes on (Open MPI progresses non-blocking collectives only
// inside MPI calls, and a blocking call would spin on the core the backward
// needs). bf16/f16 reduce through MPI user operations (parallel/host_reduce.h).
//
// Hang guard: a collective that has not completed within the timeout prints
// parallel::timeout_message on stderr and calls MPI_Abort, which ends every
// rank of the job (mpirun reports it), instead of hanging forever.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace llmft::parallel {

class MpiRuntime;

// True when this process was started by an MPI launcher (mpirun/mpiexec of
// Open MPI, or srun --mpi=pmix/pmi2), judged by the variables they set.
bool launched_by_mpi_launcher();

struct MpiWorld {
  std::shared_ptr<MpiRuntime> runtime;      // keeps MPI alive; finalizes when the last owner goes
  std::unique_ptr<Communicator> world;     // MPI_COMM_WORLD
  int local_rank = 0;                      // rank among the processes of this node
  int local_size = 1;
};

// Initializes MPI on its own thread and returns the world communicator.
// Throws llmft::Error (kRuntime) when MPI cannot start.
MpiWorld start_mpi(double timeout_seconds);

// Ends every rank of the job with `exit_code` (MPI_Abort): for a rank that
// failed while others may be waiting in a collective. Returns only when MPI
// is not running.
void abort_mpi_job(const std::shared_ptr<MpiRuntime>& runtime, int exit_code);

}  // namespace llmft::parallel
