// The NCCL communicator: collectives on device (CUDA) tensors, bootstrapped
// over a host communicator (MPI), as in NVIDIA/nccl-tests' src/common.cu.
//
// Bootstrap: rank 0 of `bootstrap` makes the ncclUniqueId, the 128 bytes are
// broadcast over `bootstrap` (a host tensor), and every rank joins with
// ncclCommInitRank on the context's GPU. `bootstrap` is only used here.
//
// Streams: every collective runs on the communicator's own stream
// (cudaStreamNonBlocking), after the work already queued on the context's
// compute stream (an event recorded there and waited for), so the compute
// stream can go on with independent kernels meanwhile. Work::wait() makes the
// compute stream wait for the collective's end event: it does not block the
// host (kernels queued after it run after the collective), except for
// barrier, whose wait() returns once every rank has entered it. Every tensor
// handed to NCCL is recorded on the NCCL stream with the context allocator's
// record_stream, so freeing it before the collective has finished on the
// device is safe: its block is not reused until then.
//
// Hang guard: a watchdog thread per communicator polls the in-flight
// collectives (cudaEventQuery) and ncclCommGetAsyncError. A collective that
// has not finished `timeout_seconds` after it started on the device, or an
// asynchronous NCCL error, prints "llmft: error: " with the collective's name,
// step, rank and host on stderr, aborts the NCCL communicator and ends the
// job (`abort_job`, e.g. ParallelContext::abort_job's MPI_Abort, then
// std::_Exit(1); under mpirun a rank's abnormal exit also ends the others).
//
// NCCL has no f64, and the host-buffer helpers of Communicator
// (all_reduce_sum on spans and scalars, all_gather_strings) take host tensors,
// which this communicator refuses: use a host (MPI) communicator for them.
#pragma once

#include <functional>
#include <memory>

#include "core/context.h"
#include "parallel/communicator.h"

namespace llmft::parallel {

// Whether this binary has the NCCL communicator (the CUDA backend).
bool nccl_communicator_built();

// An NCCL communicator over the same group as `bootstrap` (collective over
// it), on `context`'s GPU; `context` must outlive it. Tensors passed to its
// collectives must be contiguous CUDA tensors on that GPU. Throws
// llmft::Error (kRuntime) in builds without CUDA, for a CPU context, or when
// NCCL cannot start. `abort_job(exit_code)`, when given, is called by the hang
// guard to end every rank before the process exits.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, Context& context,
                                                     double timeout_seconds = 600.0,
                                                     std::function<void(int)> abort_job = {});

}  // namespace llmft::parallel
