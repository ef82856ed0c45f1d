// Naive double-precision references for the kernels in kernels/ops.h, written
// from the formulas (and Hugging Face's Llama modules) independently of
// kernels/cpu: plain loops, no blocking, no online softmax, full score matrices.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

namespace llmft::reference {

using Values = std::vector<double>;

// c = alpha * op(a) @ op(b) + beta * c over `batch` entries; a_batched/b_batched
// false means the 2-D operand is shared by every entry.
inline Values gemm(const Values& a, const Values& b, const Values& c, int64_t batch, bool a_batched, bool b_batched,
                   int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b, double alpha, double beta) {
  Values result(static_cast<size_t>(batch * m * n));
  for (int64_t index = 0; index < batch; ++index) {
    const double* a_entry = a.data() + (a_batched ? index * m * k : 0);
    const double* b_entry = b.data() + (b_batched ? index * k * n : 0);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double sum = 0.0;
        for (int64_t p = 0; p < k; ++p) {
          const double a_value = trans_a ? a_entry[p * m + i] : a_entry[i * k + p];
          const double b_value = trans_b ? b_entry[j * k + p] : b_entry[p * n + j];
          sum += a_value * b_value;
        }
        const int64_t at = index * m * n + i * n + j;
        result[at] = alpha * sum + (beta == 0.0 ? 0.0 : beta * c[at]);
      }
    }
  }
  return result;
}

// torch.nn.Linear: y = x @ weight^T + bias.
inline Values linear(const Values& x, const Values& weight, const Values* bias, int64_t rows, int64_t in,
                     int64_t out) {
  Values y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double sum = bias != nullptr ? (*bias)[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) sum += x[r * in + i] * weight[o * in + i];
      y[r * out + o] = sum;
    }
  }
  return y;
}

inline Values embedding(const std::vector<int32_t>& ids, const Values& table, int64_t dim) {
  Values out;
  for (int32_t id : ids) out.insert(out.end(), table.begin() + id * dim, table.begin() + (id + 1) * dim);
  return out;
}

// LlamaRMSNorm: variance = mean(x^2); h = x * rsqrt(variance + eps); cast h to
// the input dtype (`round_to_input`); return weight * h.
inline Values rmsnorm(const Values& x, const Values& weight, int64_t dim, double eps,
                      const std::function<double(double)>& round_to_input = nullptr) {
  Values y(x.size());
  for (size_t row = 0; row * dim < x.size(); ++row) {
    double variance = 0.0;
    for (int64_t i = 0; i < dim; ++i) variance += x[row * dim + i] * x[row * dim + i];
    variance /= dim;
    const double rstd = 1.0 / std::sqrt(variance + eps);
    for (int64_t i = 0; i < dim; ++i) {
      double h = x[row * dim + i] * rstd;
      if (round_to_input) h = round_to_input(h);
      y[row * dim + i] = weight[i] * h;
    }
  }
  return y;
}

// apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, rotate_half(x) =
// cat(-x[h:], x[:h]), cos/sin of cat(freqs, freqs); the angle is the fp32
// product position * inv_freq, as HF forms it. `sign` -1 rotates backwards.
inline Values rope(const Values& x, const std::vector<int32_t>& positions, const std::vector<float>& inv_freq,
                   int64_t heads, int64_t head_dim, double sign = 1.0) {
  const int64_t half = head_dim / 2;
  Values y(x.size());
  for (size_t n = 0; n < positions.size(); ++n) {
    for (int64_t head = 0; head < heads; ++head) {
      const double* in = x.data() + (n * heads + head) * head_dim;
      double* out = y.data() + (n * heads + head) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) {
        const double angle = static_cast<float>(static_cast<float>(positions[n]) * inv_freq[i % half]);
        const double rotated = i < half ? -in[i + half] : in[i - half];
        out[i] = in[i] * std::cos(angle) + sign * rotated * std::sin(angle);
      }
    }
  }
  return y;
}

inline Values swiglu(const Values& gate, const Values& up) {
  Values out(gate.size());
  for (size_t i = 0; i < gate.size(); ++i) out[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
  return out;
}

// Pointwise activations in double: relu, tanh, silu, exact gelu.
inline Values activation(ops::Activation kind, const Values& x) {
  Values y(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    switch (kind) {
      case ops::Activation::kRelu: y[i] = v > 0.0 ? v : 0.0; break;
      case ops::Activation::kTanh: y[i] = std::tanh(v); break;
      case ops::Activation::kSilu: y[i] = v / (1.0 + std::exp(-v)); break;
      case ops::Activation::kGelu: y[i] = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); break;
    }
  }
  return y;
}

struct AttentionResult {
  Values out;  // [B, T, Hq, D]
  Values lse;  // [B, Hq, T]
};

// Materialises the full [T, P + T] masked score matrix of every (batch, head):
// query t sees keys [0, P) and P + [doc_start[t], t].
inline AttentionResult attention(const Values& q, const Values& k, const Values& v, int64_t batch, int64_t time,
                                 int64_t query_heads, int64_t kv_heads, int64_t head_dim, int64_t prefix,
                                 const std::vector<int32_t>& doc_start, double scale) {
  const int64_t keys = prefix + time, group = query_heads / kv_heads;
  AttentionResult result{Values(q.size(), 0.0), Values(static_cast<size_t>(batch * query_heads * time))};
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < query_heads; ++h) {
      const int64_t g = h / group;
      std::vector<Values> scores(time, Values(keys, -std::numeric_limits<double>::infinity()));
      for (int64_t t = 0; t < time; ++t) {
        const int64_t start = doc_start.empty() ? 0 : doc_start[b * time + t];
        for (int64_t key = 0; key < keys; ++key) {
          const bool visible = key < prefix || (key >= prefix + start && key <= prefix + t);
          if (!visible) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < head_dim; ++d) {
            dot += q[((b * time + t) * query_heads + h) * head_dim + d] * k[((b * keys + key) * kv_heads + g) * head_dim + d];
          }
          scores[t][key] = dot * scale;
        }
      }
      for (int64_t t = 0; t < time; ++t) {
        const double row_max = *std::max_element(scores[t].begin(), scores[t].end());
        double sum = 0.0;
        for (double s : scores[t]) sum += std::exp(s - row_max);
        result.lse[(b * query_heads + h) * time + t] = row_max + std::log(sum);
        for (int64_t key = 0; key < keys; ++key) {
          const double p = std::exp(scores[t][key] - row_max) / sum;
          for (int64_t d = 0; d < head_dim; ++d) {
            result.out[((b * time + t) * query_heads + h) * head_dim + d] +=
                p * v[((b * keys + key) * kv_heads + g) * head_dim + d];
          }
        }
      }
    }
  }
  return result;
}

struct CrossEntropyResult {
  Values losses, lse;
};

inline CrossEntropyResult cross_entropy(const Values& logits, const std::vector<int32_t>& targets, int64_t vocab) {
  CrossEntropyResult result{Values(targets.size(), 0.0), Values(targets.size(), 0.0)};
  for (size_t row = 0; row < targets.size(); ++row) {
    const double* x = logits.data() + row * vocab;
    const double row_max = *std::max_element(x, x + vocab);
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(x[i] - row_max);
    result.lse[row] = row_max + std::log(sum);
    if (targets[row] >= 0) result.losses[row] = result.lse[row] - x[targets[row]];
  }
  return result;
}

}  // namespace llmft::reference
