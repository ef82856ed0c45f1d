// The op table (STYLE.md item 11) across backends: every op of kernels/ops.h
// runs on a CPU Context (kernels/cpu, itself checked against double-precision
// references and finite differences in tests/kernels) and on a CUDA Context
// with the same host inputs, and every output is compared element by element.
// Each row prints its max error next to its tolerance. Error is
// max |cuda - cpu| / max |cpu| over the output, so near-zero elements of a
// large output do not dominate. Ops whose result is one rounding of the same
// fp32 formula on both backends (fill, scale, add, cast, dropout) must match
// bit for bit: tolerance 0. The rest differ only in fp32 summation order and
// libm ulps, then in one final rounding of the output dtype.
//
// Also here: the CUDA caching allocator's accounting and reuse, and the data
// errors (bad token ids, bad targets) the CUDA ops must report like the CPU.
// Without the CUDA backend or a GPU every test skips, saying why.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/context.h"
#include "core/error.h"
#include "core/philox.h"
#include "core/tensor.h"
#include "kernels/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace llmft {
namespace {

// ---- Inputs ----------------------------------------------------------------------
Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, float scale = 1.0f) {
  PhiloxGenerator generator(seed);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (float& value : values) value = scale * generator.next_normal();
  return Tensor::from_floats(shape, values, dtype);
}

Tensor int_tensor(const Shape& shape, std::vector<int32_t> values) { return Tensor::from_ints(shape, values); }

std::vector<int32_t> random_ints(int64_t count, int32_t bound, uint64_t seed) {
  PhiloxGenerator generator(seed);
  std::vector<int32_t> values(static_cast<size_t>(count));
  for (int32_t& value : values) value = static_cast<int32_t>(generator.next_below(static_cast<uint64_t>(bound)));
  return values;
}

// A host input placed on `context`: uploaded to a GPU, or cloned on the CPU
// (Context::upload shares host tensors, and ops that accumulate into an
// input must not change the inputs the other backend will get).
Tensor place(Context& context, const Tensor& host) { return context.is_cuda() ? context.upload(host) : host.clone(); }

// ---- The table -----------------------------------------------------------------------
using Inputs = std::vector<Tensor>;
using Outputs = std::vector<std::pair<std::string, Tensor>>;

struct OpCase {
  std::string name;  // "<op>/<dtype>/<shape or variant>", also the test name
  double tolerance;  // on max |cuda - cpu| / max |cpu|
  std::function<Inputs()> make_inputs;
  // Places the inputs on `context`, runs the op(s) there, returns the outputs.
  std::function<Outputs(Context&, const Inputs&)> run;
};

constexpr DType kFloatDTypes[] = {DType::kF32, DType::kBF16, DType::kF16};

// Runs a case's ops with Context::deterministic set (the CUDA kernels that sum
// without float atomics), restoring the context's setting after.
class DeterministicScope {
 public:
  DeterministicScope(Context& context, bool deterministic) : context_(context), saved_(context.deterministic()) {
    context_.set_deterministic(deterministic);
  }
  ~DeterministicScope() { context_.set_deterministic(saved_); }
  DeterministicScope(const DeterministicScope&) = delete;
  DeterministicScope& operator=(const DeterministicScope&) = delete;

 private:
  Context& context_;
  bool saved_;
};

std::string label(DType dtype) { return std::string(dtype_name(dtype)); }

// Differences in fp32 summation order, then one rounding of the output:
// f32 keeps ~1e-6 relative; bf16 (8 bits) and f16 (11 bits) may differ by an
// ulp or two of the output.
double tolerance_for(DType dtype, double f32_tolerance = 2e-5) {
  switch (dtype) {
    case DType::kBF16: return 1.6e-2;
    case DType::kF16: return 2e-3;
    default: return f32_tolerance;
  }
}

// Gradients may be kept in the compute dtype or in f32.
std::vector<DType> gradient_dtypes(DType dtype) {
  if (dtype == DType::kF32) return {DType::kF32};
  return {dtype, DType::kF32};
}

void add_gemm_cases(std::vector<OpCase>& table) {
  struct Gemm {
    std::string variant;
    Shape a, b, c;
    bool trans_a, trans_b;
    float alpha, beta;
    bool c_f32;
  };
  const std::vector<Gemm> gemms = {
      {"nn_7x13x33", {7, 33}, {33, 13}, {7, 13}, false, false, 1.0f, 0.0f, false},
      {"tn_7x13x33", {33, 7}, {33, 13}, {7, 13}, true, false, 1.0f, 0.0f, false},
      {"nt_7x13x33", {7, 33}, {13, 33}, {7, 13}, false, true, 1.0f, 0.0f, false},
      {"tt_alpha_beta", {33, 7}, {13, 33}, {7, 13}, true, true, 0.5f, 0.75f, false},
      {"nn_129x65x257_c_f32", {129, 257}, {257, 65}, {129, 65}, false, false, 1.0f, 1.0f, true},
      {"batched_3x5x9x6", {3, 5, 9}, {3, 9, 6}, {3, 5, 6}, false, false, 1.0f, 0.0f, false},
      {"batched_shared_b_nt", {2, 3, 5, 16}, {7, 16}, {2, 3, 5, 7}, false, true, 1.0f, 0.0f, false},
      {"batched_shared_a", {5, 16}, {4, 16, 7}, {4, 5, 7}, false, false, 1.0f, 0.5f, false},
      {"batched_ta_shared_b", {3, 16, 5}, {16, 7}, {3, 5, 7}, true, false, 1.0f, 0.0f, false},
      {"empty_k_beta_half", {4, 0}, {0, 5}, {4, 5}, false, false, 1.0f, 0.5f, false},
  };
  for (DType dtype : kFloatDTypes) {
    for (const Gemm& gemm : gemms) {
      const DType c_dtype = gemm.c_f32 ? DType::kF32 : dtype;
      table.push_back(OpCase{"gemm/" + label(dtype) + "/" + gemm.variant, tolerance_for(c_dtype),
                             [=] {
                               // With beta == 0, c starts as NaN: ops.h says its contents are ignored.
                               const std::vector<float> nans(static_cast<size_t>(shape_numel(gemm.c)), NAN);
                               Tensor c = gemm.beta == 0.0f ? Tensor::from_floats(gemm.c, nans, c_dtype)
                                                            : random_tensor(gemm.c, c_dtype, 3);
                               return Inputs{random_tensor(gemm.a, dtype, 1), random_tensor(gemm.b, dtype, 2), c};
                             },
                             [=](Context& context, const Inputs& in) {
                               Tensor a = place(context, in[0]), b = place(context, in[1]), c = place(context, in[2]);
                               ops::gemm(context, a, b, c, gemm.trans_a, gemm.trans_b, gemm.alpha, gemm.beta);
                               return Outputs{{"c", c}};
                             }});
    }
  }
}

