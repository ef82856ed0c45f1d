// The op table (STYLE.md item 11): every op of kernels/ops.h on the CPU backend
// for each storage dtype and several shapes. Forward rows compare with the
// naive double-precision references in reference_ops.h (on the same rounded
// inputs); backward rows compare with central finite differences of those
// references in double, for loss = sum(projection * forward(inputs)). Each row
// prints its max error next to its tolerance.
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/context.h"
#include "core/error.h"
#include "core/philox.h"
#include "core/tensor.h"
#include "kernels/ops.h"
#include "tests/kernels/reference_ops.h"

namespace llmft {
namespace {

using reference::Values;

constexpr DType kFloatDTypes[] = {DType::kF32, DType::kBF16, DType::kF16};

std::string dtype_label(DType dtype) { return std::string(dtype_name(dtype)); }

void report(const std::string& row, double error, double tolerance) {
  std::printf("  %-78s max_err %-10.3g tol %-8.2g%s\n", row.c_str(), error, tolerance,
              error <= tolerance ? "" : "  FAIL");
  EXPECT_LE(error, tolerance) << row;
}

// Forward tolerance, relative to the largest reference magnitude: fp32
// accumulation for f32; one or two output roundings for bf16 (2^-8) and f16 (2^-11).
double forward_tolerance(DType dtype, double f32_tolerance = 2e-5) {
  switch (dtype) {
    case DType::kBF16: return 1e-2;
    case DType::kF16: return 2e-3;
    default: return f32_tolerance;
  }
}

Values random_values(int64_t count, uint64_t seed, double scale = 1.0) {
  PhiloxGenerator generator(seed);
  Values values(static_cast<size_t>(count));
  for (double& value : values) value = scale * generator.next_normal();
  return values;
}

Tensor tensor_of(const Values& values, const Shape& shape, DType dtype) {
  std::vector<float> floats(values.begin(), values.end());
  return Tensor::from_floats(shape, floats, dtype);
}

Values values_of(const Tensor& tensor) {
  std::vector<float> floats = tensor.to_floats();
  return Values(floats.begin(), floats.end());
}

// The values a tensor of `dtype` actually holds after rounding.
Values rounded(const Values& values, DType dtype) { return values_of(tensor_of(values, {(int64_t)values.size()}, dtype)); }

Tensor ints_of(const std::vector<int32_t>& values, const Shape& shape) { return Tensor::from_ints(shape, values); }

// max |got - want| / max |want|.
double scaled_error(const Values& got, const Values& want) {
  EXPECT_EQ(got.size(), want.size());
  double error = 0.0, magnitude = 0.0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double difference = std::fabs(got[i] - want[i]);
    error = std::isnan(difference) ? INFINITY : std::max(error, difference);
    magnitude = std::max(magnitude, std::fabs(want[i]));
  }
  return error / std::max(magnitude, 1e-30);
}

Values subtract(const Values& a, const Values& b) {
  Values result(a.size());
  for (size_t i = 0; i < a.size(); ++i) result[i] = a[i] - b[i];
  return result;
}

std::string shape_label(const Shape& shape) { return shape_to_string(shape); }

using Forward = std::function<Values(const std::vector<Values>&)>;

// Central differences in double of loss = sum(projection * forward(inputs))
// with respect to input `which`, at up to 300 sampled elements; returns
// max |analytic - numeric| / max |numeric| over them.
double finite_difference_error(const Forward& forward, std::vector<Values> inputs, size_t which, const Values& analytic,
                               const Values& projection) {
  const size_t count = inputs[which].size();
  EXPECT_EQ(analytic.size(), count);
  std::vector<size_t> indices;
  if (count <= 300) {
    for (size_t i = 0; i < count; ++i) indices.push_back(i);
  } else {
    PhiloxGenerator generator(77 + which);
    for (int i = 0; i < 300; ++i) indices.push_back(generator.next_below(count));
  }
  auto loss = [&]() {
    const Values output = forward(inputs);
    double sum = 0.0;
    for (size_t i = 0; i < output.size(); ++i) sum += projection[i] * output[i];
    return sum;
  };
  double error = 0.0, magnitude = 0.0;
  for (size_t index : indices) {
    const double saved = inputs[which][index];
    const double step = 1e-5 * std::max(1.0, std::fabs(saved));
    inputs[which][index] = saved + step;
    const double plus = loss();
    inputs[which][index] = saved - step;
    const double minus = loss();
    inputs[which][index] = saved;
    const double numeric = (plus - minus) / (2.0 * step);
    const double difference = std::fabs(analytic[index] - numeric);
    error = std::isnan(difference) ? INFINITY : std::max(error, difference);
    magnitude = std::max(magnitude, std::fabs(numeric));
  }
  return error / std::max(magnitude, 1e-30);
}

constexpr double kGradientTolerance = 2e-4;

class OpTable : public ::testing::Test {
 protected:
  std::unique_ptr<Context> context = Context::cpu(0);
};

// ---- GEMM ------------------------------------------------------------------------

struct GemmCase {
  Shape batch;  // leading dims of c ({} for plain 2-D)
  bool a_batched, b_batched;
  int64_t m, n, k;
  bool trans_a, trans_b;
  float alpha, beta;
  bool c_starts_nan;  // beta == 0 must ignore c, NaNs included
};

void run_gemm_case(Context& context, const GemmCase& spec, DType dtype, DType c_dtype) {
  const int64_t batch = shape_numel(spec.batch);
  auto with_batch = [&](bool batched, int64_t rows, int64_t columns) {
    Shape shape = batched ? spec.batch : Shape{};
    shape.push_back(rows);
    shape.push_back(columns);
    return shape;
  };
  const Shape a_shape = with_batch(spec.a_batched, spec.trans_a ? spec.k : spec.m, spec.trans_a ? spec.m : spec.k);
  const Shape b_shape = with_batch(spec.b_batched, spec.trans_b ? spec.n : spec.k, spec.trans_b ? spec.k : spec.n);
  const Shape c_shape = with_batch(true, spec.m, spec.n);
  const Values a = rounded(random_values(shape_numel(a_shape), 1), dtype);
  const Values b = rounded(random_values(shape_numel(b_shape), 2), dtype);
  Values c = rounded(random_values(shape_numel(c_shape), 3), c_dtype);
  if (spec.c_starts_nan) std::fill(c.begin(), c.end(), NAN);
  Tensor c_tensor = tensor_of(c, c_shape, c_dtype);
  ops::gemm(context, tensor_of(a, a_shape, dtype), tensor_of(b, b_shape, dtype), c_tensor, spec.trans_a,
            spec.trans_b, spec.alpha, spec.beta);
  const Values want = reference::gemm(a, b, c, batch, spec.a_batched || spec.batch.empty(),
                                      spec.b_batched || spec.batch.empty(), spec.m, spec.n, spec.k, spec.trans_a,
                                      spec.trans_b, spec.alpha, spec.beta);
  const std::string row = str_cat("gemm ", dtype_label(dtype), "->", dtype_label(c_dtype), " a", shape_label(a_shape),
                                  spec.trans_a ? "^T" : "", " b", shape_label(b_shape), spec.trans_b ? "^T" : "",
                                  " alpha ", spec.alpha, " beta ", spec.beta, spec.c_starts_nan ? " (c=NaN)" : "");
  report(row, scaled_error(values_of(c_tensor), want), forward_tolerance(c_dtype));
}

TEST_F(OpTable, Gemm) {
  std::vector<GemmCase> cases;
  for (bool trans_a : {false, true}) {
    for (bool trans_b : {false, true}) cases.push_back({{}, false, false, 7, 5, 9, trans_a, trans_b, 1.0f, 0.0f, false});
  }
  cases.push_back({{3}, true, true, 7, 5, 9, false, true, 1.0f, 0.0f, false});             // batched
  cases.push_back({{2, 3}, true, false, 7, 5, 9, false, true, 1.0f, 0.0f, false});         // shared b, folded rows
  cases.push_back({{3}, true, false, 7, 5, 9, true, false, 1.0f, 0.0f, false});            // shared b, trans a
  cases.push_back({{3}, false, true, 7, 5, 9, false, false, 1.0f, 0.0f, false});           // shared a
  cases.push_back({{}, false, false, 7, 5, 9, true, true, 0.5f, 0.75f, false});            // alpha, beta
  cases.push_back({{3}, true, true, 7, 5, 9, false, false, -1.5f, 1.0f, false});           // accumulate
  cases.push_back({{}, false, false, 7, 5, 9, false, false, 1.0f, 0.0f, true});            // beta 0 over NaN
  cases.push_back({{}, false, false, 4, 3, 0, false, false, 1.0f, 0.5f, false});            // K == 0: c = beta c
  cases.push_back({{}, false, false, 4, 3, 0, true, true, 1.0f, 0.0f, true});              // K == 0 over NaN
  cases.push_back({{}, false, false, 200, 120, 64, false, true, 1.0f, 0.5f, false});        // threaded, row bands
  cases.push_back({{}, false, false, 40, 300, 100, true, false, 1.0f, 0.0f, false});       // threaded, column bands
  cases.push_back({{}, false, false, 40, 300, 100, false, true, 1.0f, 0.0f, false});
  // M = 1 with b^T (a decode step's linear): the GEMV of kernels/cpu/gemv.cc.
  cases.push_back({{}, false, false, 1, 5, 9, false, true, 1.0f, 0.0f, true});             // one thread, beta 0 over NaN
  cases.push_back({{}, false, false, 1, 7, 9, true, true, 0.5f, 0.75f, false});            // trans a, alpha, beta
  cases.push_back({{3}, true, true, 1, 13, 6, false, true, -1.5f, 1.0f, false});           // batched, accumulate
  cases.push_back({{}, false, false, 1, 1003, 301, false, true, 1.0f, 0.0f, false});       // rows shared by threads
  cases.push_back({{}, false, false, 1, 1003, 301, false, true, 0.5f, -1.0f, false});      // threaded, beta
  for (const GemmCase& spec : cases) run_gemm_case(*context, spec, DType::kF32, DType::kF32);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (DType c_dtype : {DType::kF32, dtype}) {
      run_gemm_case(*context, cases[1], dtype, c_dtype);
      run_gemm_case(*context, cases[5], dtype, c_dtype);
      run_gemm_case(*context, cases[8], dtype, c_dtype);
    }
  }
}

