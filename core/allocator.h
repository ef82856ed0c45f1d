// Memory allocators. Every allocator counts bytes in use and the peak, so tests
// and `llmft inspect`/benchmarks can report memory against a budget.
#pragma once

#include <atomic>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "core/dtype.h"

namespace llmft {

// What memory holds, for accounting by category (issue 15: the allocators
// report current and peak bytes per category, `llmft inspect --config`
// estimates them). Allocations are counted in the category of the calling
// thread's innermost MemoryCategoryScope (kWorkspace outside any).
enum class MemoryCategory {
  kFrozenWeights,     // base weights without gradients
  kTrainableWeights,  // trainable values and their fp32 AdamW masters
  kOptimizerState,    // AdamW moments
  kGradients,         // parameter gradients (and data-parallel buckets)
  kActivations,       // everything a forward/backward allocates
  kWorkspace,         // the rest: batches, host copies, scratch
};
constexpr int kNumMemoryCategories = 6;
const char* memory_category_name(MemoryCategory category);  // "frozen_weights", ...

MemoryCategory current_memory_category();
// Sets the calling thread's category until destroyed (nestable).
class MemoryCategoryScope {
 public:
  explicit MemoryCategoryScope(MemoryCategory category);
  ~MemoryCategoryScope();
  MemoryCategoryScope(const MemoryCategoryScope&) = delete;
  MemoryCategoryScope& operator=(const MemoryCategoryScope&) = delete;

 private:
  MemoryCategory previous_;
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns memory aligned to at least 64 bytes; throws llmft::Error on failure.
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* pointer, size_t bytes) = 0;
  virtual Device device() const = 0;

  // Stream-ordered reuse (PyTorch's CUDACachingAllocator::recordStream): the
  // block holding `pointer` (its start or any address inside it, so views
  // qualify) is also used by work queued on `cuda_stream` (a cudaStream_t),
  // not only on the context's stream. When such a block is freed it is not
  // handed out again until the work queued on those streams up to the free
  // has completed. No-op for host memory and for pointers this allocator did
  // not hand out.
  virtual void record_stream(void* /*pointer*/, void* /*cuda_stream*/) {}
  // `cuda_stream` is about to be destroyed and all its queued work has
  // completed: forget it wherever it was recorded (its handle may be reused).
  virtual void forget_stream(void* /*cuda_stream*/) {}

  size_t bytes_in_use() const { return bytes_in_use_.load(); }
  size_t peak_bytes_in_use() const { return peak_bytes_.load(); }
  void reset_peak() { peak_bytes_.store(bytes_in_use_.load()); }

  // Bytes of live tensors (Storage) by category, now and at their peak; each
  // category's peak is its own (they need not coincide).
  size_t category_bytes(MemoryCategory category) const {
    return category_bytes_[static_cast<int>(category)].load();
  }
  size_t category_peak(MemoryCategory category) const { return category_peak_[static_cast<int>(category)].load(); }
  void reset_category_peaks();
  // Called by Storage for the tensors it owns.
  void count_category(MemoryCategory category, size_t bytes, bool allocated);

 protected:
  void record_allocation(size_t bytes);
  void record_deallocation(size_t bytes);

 private:
  std::atomic<size_t> bytes_in_use_{0};
  std::atomic<size_t> peak_bytes_{0};
  std::atomic<size_t> category_bytes_[kNumMemoryCategories] = {};
  std::atomic<size_t> category_peak_[kNumMemoryCategories] = {};
};

// Host memory from aligned_alloc (64-byte aligned for AVX-512 loads), with a
// cache of freed large blocks. A training step frees and re-requests the same
// activation and gradient buffers every step; glibc serves blocks that large
// with fresh mmap()s and returns them with munmap(), so every step paid the
// page faults of touching them again (~4.5% of the small-Llama CPU step,
// bench/RESULTS.md). Freed blocks of at least kMinCachedBytes are kept in
// page-granular size classes and handed out again, like the CUDA caching
// allocator. bytes_in_use/peak count the bytes callers asked for and hold,
// never the cache. A block is cached only while the cache holds less than the
// peak in use, so the process holds at most about twice its peak even when
// request sizes keep changing.
class HostAllocator final : public Allocator {
 public:
  static constexpr size_t kMinCachedBytes = size_t{64} << 10;
  static constexpr size_t kCacheGranule = size_t{4} << 10;

  HostAllocator() = default;
  ~HostAllocator() override;
  HostAllocator(const HostAllocator&) = delete;
  HostAllocator& operator=(const HostAllocator&) = delete;

  void* allocate(size_t bytes) override;
  void deallocate(void* pointer, size_t bytes) override;
  Device device() const override { return Device::cpu(); }

  // Bytes held in freed blocks waiting for reuse (not part of bytes_in_use).
  size_t cached_bytes() const;
  // Returns every cached block to the C library.
  void release_cached();

 private:
  void release_cached_locked();

  mutable std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_blocks_;  // size class -> freed blocks
  size_t cached_bytes_ = 0;
};

// The process's default host allocator: plain aligned_alloc plus statistics.
// Contexts may bring their own; this one exists so host tensors can be made
// without a Context (tests, file readers).
HostAllocator& default_host_allocator();

// A caching device allocator (CUDA backend only): freed blocks are kept in
// size-class free lists and reused, so the steady-state training step makes no
// cudaMalloc/cudaFree calls (which synchronise the device). Reuse is safe
// without synchronising because every allocation is used on the context's
// one stream, in order; a block also used on another stream (NCCL's) is
// declared with record_stream and waits for that stream before reuse.
// Returns nullptr when the CUDA backend is not built.
std::unique_ptr<Allocator> make_cuda_caching_allocator(int device_index);

}  // namespace llmft