void add_linear_cases(std::vector<OpCase>& table) {
  const int64_t rows = 37, in_features = 48, out_features = 20;
  for (DType dtype : kFloatDTypes) {
    for (bool with_bias : {false, true}) {
      table.push_back(
          OpCase{"linear_forward/" + label(dtype) + (with_bias ? "/bias" : "/no_bias"), tolerance_for(dtype),
                 [=] {
                   return Inputs{random_tensor({rows, in_features}, dtype, 11),
                                 random_tensor({out_features, in_features}, dtype, 12),
                                 random_tensor({out_features}, dtype, 13)};
                 },
                 [=](Context& context, const Inputs& in) {
                   Tensor x = place(context, in[0]), weight = place(context, in[1]), bias = place(context, in[2]);
                   Tensor y = context.empty({rows, out_features}, dtype);
                   ops::linear_forward(context, x, weight, with_bias ? &bias : nullptr, y);
                   return Outputs{{"y", y}};
                 }});
    }
    // bf16/f16 input with an f32 y: the bias goes through the add-bias kernel.
    if (dtype != DType::kF32) {
      table.push_back(OpCase{"linear_forward/" + label(dtype) + "/f32_output_bias", tolerance_for(DType::kF32, 1e-5),
                             [=] {
                               return Inputs{random_tensor({rows, in_features}, dtype, 11),
                                             random_tensor({out_features, in_features}, dtype, 12),
                                             random_tensor({out_features}, dtype, 13)};
                             },
                             [=](Context& context, const Inputs& in) {
                               Tensor x = place(context, in[0]), weight = place(context, in[1]),
                                      bias = place(context, in[2]);
                               Tensor y = context.empty({rows, out_features}, DType::kF32);
                               ops::linear_forward(context, x, weight, &bias, y);
                               return Outputs{{"y", y}};
                             }});
    }
    for (bool accumulate_dx : {false, true}) {
      for (DType grad_dtype : gradient_dtypes(dtype)) {
        table.push_back(OpCase{"linear_backward/" + label(dtype) +
                                   (accumulate_dx ? "/accumulate_dx" : "/overwrite_dx") + "/grads_" + label(grad_dtype),
                               std::max(tolerance_for(dtype), tolerance_for(grad_dtype)),
                               [=] {
                                 return Inputs{random_tensor({rows, out_features}, dtype, 21),
                                               random_tensor({rows, in_features}, dtype, 22),
                                               random_tensor({out_features, in_features}, dtype, 23),
                                               random_tensor({rows, in_features}, dtype, 24),
                                               random_tensor({out_features, in_features}, grad_dtype, 25),
                                               random_tensor({out_features}, grad_dtype, 26)};
                               },
                               [=](Context& context, const Inputs& in) {
                                 Tensor dy = place(context, in[0]), x = place(context, in[1]),
                                        weight = place(context, in[2]);
                                 Tensor dx = place(context, in[3]), dweight = place(context, in[4]),
                                        dbias = place(context, in[5]);
                                 ops::linear_backward(context, dy, x, weight, &dx, &dweight, &dbias, accumulate_dx);
                                 return Outputs{{"dx", dx}, {"dweight", dweight}, {"dbias", dbias}};
                               }});
      }
    }
  }
}

// Weights stored in another dtype than the activations (model.weights_dtype):
// CUDA casts the weight for cuBLASLt, the CPU widens both; f32 gradients.
void add_mixed_dtype_weight_cases(std::vector<OpCase>& table) {
  const int64_t rows = 37, in_features = 48, out_features = 20;
  for (const std::pair<DType, DType>& dtypes : {std::pair{DType::kF32, DType::kBF16}, std::pair{DType::kF32, DType::kF16},
                                                std::pair{DType::kBF16, DType::kF32}}) {
    const DType x_dtype = dtypes.first, weight_dtype = dtypes.second;  // plain locals: the lambdas copy them
    const std::string pair = label(x_dtype) + "_x/" + label(weight_dtype) + "_weight";
    table.push_back(OpCase{"linear_forward/" + pair, tolerance_for(x_dtype),
                           [=] {
                             return Inputs{random_tensor({rows, in_features}, x_dtype, 61),
                                           random_tensor({out_features, in_features}, weight_dtype, 62),
                                           random_tensor({out_features}, x_dtype, 63)};
                           },
                           [=](Context& context, const Inputs& in) {
                             Tensor x = place(context, in[0]), weight = place(context, in[1]),
                                    bias = place(context, in[2]);
                             Tensor y = context.empty({rows, out_features}, x_dtype);
                             ops::linear_forward(context, x, weight, &bias, y);
                             return Outputs{{"y", y}};
                           }});
    table.push_back(OpCase{"linear_backward/" + pair, std::max(tolerance_for(x_dtype), tolerance_for(weight_dtype)),
                           [=] {
                             return Inputs{random_tensor({rows, out_features}, x_dtype, 64),
                                           random_tensor({rows, in_features}, x_dtype, 65),
                                           random_tensor({out_features, in_features}, weight_dtype, 66),
                                           random_tensor({out_features, in_features}, DType::kF32, 67)};
                           },
                           [=](Context& context, const Inputs& in) {
                             Tensor dy = place(context, in[0]), x = place(context, in[1]),
                                    weight = place(context, in[2]), dweight = place(context, in[3]);
                             Tensor dx = context.empty({rows, in_features}, x_dtype);
                             ops::linear_backward(context, dy, x, weight, &dx, &dweight, nullptr);
                             return Outputs{{"dx", dx}, {"dweight", dweight}};
                           }});
    table.push_back(OpCase{"rmsnorm_forward/" + pair, tolerance_for(x_dtype),
                           [=] {
                             return Inputs{random_tensor({rows, in_features}, x_dtype, 68),
                                           random_tensor({in_features}, weight_dtype, 69)};
                           },
                           [=](Context& context, const Inputs& in) {
                             Tensor x = place(context, in[0]), weight = place(context, in[1]);
                             Tensor y = context.empty({rows, in_features}, x_dtype);
                             Tensor rstd = context.empty({rows}, DType::kF32);
                             ops::rmsnorm_forward(context, x, weight, 1e-5f, y, rstd);
                             return Outputs{{"y", y}, {"rstd", rstd}};
                           }});
    table.push_back(OpCase{"embedding_forward/" + pair, 0.0,
                           [=] {
                             return Inputs{int_tensor({rows}, random_ints(rows, 50, 70)),
                                           random_tensor({50, in_features}, weight_dtype, 71)};
                           },
                           [=](Context& context, const Inputs& in) {
                             Tensor ids = place(context, in[0]), table = place(context, in[1]);
                             Tensor out = context.empty({rows, in_features}, x_dtype);
                             ops::embedding_forward(context, ids, table, out);
                             return Outputs{{"out", out}};
                           }});
  }
}