// ---- Linear ------------------------------------------------------------------------

TEST_F(OpTable, LinearForward) {
  const Shape x_shape{2, 5, 20};
  const int64_t rows = 10, in = 20, out = 12;
  for (DType dtype : kFloatDTypes) {
    for (bool with_bias : {false, true}) {
      const Values x = rounded(random_values(rows * in, 11), dtype);
      const Values weight = rounded(random_values(out * in, 12, 0.3), dtype);
      const Values bias = rounded(random_values(out, 13), dtype);
      Tensor y = Tensor::empty_cpu({2, 5, out}, dtype);
      const Tensor bias_tensor = tensor_of(bias, {out}, dtype);
      ops::linear_forward(*context, tensor_of(x, x_shape, dtype), tensor_of(weight, {out, in}, dtype),
                          with_bias ? &bias_tensor : nullptr, y);
      const Values want = reference::linear(x, weight, with_bias ? &bias : nullptr, rows, in, out);
      report(str_cat("linear_forward ", dtype_label(dtype), " x[2, 5, 20] w[12, 20]", with_bias ? " +bias" : ""),
             scaled_error(values_of(y), want), forward_tolerance(dtype));
    }
  }
}

// One row (a decode step): f32 weights go through SGEMM's M = 1 path, 16-bit
// ones straight to the GEMV that widens them in registers; 1003 x 301 is split
// across threads, 9 x 7 is not. The output is f32, so the f32 tolerance holds
// for every weight dtype (no final rounding hides a kernel's error).
TEST_F(OpTable, LinearForwardOneRow) {
  for (DType dtype : kFloatDTypes) {
    for (auto [in, out] : {std::pair<int64_t, int64_t>{7, 9}, {301, 1003}}) {
      for (bool with_bias : {false, true}) {
        const Values x = rounded(random_values(in, 14), dtype);
        const Values weight = rounded(random_values(out * in, 15, 0.3), dtype);
        const Values bias = rounded(random_values(out, 16), dtype);
        Tensor y = Tensor::empty_cpu({1, out}, DType::kF32);
        const Tensor bias_tensor = tensor_of(bias, {out}, dtype);
        ops::linear_forward(*context, tensor_of(x, {1, in}, dtype), tensor_of(weight, {out, in}, dtype),
                            with_bias ? &bias_tensor : nullptr, y);
        const Values want = reference::linear(x, weight, with_bias ? &bias : nullptr, 1, in, out);
        report(str_cat("linear_forward ", dtype_label(dtype), "->f32 x[1, ", in, "] w[", out, ", ", in, "]",
                       with_bias ? " +bias" : ""),
               scaled_error(values_of(y), want), forward_tolerance(DType::kF32));
      }
    }
  }
}

TEST_F(OpTable, LinearBackward) {
  const int64_t rows = 10, in = 20, out = 12;
  for (DType dtype : kFloatDTypes) {
    for (bool accumulate_dx : {false, true}) {
      const Values x = rounded(random_values(rows * in, 21), dtype);
      const Values weight = rounded(random_values(out * in, 22, 0.3), dtype);
      const Values bias = rounded(random_values(out, 23), dtype);
      const Values projection = rounded(random_values(rows * out, 24), dtype);  // dy
      // Prior contents: garbage for an overwritten dx, values to keep for accumulated outputs.
      const Values dx_before = rounded(random_values(rows * in, 25), dtype);
      const Values dweight_before = random_values(out * in, 26);
      const Values dbias_before = random_values(out, 27);
      const DType gradient_dtype = dtype == DType::kF32 ? DType::kF32 : (accumulate_dx ? DType::kF32 : dtype);
      Tensor dx = tensor_of(accumulate_dx ? dx_before : Values(rows * in, 1e30), {rows, in}, dtype);
      Tensor dweight = tensor_of(rounded(dweight_before, gradient_dtype), {out, in}, gradient_dtype);
      Tensor dbias = tensor_of(rounded(dbias_before, gradient_dtype), {out}, gradient_dtype);
      ops::linear_backward(*context, tensor_of(projection, {rows, out}, dtype), tensor_of(x, {rows, in}, dtype),
                           tensor_of(weight, {out, in}, dtype), &dx, &dweight, &dbias, accumulate_dx);
      Values dx_got = values_of(dx);
      if (accumulate_dx) dx_got = subtract(dx_got, dx_before);
      const Values dweight_got = subtract(values_of(dweight), rounded(dweight_before, gradient_dtype));
      const Values dbias_got = subtract(values_of(dbias), rounded(dbias_before, gradient_dtype));
      const Forward forward = [&](const std::vector<Values>& inputs) {
        return reference::linear(inputs[0], inputs[1], &inputs[2], rows, in, out);
      };
      const std::string label = str_cat("linear_backward ", dtype_label(dtype), " x[10, 20] w[12, 20] dweight ",
                                        dtype_label(gradient_dtype), accumulate_dx ? " (accumulate dx)" : "");
      // bf16/f16 rows: the gradient outputs are rounded (dx always, dweight/dbias when stored in that dtype),
      // and accumulating into a rounded buffer adds that buffer's rounding too.
      const double dx_tolerance = dtype == DType::kF32 ? kGradientTolerance : forward_tolerance(dtype) * 4;
      const double weight_tolerance =
          gradient_dtype == DType::kF32 ? kGradientTolerance : forward_tolerance(dtype) * 8;
      report(label + " dx", finite_difference_error(forward, {x, weight, bias}, 0, dx_got, projection), dx_tolerance);
      report(label + " dweight", finite_difference_error(forward, {x, weight, bias}, 1, dweight_got, projection),
             weight_tolerance);
      report(label + " dbias", finite_difference_error(forward, {x, weight, bias}, 2, dbias_got, projection),
             weight_tolerance);
    }
  }
}

