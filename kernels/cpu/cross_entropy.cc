// Softmax cross-entropy over a large vocabulary. Each row is reduced in
// kChunk-sized pieces with an online maximum (Milakov & Gimelshein 2018), so a
// row never needs an f32 copy of itself and bf16 logits are widened one piece
// at a time.
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

void check_targets(std::string_view op, const Tensor& logits, const Tensor& targets) {
  require_float(op, "logits", logits);
  require_dtype(op, "targets", targets, DType::kI32);
  if (logits.dim() != 2) throw_runtime(op, ": logits must be [rows, vocab], found ", logits.to_string());
  require_numel(op, "targets", targets, logits.size(0));
  const int64_t vocab_size = logits.size(1);
  if (vocab_size == 0) throw_runtime(op, ": logits have an empty vocabulary dimension: ", logits.to_string());
  const int32_t* target_data = targets.data<int32_t>();
  for (int64_t row = 0; row < targets.numel(); ++row) {
    if (target_data[row] >= vocab_size) {
      throw_bad_input(op, ": target ", target_data[row], " of row ", row, " is outside the vocabulary [0, ", vocab_size,
                      ") (negative targets mark ignored rows)");
    }
  }
}

}  // namespace

void cross_entropy_forward(Context& context, const Tensor& logits, const Tensor& targets, Tensor& losses,
                           Tensor& lse) {
  constexpr std::string_view op = "cross_entropy_forward";
  check_targets(op, logits, targets);
  const int64_t rows = logits.size(0), vocab_size = logits.size(1);
  require_dtype(op, "losses", losses, DType::kF32);
  require_dtype(op, "lse", lse, DType::kF32);
  require_numel(op, "losses", losses, rows);
  require_numel(op, "lse", lse, rows);
  const int32_t* target_data = targets.data<int32_t>();
  float* loss_data = losses.data<float>();
  float* lse_data = lse.data<float>();
  FloatReader reader(logits);
  // lse is computed for ignored rows too (it is well defined and costs one
  // pass); only their loss is zero.
  parallel_rows(rows, vocab_size, [&](int64_t row) {
    float scratch[kChunk];
    float running_max = -std::numeric_limits<float>::infinity();
    float running_sum = 0.0f;
    for (int64_t begin = 0; begin < vocab_size; begin += kChunk) {
      const int64_t count = std::min(kChunk, vocab_size - begin);
      const float* values = reader.read(row * vocab_size + begin, count, scratch);
      const float chunk_max = max_value(values, count);
      if (chunk_max > running_max) {
        running_sum *= fast_exp(running_max - chunk_max);
        running_max = chunk_max;
      }
      const float chunk_sum = sum_exp_shifted(values, count, running_max);
      running_sum += chunk_sum;
    }
    const float row_lse = running_max + std::log(running_sum);
    lse_data[row] = row_lse;
    const int32_t target = target_data[row];
    loss_data[row] = target < 0 ? 0.0f : row_lse - reader.at(row * vocab_size + target);
  });
}

void cross_entropy_backward(Context& context, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& dloss, Tensor& dlogits) {
  constexpr std::string_view op = "cross_entropy_backward";
  check_targets(op, logits, targets);
  const int64_t rows = logits.size(0), vocab_size = logits.size(1);
  require_dtype(op, "lse", lse, DType::kF32);
  require_dtype(op, "dloss", dloss, DType::kF32);
  require_numel(op, "lse", lse, rows);
  require_numel(op, "dloss", dloss, rows);
  require_float(op, "dlogits", dlogits);
  require_shape(op, "dlogits", dlogits, logits.shape());
  const int32_t* target_data = targets.data<int32_t>();
  const float* lse_data = lse.data<float>();
  const float* dloss_data = dloss.data<float>();
  FloatReader reader(logits);
  FloatWriter writer(dlogits);
  // dlogits may alias logits: every piece is read before it is written.
  parallel_rows(rows, vocab_size, [&](int64_t row) {
    float in_scratch[kChunk], out_scratch[kChunk];
    const int32_t target = target_data[row];
    const float row_lse = lse_data[row];
    const float row_dloss = target < 0 ? 0.0f : dloss_data[row];
    for (int64_t begin = 0; begin < vocab_size; begin += kChunk) {
      const int64_t count = std::min(kChunk, vocab_size - begin);
      const float* values = reader.read(row * vocab_size + begin, count, in_scratch);
      float* gradient = writer.open(row * vocab_size + begin, count, out_scratch);
      if (target < 0) {
        std::fill_n(gradient, count, 0.0f);
      } else {
        scaled_exp_shifted(values, count, row_lse, row_dloss, gradient);
        if (target >= begin && target < begin + count) gradient[target - begin] -= row_dloss;
      }
      writer.commit(row * vocab_size + begin, count, gradient);
    }
  });
}

}  // namespace llmft::cpu
