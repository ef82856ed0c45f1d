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

void* HostAllocator::allocate(size_t bytes) {
  constexpr size_t kAlignment = 64;
  size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded == 0) rounded = kAlignment;
  void* pointer = std::aligned_alloc(kAlignment, rounded);
  if (pointer == nullptr) throw_runtime("host allocation of ", bytes, " bytes failed (out of memory)");
  record_allocation(bytes);
  return pointer;
}

void HostAllocator::deallocate(void* pointer, size_t bytes) {
  std::free(pointer);
  record_deallocation(bytes);
}

HostAllocator& default_host_allocator() {
  static HostAllocator allocator;
  return allocator;
}

}  // namespace llmft