// The weight stored in another float dtype than the activations
// (model.weights_dtype): every pair, forward (rows > 1 and one row) against
// the naive reference on the stored values, and the backward's dx and dweight
// (f32 gradients, as training keeps them) by finite differences.
TEST_F(OpTable, LinearWithWeightsInAnotherDtype) {
  const int64_t rows = 10, in = 20, out = 12;
  for (DType x_dtype : kFloatDTypes) {
    for (DType weight_dtype : kFloatDTypes) {
      if (x_dtype == weight_dtype) continue;
      const std::string pair = str_cat("x ", dtype_label(x_dtype), ", weight ", dtype_label(weight_dtype));
      const Values weight = rounded(random_values(out * in, 42, 0.3), weight_dtype);
      const Values bias = rounded(random_values(out, 43), x_dtype);
      const Tensor weight_tensor = tensor_of(weight, {out, in}, weight_dtype), bias_tensor = tensor_of(bias, {out}, x_dtype);
      for (int64_t n : {rows, int64_t{1}}) {
        const Values x = rounded(random_values(n * in, 41), x_dtype);
        Tensor y = Tensor::empty_cpu({n, out}, x_dtype);
        ops::linear_forward(*context, tensor_of(x, {n, in}, x_dtype), weight_tensor, &bias_tensor, y);
        report(str_cat("linear_forward ", pair, " rows ", n), scaled_error(values_of(y), reference::linear(x, weight, &bias, n, in, out)),
               forward_tolerance(x_dtype));
      }
      const Values x = rounded(random_values(rows * in, 44), x_dtype);
      const Values dy = rounded(random_values(rows * out, 45), x_dtype);
      Tensor dx = Tensor::empty_cpu({rows, in}, x_dtype);
      Tensor dweight = Tensor::zeros_cpu({out, in}, DType::kF32);
      ops::linear_backward(*context, tensor_of(dy, {rows, out}, x_dtype), tensor_of(x, {rows, in}, x_dtype),
                           weight_tensor, &dx, &dweight, nullptr);
      const Forward forward = [&](const std::vector<Values>& inputs) {
        return reference::linear(inputs[0], inputs[1], nullptr, rows, in, out);
      };
      const double dx_tolerance = x_dtype == DType::kF32 ? kGradientTolerance : forward_tolerance(x_dtype) * 4;
      report(str_cat("linear_backward ", pair, " dx"), finite_difference_error(forward, {x, weight}, 0, values_of(dx), dy),
             dx_tolerance);
      report(str_cat("linear_backward ", pair, " dweight f32"),
             finite_difference_error(forward, {x, weight}, 1, values_of(dweight), dy), kGradientTolerance);
    }
  }
}

TEST_F(OpTable, LinearBackwardSkipsNullOutputs) {
  // Frozen weight: only dx is requested; nothing else may be touched.
  const Values x = random_values(6 * 4, 31), weight = random_values(3 * 4, 32), dy = random_values(6 * 3, 33);
  Tensor dx = Tensor::zeros_cpu({6, 4}, DType::kF32);
  ops::linear_backward(*context, tensor_of(dy, {6, 3}, DType::kF32), tensor_of(x, {6, 4}, DType::kF32),
                       tensor_of(weight, {3, 4}, DType::kF32), &dx, nullptr, nullptr);
  const Forward forward = [&](const std::vector<Values>& inputs) {
    return reference::linear(inputs[0], inputs[1], nullptr, 6, 4, 3);
  };
  report("linear_backward f32 dx only (frozen weight)", finite_difference_error(forward, {x, weight}, 0, values_of(dx), dy),
         kGradientTolerance);
}

// ---- Embedding ------------------------------------------------------------------------

TEST_F(OpTable, Embedding) {
  const int64_t vocab = 9, dim = 6;
  const std::vector<int32_t> ids{3, 0, 8, 3, 3, 5, 0};  // repeated ids scatter-add in the backward
  const int64_t count = static_cast<int64_t>(ids.size());
  for (DType dtype : kFloatDTypes) {
    const Values table = rounded(random_values(vocab * dim, 41), dtype);
    Tensor out = Tensor::empty_cpu({count, dim}, dtype);
    ops::embedding_forward(*context, ints_of(ids, {count}), tensor_of(table, {vocab, dim}, dtype), out);
    report(str_cat("embedding_forward ", dtype_label(dtype), " ids[7] table[9, 6]"),
           scaled_error(values_of(out), reference::embedding(ids, table, dim)), 0.0);
  }
  // A table stored in another dtype than the activations (model.weights_dtype):
  // the row is converted, exactly when the output dtype holds the table's values.
  for (auto [table_dtype, out_dtype] : {std::pair{DType::kBF16, DType::kF32}, std::pair{DType::kF16, DType::kF32},
                                        std::pair{DType::kF32, DType::kBF16}}) {
    const Values table = rounded(random_values(vocab * dim, 44), table_dtype);
    Tensor out = Tensor::empty_cpu({count, dim}, out_dtype);
    ops::embedding_forward(*context, ints_of(ids, {count}), tensor_of(table, {vocab, dim}, table_dtype), out);
    report(str_cat("embedding_forward table ", dtype_label(table_dtype), " -> ", dtype_label(out_dtype)),
           scaled_error(values_of(out), rounded(reference::embedding(ids, table, dim), out_dtype)), 0.0);
  }
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Values dout = rounded(random_values(count * dim, 42), dtype);
    const Values dtable_before = rounded(random_values(vocab * dim, 43), dtype);
    Tensor dtable = tensor_of(dtable_before, {vocab, dim}, dtype);
    ops::embedding_backward(*context, ints_of(ids, {1, count}), tensor_of(dout, {1, count, dim}, dtype), dtable);
    const Forward forward = [&](const std::vector<Values>& inputs) { return reference::embedding(ids, inputs[0], dim); };
    report(str_cat("embedding_backward ", dtype_label(dtype), " ids[1, 7] repeated, dtable accumulated"),
           finite_difference_error(forward, {Values(vocab * dim, 0.0)}, 0, subtract(values_of(dtable), dtable_before),
                                   dout),
           dtype == DType::kF32 ? kGradientTolerance : 2e-2);
  }
}

// ---- RMSNorm ---------------------------------------------------------------------------

double round_to(DType dtype, double value) {
  switch (dtype) {
    case DType::kBF16: return bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(value)));
    case DType::kF16: return f16_bits_to_float(float_to_f16_bits(static_cast<float>(value)));
    default: return value;
  }
}