void add_embedding_cases(std::vector<OpCase>& table) {
  const int64_t vocab = 50, dim = 24, count = 40;
  for (DType dtype : kFloatDTypes) {
    table.push_back(OpCase{
        "embedding_forward/" + label(dtype) + "/40_ids_V50", 0.0,
        [=] {
          return Inputs{int_tensor({count}, random_ints(count, vocab, 31)), random_tensor({vocab, dim}, dtype, 32)};
        },
        [=](Context& context, const Inputs& in) {
          Tensor ids = place(context, in[0]), table_tensor = place(context, in[1]);
          Tensor out = context.empty({count, dim}, dtype);
          ops::embedding_forward(context, ids, table_tensor, out);
          return Outputs{{"out", out}};
        }});
    // Only 7 distinct ids among 40 positions: repeated ids must accumulate.
    // f32 also deterministically (the segment kernel instead of atomics).
    for (bool deterministic : {false, true}) {
      if (deterministic && dtype != DType::kF32) continue;  // 16-bit tables always take the segment kernel
      table.push_back(OpCase{"embedding_backward/" + label(dtype) + "/repeated_ids" +
                                 (deterministic ? "_deterministic" : ""),
                             tolerance_for(dtype),
                             [=] {
                               std::vector<int32_t> ids = random_ints(count, 7, 33);
                               for (int32_t& id : ids) id *= 7;
                               return Inputs{int_tensor({count}, ids), random_tensor({count, dim}, dtype, 34),
                                             random_tensor({vocab, dim}, dtype, 35)};
                             },
                             [=](Context& context, const Inputs& in) {
                               DeterministicScope scope(context, deterministic);
                               Tensor ids = place(context, in[0]), dout = place(context, in[1]),
                                      dtable = place(context, in[2]);
                               ops::embedding_backward(context, ids, dout, dtable);
                               return Outputs{{"dtable", dtable}};
                             }});
    }
  }
}

void add_rmsnorm_cases(std::vector<OpCase>& table) {
  const std::vector<Shape> shapes = {{7, 33}, {2, 3, 1000}};
  for (DType dtype : kFloatDTypes) {
    for (const Shape& shape : shapes) {
      const int64_t dim = shape.back();
      std::string name = label(dtype) + "/";
      for (size_t axis = 0; axis < shape.size(); ++axis) {
        if (axis > 0) name += 'x';
        name += std::to_string(shape[axis]);
      }
      table.push_back(OpCase{"rmsnorm_forward/" + name, tolerance_for(dtype),
                             [=] {
                               return Inputs{random_tensor(shape, dtype, 41, 2.0f), random_tensor({dim}, dtype, 42)};
                             },
                             [=](Context& context, const Inputs& in) {
                               Tensor x = place(context, in[0]), weight = place(context, in[1]);
                               Tensor y = context.empty(shape, dtype);
                               Tensor rstd = context.empty({shape_numel(shape) / dim}, DType::kF32);
                               ops::rmsnorm_forward(context, x, weight, 1e-5f, y, rstd);
                               return Outputs{{"y", y}, {"rstd", rstd}};
                             }});
      for (DType dweight_dtype : gradient_dtypes(dtype)) {
        table.push_back(
            OpCase{"rmsnorm_backward/" + name + "/dweight_" + label(dweight_dtype),
                   std::max(tolerance_for(dtype, 1e-4), tolerance_for(dweight_dtype, 1e-4)),
                   [=] {
                     return Inputs{random_tensor(shape, dtype, 43), random_tensor(shape, dtype, 44, 2.0f),
                                   random_tensor({dim}, dtype, 45), random_tensor({dim}, dweight_dtype, 46)};
                   },
                   [=](Context& context, const Inputs& in) {
                     Tensor dy = place(context, in[0]), x = place(context, in[1]), weight = place(context, in[2]);
                     Tensor dweight = place(context, in[3]);
                     // rstd from this backend's own forward, as in training.
                     Tensor y = context.empty(shape, dtype);
                     Tensor rstd = context.empty({shape_numel(shape) / dim}, DType::kF32);
                     ops::rmsnorm_forward(context, x, weight, 1e-5f, y, rstd);
                     Tensor dx = context.empty(shape, dtype);
                     ops::rmsnorm_backward(context, dy, x, weight, rstd, dx, &dweight);
                     return Outputs{{"dx", dx}, {"dweight", dweight}};
                   }});
      }
    }
  }
}

Tensor rope_inv_freq(int64_t head_dim) {
  std::vector<float> values(static_cast<size_t>(head_dim / 2));
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * static_cast<double>(i) / head_dim));
  }
  return Tensor::from_floats({head_dim / 2}, values);
}

