// Runs CUDA kernels on the CPU: one std::thread per CUDA thread of a block,
// blocks one after another; __syncthreads is a std::barrier over the block,
// __shfl_xor_sync exchanges through a per-warp buffer between two warp
// barriers; __shared__ becomes function-static (blocks run sequentially).
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3_like { unsigned x = 0, y = 0, z = 0; };
inline thread_local uint3_like threadIdx;
inline uint3_like blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__ inline
#define __host__
#define __forceinline__
#define __launch_bounds__(x)
#define __shared__ static

inline std::vector<float> g_dynamic_shared_storage;
inline float* g_dynamic_shared = nullptr;

struct BlockSync {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<std::array<double, 32>> warp_buffers;
};
inline BlockSync* g_sync = nullptr;

inline void __syncthreads() { g_sync->block->arrive_and_wait(); }

inline int emu_linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  const int t = emu_linear_thread();
  const int warp = t / 32, lane = t % 32;
  auto& buffer = g_sync->warp_buffers[warp];
  buffer[lane] = static_cast<double>(value);
  g_sync->warps[warp]->arrive_and_wait();
  const T other = static_cast<T>(buffer[lane ^ lane_mask]);
  g_sync->warps[warp]->arrive_and_wait();
  return other;
}

inline std::mutex g_atomic_mutex;
inline float atomicAdd(float* address, float value) {
  std::lock_guard<std::mutex> lock(g_atomic_mutex);
  const float old = *address;
  *address = old + value;
  return old;
}
inline double atomicAdd(double* address, double value) {
  std::lock_guard<std::mutex> lock(g_atomic_mutex);
  const double old = *address;
  *address = old + value;
  return old;
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  std::lock_guard<std::mutex> lock(g_atomic_mutex);
  const unsigned long long old = *address;
  *address = old + value;
  return old;
}
inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  std::lock_guard<std::mutex> lock(g_atomic_mutex);
  const unsigned long long old = *address;
  *address = std::min(old, value);
  return old;
}
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
template <typename T>
T min(T a, T b) { return a < b ? a : b; }
template <typename T>
T max(T a, T b) { return a > b ? a : b; }

// Runs kernel() for every thread of every block.
inline void emu_launch(dim3 grid, dim3 block, size_t dynamic_shared_bytes, const std::function<void()>& kernel) {
  gridDim = grid;
  blockDim = block;
  const int threads = static_cast<int>(block.x * block.y * block.z);
  g_dynamic_shared_storage.assign(dynamic_shared_bytes / sizeof(float) + 1, std::nanf(""));
  g_dynamic_shared = g_dynamic_shared_storage.data();
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
        BlockSync sync;
        sync.block = std::make_unique<std::barrier<>>(threads);
        const int warps = (threads + 31) / 32;
        for (int w = 0; w < warps; ++w) sync.warps.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
        sync.warp_buffers.resize(warps);
        g_sync = &sync;
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            threadIdx.x = t % block.x;
            threadIdx.y = (t / block.x) % block.y;
            threadIdx.z = t / (block.x * block.y);
            kernel();
          });
        }
        for (auto& thread : pool) thread.join();
        g_sync = nullptr;
      }
}
inline std::atomic<int> g_or_value{0};
inline int __syncthreads_or(int predicate) {
  __syncthreads();
  if (predicate) g_or_value = 1;
  __syncthreads();
  const int result = g_or_value;
  __syncthreads();
  if (emu_linear_thread() == 0) g_or_value = 0;
  __syncthreads();
  return result;
}