TEST_F(OpTable, RmsNorm) {
  const int64_t rows = 6, dim = 40;
  const float eps = 1e-5f;
  for (DType dtype : kFloatDTypes) {
    const Values x = rounded(random_values(rows * dim, 51, 2.0), dtype);
    const Values weight = rounded(random_values(dim, 52), dtype);
    Tensor y = Tensor::empty_cpu({2, 3, dim}, dtype);
    Tensor rstd = Tensor::empty_cpu({rows}, DType::kF32);
    ops::rmsnorm_forward(*context, tensor_of(x, {2, 3, dim}, dtype), tensor_of(weight, {dim}, dtype), eps, y, rstd);
    const Values want = reference::rmsnorm(x, weight, dim, eps, [dtype](double h) { return round_to(dtype, h); });
    report(str_cat("rmsnorm_forward ", dtype_label(dtype), " x[2, 3, 40]"), scaled_error(values_of(y), want),
           forward_tolerance(dtype));
    Values rstd_want(rows);
    for (int64_t row = 0; row < rows; ++row) {
      double mean = 0.0;
      for (int64_t i = 0; i < dim; ++i) mean += x[row * dim + i] * x[row * dim + i] / dim;
      rstd_want[row] = 1.0 / std::sqrt(mean + eps);
    }
    report(str_cat("rmsnorm_forward ", dtype_label(dtype), " rstd"), scaled_error(values_of(rstd), rstd_want), 1e-6);
  }
  // The weight in another dtype than x (model.weights_dtype).
  for (auto [x_dtype, weight_dtype] : {std::pair{DType::kF32, DType::kBF16}, std::pair{DType::kBF16, DType::kF32}}) {
    const Values x = rounded(random_values(rows * dim, 57, 2.0), x_dtype);
    const Values weight = rounded(random_values(dim, 58), weight_dtype);
    Tensor y = Tensor::empty_cpu({rows, dim}, x_dtype), rstd = Tensor::empty_cpu({rows}, DType::kF32);
    ops::rmsnorm_forward(*context, tensor_of(x, {rows, dim}, x_dtype), tensor_of(weight, {dim}, weight_dtype), eps, y,
                         rstd);
    const Values want = reference::rmsnorm(x, weight, dim, eps, [x_dtype](double h) { return round_to(x_dtype, h); });
    report(str_cat("rmsnorm_forward x ", dtype_label(x_dtype), ", weight ", dtype_label(weight_dtype)),
           scaled_error(values_of(y), want), forward_tolerance(x_dtype));
  }
  const Values x = random_values(rows * dim, 53, 2.0);
  const Values weight = random_values(dim, 54);
  const Values dy = random_values(rows * dim, 55);
  const Values dweight_before = random_values(dim, 56);
  const Tensor x_tensor = tensor_of(x, {rows, dim}, DType::kF32);
  const Tensor weight_tensor = tensor_of(weight, {dim}, DType::kF32);
  Tensor y = Tensor::empty_cpu({rows, dim}, DType::kF32), rstd = Tensor::empty_cpu({rows}, DType::kF32);
  ops::rmsnorm_forward(*context, x_tensor, weight_tensor, eps, y, rstd);
  Tensor dx = tensor_of(Values(rows * dim, 1e30), {rows, dim}, DType::kF32);
  Tensor dweight = tensor_of(dweight_before, {dim}, DType::kF32);
  ops::rmsnorm_backward(*context, tensor_of(dy, {rows, dim}, DType::kF32), x_tensor, weight_tensor, rstd, dx, &dweight);
  const Forward forward = [&](const std::vector<Values>& inputs) {
    return reference::rmsnorm(inputs[0], inputs[1], dim, eps);
  };
  report("rmsnorm_backward f32 x[6, 40] dx", finite_difference_error(forward, {x, weight}, 0, values_of(dx), dy),
         kGradientTolerance);
  report("rmsnorm_backward f32 x[6, 40] dweight (accumulated)",
         finite_difference_error(forward, {x, weight}, 1, subtract(values_of(dweight), rounded(dweight_before, DType::kF32)), dy),
         kGradientTolerance);
}

// ---- RoPE ------------------------------------------------------------------------------

TEST_F(OpTable, Rope) {
  const int64_t batch = 2, time = 5, heads = 3, head_dim = 8, half = head_dim / 2;
  const Shape shape{batch, time, heads, head_dim};
  // Position offsets (a KV cache or a second packed document) and a large position.
  const std::vector<int32_t> positions{0, 1, 2, 3, 4, 17, 18, 19, 1000, 4095};
  // A non-trivial inv_freq: theta 500 with the low frequencies stretched 4x (llama3-style scaling).
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = static_cast<float>(std::pow(500.0, -2.0 * i / head_dim) / (i >= half / 2 ? 4.0 : 1.0));
  }
  const Tensor positions_tensor = ints_of(positions, {batch, time});
  const Tensor inv_freq_tensor = Tensor::from_floats({half}, inv_freq);
  const int64_t count = shape_numel(shape);
  for (DType dtype : kFloatDTypes) {
    const Values x = rounded(random_values(count, 61), dtype);
    Tensor y = Tensor::empty_cpu(shape, dtype);
    ops::rope_forward(*context, tensor_of(x, shape, dtype), positions_tensor, inv_freq_tensor, y);
    const Values want = reference::rope(x, positions, inv_freq, heads, head_dim);
    report(str_cat("rope_forward ", dtype_label(dtype), " x[2, 5, 3, 8] positions up to 4095"),
           scaled_error(values_of(y), want), forward_tolerance(dtype));
    Tensor in_place = tensor_of(x, shape, dtype);
    ops::rope_forward(*context, in_place, positions_tensor, inv_freq_tensor, in_place);
    report(str_cat("rope_forward ", dtype_label(dtype), " in place (y aliases x)"),
           scaled_error(values_of(in_place), want), forward_tolerance(dtype));
  }
  const Values dy = random_values(count, 62);
  Tensor dx = tensor_of(dy, shape, DType::kF32);
  ops::rope_backward(*context, dx, positions_tensor, inv_freq_tensor, dx);  // in place (dx aliases dy)
  const Forward forward = [&](const std::vector<Values>& inputs) {
    return reference::rope(inputs[0], positions, inv_freq, heads, head_dim);
  };
  report("rope_backward f32 x[2, 5, 3, 8] in place",
         finite_difference_error(forward, {random_values(count, 63)}, 0, values_of(dx), dy), kGradientTolerance);
}

// ---- SwiGLU ------------------------------------------------------------------------------

TEST_F(OpTable, SwiGlu) {
  const Shape shape{3, 37};
  const int64_t count = shape_numel(shape);
  for (DType dtype : kFloatDTypes) {
    const Values gate = rounded(random_values(count, 71, 3.0), dtype), up = rounded(random_values(count, 72), dtype);
    Tensor out = Tensor::empty_cpu(shape, dtype);
    ops::swiglu_forward(*context, tensor_of(gate, shape, dtype), tensor_of(up, shape, dtype), out);
    report(str_cat("swiglu_forward ", dtype_label(dtype), " [3, 37]"),
           scaled_error(values_of(out), reference::swiglu(gate, up)), forward_tolerance(dtype));
  }
  const Values gate = random_values(count, 73, 3.0), up = random_values(count, 74), dout = random_values(count, 75);
  const Forward forward = [](const std::vector<Values>& inputs) { return reference::swiglu(inputs[0], inputs[1]); };
  Tensor dgate = Tensor::empty_cpu(shape, DType::kF32), dup = Tensor::empty_cpu(shape, DType::kF32);
  ops::swiglu_backward(*context, tensor_of(dout, shape, DType::kF32), tensor_of(gate, shape, DType::kF32),
                       tensor_of(up, shape, DType::kF32), dgate, dup);
  report("swiglu_backward f32 [3, 37] dgate", finite_difference_error(forward, {gate, up}, 0, values_of(dgate), dout),
         kGradientTolerance);
  report("swiglu_backward f32 [3, 37] dup", finite_difference_error(forward, {gate, up}, 1, values_of(dup), dout),
         kGradientTolerance);
  // In place: dgate overwrites gate and dup overwrites up (the model frees them this way).
  Tensor gate_in_place = tensor_of(gate, shape, DType::kF32), up_in_place = tensor_of(up, shape, DType::kF32);
  ops::swiglu_backward(*context, tensor_of(dout, shape, DType::kF32), gate_in_place, up_in_place, gate_in_place,
                       up_in_place);
  report("swiglu_backward f32 in place (dgate aliases gate, dup aliases up)",
         std::max(scaled_error(values_of(gate_in_place), values_of(dgate)),
                  scaled_error(values_of(up_in_place), values_of(dup))),
         0.0);
}