void add_rope_cases(std::vector<OpCase>& table) {
  const Shape shape = {2, 5, 3, 16};  // [B, T, heads, head_dim]
  for (DType dtype : kFloatDTypes) {
    for (bool backward : {false, true}) {
      table.push_back(OpCase{
          std::string(backward ? "rope_backward/" : "rope_forward/") + label(dtype) + "/2x5x3x16_in_place",
          tolerance_for(dtype, 1e-5),
          [=] {
            return Inputs{random_tensor(shape, dtype, 51), int_tensor({10}, random_ints(10, 4096, 52)),
                          rope_inv_freq(16)};
          },
          [=](Context& context, const Inputs& in) {
            Tensor x = place(context, in[0]), positions = place(context, in[1]), inv_freq = place(context, in[2]);
            Tensor y = context.empty(shape, dtype);
            if (backward) {
              ops::rope_backward(context, x, positions, inv_freq, y);
            } else {
              ops::rope_forward(context, x, positions, inv_freq, y);
            }
            // The same rotation in place (y may alias x).
            Tensor in_place = place(context, in[0]);
            if (backward) {
              ops::rope_backward(context, in_place, positions, inv_freq, in_place);
            } else {
              ops::rope_forward(context, in_place, positions, inv_freq, in_place);
            }
            return Outputs{{"y", y}, {"y_in_place", in_place}};
          }});
    }
  }
}

void add_swiglu_cases(std::vector<OpCase>& table) {
  const Shape shape = {37, 45};
  for (DType dtype : kFloatDTypes) {
    table.push_back(OpCase{"swiglu_forward/" + label(dtype) + "/37x45", tolerance_for(dtype, 1e-5),
                           [=] {
                             return Inputs{random_tensor(shape, dtype, 61, 3.0f), random_tensor(shape, dtype, 62)};
                           },
                           [=](Context& context, const Inputs& in) {
                             Tensor gate = place(context, in[0]), up = place(context, in[1]);
                             Tensor out = context.empty(shape, dtype);
                             ops::swiglu_forward(context, gate, up, out);
                             return Outputs{{"out", out}};
                           }});
    table.push_back(OpCase{"swiglu_backward/" + label(dtype) + "/37x45_in_place", tolerance_for(dtype, 1e-5),
                           [=] {
                             return Inputs{random_tensor(shape, dtype, 63), random_tensor(shape, dtype, 61, 3.0f),
                                           random_tensor(shape, dtype, 62)};
                           },
                           [=](Context& context, const Inputs& in) {
                             Tensor dout = place(context, in[0]), gate = place(context, in[1]),
                                    up = place(context, in[2]);
                             // dgate/dup overwrite gate/up, the aliasing ops.h allows.
                             ops::swiglu_backward(context, dout, gate, up, gate, up);
                             return Outputs{{"dgate", gate}, {"dup", up}};
                           }});
  }
}

void add_activation_cases(std::vector<OpCase>& table) {
  const Shape shape = {37, 45};
  const std::pair<ops::Activation, std::string> kinds[] = {{ops::Activation::kRelu, "relu"},
                                                           {ops::Activation::kTanh, "tanh"},
                                                           {ops::Activation::kSilu, "silu"},
                                                           {ops::Activation::kGelu, "gelu"}};
  for (const auto& [kind, name] : kinds) {
    for (DType dtype : kFloatDTypes) {
      table.push_back(OpCase{"activation_forward/" + name + "/" + label(dtype) + "/37x45", tolerance_for(dtype, 1e-5),
                             [=] { return Inputs{random_tensor(shape, dtype, 64, 3.0f)}; },
                             [=](Context& context, const Inputs& in) {
                               Tensor x = place(context, in[0]);
                               Tensor y = context.empty(shape, dtype);
                               ops::activation_forward(context, kind, x, y);
                               return Outputs{{"y", y}};
                             }});
      table.push_back(OpCase{"activation_backward/" + name + "/" + label(dtype) + "/37x45_in_place",
                             tolerance_for(dtype, 1e-5),
                             [=] {
                               return Inputs{random_tensor(shape, dtype, 65), random_tensor(shape, dtype, 64, 3.0f)};
                             },
                             [=](Context& context, const Inputs& in) {
                               Tensor dy = place(context, in[0]), x = place(context, in[1]);
                               ops::activation_backward(context, kind, dy, x, dy);  // dx overwrites dy
                               return Outputs{{"dx", dy}};
                             }});
    }
  }
}

struct AttentionCase {
  std::string variant;
  int64_t batch, time, q_heads, kv_heads, head_dim, prefix;
  std::vector<int64_t> doc_boundaries;  // document starts within each row (besides 0); empty: no doc_start
  float softmax_scale = 0.0f;
  int64_t shared = 0;  // shared-prefix positions (ops::SharedPrefix, prefix tuning)
  bool deterministic = false;  // Context::deterministic: dQ from its own kernel, no atomics
};

Tensor doc_start_tensor(const AttentionCase& shape) {
  std::vector<int32_t> starts(static_cast<size_t>(shape.batch * shape.time), 0);
  for (int64_t b = 0; b < shape.batch; ++b) {
    int32_t start = 0;
    for (int64_t t = 0; t < shape.time; ++t) {
      // Shift the boundaries per row so rows differ.
      for (int64_t boundary : shape.doc_boundaries) {
        if (t == std::min(shape.time - 1, boundary + b)) start = static_cast<int32_t>(t);
      }
      starts[static_cast<size_t>(b * shape.time + t)] = start;
    }
  }
  return Tensor::from_ints({shape.batch * shape.time}, starts);
}

