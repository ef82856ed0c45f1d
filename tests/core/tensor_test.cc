#include <gtest/gtest.h>

#include "core/context.h"
#include "core/tensor.h"

namespace llmft {
namespace {

TEST(Tensor, ShapeNumelAndBytes) {
  Tensor tensor = Tensor::zeros_cpu({2, 3, 4}, DType::kBF16);
  EXPECT_EQ(tensor.numel(), 24);
  EXPECT_EQ(tensor.nbytes(), 48u);
  EXPECT_EQ(tensor.size(-1), 4);
  EXPECT_EQ(tensor.to_string(), "bf16[2, 3, 4] on cpu");
  EXPECT_THROW(tensor.size(3), Error);
}

TEST(Tensor, ViewsShareStorage) {
  std::vector<float> values = {0, 1, 2, 3, 4, 5};
  Tensor tensor = Tensor::from_floats({3, 2}, values);
  Tensor rows = tensor.slice_rows(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 2}));
  EXPECT_EQ(rows.data<float>()[0], 2.0f);
  rows.data<float>()[0] = 20.0f;
  EXPECT_EQ(tensor.data<float>()[2], 20.0f);
  Tensor flat = tensor.reshape({-1});
  EXPECT_EQ(flat.shape(), (Shape{6}));
  EXPECT_THROW(tensor.reshape({4, -1}), Error);
  EXPECT_THROW(tensor.slice_rows(2, 4), Error);
}

TEST(Tensor, TypedAccessChecksDtype) {
  Tensor tensor = Tensor::zeros_cpu({2}, DType::kF16);
  EXPECT_NO_THROW(tensor.data<f16>());
  EXPECT_THROW(tensor.data<float>(), Error);
}

TEST(Tensor, FromFloatsRoundsToDtype) {
  std::vector<float> values = {1.0f + 1.0f / 256.0f, 0.1f};
  Tensor tensor = Tensor::from_floats({2}, values, DType::kBF16);
  EXPECT_EQ(tensor.data<bf16>()[0].bits, 0x3f80);  // tie to even
  std::vector<float> back = tensor.to_floats();
  EXPECT_EQ(back[0], 1.0f);
}

TEST(Allocator, CountsBytesAndPeak) {
  HostAllocator allocator;
  {
    Tensor a = Tensor::empty({1000}, DType::kF32, allocator);
    Tensor b = Tensor::empty({500}, DType::kF32, allocator);
    EXPECT_EQ(allocator.bytes_in_use(), 6000u);
  }
  EXPECT_EQ(allocator.bytes_in_use(), 0u);
  EXPECT_EQ(allocator.peak_bytes_in_use(), 6000u);
}

TEST(Context, CpuContextMakesTensorsOnCpu) {
  auto context = Context::cpu(5);
  Tensor zeros = context->zeros({4}, DType::kF32);
  EXPECT_TRUE(zeros.device().is_cpu());
  for (float value : zeros.to_floats()) EXPECT_EQ(value, 0.0f);
  EXPECT_EQ(context->seed(), 5u);
}

TEST(Context, CudaContextFailsClearlyWithoutGpu) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present; this checks the no-GPU error";
  EXPECT_THROW(Context::cuda(0), Error);
}

}  // namespace
}  // namespace llmft