// ---- Pointwise activations -------------------------------------------------------------------

TEST_F(OpTable, Activations) {
  const Shape shape{3, 37};
  const int64_t count = 3 * 37;
  const std::pair<ops::Activation, const char*> kinds[] = {{ops::Activation::kRelu, "relu"},
                                                           {ops::Activation::kTanh, "tanh"},
                                                           {ops::Activation::kSilu, "silu"},
                                                           {ops::Activation::kGelu, "gelu"}};
  for (const auto& [kind, name] : kinds) {
    for (DType dtype : kFloatDTypes) {
      const Values x = rounded(random_values(count, 91, 3.0), dtype);
      Tensor y = Tensor::empty_cpu(shape, dtype);
      ops::activation_forward(*context, kind, tensor_of(x, shape, dtype), y);
      report(str_cat("activation_forward ", name, " ", dtype_label(dtype), " [3, 37]"),
             scaled_error(values_of(y), reference::activation(kind, x)), forward_tolerance(dtype));
    }
    // Inputs kept away from relu's kink at 0, where finite differences are undefined.
    Values x = random_values(count, 92, 3.0);
    for (double& v : x)
      if (std::abs(v) < 0.05) v += 0.1;
    const Values dy = random_values(count, 93);
    const Forward forward = [kind](const std::vector<Values>& inputs) { return reference::activation(kind, inputs[0]); };
    Tensor dx = Tensor::empty_cpu(shape, DType::kF32);
    ops::activation_backward(*context, kind, tensor_of(dy, shape, DType::kF32), tensor_of(x, shape, DType::kF32), dx);
    report(str_cat("activation_backward ", name, " f32 [3, 37]"),
           finite_difference_error(forward, {x}, 0, values_of(dx), dy), kGradientTolerance);
    // In place: dx overwrites dy.
    Tensor in_place = tensor_of(dy, shape, DType::kF32);
    ops::activation_backward(*context, kind, in_place, tensor_of(x, shape, DType::kF32), in_place);
    report(str_cat("activation_backward ", name, " f32 in place (dx aliases dy)"),
           scaled_error(values_of(in_place), values_of(dx)), 0.0);
  }
}

// ---- Cross-entropy ---------------------------------------------------------------------------

TEST_F(OpTable, CrossEntropy) {
  const int64_t rows = 7, vocab = 5000;  // V spans several reduction chunks
  const std::vector<int32_t> targets{17, -100, 4999, 0, -1, 2500, 1023};
  const Tensor targets_tensor = ints_of(targets, {rows});
  for (DType dtype : kFloatDTypes) {
    const Values logits = rounded(random_values(rows * vocab, 81, 3.0), dtype);
    Tensor losses = Tensor::empty_cpu({rows}, DType::kF32), lse = Tensor::empty_cpu({rows}, DType::kF32);
    ops::cross_entropy_forward(*context, tensor_of(logits, {rows, vocab}, dtype), targets_tensor, losses, lse);
    const reference::CrossEntropyResult want = reference::cross_entropy(logits, targets, vocab);
    report(str_cat("cross_entropy_forward ", dtype_label(dtype), " logits[7, 5000] 2 ignored rows: losses"),
           scaled_error(values_of(losses), want.losses), 1e-5);
    report(str_cat("cross_entropy_forward ", dtype_label(dtype), " lse"), scaled_error(values_of(lse), want.lse), 1e-5);
    EXPECT_EQ(values_of(losses)[1], 0.0);
  }
  const Values logits = random_values(rows * vocab, 82, 3.0);
  const Values dloss = random_values(rows, 83);
  const Forward forward = [&](const std::vector<Values>& inputs) {
    return reference::cross_entropy(inputs[0], targets, vocab).losses;
  };
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Values stored = rounded(logits, dtype);
    Tensor logits_tensor = tensor_of(stored, {rows, vocab}, dtype);
    Tensor losses = Tensor::empty_cpu({rows}, DType::kF32), lse = Tensor::empty_cpu({rows}, DType::kF32);
    ops::cross_entropy_forward(*context, logits_tensor, targets_tensor, losses, lse);
    Tensor dlogits = Tensor::empty_cpu({rows, vocab}, DType::kF32);
    ops::cross_entropy_backward(*context, logits_tensor, targets_tensor, lse, tensor_of(dloss, {rows}, DType::kF32),
                                dlogits);
    report(str_cat("cross_entropy_backward ", dtype_label(dtype), " logits[7, 5000] -> f32 dlogits"),
           finite_difference_error(forward, {stored}, 0, values_of(dlogits), dloss), kGradientTolerance);
    // The fused in-place form: dlogits overwrites logits.
    ops::cross_entropy_backward(*context, logits_tensor, targets_tensor, lse, tensor_of(dloss, {rows}, DType::kF32),
                                logits_tensor);
    report(str_cat("cross_entropy_backward ", dtype_label(dtype), " in place (dlogits aliases logits)"),
           scaled_error(values_of(logits_tensor), values_of(dlogits)), forward_tolerance(dtype, 0.0));
  }
}

// ---- Attention ------------------------------------------------------------------------------

struct AttentionCase {
  int64_t batch, time, query_heads, kv_heads, head_dim, prefix;
  bool two_documents;  // pack two documents per sequence (doc_start)
  float softmax_scale;  // 0: 1/sqrt(head_dim)
};

std::string attention_label(const AttentionCase& spec) {
  return str_cat("B", spec.batch, " T", spec.time, " Hq", spec.query_heads, " Hkv", spec.kv_heads, " D", spec.head_dim,
                 " P", spec.prefix, spec.two_documents ? " 2 docs" : "",
                 spec.softmax_scale != 0.0f ? str_cat(" scale ", spec.softmax_scale) : std::string());
}

// Document boundaries differ per sequence so a row-major indexing slip shows.
std::vector<int32_t> document_starts(const AttentionCase& spec) {
  if (!spec.two_documents) return {};
  std::vector<int32_t> starts;
  for (int64_t b = 0; b < spec.batch; ++b) {
    const int64_t cut = spec.time / 2 + b;
    for (int64_t t = 0; t < spec.time; ++t) starts.push_back(static_cast<int32_t>(t < cut ? 0 : cut));
  }
  return starts;
}

const std::vector<AttentionCase> kAttentionCases = {
    {2, 13, 4, 2, 8, 0, false, 0.0f},  // GQA, causal only
    {2, 13, 3, 3, 8, 3, false, 0.0f},  // Hq == Hkv with prefix keys
    {2, 13, 4, 2, 8, 2, true, 0.2f},   // GQA, prefix, packed documents, explicit scale
    {1, 70, 2, 1, 4, 0, true, 0.0f},   // T above the CPU query block and not a multiple of it
    {1, 70, 2, 2, 4, 5, false, 0.0f},
};