void add_attention_cases(std::vector<OpCase>& table) {
  const std::vector<AttentionCase> cases = {
      {"gqa_B2_T37_Hq4_Hkv2_D64", 2, 37, 4, 2, 64, 0, {}},
      {"prefix5_B1_T70_H2_D128", 1, 70, 2, 2, 128, 5, {}},
      {"docs_B2_T50_Hq4_Hkv1_D32", 2, 50, 4, 1, 32, 0, {13, 29}},
      {"prefix40_docs_B1_T45_Hq3_Hkv1_D80_scale", 1, 45, 3, 1, 80, 40, {7, 33}, 0.2f},
      {"single_query_prefix3_D64", 1, 1, 2, 1, 64, 3, {}},
      {"shared20_B3_T37_Hq4_Hkv2_D64", 3, 37, 4, 2, 64, 0, {}, 0.0f, 20},
      {"shared5_prefix2_docs_B2_T45_Hq2_Hkv1_D80", 2, 45, 2, 1, 80, 2, {11, 30}, 0.0f, 5},
      {"deterministic_gqa_B2_T37_Hq4_Hkv2_D64", 2, 37, 4, 2, 64, 0, {}, 0.0f, 0, true},
      {"deterministic_shared5_prefix2_docs_B2_T45_Hq2_Hkv1_D80_scale", 2, 45, 2, 1, 80, 2, {11, 30}, 0.3f, 5, true},
  };
  for (DType dtype : kFloatDTypes) {
    for (const AttentionCase& shape : cases) {
      const Shape q_shape = {shape.batch, shape.time, shape.q_heads, shape.head_dim};
      const Shape kv_shape = {shape.batch, shape.prefix + shape.time, shape.kv_heads, shape.head_dim};
      const Shape shared_shape = {shape.shared, shape.kv_heads, shape.head_dim};
      auto make_inputs = [=] {
        return Inputs{random_tensor(q_shape, dtype, 71),        random_tensor(kv_shape, dtype, 72),
                      random_tensor(kv_shape, dtype, 73),       random_tensor(q_shape, dtype, 74),
                      doc_start_tensor(shape),                  random_tensor(shared_shape, dtype, 75),
                      random_tensor(shared_shape, dtype, 76)};
      };
      // Runs the forward (and the backward when asked) on `context`.
      auto run = [=](Context& context, const Inputs& in, bool backward) {
        Tensor q = place(context, in[0]), k = place(context, in[1]), v = place(context, in[2]);
        DeterministicScope scope(context, shape.deterministic);
        Tensor doc_start = place(context, in[4]);
        Tensor shared_k = place(context, in[5]), shared_v = place(context, in[6]);
        ops::AttentionOptions options;
        options.softmax_scale = shape.softmax_scale;
        options.num_prefix = shape.prefix;
        options.doc_start = shape.doc_boundaries.empty() ? nullptr : &doc_start;
        if (shape.shared > 0) {
          options.shared_prefix.keys = &shared_k;
          options.shared_prefix.values = &shared_v;
        }
        Tensor out = context.empty(q_shape, dtype);
        Tensor lse = context.empty({shape.batch, shape.q_heads, shape.time}, DType::kF32);
        ops::attention_forward(context, q, k, v, options, out, lse);
        if (!backward) return Outputs{{"out", out}, {"lse", lse}};
        Tensor dout = place(context, in[3]);
        Tensor dq = context.empty(q_shape, dtype), dk = context.empty(kv_shape, dtype),
               dv = context.empty(kv_shape, dtype);
        Tensor dshared_k = context.empty(shared_shape, DType::kF32), dshared_v = context.empty(shared_shape, DType::kF32);
        if (shape.shared > 0) {
          options.shared_prefix.dkeys = &dshared_k;
          options.shared_prefix.dvalues = &dshared_v;
        }
        ops::attention_backward(context, dout, q, k, v, out, lse, options, dq, dk, dv);
        if (shape.shared == 0) return Outputs{{"dq", dq}, {"dk", dk}, {"dv", dv}};
        return Outputs{{"dq", dq}, {"dk", dk}, {"dv", dv}, {"dshared_keys", dshared_k}, {"dshared_values", dshared_v}};
      };
      // bf16 backward: dS = P (dP - D) subtracts nearly equal fp32 numbers
      // computed from bf16-rounded outputs, so allow two bf16 ulps more.
      table.push_back(OpCase{"attention_forward/" + label(dtype) + "/" + shape.variant, tolerance_for(dtype, 2e-5),
                             make_inputs, [=](Context& context, const Inputs& in) { return run(context, in, false); }});
      table.push_back(OpCase{"attention_backward/" + label(dtype) + "/" + shape.variant,
                             dtype == DType::kBF16 ? 3e-2 : tolerance_for(dtype, 1e-4) * 2, make_inputs,
                             [=](Context& context, const Inputs& in) { return run(context, in, true); }});
    }
  }
}

void add_cross_entropy_cases(std::vector<OpCase>& table) {
  struct CrossEntropy {
    std::string variant;
    int64_t rows, vocab;
  };
  const std::vector<CrossEntropy> shapes = {{"9x1000", 9, 1000}, {"5x70000_large_vocab", 5, 70000}};
  for (DType dtype : kFloatDTypes) {
    for (const CrossEntropy& shape : shapes) {
      auto make_inputs = [=] {
        std::vector<int32_t> targets = random_ints(shape.rows, static_cast<int32_t>(shape.vocab), 81);
        targets[1] = -100;  // ignore index
        targets[shape.rows - 1] = static_cast<int32_t>(shape.vocab - 1);
        return Inputs{random_tensor({shape.rows, shape.vocab}, dtype, 82, 3.0f), int_tensor({shape.rows}, targets),
                      random_tensor({shape.rows}, DType::kF32, 83)};
      };
      table.push_back(OpCase{"cross_entropy_forward/" + label(dtype) + "/" + shape.variant, 2e-5, make_inputs,
                             [=](Context& context, const Inputs& in) {
                               Tensor logits = place(context, in[0]), targets = place(context, in[1]);
                               Tensor losses = context.empty({shape.rows}, DType::kF32);
                               Tensor lse = context.empty({shape.rows}, DType::kF32);
                               ops::cross_entropy_forward(context, logits, targets, losses, lse);
                               return Outputs{{"losses", losses}, {"lse", lse}};
                             }});
      table.push_back(OpCase{"cross_entropy_backward/" + label(dtype) + "/" + shape.variant + "_in_place",
                             tolerance_for(dtype, 2e-5), make_inputs, [=](Context& context, const Inputs& in) {
                               Tensor logits = place(context, in[0]), targets = place(context, in[1]);
                               Tensor dloss = place(context, in[2]);
                               Tensor losses = context.empty({shape.rows}, DType::kF32);
                               Tensor lse = context.empty({shape.rows}, DType::kF32);
                               ops::cross_entropy_forward(context, logits, targets, losses, lse);
                               // dlogits overwrites logits, the model's fused in-place form.
                               ops::cross_entropy_backward(context, logits, targets, lse, dloss, logits);
                               return Outputs{{"dlogits", logits}};
                             }});
    }
  }
}

