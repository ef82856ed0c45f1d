#include "core/context.h"

#include <cstring>

#include <omp.h>

#include "core/cuda_runtime.h"

namespace llmft {

std::unique_ptr<Context> Context::cpu(uint64_t seed, int num_threads) {
  std::unique_ptr<Context> context(new Context());
  context->device_ = Device::cpu();
  context->seed_ = seed;
  context->allocator_ = &default_host_allocator();
  if (num_threads > 0) omp_set_num_threads(num_threads);
  return context;
}

Tensor Context::zeros(const Shape& shape, DType dtype) {
  Tensor tensor = empty(shape, dtype);
  if (device_.is_cpu()) {
    std::memset(tensor.raw_data(), 0, tensor.nbytes());
  } else {
    cuda_memset_zero(tensor.raw_data(), tensor.nbytes(), cuda_stream());
  }
  return tensor;
}

Tensor Context::upload(const Tensor& host) const {
  if (host.device() == device_) return host;
  return host.to(*allocator_);
}

}  // namespace llmft
