// Memory allocators. Every allocator counts bytes in use and the peak, so tests
// and `llmft inspect`/benchmarks can report memory against a budget.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>

#include "core/dtype.h"

namespace llmft {

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns memory aligned to at least 64 bytes; throws llmft::Error on failure.
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* pointer, size_t bytes) = 0;
  virtual Device device() const = 0;

  size_t bytes_in_use() const { return bytes_in_use_.load(); }
  size_t peak_bytes_in_use() const { return peak_bytes_.load(); }
  void reset_peak() { peak_bytes_.store(bytes_in_use_.load()); }

 protected:
  void record_allocation(size_t bytes);
  void record_deallocation(size_t bytes);

 private:
  std::atomic<size_t> bytes_in_use_{0};
  std::atomic<size_t> peak_bytes_{0};
};

// Host memory from aligned_alloc (64-byte aligned for AVX-512 loads).
class HostAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override;
  void deallocate(void* pointer, size_t bytes) override;
  Device device() const override { return Device::cpu(); }
};

// The process's default host allocator: plain aligned_alloc plus statistics.
// Contexts may bring their own; this one exists so host tensors can be made
// without a Context (tests, file readers).
HostAllocator& default_host_allocator();

// A caching device allocator (CUDA backend only): freed blocks are kept in
// size-class free lists and reused, so the steady-state training step makes no
// cudaMalloc/cudaFree calls (which synchronise the device).
// Returns nullptr when the CUDA backend is not built.
std::unique_ptr<Allocator> make_cuda_caching_allocator(int device_index);

}  // namespace llmft