void add_elementwise_cases(std::vector<OpCase>& table) {
  const Shape shape = {3, 1001};
  for (DType dtype : kFloatDTypes) {
    const std::string name = label(dtype) + "/3x1001";
    table.push_back(OpCase{"add/" + name + "/into_a", 0.0,
                           [=] {
                             return Inputs{random_tensor(shape, dtype, 91), random_tensor(shape, dtype, 92)};
                           },
                           [=](Context& context, const Inputs& in) {
                             Tensor a = place(context, in[0]), b = place(context, in[1]);
                             ops::add(context, a, b, a);
                             return Outputs{{"out", a}};
                           }});
    for (DType x_dtype : kFloatDTypes) {
      table.push_back(OpCase{"add_scaled/" + name + "/x_" + label(x_dtype), 0.0,
                             [=] {
                               return Inputs{random_tensor(shape, x_dtype, 93), random_tensor(shape, dtype, 94)};
                             },
                             [=](Context& context, const Inputs& in) {
                               Tensor x = place(context, in[0]), y = place(context, in[1]);
                               ops::add_scaled(context, -0.37f, x, y);
                               return Outputs{{"y", y}};
                             }});
      if (x_dtype != dtype) {
        table.push_back(OpCase{"cast/" + label(x_dtype) + "_to_" + label(dtype) + "/3x1001", 0.0,
                               [=] { return Inputs{random_tensor(shape, x_dtype, 95, 1000.0f)}; },
                               [=](Context& context, const Inputs& in) {
                                 Tensor src = place(context, in[0]);
                                 Tensor dst = context.empty(shape, dtype);
                                 ops::cast(context, src, dst);
                                 return Outputs{{"dst", dst}};
                               }});
      }
    }
    table.push_back(OpCase{"scale/" + name, 0.0, [=] { return Inputs{random_tensor(shape, dtype, 96)}; },
                           [=](Context& context, const Inputs& in) {
                             Tensor x = place(context, in[0]);
                             ops::scale(context, x, 3.3f);
                             return Outputs{{"x", x}};
                           }});
    table.push_back(OpCase{"fill/" + name, 0.0, [=] { return Inputs{random_tensor(shape, dtype, 97)}; },
                           [=](Context& context, const Inputs& in) {
                             Tensor x = place(context, in[0]);
                             ops::fill(context, x, 0.1f);
                             return Outputs{{"x", x}};
                           }});
    // offset 5 is not a multiple of Philox's 4 draws per block.
    for (bool backward : {false, true}) {
      table.push_back(OpCase{std::string(backward ? "dropout_backward/" : "dropout_forward/") + name + "/offset5", 0.0,
                             [=] { return Inputs{random_tensor(shape, dtype, 98)}; },
                             [=](Context& context, const Inputs& in) {
                               Tensor x = place(context, in[0]);
                               Tensor y = context.empty(shape, dtype);
                               if (backward) {
                                 ops::dropout_backward(context, x, 0.3f, 1234, 5, y);
                               } else {
                                 ops::dropout_forward(context, x, 0.3f, 1234, 5, y);
                               }
                               return Outputs{{"y", y}};
                             }});
      // A column slice of a wider tensor (row-parallel LoRA's input).
      if (shape.size() == 2)
        table.push_back(OpCase{std::string(backward ? "dropout_backward/" : "dropout_forward/") + name + "/slice", 0.0,
                               [=] { return Inputs{random_tensor(shape, dtype, 99)}; },
                               [=](Context& context, const Inputs& in) {
                                 Tensor x = place(context, in[0]);
                                 Tensor y = context.empty(shape, dtype);
                                 const ops::DropoutLayout layout{3 * shape[1] + 1, shape[1] + 2};
                                 if (backward) {
                                   ops::dropout_backward(context, x, 0.3f, 1234, 6, y, layout);
                                 } else {
                                   ops::dropout_forward(context, x, 0.3f, 1234, 6, y, layout);
                                 }
                                 return Outputs{{"y", y}};
                               }});
    }
  }
  table.push_back(OpCase{"cast/i32_to_i64/7", 0.0,
                         [] {
                           return Inputs{int_tensor({7}, {0, 1, -1, 1 << 20, -(1 << 20), 7, 100000})};
                         },
                         [](Context& context, const Inputs& in) {
                           Tensor src = place(context, in[0]);
                           Tensor wide = context.empty({7}, DType::kI64);
                           ops::cast(context, src, wide);
                           Tensor back = context.empty({7}, DType::kI32);
                           ops::cast(context, wide, back);
                           return Outputs{{"i64", wide}, {"i32_again", back}};
                         }});
  // Sum of squares and finiteness over several tensors of mixed dtypes,
  // returned as a [3] f32 tensor {sum of squares, all finite, all finite with an inf added}.
  for (bool deterministic : {false, true})
  table.push_back(OpCase{
      std::string("gradient_stats/mixed/3_tensors") + (deterministic ? "_deterministic" : ""), 1e-6,
      [] {
        std::vector<float> with_inf(100, 1.0f);
        with_inf[37] = INFINITY;
        return Inputs{random_tensor({3, 1001}, DType::kF32, 101), random_tensor({77}, DType::kBF16, 102),
                      random_tensor({5000}, DType::kF16, 103), Tensor::from_floats({100}, with_inf, DType::kBF16)};
      },
      [deterministic](Context& context, const Inputs& in) {
        DeterministicScope scope(context, deterministic);
        std::vector<Tensor> finite = {place(context, in[0]), place(context, in[1]), place(context, in[2])};
        const ops::GradientStats stats = ops::gradient_stats(context, finite);
        finite.push_back(place(context, in[3]));
        const ops::GradientStats with_inf = ops::gradient_stats(context, finite);
        const std::vector<float> values = {static_cast<float>(stats.sum_of_squares), stats.all_finite ? 1.0f : 0.0f,
                                           with_inf.all_finite ? 1.0f : 0.0f};
        return Outputs{{"stats", Tensor::from_floats({3}, values)}};
      }});
}

