#include "core/tensor.h"

#include <cstring>
#include <sstream>

#include "core/context.h"

namespace llmft {

int64_t shape_numel(const Shape& shape) {
  int64_t count = 1;
  for (int64_t extent : shape) count *= extent;
  return count;
}

std::string shape_to_string(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

Storage::Storage(void* data, size_t bytes, Allocator* allocator)
    : data_(data), bytes_(bytes), device_(allocator->device()), allocator_(allocator),
      category_(current_memory_category()) {
  allocator_->count_category(category_, bytes_, /*allocated=*/true);
}

Storage::Storage(void* data, size_t bytes, Device device, std::shared_ptr<const void> owner)
    : data_(data), bytes_(bytes), device_(device), allocator_(nullptr), owner_(std::move(owner)) {}

Storage::~Storage() {
  if (allocator_ == nullptr) return;
  allocator_->count_category(category_, bytes_, /*allocated=*/false);
  if (data_ != nullptr) allocator_->deallocate(data_, bytes_);
}

static void check_shape(const Shape& shape) {
  for (int64_t extent : shape) LLMFT_CHECK(extent >= 0, "negative extent in shape ", shape_to_string(shape));
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Allocator& allocator) {
  check_shape(shape);
  Tensor tensor;
  tensor.shape_ = shape;
  tensor.dtype_ = dtype;
  size_t bytes = tensor.nbytes();
  tensor.storage_ = std::make_shared<Storage>(allocator.allocate(bytes), bytes, &allocator);
  return tensor;
}

Tensor Tensor::empty_cpu(const Shape& shape, DType dtype) { return empty(shape, dtype, default_host_allocator()); }

Tensor Tensor::zeros_cpu(const Shape& shape, DType dtype) {
  Tensor tensor = empty_cpu(shape, dtype);
  std::memset(tensor.raw_data(), 0, tensor.nbytes());
  return tensor;
}

Tensor Tensor::from_floats(const Shape& shape, std::span<const float> values, DType dtype) {
  LLMFT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_floats: ", values.size(),
              " values for shape ", shape_to_string(shape));
  Tensor tensor = empty_cpu(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    switch (dtype) {
      case DType::kF32: tensor.data<float>()[i] = values[i]; break;
      case DType::kBF16: tensor.data<bf16>()[i] = bf16(values[i]); break;
      case DType::kF16: tensor.data<f16>()[i] = f16(values[i]); break;
      case DType::kI32: tensor.data<int32_t>()[i] = static_cast<int32_t>(values[i]); break;
      case DType::kI64: tensor.data<int64_t>()[i] = static_cast<int64_t>(values[i]); break;
    }
  }
  return tensor;
}

Tensor Tensor::from_ints(const Shape& shape, std::span<const int32_t> values) {
  LLMFT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_ints: ", values.size(),
              " values for shape ", shape_to_string(shape));
  Tensor tensor = empty_cpu(shape, DType::kI32);
  std::memcpy(tensor.raw_data(), values.data(), values.size() * sizeof(int32_t));
  return tensor;
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<const void> owner) {
  check_shape(shape);
  Tensor tensor;
  tensor.shape_ = shape;
  tensor.dtype_ = dtype;
  tensor.storage_ = std::make_shared<Storage>(data, tensor.nbytes(), device, std::move(owner));
  return tensor;
}

int64_t Tensor::size(int64_t axis) const {
  int64_t rank = dim();
  if (axis < 0) axis += rank;
  LLMFT_CHECK(axis >= 0 && axis < rank, "axis ", axis, " out of range for ", to_string());
  return shape_[axis];
}

Device Tensor::device() const { return storage_ ? storage_->device() : Device::cpu(); }

void* Tensor::raw_data() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_bytes_;
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape resolved = shape;
  int64_t known = 1;
  int infer_axis = -1;
  for (size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i] == -1) {
      LLMFT_CHECK(infer_axis < 0, "reshape: more than one -1 in ", shape_to_string(shape));
      infer_axis = static_cast<int>(i);
    } else {
      known *= resolved[i];
    }
  }
  if (infer_axis >= 0) {
    LLMFT_CHECK(known > 0 && numel() % known == 0, "reshape: cannot infer ", shape_to_string(shape), " from ",
                to_string());
    resolved[infer_axis] = numel() / known;
  }
  LLMFT_CHECK(shape_numel(resolved) == numel(), "reshape: ", to_string(), " to ", shape_to_string(shape));
  Tensor view = *this;
  view.shape_ = resolved;
  return view;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  LLMFT_CHECK(dim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "slice_rows(", begin, ", ", end,
              ") of ", to_string());
  int64_t row_elements = shape_[0] == 0 ? 0 : numel() / shape_[0];
  Tensor view = *this;
  view.shape_[0] = end - begin;
  view.offset_bytes_ += static_cast<size_t>(begin * row_elements) * dtype_size(dtype_);
  return view;
}

Tensor Tensor::flatten_rows() const {
  LLMFT_CHECK(dim() >= 1, "flatten_rows of a scalar");
  return reshape({-1, shape_.back()});
}

void Tensor::copy_from(const Tensor& source) {
  LLMFT_CHECK(source.shape_ == shape_ && source.dtype_ == dtype_, "copy_from: ", source.to_string(), " into ",
              to_string());
  copy_bytes(raw_data(), device(), source.raw_data(), source.device(), nbytes());
}

Tensor Tensor::to(Allocator& allocator) const {
  Tensor copy = empty(shape_, dtype_, allocator);
  copy.copy_from(*this);
  return copy;
}

Tensor Tensor::clone() const {
  LLMFT_CHECK(device().is_cpu(), "clone() of a device tensor needs an allocator: use to()");
  return to(default_host_allocator());
}

std::vector<float> Tensor::to_floats() const {
  Tensor host = device().is_cpu() ? *this : to(default_host_allocator());
  std::vector<float> values(static_cast<size_t>(numel()));
  for (size_t i = 0; i < values.size(); ++i) {
    switch (dtype_) {
      case DType::kF32: values[i] = host.data<float>()[i]; break;
      case DType::kBF16: values[i] = static_cast<float>(host.data<bf16>()[i]); break;
      case DType::kF16: values[i] = static_cast<float>(host.data<f16>()[i]); break;
      case DType::kI32: values[i] = static_cast<float>(host.data<int32_t>()[i]); break;
      case DType::kI64: values[i] = static_cast<float>(host.data<int64_t>()[i]); break;
    }
  }
  return values;
}

std::string Tensor::to_string() const {
  if (!defined()) return "undefined tensor";
  return str_cat(dtype_name(dtype_), shape_to_string(shape_), " on ", device().to_string());
}

}  // namespace llmft
