// The CUDA runtime pieces that core needs (copies, memset, device count),
// declared without CUDA headers so CPU-only builds compile the same callers.
// In a build without the CUDA backend each of these throws llmft::Error.
#pragma once

#include <cstddef>

namespace llmft {

void cuda_memset_zero(void* device_pointer, size_t bytes, void* stream);
void cuda_copy(void* destination, const void* source, size_t bytes, bool destination_on_device,
               bool source_on_device);

}  // namespace llmft
