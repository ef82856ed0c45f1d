// The CUDA runtime side of core (CUDA builds only): device copies, the caching
// allocator and CUDA contexts. Plain C++ against the runtime API; kernels live
// in kernels/cuda.
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

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

void cuda_memset_zero(void* device_pointer, size_t bytes, void* stream) {
  if (bytes) LLMFT_CUDA_CHECK(cudaMemsetAsync(device_pointer, 0, bytes, static_cast<cudaStream_t>(stream)));
}

void cuda_copy(void* destination, const void* source, size_t bytes, bool destination_on_device,
               bool source_on_device) {
  if (bytes == 0) return;
  cudaMemcpyKind kind = destination_on_device ? (source_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                              : (source_on_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  LLMFT_CUDA_CHECK(cudaMemcpy(destination, source, bytes, kind));
}

void copy_bytes(void* destination, Device destination_device, const void* source, Device source_device,
                size_t bytes) {
  if (destination_device.is_cpu() && source_device.is_cpu()) {
    if (bytes) std::memcpy(destination, source, bytes);
    return;
  }
  cuda_copy(destination, source, bytes, destination_device.is_cuda(), source_device.is_cuda());
}

namespace {

// Size classes: 512-byte granules below 1 MiB, 2 MiB granules above, so a
// block freed by one step serves the same request in the next step.
size_t round_allocation(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = 2u << 20, kLargeThreshold = 1u << 20;
  if (bytes == 0) bytes = 1;
  size_t granule = bytes < kLargeThreshold ? kSmall : kLarge;
  return (bytes + granule - 1) / granule * granule;
}

class CudaCachingAllocator final : public Allocator {
 public:
  explicit CudaCachingAllocator(int device_index) : device_index_(device_index) {}
  ~CudaCachingAllocator() override { release_cached(); }

  void* allocate(size_t bytes) override {
    size_t rounded = round_allocation(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto cached = free_blocks_.find(rounded);
    void* pointer = nullptr;
    if (cached != free_blocks_.end() && !cached->second.empty()) {
      pointer = cached->second.back();
      cached->second.pop_back();
      cached_bytes_ -= rounded;
    } else {
      LLMFT_CUDA_CHECK(cudaSetDevice(device_index_));
      cudaError_t status = cudaMalloc(&pointer, rounded);
      if (status != cudaSuccess) {
        cudaGetLastError();
        release_cached_locked();  // give cached blocks back, then try once more
        status = cudaMalloc(&pointer, rounded);
        if (status != cudaSuccess) {
          throw_runtime("cuda:", device_index_, ": allocation of ", bytes, " bytes failed (", bytes_in_use(),
                        " bytes in use): ", cudaGetErrorString(status));
        }
      }
    }
    record_allocation(rounded);
    return pointer;
  }

  void deallocate(void* pointer, size_t bytes) override {
    size_t rounded = round_allocation(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    free_blocks_[rounded].push_back(pointer);
    cached_bytes_ += rounded;
    record_deallocation(rounded);
  }

  Device device() const override { return Device::cuda(device_index_); }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached_locked();
  }

 private:
  void release_cached_locked() {
    cudaDeviceSynchronize();
    for (auto& [size, blocks] : free_blocks_)
      for (void* block : blocks) cudaFree(block);
    free_blocks_.clear();
    cached_bytes_ = 0;
  }

  int device_index_;
  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_blocks_;
  size_t cached_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Allocator> make_cuda_caching_allocator(int device_index) {
  return std::make_unique<CudaCachingAllocator>(device_index);
}

std::unique_ptr<Context> Context::cuda(int device_index, uint64_t seed) {
  int count = cuda_device_count();
  if (device_index < 0 || device_index >= count) {
    throw_runtime("no CUDA device ", device_index, " (", count, " visible)");
  }
  LLMFT_CUDA_CHECK(cudaSetDevice(device_index));
  std::unique_ptr<Context> context(new Context());
  context->device_ = Device::cuda(device_index);
  context->seed_ = seed;
  context->owned_allocator_ = make_cuda_caching_allocator(device_index);
  context->allocator_ = context->owned_allocator_.get();
  auto resources = std::make_unique<CudaResources>();
  resources->device_index = device_index;
  // A blocking stream (not cudaStreamNonBlocking): cuda_copy's cudaMemcpy runs
  // on the legacy default stream, which then orders itself after this
  // stream's kernels and before the next ones. With a non-blocking stream a
  // download could read a result still being written, and a pageable upload's
  // DMA could still be in flight when the next kernel reads it.
  LLMFT_CUDA_CHECK(cudaStreamCreateWithFlags(&resources->stream, cudaStreamDefault));
  LLMFT_CUBLAS_CHECK(cublasLtCreate(&resources->blaslt));
  resources->blaslt_workspace_bytes = 32u << 20;
  LLMFT_CUDA_CHECK(cudaMalloc(&resources->blaslt_workspace, resources->blaslt_workspace_bytes));
  LLMFT_CUDA_CHECK(
      cudaDeviceGetAttribute(&resources->multiprocessor_count, cudaDevAttrMultiProcessorCount, device_index));
  context->cuda_ = std::move(resources);
  return context;
}

Context::Context() = default;

Context::~Context() {
  if (cuda_) {
    cudaStreamSynchronize(cuda_->stream);
    if (cuda_->blaslt_workspace) cudaFree(cuda_->blaslt_workspace);
    if (cuda_->blaslt) cublasLtDestroy(cuda_->blaslt);
    if (cuda_->stream) cudaStreamDestroy(cuda_->stream);
  }
}

void* Context::cuda_stream() const { return cuda_ ? cuda_->stream : nullptr; }

void Context::synchronize() {
  if (cuda_) LLMFT_CUDA_CHECK(cudaStreamSynchronize(cuda_->stream));
}

}  // namespace llmft