// AdamW: three fused updates of every value x gradient dtype, with weight
// decay, a loss-scale multiplier and gradients that change sign between
// steps. Both backends use the same host-derived scalars and round every
// operation the same way (kernels/cuda/adamw.cu), so the bits must match.
void add_adamw_cases(std::vector<OpCase>& table) {
  const Shape shape = {7, 301};
  for (DType value_dtype : kFloatDTypes) {
    for (DType grad_dtype : kFloatDTypes) {
      for (bool decay : {true, false}) {
        // An f32 value is the master itself (optim/adamw.h); bf16/f16 values get their own master.
        table.push_back(OpCase{
            "adamw_update/value_" + label(value_dtype) + "/grad_" + label(grad_dtype) + (decay ? "/decay" : "/no_decay") +
                "/3_steps",
            0.0,
            [=] {
              return Inputs{random_tensor(shape, DType::kF32, 111, 0.5f), random_tensor(shape, grad_dtype, 112, 64.0f),
                            random_tensor(shape, grad_dtype, 113, 64.0f), random_tensor(shape, grad_dtype, 114, 64.0f)};
            },
            [=](Context& context, const Inputs& in) {
              Tensor master = place(context, in[0]);
              Tensor value = master;
              if (value_dtype != DType::kF32) {
                value = context.empty(shape, value_dtype);
                ops::cast(context, master, value);
              }
              Tensor exp_avg = context.zeros(shape, DType::kF32), exp_avg_sq = context.zeros(shape, DType::kF32);
              for (int64_t step = 1; step <= 3; ++step) {
                Tensor grad = place(context, in[static_cast<size_t>(step)]);
                ops::AdamWUpdate update;
                update.lr = 1e-2f * static_cast<float>(step);
                update.beta1 = 0.9f;
                update.beta2 = 0.95f;
                update.eps = 1e-6f;
                update.weight_decay = decay ? 0.1f : 0.0f;
                update.step = step;
                update.grad_multiplier = 1.0f / 64.0f;
                ops::adamw_update(context, value, master, exp_avg, exp_avg_sq, grad, update);
              }
              return Outputs{{"value", value}, {"master", master}, {"exp_avg", exp_avg}, {"exp_avg_sq", exp_avg_sq}};
            }});
      }
    }
  }
}

const std::vector<OpCase>& op_table() {
  static const std::vector<OpCase> table = [] {
    std::vector<OpCase> rows;
    add_gemm_cases(rows);
    add_linear_cases(rows);
    add_mixed_dtype_weight_cases(rows);
    add_embedding_cases(rows);
    add_rmsnorm_cases(rows);
    add_rope_cases(rows);
    add_swiglu_cases(rows);
    add_activation_cases(rows);
    add_attention_cases(rows);
    add_cross_entropy_cases(rows);
    add_elementwise_cases(rows);
    add_adamw_cases(rows);
    return rows;
  }();
  return table;
}

// max |got - want| / max |want|; NaN anywhere that the reference lacks is an
// infinite error, NaN in both places agrees.
struct Comparison {
  double error = 0.0;
  size_t worst_index = 0;
};

Comparison compare(const std::vector<float>& got, const std::vector<float>& want) {
  Comparison result;
  double max_difference = 0.0, magnitude = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    magnitude = std::max(magnitude, static_cast<double>(std::fabs(want[i])));
    if (std::isnan(want[i]) && std::isnan(got[i])) continue;
    if (std::isinf(want[i]) && got[i] == want[i]) continue;
    double difference = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (std::isnan(difference)) difference = INFINITY;
    if (difference > max_difference) {
      max_difference = difference;
      result.worst_index = i;
    }
  }
  result.error = max_difference == 0.0 ? 0.0 : max_difference / std::max(magnitude, 1e-30);
  return result;
}

class OpTableTest : public ::testing::TestWithParam<size_t> {};

TEST_P(OpTableTest, CudaMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const OpCase& op_case = op_table()[GetParam()];
  const Inputs inputs = op_case.make_inputs();
  std::unique_ptr<Context> cpu = Context::cpu(0);
  Context& gpu = cuda_context();
  const Outputs cpu_outputs = op_case.run(*cpu, inputs);
  const Outputs gpu_outputs = op_case.run(gpu, inputs);
  gpu.synchronize();
  ASSERT_EQ(cpu_outputs.size(), gpu_outputs.size());
  for (size_t o = 0; o < cpu_outputs.size(); ++o) {
    const auto& [name, cpu_tensor] = cpu_outputs[o];
    const Tensor& gpu_tensor = gpu_outputs[o].second;
    ASSERT_EQ(cpu_tensor.shape(), gpu_tensor.shape()) << op_case.name << " " << name;
    ASSERT_EQ(cpu_tensor.dtype(), gpu_tensor.dtype()) << op_case.name << " " << name;
    const std::vector<float> want = cpu_tensor.to_floats(), got = gpu_tensor.to_floats();
    const Comparison comparison = compare(got, want);
    const std::string row = op_case.name + " " + name;
    std::printf("  %-78s max_err %-10.3g tol %-8.2g%s\n", row.c_str(), comparison.error, op_case.tolerance,
                comparison.error <= op_case.tolerance ? "" : "  FAIL");
    EXPECT_LE(comparison.error, op_case.tolerance)
        << row << ": worst element " << comparison.worst_index << " cpu " << want[comparison.worst_index] << " cuda "
        << got[comparison.worst_index];
  }
}

std::string test_name(const ::testing::TestParamInfo<size_t>& info) {
  std::string name = op_table()[info.param].name;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(AllOps, OpTableTest, ::testing::Range<size_t>(0, op_table().size()), test_name);

// ---- The CUDA caching allocator ---------------------------------------------------------
TEST(CudaAllocatorTest, CountsBytesInUseAndPeak) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Context> context = Context::cuda(0);
  Allocator& allocator = context->allocator();
  const size_t before = allocator.bytes_in_use();
  size_t with_both = 0;
  {
    Tensor a = context->empty({1000}, DType::kF32);      // 4000 bytes, a 512-byte size class
    Tensor b = context->empty({3 << 20}, DType::kBF16);  // 6 MiB, 2 MiB granules
    with_both = allocator.bytes_in_use();
    EXPECT_GE(with_both - before, 4000u + (6u << 20));
    EXPECT_GE(allocator.peak_bytes_in_use(), with_both);
  }
  EXPECT_EQ(allocator.bytes_in_use(), before) << "freed tensors must leave bytes_in_use";
  EXPECT_GE(allocator.peak_bytes_in_use(), with_both) << "the peak survives frees";
  allocator.reset_peak();
  EXPECT_EQ(allocator.peak_bytes_in_use(), before);
}

