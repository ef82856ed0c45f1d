#include "parallel/host_reduce.h"

#include <algorithm>

#include "core/error.h"
#include "core/half.h"

namespace llmft::parallel {
namespace {

template <typename T>
void combine(T* accumulator, const T* input, int64_t count, ReduceOp op) {
  if (op == ReduceOp::kSum) {
    for (int64_t i = 0; i < count; ++i) accumulator[i] += input[i];
  } else {
    for (int64_t i = 0; i < count; ++i) accumulator[i] = std::max(accumulator[i], input[i]);
  }
}

template <typename Half>
void combine_half(Half* accumulator, const Half* input, int64_t count, ReduceOp op) {
  for (int64_t i = 0; i < count; ++i) {
    const float a = static_cast<float>(accumulator[i]), b = static_cast<float>(input[i]);
    accumulator[i] = Half(op == ReduceOp::kSum ? a + b : std::max(a, b));
  }
}

}  // namespace

void reduce_host(void* accumulator, const void* input, int64_t count, DType dtype, ReduceOp op) {
  switch (dtype) {
    case DType::kF32:
      return combine(static_cast<float*>(accumulator), static_cast<const float*>(input), count, op);
    case DType::kI32:
      return combine(static_cast<int32_t*>(accumulator), static_cast<const int32_t*>(input), count, op);
    case DType::kI64:
      return combine(static_cast<int64_t*>(accumulator), static_cast<const int64_t*>(input), count, op);
    case DType::kBF16:
      return combine_half(static_cast<bf16*>(accumulator), static_cast<const bf16*>(input), count, op);
    case DType::kF16:
      return combine_half(static_cast<f16*>(accumulator), static_cast<const f16*>(input), count, op);
  }
  throw_runtime("reduce_host: unsupported dtype ", dtype_name(dtype));
}

}  // namespace llmft::parallel