TEST_F(OpTable, AttentionForward) {
  for (size_t index = 0; index < kAttentionCases.size(); ++index) {
    const AttentionCase& spec = kAttentionCases[index];
    const int64_t keys = spec.prefix + spec.time;
    const Shape q_shape{spec.batch, spec.time, spec.query_heads, spec.head_dim};
    const Shape kv_shape{spec.batch, keys, spec.kv_heads, spec.head_dim};
    const std::vector<int32_t> starts = document_starts(spec);
    const Tensor starts_tensor = starts.empty() ? Tensor() : ints_of(starts, {spec.batch * spec.time});
    ops::AttentionOptions options;
    options.softmax_scale = spec.softmax_scale;
    options.num_prefix = spec.prefix;
    options.doc_start = starts.empty() ? nullptr : &starts_tensor;
    const double scale = spec.softmax_scale != 0.0f ? spec.softmax_scale : 1.0 / std::sqrt(double(spec.head_dim));
    for (DType dtype : kFloatDTypes) {
      if (dtype != DType::kF32 && index != 2 && index != 3) continue;
      const Values q = rounded(random_values(shape_numel(q_shape), 101, 1.5), dtype);
      const Values k = rounded(random_values(shape_numel(kv_shape), 102, 1.5), dtype);
      const Values v = rounded(random_values(shape_numel(kv_shape), 103), dtype);
      Tensor out = Tensor::empty_cpu(q_shape, dtype);
      Tensor lse = Tensor::empty_cpu({spec.batch, spec.query_heads, spec.time}, DType::kF32);
      ops::attention_forward(*context, tensor_of(q, q_shape, dtype), tensor_of(k, kv_shape, dtype),
                             tensor_of(v, kv_shape, dtype), options, out, lse);
      const reference::AttentionResult want =
          reference::attention(q, k, v, spec.batch, spec.time, spec.query_heads, spec.kv_heads, spec.head_dim,
                               spec.prefix, starts, scale);
      const std::string label = str_cat("attention_forward ", dtype_label(dtype), " ", attention_label(spec));
      report(label + " out", scaled_error(values_of(out), want.out), forward_tolerance(dtype));
      report(label + " lse", scaled_error(values_of(lse), want.lse), 1e-5);
    }
  }
}

TEST_F(OpTable, AttentionBackward) {
  for (size_t index = 0; index < kAttentionCases.size(); ++index) {
    const AttentionCase& spec = kAttentionCases[index];
    const int64_t keys = spec.prefix + spec.time;
    const Shape q_shape{spec.batch, spec.time, spec.query_heads, spec.head_dim};
    const Shape kv_shape{spec.batch, keys, spec.kv_heads, spec.head_dim};
    const std::vector<int32_t> starts = document_starts(spec);
    const Tensor starts_tensor = starts.empty() ? Tensor() : ints_of(starts, {spec.batch * spec.time});
    ops::AttentionOptions options;
    options.softmax_scale = spec.softmax_scale;
    options.num_prefix = spec.prefix;
    options.doc_start = starts.empty() ? nullptr : &starts_tensor;
    const double scale = spec.softmax_scale != 0.0f ? spec.softmax_scale : 1.0 / std::sqrt(double(spec.head_dim));
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      if (dtype != DType::kF32 && index != 2) continue;
      const Values q = rounded(random_values(shape_numel(q_shape), 111, 1.5), dtype);
      const Values k = rounded(random_values(shape_numel(kv_shape), 112, 1.5), dtype);
      const Values v = rounded(random_values(shape_numel(kv_shape), 113), dtype);
      const Values dout = rounded(random_values(shape_numel(q_shape), 114), dtype);
      const Tensor q_tensor = tensor_of(q, q_shape, dtype), k_tensor = tensor_of(k, kv_shape, dtype);
      const Tensor v_tensor = tensor_of(v, kv_shape, dtype);
      Tensor out = Tensor::empty_cpu(q_shape, dtype);
      Tensor lse = Tensor::empty_cpu({spec.batch, spec.query_heads, spec.time}, DType::kF32);
      ops::attention_forward(*context, q_tensor, k_tensor, v_tensor, options, out, lse);
      // Overwritten outputs start as garbage.
      Tensor dq = tensor_of(Values(q.size(), 1e30), q_shape, dtype);
      Tensor dk = tensor_of(Values(k.size(), 1e30), kv_shape, dtype);
      Tensor dv = tensor_of(Values(v.size(), 1e30), kv_shape, dtype);
      ops::attention_backward(*context, tensor_of(dout, q_shape, dtype), q_tensor, k_tensor, v_tensor, out, lse,
                              options, dq, dk, dv);
      const Forward forward = [&](const std::vector<Values>& inputs) {
        return reference::attention(inputs[0], inputs[1], inputs[2], spec.batch, spec.time, spec.query_heads,
                                    spec.kv_heads, spec.head_dim, spec.prefix, starts, scale)
            .out;
      };
      // bf16: the saved output is rounded (it enters rowsum(dO o O)) and so are the gradients.
      const double tolerance = dtype == DType::kF32 ? kGradientTolerance : 1.5e-2;
      const std::string label = str_cat("attention_backward ", dtype_label(dtype), " ", attention_label(spec));
      report(label + " dq", finite_difference_error(forward, {q, k, v}, 0, values_of(dq), dout), tolerance);
      report(label + " dk", finite_difference_error(forward, {q, k, v}, 1, values_of(dk), dout), tolerance);
      report(label + " dv", finite_difference_error(forward, {q, k, v}, 2, values_of(dv), dout), tolerance);
    }
  }
}

// A shared prefix (prefix tuning): S key/value rows shared by every
// sequence, before k's num_prefix rows. The reference sees them as what they
// mean: every sequence's keys are the shared rows followed by its own.
struct SharedPrefixCase {
  int64_t batch, time, query_heads, kv_heads, head_dim, shared, prefix;
  bool two_documents;
};

// [S, Hkv, D] shared rows and [B, P + T, Hkv, D] rows -> [B, S + P + T, Hkv, D].
Values with_shared_rows(const Values& shared, const Values& rows, int64_t batch, int64_t shared_rows,
                        int64_t own_rows, int64_t width) {
  Values all;
  for (int64_t b = 0; b < batch; ++b) {
    all.insert(all.end(), shared.begin(), shared.begin() + shared_rows * width);
    all.insert(all.end(), rows.begin() + b * own_rows * width, rows.begin() + (b + 1) * own_rows * width);
  }
  return all;
}