TEST(CudaAllocatorTest, ReusesAFreedBlockOfTheSameSizeClass) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Context> context = Context::cuda(0);
  void* first = nullptr;
  {
    Tensor tensor = context->empty({3 << 18}, DType::kF32);  // 3 MiB: the 4 MiB class (2 MiB granules)
    first = tensor.raw_data();
  }
  Tensor again = context->empty({(3 << 18) - 5}, DType::kF32);  // rounds to the same 4 MiB class
  EXPECT_EQ(again.raw_data(), first);
  // The reused block works: fill it and read it back.
  ops::fill(*context, again, 2.5f);
  context->synchronize();
  const std::vector<float> values = again.to_floats();
  EXPECT_EQ(values.front(), 2.5f);
  EXPECT_EQ(values.back(), 2.5f);
}

// ---- Data errors on the CUDA backend ------------------------------------------------------
template <typename Body>
void expect_bad_input(Body&& body, const std::string& expected_fragment) {
  try {
    body();
    ADD_FAILURE() << "expected an llmft::Error containing \"" << expected_fragment << "\"";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput) << error.what();
    EXPECT_NE(std::string(error.what()).find(expected_fragment), std::string::npos) << error.what();
  }
}

// Context::deterministic: the backward ops that otherwise sum with float
// atomics (attention's dQ, the f32 embedding gradient, the gradient
// statistics) give the same bits when run again on the same inputs.
TEST(CudaDeterministicTest, AtomicFreeBackwardsRepeatBitForBit) {
  SKIP_WITHOUT_CUDA();
  Context& context = cuda_context();
  DeterministicScope scope(context, true);
  const Shape q_shape{2, 70, 4, 64}, kv_shape{2, 70, 2, 64};
  Tensor q = context.upload(random_tensor(q_shape, DType::kF32, 201));
  Tensor k = context.upload(random_tensor(kv_shape, DType::kF32, 202));
  Tensor v = context.upload(random_tensor(kv_shape, DType::kF32, 203));
  Tensor dout = context.upload(random_tensor(q_shape, DType::kF32, 204));
  Tensor out = context.empty(q_shape, DType::kF32), lse = context.empty({2, 4, 70}, DType::kF32);
  ops::AttentionOptions options;
  ops::attention_forward(context, q, k, v, options, out, lse);
  std::vector<int32_t> ids = random_ints(300, 5, 205);  // 300 positions, 5 distinct ids
  Tensor ids_tensor = context.upload(int_tensor({300}, ids));
  Tensor embedding_dout = context.upload(random_tensor({300, 96}, DType::kF32, 206));
  auto run = [&] {
    Tensor dq = context.empty(q_shape, DType::kF32), dk = context.empty(kv_shape, DType::kF32);
    Tensor dv = context.empty(kv_shape, DType::kF32);
    ops::attention_backward(context, dout, q, k, v, out, lse, options, dq, dk, dv);
    Tensor dtable = context.zeros({5, 96}, DType::kF32);
    ops::embedding_backward(context, ids_tensor, embedding_dout, dtable);
    const std::vector<Tensor> gradients = {dq, dtable};
    const double norm = ops::gradient_stats(context, gradients).sum_of_squares;
    return std::make_tuple(dq.to_floats(),
                           dtable.to_floats(), norm);
  };
  const auto first = run();
  for (int again = 0; again < 3; ++again) {
    const auto next = run();
    EXPECT_TRUE(std::get<0>(next) == std::get<0>(first)) << "attention dQ differs on run " << again + 2;
    EXPECT_TRUE(std::get<1>(next) == std::get<1>(first)) << "embedding gradient differs on run " << again + 2;
    EXPECT_EQ(std::get<2>(next), std::get<2>(first)) << "gradient sum of squares differs on run " << again + 2;
  }
}

TEST(CudaOpErrorsTest, EmbeddingRejectsAnIdOutsideTheVocabularyNamingItsPosition) {
  SKIP_WITHOUT_CUDA();
  Context& context = cuda_context();
  Tensor ids = context.upload(int_tensor({4}, {0, 3, 9, 1}));
  Tensor table = context.upload(random_tensor({5, 8}, DType::kF32, 1));
  Tensor out = context.empty({4, 8}, DType::kF32);
  expect_bad_input([&] { ops::embedding_forward(context, ids, table, out); }, "token id 9 at position 2");
  Tensor dtable = context.zeros({5, 8}, DType::kBF16);
  Tensor dout = context.upload(random_tensor({4, 8}, DType::kF32, 2));
  expect_bad_input([&] { ops::embedding_backward(context, ids, dout, dtable); }, "token id 9 at position 2");
}

TEST(CudaOpErrorsTest, CrossEntropyRejectsATargetOutsideTheVocabularyNamingItsRow) {
  SKIP_WITHOUT_CUDA();
  Context& context = cuda_context();
  Tensor logits = context.upload(random_tensor({3, 10}, DType::kBF16, 3));
  Tensor targets = context.upload(int_tensor({3}, {-100, 10, 2}));
  Tensor losses = context.empty({3}, DType::kF32), lse = context.empty({3}, DType::kF32);
  expect_bad_input([&] { ops::cross_entropy_forward(context, logits, targets, losses, lse); }, "target 10 of row 1");
}

TEST(CudaOpErrorsTest, AdamWUpdateRejectsAHostGradientNamingIt) {
  SKIP_WITHOUT_CUDA();
  Context& gpu = cuda_context();
  Tensor master = gpu.zeros({4}, DType::kF32), exp_avg = gpu.zeros({4}, DType::kF32),
         exp_avg_sq = gpu.zeros({4}, DType::kF32);
  const Tensor host_grad = Tensor::zeros_cpu({4}, DType::kF32);
  try {
    ops::adamw_update(gpu, master, master, exp_avg, exp_avg_sq, host_grad, ops::AdamWUpdate{});
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("adamw_update: grad"), std::string::npos) << error.what();
  }
}

TEST(CudaOpErrorsTest, CastReportsAnI64ThatDoesNotFitI32) {
  SKIP_WITHOUT_CUDA();
  Context& context = cuda_context();
  // 2^40 at element 4.
  Tensor source = Tensor::empty_cpu({6}, DType::kI64);
  int64_t* data = source.data<int64_t>();
  for (int i = 0; i < 6; ++i) data[i] = i;
  data[4] = int64_t{1} << 40;
  Tensor device_source = context.upload(source);
  Tensor narrow = context.empty({6}, DType::kI32);
  expect_bad_input([&] { ops::cast(context, device_source, narrow); }, "element 4 = 1099511627776");
}

}  // namespace
}  // namespace llmft
