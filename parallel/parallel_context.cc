#include "parallel/parallel_context.h"

#include "core/error.h"

namespace llmft::parallel {

std::unique_ptr<ParallelContext> ParallelContext::from_launcher(int64_t tp, double timeout_seconds) {
  if (!launched_by_mpi_launcher()) return over(std::make_unique<SingleProcessCommunicator>(), tp);
  MpiWorld mpi = start_mpi(timeout_seconds);
  auto context = over(std::move(mpi.world), tp, mpi.local_rank, mpi.local_size);
  context->mpi_runtime_ = std::move(mpi.runtime);
  return context;
}

std::unique_ptr<ParallelContext> ParallelContext::single_process() {
  return over(std::make_unique<SingleProcessCommunicator>());
}

std::unique_ptr<ParallelContext> ParallelContext::over(std::unique_ptr<Communicator> world, int64_t tp,
                                                       int local_rank, int local_size) {
  const int size = world->size();
  if (tp < 1 || size % tp != 0)
    throw_bad_input("parallel.tp: ", tp, " does not divide the ", size,
                    " launched process(es); the world is dp x tp ranks");
  std::unique_ptr<ParallelContext> context(new ParallelContext());
  const int rank = world->rank();
  const int tp_size = static_cast<int>(tp);
  // tp group: consecutive ranks (one replica); dp group: equal tp rank.
  context->tp_ = world->split(rank / tp_size, rank);
  context->dp_ = world->split(rank % tp_size, rank);
  context->world_ = std::move(world);
  context->local_rank_ = local_rank;
  context->local_size_ = local_size;
  return context;
}

ParallelContext::~ParallelContext() {
  // Sub-groups before the world, the world before MPI finalizes.
  dp_.reset();
  tp_.reset();
  world_.reset();
}

std::string ParallelContext::describe() const {
  return str_cat("rank ", world_rank(), " of ", world_size(), " (dp ", dp_rank(), "/", dp_size(), ", tp ", tp_rank(),
                 "/", tp_size(), ") on host ", host_name());
}

void ParallelContext::set_step(int64_t step) {
  world_->set_step(step);
  dp_->set_step(step);
  tp_->set_step(step);
}

void ParallelContext::abort_job(int exit_code) {
  if (mpi_runtime_ && world_size() > 1) abort_mpi_job(mpi_runtime_, exit_code);
}

int ParallelContext::cuda_device_for_rank(int visible_devices) const {
  if (local_size_ > visible_devices)
    throw_bad_input("this node runs ", local_size_, " ranks but has ", visible_devices,
                    " visible GPU(s); launch at most one rank per GPU (mpirun -np / --map-by) or set "
                    "CUDA_VISIBLE_DEVICES");
  return local_rank_;
}

}  // namespace llmft::parallel
