// A "CUDA" backend whose device memory is host memory (for the emulator):
// same caching-allocator policy as core/cuda_backend.cc, fresh blocks filled
// with 0xff bytes (NaN in every float dtype) so reads of unwritten memory show.
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "core/context.h"
#include "core/cuda_resources.h"
#include "core/cuda_runtime.h"

namespace llmft {

bool cuda_backend_built() { return true; }
int cuda_device_count() { return 1; }
void cuda_memset_zero(void* p, size_t bytes, void*) { std::memset(p, 0, bytes); }
void cuda_copy(void* d, const void* s, size_t bytes, bool, bool) { if (bytes) std::memcpy(d, s, bytes); }
void copy_bytes(void* d, Device, const void* s, Device, size_t bytes) { if (bytes) std::memcpy(d, s, bytes); }

namespace {
size_t round_allocation(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = 2u << 20, kLargeThreshold = 1u << 20;
  if (bytes == 0) bytes = 1;
  size_t granule = bytes < kLargeThreshold ? kSmall : kLarge;
  return (bytes + granule - 1) / granule * granule;
}
class FakeCachingAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    size_t rounded = round_allocation(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = nullptr;
    auto it = free_.find(rounded);
    if (it != free_.end() && !it->second.empty()) { p = it->second.back(); it->second.pop_back(); }
    else { p = std::aligned_alloc(256, rounded); }
    std::memset(p, 0xff, rounded);
    record_allocation(rounded);
    return p;
  }
  void deallocate(void* p, size_t bytes) override {
    size_t rounded = round_allocation(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    free_[rounded].push_back(p);
    record_deallocation(rounded);
  }
  Device device() const override { return Device::cuda(0); }
 private:
  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;
};
}  // namespace

std::unique_ptr<Allocator> make_cuda_caching_allocator(int) { return std::make_unique<FakeCachingAllocator>(); }

std::unique_ptr<Context> Context::cuda(int device_index, uint64_t seed) {
  std::unique_ptr<Context> context(new Context());
  context->device_ = Device::cuda(device_index);
  context->seed_ = seed;
  context->owned_allocator_ = make_cuda_caching_allocator(device_index);
  context->allocator_ = context->owned_allocator_.get();
  auto resources = std::make_unique<CudaResources>();
  resources->blaslt_workspace_bytes = 1 << 20;
  resources->blaslt_workspace = std::malloc(1 << 20);
  resources->multiprocessor_count = 1;  // keeps emulated grids small
  context->cuda_ = std::move(resources);
  return context;
}
Context::Context() = default;
Context::~Context() { if (cuda_) std::free(cuda_->blaslt_workspace); }
void* Context::cuda_stream() const { return nullptr; }
void Context::synchronize() {}

}  // namespace llmft
