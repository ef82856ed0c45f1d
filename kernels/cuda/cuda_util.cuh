// Device-side helpers shared by the CUDA kernels: f32 <-> storage conversion
// with the exact round-to-nearest-even of core/half.h (so a value rounded on
// the GPU has the same bits as on the CPU), and warp/block reductions.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/half.h"
#include "kernels/cuda/cuda_util.h"

namespace llmft::cuda {

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(bf16 value) { return bf16_bits_to_float(value.bits); }
__device__ __forceinline__ float to_float(f16 value) { return f16_bits_to_float(value.bits); }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) {
  return value;
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float value) {
  return bf16::from_bits(float_to_bf16_bits(value));
}
template <>
__device__ __forceinline__ f16 from_float<f16>(float value) {
  return f16::from_bits(float_to_f16_bits(value));
}

// The value a float takes when stored as T and read back (the "round()" of
// ops.h, e.g. LlamaRMSNorm's cast before the weight multiply).
template <typename T>
__device__ __forceinline__ float round_to(float value) {
  return to_float(from_float<T>(value));
}

// Element i of a float tensor whose dtype is known only at run time. The
// switch is uniform across a launch (no divergence), so memory-bound kernels
// take any mix of f32/bf16/f16 arguments, like the CPU backend, without one
// template instantiation per combination.
__device__ __forceinline__ float load_as_float(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kBF16: return bf16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::kF16: return f16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
    default: return static_cast<const float*>(data)[i];
  }
}

__device__ __forceinline__ void store_from_float(void* data, DType dtype, int64_t i, float value) {
  switch (dtype) {
    case DType::kBF16: static_cast<uint16_t*>(data)[i] = float_to_bf16_bits(value); return;
    case DType::kF16: static_cast<uint16_t*>(data)[i] = float_to_f16_bits(value); return;
    default: static_cast<float*>(data)[i] = value; return;
  }
}

// round() of ops.h with a run-time dtype.
__device__ __forceinline__ float round_to_dtype(float value, DType dtype) {
  switch (dtype) {
    case DType::kBF16: return bf16_bits_to_float(float_to_bf16_bits(value));
    case DType::kF16: return f16_bits_to_float(float_to_f16_bits(value));
    default: return value;
  }
}

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ double warp_sum(double value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `scratch` holds 32 values of T in shared memory.
// Contains __syncthreads(): every thread of the block must call it.
template <typename T>
__device__ __forceinline__ T block_sum(T value, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  value = warp_sum(value);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = lane < warps ? scratch[lane] : T(0);
  return warp_sum(value);
}

}  // namespace llmft::cuda