TEST_F(OpTable, AttentionSharedPrefix) {
  const std::vector<SharedPrefixCase> cases = {
      {3, 13, 4, 2, 8, 3, 0, false},  // GQA, three sequences sharing one prefix
      {2, 70, 2, 1, 4, 5, 2, true},   // past the query block, KV-cache rows after it, packed documents
  };
  for (const SharedPrefixCase& spec : cases) {
    AttentionCase as_attention{spec.batch, spec.time, spec.query_heads, spec.kv_heads, spec.head_dim, spec.prefix,
                               spec.two_documents, 0.0f};
    const std::vector<int32_t> starts = document_starts(as_attention);
    const Tensor starts_tensor = starts.empty() ? Tensor() : ints_of(starts, {spec.batch * spec.time});
    const int64_t own_rows = spec.prefix + spec.time, width = spec.kv_heads * spec.head_dim;
    const Shape q_shape{spec.batch, spec.time, spec.query_heads, spec.head_dim};
    const Shape kv_shape{spec.batch, own_rows, spec.kv_heads, spec.head_dim};
    const Shape shared_shape{spec.shared, spec.kv_heads, spec.head_dim};
    const double scale = 1.0 / std::sqrt(double(spec.head_dim));
    const std::string label = str_cat("attention shared prefix S", spec.shared, " ", attention_label(as_attention));
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const Values q = rounded(random_values(shape_numel(q_shape), 121, 1.5), dtype);
      const Values k = rounded(random_values(shape_numel(kv_shape), 122, 1.5), dtype);
      const Values v = rounded(random_values(shape_numel(kv_shape), 123), dtype);
      const Values shared_k = rounded(random_values(shape_numel(shared_shape), 124, 1.5), dtype);
      const Values shared_v = rounded(random_values(shape_numel(shared_shape), 125), dtype);
      const Values dout = rounded(random_values(shape_numel(q_shape), 126), dtype);
      const Forward forward = [&](const std::vector<Values>& in) {
        return reference::attention(in[0], with_shared_rows(in[3], in[1], spec.batch, spec.shared, own_rows, width),
                                    with_shared_rows(in[4], in[2], spec.batch, spec.shared, own_rows, width),
                                    spec.batch, spec.time, spec.query_heads, spec.kv_heads, spec.head_dim,
                                    spec.shared + spec.prefix, starts, scale)
            .out;
      };
      const Tensor q_tensor = tensor_of(q, q_shape, dtype), k_tensor = tensor_of(k, kv_shape, dtype);
      const Tensor v_tensor = tensor_of(v, kv_shape, dtype);
      const Tensor shared_k_tensor = tensor_of(shared_k, shared_shape, dtype);
      const Tensor shared_v_tensor = tensor_of(shared_v, shared_shape, dtype);
      Tensor dshared_k = tensor_of(Values(shared_k.size(), 1e30), shared_shape, DType::kF32);
      Tensor dshared_v = tensor_of(Values(shared_v.size(), 1e30), shared_shape, DType::kF32);
      ops::AttentionOptions options;
      options.num_prefix = spec.prefix;
      options.doc_start = starts.empty() ? nullptr : &starts_tensor;
      options.shared_prefix = {&shared_k_tensor, &shared_v_tensor, &dshared_k, &dshared_v};
      Tensor out = Tensor::empty_cpu(q_shape, dtype);
      Tensor lse = Tensor::empty_cpu({spec.batch, spec.query_heads, spec.time}, DType::kF32);
      ops::attention_forward(*context, q_tensor, k_tensor, v_tensor, options, out, lse);
      const reference::AttentionResult want =
          reference::attention(q, with_shared_rows(shared_k, k, spec.batch, spec.shared, own_rows, width),
                               with_shared_rows(shared_v, v, spec.batch, spec.shared, own_rows, width), spec.batch,
                               spec.time, spec.query_heads, spec.kv_heads, spec.head_dim, spec.shared + spec.prefix,
                               starts, scale);
      const std::string dtype_name = str_cat(label, " ", dtype_label(dtype));
      report(dtype_name + " out", scaled_error(values_of(out), want.out), forward_tolerance(dtype));
      report(dtype_name + " lse", scaled_error(values_of(lse), want.lse), 1e-5);

      Tensor dq = tensor_of(Values(q.size(), 1e30), q_shape, dtype);
      Tensor dk = tensor_of(Values(k.size(), 1e30), kv_shape, dtype);
      Tensor dv = tensor_of(Values(v.size(), 1e30), kv_shape, dtype);
      ops::attention_backward(*context, tensor_of(dout, q_shape, dtype), q_tensor, k_tensor, v_tensor, out, lse,
                              options, dq, dk, dv);
      const std::vector<Values> inputs = {q, k, v, shared_k, shared_v};
      const double tolerance = dtype == DType::kF32 ? kGradientTolerance : 1.5e-2;
      report(dtype_name + " dq", finite_difference_error(forward, inputs, 0, values_of(dq), dout), tolerance);
      report(dtype_name + " dk", finite_difference_error(forward, inputs, 1, values_of(dk), dout), tolerance);
      report(dtype_name + " dv", finite_difference_error(forward, inputs, 2, values_of(dv), dout), tolerance);
      report(dtype_name + " dshared_keys",
             finite_difference_error(forward, inputs, 3, values_of(dshared_k), dout), tolerance);
      report(dtype_name + " dshared_values",
             finite_difference_error(forward, inputs, 4, values_of(dshared_v), dout), tolerance);
    }
  }
}

// ---- Elementwise -------------------------------------------------------------------------------

TEST_F(OpTable, Elementwise) {
  const Shape shape{5, 413};  // not a multiple of the chunk size
  const int64_t count = shape_numel(shape);
  for (DType dtype : kFloatDTypes) {
    const Values a = rounded(random_values(count, 91), dtype), b = rounded(random_values(count, 92), dtype);
    Values sum(count), scaled(count), axpy(count);
    for (int64_t i = 0; i < count; ++i) {
      sum[i] = a[i] + b[i];
      scaled[i] = a[i] * -0.375;
      axpy[i] = b[i] + 1.25 * a[i];
    }
    Tensor out = Tensor::empty_cpu(shape, dtype);
    ops::add(*context, tensor_of(a, shape, dtype), tensor_of(b, shape, dtype), out);
    report(str_cat("add ", dtype_label(dtype), " [5, 413]"), scaled_error(values_of(out), sum), forward_tolerance(dtype));
    Tensor in_place = tensor_of(a, shape, dtype);
    ops::add(*context, in_place, tensor_of(b, shape, dtype), in_place);
    report(str_cat("add ", dtype_label(dtype), " in place (out aliases a)"), scaled_error(values_of(in_place), sum),
           forward_tolerance(dtype));
    Tensor y = tensor_of(b, shape, DType::kF32);
    ops::add_scaled(*context, 1.25f, tensor_of(a, shape, dtype), y);
    report(str_cat("add_scaled ", dtype_label(dtype), " x into f32 y"), scaled_error(values_of(y), axpy), 1e-6);
    Tensor y_same = tensor_of(b, shape, dtype);
    ops::add_scaled(*context, 1.25f, tensor_of(a, shape, DType::kF32), y_same);
    report(str_cat("add_scaled f32 x into ", dtype_label(dtype), " y"), scaled_error(values_of(y_same), axpy),
           forward_tolerance(dtype));
    Tensor x = tensor_of(a, shape, dtype);
    ops::scale(*context, x, -0.375f);
    report(str_cat("scale ", dtype_label(dtype)), scaled_error(values_of(x), scaled), forward_tolerance(dtype, 1e-7));
    ops::fill(*context, x, 0.1f);
    report(str_cat("fill ", dtype_label(dtype), " 0.1"),
           scaled_error(values_of(x), Values(count, round_to(dtype, static_cast<double>(0.1f)))), 0.0);
  }
  Tensor ids = Tensor::empty_cpu({4}, DType::kI32);
  ops::fill(*context, ids, 7.0f);
  EXPECT_EQ(ids.data<int32_t>()[3], 7);
}

