// Stand-ins for the CUDA runtime in builds without the CUDA backend: every
// entry point says clearly that this binary cannot use a GPU.
#include <cstring>
#include <memory>

#include "core/context.h"
#include "core/cuda_runtime.h"

namespace llmft {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw_runtime(what, ": this llmft binary was built without the CUDA backend (configure with -DLLMFT_CUDA=ON)");
}
}  // namespace

bool cuda_backend_built() { return false; }
int cuda_device_count() { return 0; }
std::unique_ptr<Allocator> make_cuda_caching_allocator(int) { return nullptr; }
void cuda_memset_zero(void*, size_t, void*) { no_cuda("cuda_memset_zero"); }
void cuda_copy(void*, const void*, size_t, bool, bool) { no_cuda("cuda_copy"); }

struct CudaResources {};

std::unique_ptr<Context> Context::cuda(int, uint64_t) { no_cuda("Context::cuda"); }
Context::Context() = default;
Context::~Context() = default;
void* Context::cuda_stream() const { return nullptr; }
void Context::synchronize() {}

void copy_bytes(void* destination, Device destination_device, const void* source, Device source_device,
                size_t bytes) {
  if (!destination_device.is_cpu() || !source_device.is_cpu()) no_cuda("copy_bytes");
  if (bytes) std::memcpy(destination, source, bytes);
}

}  // namespace llmft
