// Element types and devices of tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace llmft {

enum class DType : uint8_t { kF32, kBF16, kF16, kI32, kI64 };

constexpr size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
  }
  return 0;
}

constexpr bool is_floating(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

// Lower-case names as used in configs and `llmft inspect` ("f32", "bf16", ...).
std::string_view dtype_name(DType dtype);
// Accepts "f32"/"float32", "bf16"/"bfloat16", "f16"/"float16"/"fp16", "i32"/"int32", "i64"/"int64".
std::optional<DType> parse_dtype(std::string_view name);

enum class DeviceType : uint8_t { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;

  static constexpr Device cpu() { return {DeviceType::kCpu, 0}; }
  static constexpr Device cuda(int index) { return {DeviceType::kCuda, index}; }
  constexpr bool is_cpu() const { return type == DeviceType::kCpu; }
  constexpr bool is_cuda() const { return type == DeviceType::kCuda; }
  constexpr bool operator==(const Device&) const = default;
  std::string to_string() const;
};

// True when this binary was built with the CUDA backend.
bool cuda_backend_built();
// Number of visible CUDA devices (0 without the CUDA backend or without a GPU).
int cuda_device_count();

}  // namespace llmft
