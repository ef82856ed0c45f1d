// Rotary position embedding (Su et al. 2021) in Hugging Face's rotate-half
// convention: dimension i pairs with i + head_dim/2 (modeling_llama.py,
// rotate_half / apply_rotary_pos_emb), not Meta's interleaved pairs. The angle
// is the fp32 product position * inv_freq, as HF's fp32 matmul forms it.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

// Rotates every head of every row of x by +angle (direction = 1) or -angle
// (direction = -1). out may alias x: a pair is read completely before written.
void rotate(std::string_view op, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& out,
            float direction) {
  require_float(op, "input", x);
  require_float(op, "output", out);
  require_dtype(op, "positions", positions, DType::kI32);
  require_dtype(op, "inv_freq", inv_freq, DType::kF32);
  if (x.dim() < 3) throw_runtime(op, ": input must be [..., heads, head_dim], found ", x.to_string());
  require_shape(op, "output", out, x.shape());
  const int64_t head_dim = x.size(-1), heads = x.size(-2);
  if (head_dim % 2 != 0) throw_runtime(op, ": head_dim must be even, found ", x.to_string());
  const int64_t half = head_dim / 2;
  require_numel(op, "inv_freq", inv_freq, half);
  const int64_t rows = heads == 0 ? 0 : leading_rows(x) / heads;
  require_numel(op, "positions", positions, rows);
  const int32_t* position_data = positions.data<int32_t>();
  const float* frequency = inv_freq.data<float>();
  FloatReader reader(x);
  FloatWriter writer(out);
  const int64_t row_size = heads * head_dim;
#pragma omp parallel if (rows * row_size > kParallelWork)
  {
    std::vector<float> cosine(half), sine(half), in_scratch(row_size), out_scratch(row_size);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      // cos/sin once per position, shared by all heads of the row.
      const float position = static_cast<float>(position_data[row]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = position * frequency[i];
        cosine[i] = std::cos(angle);
        sine[i] = direction * std::sin(angle);
      }
      const float* in = reader.read(row * row_size, row_size, in_scratch.data());
      float* result = writer.open(row * row_size, row_size, out_scratch.data());
      for (int64_t head = 0; head < heads; ++head) {
        const float* in_head = in + head * head_dim;
        float* out_head = result + head * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float first = in_head[i], second = in_head[i + half];
          out_head[i] = first * cosine[i] - second * sine[i];
          out_head[i + half] = second * cosine[i] + first * sine[i];
        }
      }
      writer.commit(row * row_size, row_size, result);
    }
  }
}

}  // namespace

void rope_forward(Context& context, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& y) {
  rotate("rope_forward", x, positions, inv_freq, y, 1.0f);
}

// The rotation is orthogonal, so its transpose is the rotation by -angle.
void rope_backward(Context& context, const Tensor& dy, const Tensor& positions, const Tensor& inv_freq, Tensor& dx) {
  rotate("rope_backward", dy, positions, inv_freq, dx, -1.0f);
}

}  // namespace llmft::cpu
