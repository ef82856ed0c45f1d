// The CUDA runtime side of core (CUDA builds only): device copies, the caching
// allocator and CUDA contexts. Plain C++ against the runtime API; kernels live
// in kernels/cuda.
#include <algorithm>
#include <cstring>
#include <iterator>
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

// Stream-aware as in PyTorch's CUDACachingAllocator (recordStream): a block
// used on another stream than the context's (record_stream) is, when freed,
// parked with one event per such stream recorded at the moment of the free,
// and joins the free lists only once every event has completed. Parked
// blocks are polled with cudaEventQuery on each allocation; when cudaMalloc
// fails, the device is synchronised (which completes them all) before the
// cache is released and the allocation retried. bytes_in_use/peak count
// blocks callers hold, so a parked block has already left them.
class CudaCachingAllocator final : public Allocator {
 public:
  explicit CudaCachingAllocator(int device_index) : device_index_(device_index) {}
  ~CudaCachingAllocator() override {
    release_cached();
    for (cudaEvent_t event : spare_events_) cudaEventDestroy(event);
  }

  void* allocate(size_t bytes) override {
    size_t rounded = round_allocation(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    if (!parked_.empty()) collect_parked_locked(/*synchronize=*/false);
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
        release_cached_locked();  // give cached (and parked) blocks back, then try once more
        status = cudaMalloc(&pointer, rounded);
        if (status != cudaSuccess) {
          throw_runtime("cuda:", device_index_, ": allocation of ", bytes, " bytes failed (", bytes_in_use(),
                        " bytes in use): ", cudaGetErrorString(status));
        }
      }
    }
    live_blocks_[static_cast<char*>(pointer)] = LiveBlock{rounded, {}};
    record_allocation(rounded);
    return pointer;
  }

  // Never throws (it runs in Storage's destructor): a failure to record an
  // event falls back to synchronising the device, after which the block is
  // free to reuse.
  void deallocate(void* pointer, size_t bytes) override {
    size_t rounded = round_allocation(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    record_deallocation(rounded);
    std::vector<cudaStream_t> streams;
    if (auto live = live_blocks_.find(static_cast<char*>(pointer)); live != live_blocks_.end()) {
      streams = std::move(live->second.streams);
      live_blocks_.erase(live);
    }
    if (!streams.empty()) {
      ParkedBlock parked{pointer, rounded, {}};
      // Events are made on this allocator's device (the streams' device); the
      // caller's current device is left as it was.
      int caller_device = device_index_;
      cudaGetDevice(&caller_device);
      bool recorded = cudaSetDevice(device_index_) == cudaSuccess;
      for (cudaStream_t stream : streams) {
        if (!recorded) break;
        cudaEvent_t event = take_event_locked();
        recorded = event != nullptr && cudaEventRecord(event, stream) == cudaSuccess;
        if (event != nullptr) parked.events.push_back(event);
      }
      if (caller_device != device_index_) cudaSetDevice(caller_device);
      if (recorded) {
        parked_.push_back(std::move(parked));
        return;
      }
      cudaGetLastError();
      cudaDeviceSynchronize();
      spare_events_.insert(spare_events_.end(), parked.events.begin(), parked.events.end());
    }
    free_blocks_[rounded].push_back(pointer);
    cached_bytes_ += rounded;
  }

  void record_stream(void* pointer, void* cuda_stream) override {
    if (pointer == nullptr || cuda_stream == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    // The block whose range holds `pointer`: the last one starting at or before it.
    auto after = live_blocks_.upper_bound(static_cast<char*>(pointer));
    if (after == live_blocks_.begin()) return;
    auto block = std::prev(after);
    if (static_cast<char*>(pointer) >= block->first + block->second.bytes) return;  // not ours
    auto stream = static_cast<cudaStream_t>(cuda_stream);
    std::vector<cudaStream_t>& streams = block->second.streams;
    if (std::find(streams.begin(), streams.end(), stream) == streams.end()) streams.push_back(stream);
  }

  void forget_stream(void* cuda_stream) override {
    auto stream = static_cast<cudaStream_t>(cuda_stream);
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [base, block] : live_blocks_) std::erase(block.streams, stream);
  }

  Device device() const override { return Device::cuda(device_index_); }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached_locked();
  }

 private:
  struct LiveBlock {
    size_t bytes = 0;
    std::vector<cudaStream_t> streams;  // other streams recorded with record_stream
  };
  struct ParkedBlock {
    void* pointer = nullptr;
    size_t bytes = 0;
    std::vector<cudaEvent_t> events;  // one per recorded stream, recorded at the free
  };

  // Moves parked blocks whose events have all completed to the free lists
  // (every parked block when `synchronize`, after waiting for its events).
  void collect_parked_locked(bool synchronize) {
    std::erase_if(parked_, [&](ParkedBlock& parked) {
      for (cudaEvent_t event : parked.events) {
        cudaError_t status = synchronize ? cudaEventSynchronize(event) : cudaEventQuery(event);
        if (status == cudaErrorNotReady) return false;
        // Any other error is the device's (sticky, reported by the next
        // checked call); the block is not worth keeping parked for it.
        if (status != cudaSuccess) cudaGetLastError();
      }
      spare_events_.insert(spare_events_.end(), parked.events.begin(), parked.events.end());
      free_blocks_[parked.bytes].push_back(parked.pointer);
      cached_bytes_ += parked.bytes;
      return true;
    });
  }

  cudaEvent_t take_event_locked() {
    if (!spare_events_.empty()) {
      cudaEvent_t event = spare_events_.back();
      spare_events_.pop_back();
      return event;
    }
    cudaEvent_t event = nullptr;
    if (cudaEventCreateWithFlags(&event, cudaEventDisableTiming) != cudaSuccess) return nullptr;
    return event;
  }

  void release_cached_locked() {
    cudaDeviceSynchronize();
    collect_parked_locked(/*synchronize=*/true);
    for (auto& [size, blocks] : free_blocks_)
      for (void* block : blocks) cudaFree(block);
    free_blocks_.clear();
    cached_bytes_ = 0;
  }

  int device_index_;
  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_blocks_;
  size_t cached_bytes_ = 0;
  std::map<char*, LiveBlock> live_blocks_;  // handed out, by start address
  std::vector<ParkedBlock> parked_;         // freed, waiting for other streams
  std::vector<cudaEvent_t> spare_events_;
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
