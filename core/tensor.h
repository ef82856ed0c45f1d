// Tensor: a shape, a dtype and contiguous row-major storage on one device.
// Storage is shared (views share it) and either owned (freed through its
// allocator) or borrowed (e.g. a memory-mapped safetensors file kept alive by
// an opaque owner handle). There are no strides: every view is contiguous.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/half.h"

namespace llmft {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_to_string(const Shape& shape);  // "[2, 3, 4]"

// Maps C++ element types to DType for typed access.
template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::kF32; };
template <> struct DTypeOf<bf16> { static constexpr DType value = DType::kBF16; };
template <> struct DTypeOf<f16> { static constexpr DType value = DType::kF16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kI32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::kI64; };

class Storage {
 public:
  // Owned storage, freed through `allocator`.
  Storage(void* data, size_t bytes, Allocator* allocator);
  // Borrowed storage: `owner` keeps the memory alive (may be empty for memory
  // that outlives every tensor, e.g. a caller's buffer in a test).
  Storage(void* data, size_t bytes, Device device, std::shared_ptr<const void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t bytes_;
  Device device_;
  Allocator* allocator_;  // null when borrowed
  MemoryCategory category_ = MemoryCategory::kWorkspace;  // counted in, when owned
  std::shared_ptr<const void> owner_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor (defined() == false)

  // Uninitialised tensor from an allocator (its device is the allocator's).
  static Tensor empty(const Shape& shape, DType dtype, Allocator& allocator);
  // Host tensors from the default host allocator.
  static Tensor empty_cpu(const Shape& shape, DType dtype);
  static Tensor zeros_cpu(const Shape& shape, DType dtype);
  // Host tensor holding `values` converted (with round-to-nearest-even) to `dtype`.
  static Tensor from_floats(const Shape& shape, std::span<const float> values, DType dtype = DType::kF32);
  static Tensor from_ints(const Shape& shape, std::span<const int32_t> values);
  // Wraps memory owned elsewhere.
  static Tensor borrow(void* data, const Shape& shape, DType dtype, Device device,
                       std::shared_ptr<const void> owner = nullptr);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  // size(-1) is the last dimension.
  int64_t size(int64_t axis) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const;

  void* raw_data() const;
  template <typename T>
  T* data() const {
    LLMFT_CHECK(DTypeOf<T>::value == dtype_, "tensor holds ", dtype_name(dtype_), ", accessed as ",
                dtype_name(DTypeOf<T>::value));
    return static_cast<T*>(raw_data());
  }

  // Views sharing storage.
  Tensor reshape(const Shape& shape) const;           // same numel; one dimension may be -1
  Tensor slice_rows(int64_t begin, int64_t end) const;  // rows [begin, end) of dimension 0
  Tensor flatten_rows() const;                          // [d0*...*d(n-2), d(n-1)]

  // Copies (host <-> device through the CUDA runtime where needed; synchronous).
  void copy_from(const Tensor& source);      // same shape and dtype
  Tensor to(Allocator& allocator) const;     // deep copy onto the allocator's device
  Tensor clone() const;                      // deep copy on the same device (host only without CUDA)
  // Host copy converted to f32 (any float or int dtype), for tests and I/O.
  std::vector<float> to_floats() const;

  std::string to_string() const;  // "f32[2, 3] on cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
  Shape shape_;
  DType dtype_ = DType::kF32;
};

// Copies bytes between any two devices (host/device), synchronously.
void copy_bytes(void* destination, Device destination_device, const void* source, Device source_device,
                size_t bytes);

}  // namespace llmft
