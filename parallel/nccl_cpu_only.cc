// Stand-in for the NCCL communicator in builds without the CUDA backend
// (parallel/nccl_communicator.cc is compiled only with it).
#include "core/error.h"
#include "parallel/nccl_communicator.h"

namespace llmft::parallel {

bool nccl_communicator_built() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, Context&, double, std::function<void(int)>) {
  throw_runtime("NCCL needs the CUDA backend: this llmft binary was built without it (configure with "
                "-DLLMFT_CUDA=ON); use the MPI communicator on host memory");
}

}  // namespace llmft::parallel