// adamw_update against torch.optim.AdamW's formula written out in double
// (torch/optim/adamw.py, _single_tensor_adamw) on the same rounded gradients,
// three steps. The op computes in fp32, so the master agrees to fp32 accuracy;
// the value must be exactly the master rounded to its dtype. The golden tests
// in tests/optim hold the same kernel against torch itself.
TEST_F(OpTable, AdamWUpdate) {
  const Shape shape{3, 347};
  const int64_t count = shape_numel(shape);
  const double lr = 2e-2, beta1 = 0.9, beta2 = 0.99, eps = 1e-6, weight_decay = 0.05, multiplier = 0.25;
  for (DType value_dtype : kFloatDTypes) {
    for (DType grad_dtype : {DType::kF32, DType::kBF16}) {
      Values want_master = rounded(random_values(count, 131, 0.5), DType::kF32);
      Values want_m(count, 0.0), want_v(count, 0.0);
      Tensor master = tensor_of(want_master, shape, DType::kF32);
      Tensor value = master;
      if (value_dtype != DType::kF32) value = tensor_of(want_master, shape, value_dtype);
      Tensor exp_avg = Tensor::zeros_cpu(shape, DType::kF32), exp_avg_sq = Tensor::zeros_cpu(shape, DType::kF32);
      for (int64_t step = 1; step <= 3; ++step) {
        const Values grad = rounded(random_values(count, 131 + static_cast<uint64_t>(step), 4.0), grad_dtype);
        const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
        const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
        for (int64_t i = 0; i < count; ++i) {
          const double g = grad[i] * multiplier;
          want_master[i] *= 1.0 - lr * weight_decay;
          want_m[i] = beta1 * want_m[i] + (1.0 - beta1) * g;
          want_v[i] = beta2 * want_v[i] + (1.0 - beta2) * g * g;
          want_master[i] -= lr / bias_correction1 * want_m[i] / (std::sqrt(want_v[i] / bias_correction2) + eps);
        }
        ops::AdamWUpdate update;
        update.lr = static_cast<float>(lr);
        update.beta1 = static_cast<float>(beta1);
        update.beta2 = static_cast<float>(beta2);
        update.eps = static_cast<float>(eps);
        update.weight_decay = static_cast<float>(weight_decay);
        update.step = step;
        update.grad_multiplier = static_cast<float>(multiplier);
        ops::adamw_update(*context, value, master, exp_avg, exp_avg_sq, tensor_of(grad, shape, grad_dtype), update);
      }
      const std::string row = str_cat("adamw_update value ", dtype_label(value_dtype), " grad ", dtype_label(grad_dtype));
      // The step moves each element by about lr; its fp32 error is relative to that.
      double master_error = 0.0;
      const Values got_master = values_of(master);
      for (int64_t i = 0; i < count; ++i) master_error = std::max(master_error, std::fabs(got_master[i] - want_master[i]));
      report(row + " master (3 steps), error / lr", master_error / lr, 1e-4);
      report(row + " exp_avg", scaled_error(values_of(exp_avg), want_m), 1e-5);
      report(row + " exp_avg_sq", scaled_error(values_of(exp_avg_sq), want_v), 1e-5);
      report(row + " value == round(master)", scaled_error(values_of(value), rounded(values_of(master), value_dtype)),
             0.0);
    }
  }
}

TEST_F(OpTable, AdamWUpdateRejectsMismatchedState) {
  Tensor value = Tensor::zeros_cpu({4}, DType::kBF16), master = Tensor::zeros_cpu({4}, DType::kF32);
  Tensor exp_avg = Tensor::zeros_cpu({5}, DType::kF32), exp_avg_sq = Tensor::zeros_cpu({4}, DType::kF32);
  const Tensor grad = Tensor::zeros_cpu({4}, DType::kF32);
  try {
    ops::adamw_update(*context, value, master, exp_avg, exp_avg_sq, grad, ops::AdamWUpdate{});
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("adamw_update: exp_avg has 5 elements"), std::string::npos)
        << error.what();
  }
  Tensor bf16_moment = Tensor::zeros_cpu({4}, DType::kBF16);
  EXPECT_THROW(ops::adamw_update(*context, value, master, bf16_moment, exp_avg_sq, grad, ops::AdamWUpdate{}), Error);
  ops::AdamWUpdate step_zero;
  step_zero.step = 0;
  Tensor good_avg = Tensor::zeros_cpu({4}, DType::kF32);
  EXPECT_THROW(ops::adamw_update(*context, value, master, good_avg, exp_avg_sq, grad, step_zero), Error);
}

TEST_F(OpTable, LargeElementwiseRunsThreadedChunks) {
  const int64_t count = 300001;  // above the parallel threshold, ragged last chunk
  const Values a = random_values(count, 95), b = random_values(count, 96);
  Values sum(count);
  for (int64_t i = 0; i < count; ++i) sum[i] = a[i] + b[i];
  Tensor out = Tensor::empty_cpu({count}, DType::kBF16);
  ops::add(*context, tensor_of(a, {count}, DType::kF32), tensor_of(b, {count}, DType::kF32), out);
  report("add f32+f32 -> bf16 [300001]", scaled_error(values_of(out), sum), forward_tolerance(DType::kBF16));
}

// cast rounds with core/half.h's round-to-nearest-even, bit for bit.
TEST_F(OpTable, CastMatchesHalfConversionsBitForBit) {
  std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 65519.0f, 65520.0f, 1e6f, -1e6f,
                               std::ldexp(1.0f, -24), std::ldexp(1.0f, -25), std::ldexp(3.0f, -25), 1e-8f,
                               bits_float(0x3f808000u), bits_float(0x3f818000u), bits_float(0x3f808001u),
                               INFINITY, -INFINITY, NAN, 3.14159265f, 1e38f};
  PhiloxGenerator generator(99);
  for (int i = 0; i < 5000; ++i) values.push_back(generator.next_normal() * std::ldexp(1.0f, i % 40 - 20));
  const int64_t count = static_cast<int64_t>(values.size());
  const Tensor source = Tensor::from_floats({count}, values);
  Tensor as_bf16 = Tensor::empty_cpu({count}, DType::kBF16), as_f16 = Tensor::empty_cpu({count}, DType::kF16);
  ops::cast(*context, source, as_bf16);
  ops::cast(*context, source, as_f16);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < count; ++i) {
    mismatches += as_bf16.data<bf16>()[i].bits != float_to_bf16_bits(values[i]);
    mismatches += as_f16.data<f16>()[i].bits != float_to_f16_bits(values[i]);
  }
  report("cast f32 -> bf16 and f16 (bit mismatches)", static_cast<double>(mismatches), 0.0);
  // Widening back is exact.
  Tensor widened = Tensor::empty_cpu({count}, DType::kF32);
  ops::cast(*context, as_f16, widened);
  mismatches = 0;
  for (int64_t i = 0; i < count; ++i) {
    const float want = f16_bits_to_float(float_to_f16_bits(values[i]));
    mismatches += !(float_bits(widened.data<float>()[i]) == float_bits(want) || (std::isnan(want) && std::isnan(widened.data<float>()[i])));
  }
  report("cast f16 -> f32 (bit mismatches)", static_cast<double>(mismatches), 0.0);
  Tensor as_bf16_from_f16 = Tensor::empty_cpu({count}, DType::kBF16);
  ops::cast(*context, as_f16, as_bf16_from_f16);
  mismatches = 0;
  for (int64_t i = 0; i < count; ++i) {
    const float via_f16 = f16_bits_to_float(float_to_f16_bits(values[i]));
    mismatches += as_bf16_from_f16.data<bf16>()[i].bits != float_to_bf16_bits(via_f16);
  }
  report("cast f16 -> bf16 (bit mismatches)", static_cast<double>(mismatches), 0.0);

  const std::vector<int32_t> ints{0, -1, 2147483647, -2147483647 - 1, 42};
  Tensor wide = Tensor::empty_cpu({5}, DType::kI64), narrow = Tensor::empty_cpu({5}, DType::kI32);
  ops::cast(*context, ints_of(ints, {5}), wide);
  ops::cast(*context, wide, narrow);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(wide.data<int64_t>()[i], ints[i]);
    EXPECT_EQ(narrow.data<int32_t>()[i], ints[i]);
  }
}

}  // namespace
}  // namespace llmft
