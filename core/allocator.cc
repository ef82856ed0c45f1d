#include "core/allocator.h"

#include <cstdlib>

#include "core/error.h"

namespace llmft {

void Allocator::record_allocation(size_t bytes) {
  size_t now = bytes_in_use_.fetch_add(bytes) + bytes;
  size_t peak = peak_bytes_.load();
  while (now > peak && !peak_bytes_.compare_exchange_weak(peak, now)) {
  }
}

void Allocator::record_deallocation(size_t bytes) { bytes_in_use_.fetch_sub(bytes); }

namespace {
thread_local MemoryCategory thread_category = MemoryCategory::kWorkspace;
}  // namespace

const char* memory_category_name(MemoryCategory category) {
  switch (category) {
    case MemoryCategory::kFrozenWeights: return "frozen_weights";
    case MemoryCategory::kTrainableWeights: return "trainable_weights";
    case MemoryCategory::kOptimizerState: return "optimizer_state";
    case MemoryCategory::kGradients: return "gradients";
    case MemoryCategory::kActivations: return "activations";
    case MemoryCategory::kWorkspace: return "workspace";
  }
  return "?";
}

MemoryCategory current_memory_category() { return thread_category; }

MemoryCategoryScope::MemoryCategoryScope(MemoryCategory category) : previous_(thread_category) {
  thread_category = category;
}

MemoryCategoryScope::~MemoryCategoryScope() { thread_category = previous_; }

void Allocator::count_category(MemoryCategory category, size_t bytes, bool allocated) {
  const int index = static_cast<int>(category);
  if (!allocated) {
    category_bytes_[index].fetch_sub(bytes);
    return;
  }
  const size_t now = category_bytes_[index].fetch_add(bytes) + bytes;
  size_t peak = category_peak_[index].load();
  while (now > peak && !category_peak_[index].compare_exchange_weak(peak, now)) {
  }
}

void Allocator::reset_category_peaks() {
  for (int i = 0; i < kNumMemoryCategories; ++i) category_peak_[i].store(category_bytes_[i].load());
}

namespace {

// The class a block of `bytes` is cached under; 0 for blocks too small to cache
// (glibc's arenas reuse those without page faults).
size_t host_size_class(size_t bytes) {
  if (bytes < HostAllocator::kMinCachedBytes) return 0;
  return (bytes + HostAllocator::kCacheGranule - 1) / HostAllocator::kCacheGranule * HostAllocator::kCacheGranule;
}

}  // namespace

HostAllocator::~HostAllocator() { release_cached(); }

void* HostAllocator::allocate(size_t bytes) {
  constexpr size_t kAlignment = 64;
  const size_t size_class = host_size_class(bytes);
  void* pointer = nullptr;
  if (size_class != 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto cached = free_blocks_.find(size_class);
    if (cached != free_blocks_.end() && !cached->second.empty()) {
      pointer = cached->second.back();
      cached->second.pop_back();
      cached_bytes_ -= size_class;
    }
  }
  if (pointer == nullptr) {
    size_t rounded = size_class != 0 ? size_class : (bytes + kAlignment - 1) / kAlignment * kAlignment;
    if (rounded == 0) rounded = kAlignment;
    pointer = std::aligned_alloc(kAlignment, rounded);
    if (pointer == nullptr) {
      release_cached();  // give cached blocks back, then try once more
      pointer = std::aligned_alloc(kAlignment, rounded);
    }
    if (pointer == nullptr)
      throw_runtime("host allocation of ", bytes, " bytes failed (out of memory; ", bytes_in_use(), " bytes in use)");
  }
  record_allocation(bytes);
  return pointer;
}

void HostAllocator::deallocate(void* pointer, size_t bytes) {
  const size_t size_class = host_size_class(bytes);
  record_deallocation(bytes);
  if (size_class != 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Cache while the cache holds less than the peak in use: a step's freed
    // buffers (at most the peak, plus page rounding) all stay for the next step.
    if (cached_bytes_ < peak_bytes_in_use()) {
      free_blocks_[size_class].push_back(pointer);
      cached_bytes_ += size_class;
      return;
    }
  }
  std::free(pointer);
}

size_t HostAllocator::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cached_bytes_;
}

void HostAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached_locked();
}

void HostAllocator::release_cached_locked() {
  for (auto& [size_class, blocks] : free_blocks_)
    for (void* block : blocks) std::free(block);
  free_blocks_.clear();
  cached_bytes_ = 0;
}

HostAllocator& default_host_allocator() {
  // Never destroyed: a host tensor in static storage may be freed after this
  // function's statics would be, and it must still find the cache.
  static HostAllocator* allocator = new HostAllocator();
  return *allocator;
}

}  // namespace llmft
