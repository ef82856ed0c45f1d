// The host allocator's cache of freed large blocks: what it reuses, what it
// leaves to the C library, and that its statistics count what callers hold.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "core/allocator.h"
#include "core/context.h"

namespace llmft {
namespace {

constexpr size_t kLarge = 100000;          // above the 64 KiB caching threshold
constexpr size_t kLargeClass = 25 * 4096;  // 102400: kLarge rounded up to whole 4 KiB pages

TEST(HostAllocator, ReusesAFreedLargeBlockForTheSameSizeClass) {
  HostAllocator allocator;
  void* first = allocator.allocate(kLarge);
  std::memset(first, 1, kLarge);
  allocator.deallocate(first, kLarge);
  EXPECT_EQ(allocator.cached_bytes(), kLargeClass);
  // 102000 bytes rounds to the same 102400-byte class, so the block comes back.
  void* second = allocator.allocate(102000);
  EXPECT_EQ(second, first);
  EXPECT_EQ(allocator.cached_bytes(), 0u);
  allocator.deallocate(second, 102000);
}

TEST(HostAllocator, StatisticsCountRequestedBytesNotTheCache) {
  HostAllocator allocator;
  void* block = allocator.allocate(kLarge);
  EXPECT_EQ(allocator.bytes_in_use(), kLarge);
  allocator.deallocate(block, kLarge);
  EXPECT_EQ(allocator.bytes_in_use(), 0u) << "a cached block is not in use";
  EXPECT_EQ(allocator.peak_bytes_in_use(), kLarge);
  void* again = allocator.allocate(kLarge);  // served from the cache
  EXPECT_EQ(allocator.bytes_in_use(), kLarge);
  EXPECT_EQ(allocator.peak_bytes_in_use(), kLarge);
  allocator.deallocate(again, kLarge);
}

TEST(HostAllocator, LeavesSmallBlocksToTheCLibrary) {
  HostAllocator allocator;
  void* block = allocator.allocate(1000);
  allocator.deallocate(block, 1000);
  EXPECT_EQ(allocator.cached_bytes(), 0u);
  EXPECT_EQ(allocator.bytes_in_use(), 0u);
}

TEST(HostAllocator, LiveBlocksAreDistinctAndAligned) {
  HostAllocator allocator;
  void* a = allocator.allocate(kLarge);
  allocator.deallocate(a, kLarge);
  void* b = allocator.allocate(kLarge);  // takes the cached block
  void* c = allocator.allocate(kLarge);  // the cache is empty: a new block
  EXPECT_NE(b, c);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c) % 64, 0u);
  EXPECT_EQ(allocator.bytes_in_use(), 2 * kLarge);
  allocator.deallocate(b, kLarge);
  allocator.deallocate(c, kLarge);
}

TEST(HostAllocator, CacheNeverExceedsThePeakInUse) {
  HostAllocator allocator;
  void* big = allocator.allocate(200 * 1024);
  allocator.deallocate(big, 200 * 1024);  // cached: 200 KiB, equal to the peak
  EXPECT_EQ(allocator.cached_bytes(), 200u * 1024);
  // A different size class misses the cache; the cache already holds the
  // 200 KiB peak, so this block goes back to the C library when freed.
  void* other = allocator.allocate(kLarge);
  allocator.deallocate(other, kLarge);
  EXPECT_EQ(allocator.peak_bytes_in_use(), 200u * 1024);
  EXPECT_EQ(allocator.cached_bytes(), 200u * 1024);
}

TEST(HostAllocator, ReleaseCachedEmptiesTheCache) {
  HostAllocator allocator;
  void* block = allocator.allocate(kLarge);
  allocator.deallocate(block, kLarge);
  allocator.release_cached();
  EXPECT_EQ(allocator.cached_bytes(), 0u);
}

TEST(HostAllocator, ATrainingStepShapedLoopAllocatesNothingNewAfterTheFirstStep) {
  // The same tensors requested and dropped each step, as activations are.
  auto context = Context::cpu();
  HostAllocator& allocator = default_host_allocator();
  std::vector<void*> first_step;
  for (int step = 0; step < 3; ++step) {
    std::vector<Tensor> activations;
    for (int64_t rows : {64, 128, 256}) activations.push_back(context->empty({rows, 1024}, DType::kF32));
    std::vector<void*> pointers;
    for (const Tensor& tensor : activations) pointers.push_back(tensor.raw_data());
    if (step == 0) {
      first_step = pointers;
    } else {
      // Freed in order, each block comes back for its own size class.
      EXPECT_EQ(pointers, first_step) << "step " << step;
    }
  }
  EXPECT_GE(allocator.cached_bytes(), (64 + 128 + 256) * 1024 * 4u);
}

}  // namespace
}  // namespace llmft
