// The execution context passed to every op: which device, its stream and
// allocator, library handles, and the run's RNG seed. There are no hidden
// globals: tests can build a CPU and a CUDA context side by side.
#pragma once

#include <cstdint>
#include <memory>

#include "core/allocator.h"
#include "core/dtype.h"
#include "core/tensor.h"

namespace llmft {

// CUDA resources owned by a context (stream, cuBLASLt handle and workspace).
// Defined only in CUDA builds; opaque elsewhere.
struct CudaResources;

class Context {
 public:
  // A CPU context. `num_threads` <= 0 keeps OpenMP's/OpenBLAS's defaults.
  static std::unique_ptr<Context> cpu(uint64_t seed = 0, int num_threads = 0);
  // A CUDA context on `device_index` with its own stream and caching allocator.
  // Throws llmft::Error when the CUDA backend is not built or no such GPU exists.
  static std::unique_ptr<Context> cuda(int device_index, uint64_t seed = 0);

  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  Device device() const { return device_; }
  bool is_cuda() const { return device_.is_cuda(); }
  Allocator& allocator() { return *allocator_; }
  uint64_t seed() const { return seed_; }

  // Tensors on this context's device.
  Tensor empty(const Shape& shape, DType dtype) { return Tensor::empty(shape, dtype, *allocator_); }
  Tensor zeros(const Shape& shape, DType dtype);
  // Copies a host tensor to this device (a shallow share when already here).
  Tensor upload(const Tensor& host) const;

  // Deterministic kernels (precision.deterministic): when set, the CUDA
  // backend sums every gradient in a fixed order, without float atomics
  // (attention's dQ, the f32 embedding gradient, the gradient statistics), so
  // a run repeats bit for bit on the same GPU, at some speed. The CPU backend
  // is deterministic either way (every sum has a fixed thread and order).
  bool deterministic() const { return deterministic_; }
  void set_deterministic(bool deterministic) { deterministic_ = deterministic; }

  // Waits for all work queued on this context's stream.
  void synchronize();

  // CUDA only: the stream (cudaStream_t) and resources; null on CPU.
  void* cuda_stream() const;
  CudaResources* cuda_resources() const { return cuda_.get(); }

 private:
  Context();
  Device device_;
  uint64_t seed_ = 0;
  bool deterministic_ = false;
  std::unique_ptr<Allocator> owned_allocator_;
  Allocator* allocator_ = nullptr;
  std::unique_ptr<CudaResources> cuda_;
};

}  // namespace llmft
