// GEMM and Linear on cuBLASLt (host code only; the bias helper kernels live in
// linear_bias.cu). Every product runs with fp32 compute (CUBLAS_COMPUTE_32F)
// and fp32 alpha/beta: f32 inputs stay exact f32 (no TF32 — a flag for it
// would belong in CudaResources so it is not a hidden global), bf16/f16 inputs
// use tensor cores with fp32 accumulation. C/D is f32 or the input dtype.
//
// cuBLASLt is column-major. A row-major X[r, c] is, byte for byte, a
// column-major X^T, so the row-major C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T: cuBLASLt's "A" is our b and its "B" is
// our a, with the transpose flags carried over (llm.c llmc/matmul.cuh does the
// same). The Linear bias rides in CUBLASLT_EPILOGUE_BIAS (a vector over the
// rows of the column-major D, i.e. over our output features) when its dtype
// matches y; otherwise a small kernel adds it.
#include <cublasLt.h>

#include <cstdint>
#include <memory>

#include "core/cuda_resources.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/launchers.h"

namespace llmft::cuda {
namespace {

cudaDataType_t cuda_data_type(DType dtype) {
  switch (dtype) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
    default: break;
  }
  throw_runtime("gemm: no cuBLASLt type for dtype ", dtype_name(dtype));
}

// Largest power of two (up to 256, cuBLASLt's default assumption) dividing the
// address: views made by slice_rows need not be 256-byte aligned, and telling
// the heuristic the truth keeps it from picking a kernel that needs more.
uint32_t pointer_alignment(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  uint32_t alignment = 256;
  while (alignment > 1 && (address % alignment) != 0) alignment >>= 1;
  return alignment;
}

struct MatmulDescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* desc) const { cublasLtMatmulDescDestroy(desc); }
};
struct LayoutDeleter {
  void operator()(cublasLtMatrixLayoutOpaque_t* layout) const { cublasLtMatrixLayoutDestroy(layout); }
};
struct PreferenceDeleter {
  void operator()(cublasLtMatmulPreferenceOpaque_t* preference) const { cublasLtMatmulPreferenceDestroy(preference); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, MatmulDescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, LayoutDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, PreferenceDeleter>;

Layout make_layout(cudaDataType_t type, int64_t rows, int64_t columns, int64_t leading_dimension, int batch,
                   int64_t batch_stride) {
  cublasLtMatrixLayout_t raw = nullptr;
  LLMFT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&raw, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(columns),
                                                leading_dimension));
  Layout layout(raw);
  if (batch > 1) {
    LLMFT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(raw, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
    LLMFT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(raw, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batch_stride,
                                                        sizeof batch_stride));
  }
  return layout;
}

// One row-major product (or a strided batch of them):
//   c[M, N] = alpha * op(a) @ op(b) + beta * c (+ bias[N] on every row)
// with a: [M, K] or [K, M] (trans_a), b: [K, N] or [N, K] (trans_b), all
// contiguous, consecutive batch entries `stride_*` elements apart.
struct RowMajorProduct {
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  DType input_dtype = DType::kF32;
  DType output_dtype = DType::kF32;
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  float alpha = 1.0f, beta = 0.0f;
  const void* bias = nullptr;  // output dtype, length n
};

void run_product(Context& context, const RowMajorProduct& product) {
  CudaResources& resources = *context.cuda_resources();
  const cudaDataType_t input_type = cuda_data_type(product.input_dtype);
  const cudaDataType_t output_type = cuda_data_type(product.output_dtype);

  cublasLtMatmulDesc_t raw_desc = nullptr;
  LLMFT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&raw_desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  MatmulDesc desc(raw_desc);
  // cuBLASLt's A is our b, its B is our a (see the file comment).
  const cublasOperation_t op_blas_a = product.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_blas_b = product.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  LLMFT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(raw_desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_blas_a, sizeof op_blas_a));
  LLMFT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(raw_desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_blas_b, sizeof op_blas_b));
  if (product.bias != nullptr) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    LLMFT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    LLMFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(raw_desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &product.bias,
                                                      sizeof product.bias));
    // CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE stays at its default, D's type:
    // callers pass a bias of the output dtype only.
  }

  // Column-major shapes as stored: cuBLASLt A = our b, B = our a, D = c^T.
  const int64_t m = product.m, n = product.n, k = product.k;
  Layout layout_a = product.trans_b ? make_layout(input_type, k, n, k, product.batch, product.stride_b)
                                    : make_layout(input_type, n, k, n, product.batch, product.stride_b);
  Layout layout_b = product.trans_a ? make_layout(input_type, m, k, m, product.batch, product.stride_a)
                                    : make_layout(input_type, k, m, k, product.batch, product.stride_a);
  Layout layout_c = make_layout(output_type, n, m, n, product.batch, product.stride_c);

  cublasLtMatmulPreference_t raw_preference = nullptr;
  LLMFT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw_preference));
  Preference preference(raw_preference);
  const uint64_t workspace_bytes = resources.blaslt_workspace_bytes;
  LLMFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &workspace_bytes, sizeof workspace_bytes));
  const uint32_t align_a = pointer_alignment(product.b), align_b = pointer_alignment(product.a),
                 align_c = pointer_alignment(product.c);
  LLMFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                          &align_a, sizeof align_a));
  LLMFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                          &align_b, sizeof align_b));
  LLMFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                          &align_c, sizeof align_c));
  LLMFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                          &align_c, sizeof align_c));

  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  LLMFT_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(resources.blaslt, raw_desc, layout_a.get(), layout_b.get(),
                                                    layout_c.get(), layout_c.get(), raw_preference, 1, &heuristic,
                                                    &found));
  if (found == 0) {
    throw_runtime("gemm: cuBLASLt has no algorithm for ", dtype_name(product.input_dtype), " x ",
                  dtype_name(product.input_dtype), " -> ", dtype_name(product.output_dtype), " M=", m, " N=", n,
                  " K=", k, " batch=", product.batch, " trans_a=", product.trans_a, " trans_b=", product.trans_b,
                  product.bias ? " with bias epilogue" : "");
  }
  LLMFT_CUBLAS_CHECK(cublasLtMatmul(resources.blaslt, raw_desc, &product.alpha, product.b, layout_a.get(), product.a,
                                    layout_b.get(), &product.beta, product.c, layout_c.get(), product.c, layout_c.get(),
                                    &heuristic.algo, resources.blaslt_workspace, workspace_bytes, resources.stream));
}

// The K == 0 product: c = beta * c (alpha * empty sum), beta == 0 clears c.
void empty_product(Context& context, Tensor& c, float beta) {
  if (beta == 0.0f) {
    fill(context, c, 0.0f);
  } else if (beta != 1.0f) {
    scale(context, c, beta);
  }
}

int64_t rows_of(const Tensor& tensor) {
  return tensor.dim() == 0 || tensor.size(-1) == 0 ? 0 : tensor.numel() / tensor.size(-1);
}

}  // namespace

void gemm(Context& context, const Tensor& a, const Tensor& b, Tensor& c, bool trans_a, bool trans_b, float alpha,
          float beta) {
  constexpr std::string_view op = "gemm";
  require_on_context(op, "a", a, context);
  require_on_context(op, "b", b, context);
  require_on_context(op, "c", c, context);
  require_float(op, "a", a);
  require_float(op, "b", b);
  require_float(op, "c", c);
  require_dtype(op, "b", b, a.dtype());
  if (c.dtype() != DType::kF32 && c.dtype() != a.dtype()) {
    throw_runtime(op, ": c: expected f32 or ", dtype_name(a.dtype()), " (the inputs' dtype), found ", c.to_string());
  }
  if (a.dim() < 2 || b.dim() < 2 || c.dim() < 2) {
    throw_runtime(op, ": expected matrices (2 or more dims), found a ", a.to_string(), ", b ", b.to_string(), ", c ",
                  c.to_string());
  }
  const int64_t m = trans_a ? a.size(-1) : a.size(-2);
  const int64_t k = trans_a ? a.size(-2) : a.size(-1);
  const int64_t k_b = trans_b ? b.size(-1) : b.size(-2);
  const int64_t n = trans_b ? b.size(-2) : b.size(-1);
  if (k != k_b || c.size(-2) != m || c.size(-1) != n) {
    throw_runtime(op, ": shapes do not multiply: a ", a.to_string(), (trans_a ? "^T" : ""), ", b ", b.to_string(),
                  (trans_b ? "^T" : ""), ", c ", c.to_string(), " (expected c [..., ", m, ", ", n, "])");
  }
  const Shape batch_shape(c.shape().begin(), c.shape().end() - 2);
  const int64_t batch = shape_numel(batch_shape);
  const bool a_shared = a.dim() == 2, b_shared = b.dim() == 2;
  auto check_batch = [&](const Tensor& operand, std::string_view name, bool shared) {
    if (shared) return;
    const Shape operand_batch(operand.shape().begin(), operand.shape().end() - 2);
    if (operand_batch != batch_shape) {
      throw_runtime(op, ": ", name, ": expected batch dims ", shape_to_string(batch_shape),
                    " (those of c) or a 2-D matrix, found ", operand.to_string());
    }
  };
  check_batch(a, "a", a_shared);
  check_batch(b, "b", b_shared);
  if (c.numel() == 0) return;
  if (k == 0) {
    empty_product(context, c, beta);
    return;
  }

  RowMajorProduct product;
  product.a = a.raw_data();
  product.b = b.raw_data();
  product.c = c.raw_data();
  product.input_dtype = a.dtype();
  product.output_dtype = c.dtype();
  product.trans_a = trans_a;
  product.trans_b = trans_b;
  product.m = m;
  product.n = n;
  product.k = k;
  product.alpha = alpha;
  product.beta = beta;
  if (batch == 1) {
    run_product(context, product);
  } else if (b_shared && !a_shared && !trans_a) {
    // A batch of row-major [M, K] blocks times one shared b is one [batch*M, K] product.
    product.m = batch * m;
    run_product(context, product);
  } else if (!a_shared && !b_shared) {
    LLMFT_CHECK(batch <= INT32_MAX, "gemm: batch ", batch, " exceeds cuBLASLt's int32 batch count");
    product.batch = static_cast<int>(batch);
    product.stride_a = m * k;
    product.stride_b = k * n;
    product.stride_c = m * n;
    run_product(context, product);
  } else {
    // A shared operand that cannot be folded into M (shared a, or transposed
    // batched a with a shared b): one call per batch entry. Rare (the model's
    // batched products have both operands batched); stride-0 batching would do
    // it in one call where cuBLASLt supports it.
    const size_t in_size = dtype_size(a.dtype()), out_size = dtype_size(c.dtype());
    for (int64_t entry = 0; entry < batch; ++entry) {
      RowMajorProduct one = product;
      one.a = static_cast<const char*>(product.a) + (a_shared ? 0 : entry * m * k * static_cast<int64_t>(in_size));
      one.b = static_cast<const char*>(product.b) + (b_shared ? 0 : entry * k * n * static_cast<int64_t>(in_size));
      one.c = static_cast<char*>(product.c) + entry * m * n * static_cast<int64_t>(out_size);
      run_product(context, one);
    }
  }
}

namespace {

// `weight` itself when it has `dtype`, else a workspace copy cast to it.
Tensor weight_in_dtype(Context& context, const Tensor& weight, DType dtype) {
  if (weight.dtype() == dtype) return weight;
  MemoryCategoryScope category(MemoryCategory::kWorkspace);
  Tensor cast_weight = context.empty(weight.shape(), dtype);
  cast(context, weight, cast_weight);
  return cast_weight;
}

}  // namespace

void linear_forward(Context& context, const Tensor& x, const Tensor& weight, const Tensor* bias, Tensor& y) {
  constexpr std::string_view op = "linear_forward";
  require_on_context(op, "x", x, context);
  require_on_context(op, "weight", weight, context);
  require_on_context(op, "y", y, context);
  require_float(op, "x", x);
  require_float(op, "y", y);
  require_float(op, "weight", weight);
  if (weight.dim() != 2) throw_runtime(op, ": weight: expected [out, in], found ", weight.to_string());
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  if (x.dim() < 1 || x.size(-1) != in_features) {
    throw_runtime(op, ": x: expected [..., ", in_features, "] (weight ", weight.to_string(), "), found ",
                  x.to_string());
  }
  const int64_t rows = rows_of(x);
  if (y.dim() < 1 || y.size(-1) != out_features || y.numel() != rows * out_features) {
    throw_runtime(op, ": y: expected [", rows, ", ", out_features, "], found ", y.to_string());
  }
  if (y.dtype() != DType::kF32 && y.dtype() != x.dtype()) {
    throw_runtime(op, ": y: expected f32 or ", dtype_name(x.dtype()), ", found ", y.to_string());
  }
  if (bias != nullptr) {
    require_on_context(op, "bias", *bias, context);
    require_float(op, "bias", *bias);
    require_shape(op, "bias", *bias, {out_features});
  }
  if (rows == 0 || out_features == 0) return;
  Tensor x2 = x.reshape({rows, in_features});
  Tensor y2 = y.reshape({rows, out_features});
  if (in_features == 0) {
    fill(context, y2, 0.0f);
    if (bias) launch_add_bias_rows(context, y2, *bias, rows, out_features);
    return;
  }
  // Weights stored in another dtype than the activations (model.weights_dtype):
  // cuBLASLt multiplies operands of one type, so the weight is cast for the call.
  const Tensor operand = weight_in_dtype(context, weight, x.dtype());
  RowMajorProduct product;
  product.a = x2.raw_data();
  product.b = operand.raw_data();
  product.c = y2.raw_data();
  product.input_dtype = x.dtype();
  product.output_dtype = y.dtype();
  product.trans_b = true;
  product.m = rows;
  product.n = out_features;
  product.k = in_features;
  const bool bias_in_epilogue = bias != nullptr && bias->dtype() == y.dtype();
  if (bias_in_epilogue) product.bias = bias->raw_data();
  run_product(context, product);
  if (bias != nullptr && !bias_in_epilogue) launch_add_bias_rows(context, y2, *bias, rows, out_features);
}

void linear_backward(Context& context, const Tensor& dy, const Tensor& x, const Tensor& weight, Tensor* dx,
                     Tensor* dweight, Tensor* dbias, bool accumulate_dx) {
  constexpr std::string_view op = "linear_backward";
  require_on_context(op, "dy", dy, context);
  require_on_context(op, "x", x, context);
  require_on_context(op, "weight", weight, context);
  require_float(op, "x", x);
  require_float(op, "weight", weight);
  require_dtype(op, "dy", dy, x.dtype());
  if (weight.dim() != 2) throw_runtime(op, ": weight: expected [out, in], found ", weight.to_string());
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  if (x.dim() < 1 || x.size(-1) != in_features) {
    throw_runtime(op, ": x: expected [..., ", in_features, "], found ", x.to_string());
  }
  const int64_t rows = rows_of(x);
  if (dy.dim() < 1 || dy.size(-1) != out_features || dy.numel() != rows * out_features) {
    throw_runtime(op, ": dy: expected [", rows, ", ", out_features, "], found ", dy.to_string());
  }
  Tensor dy2 = dy.reshape({rows, out_features});
  Tensor x2 = x.reshape({rows, in_features});
  if (dx != nullptr) {
    require_on_context(op, "dx", *dx, context);
    if (dx->numel() != rows * in_features || dx->dim() < 1 || dx->size(-1) != in_features) {
      throw_runtime(op, ": dx: expected the shape of x ", x.to_string(), ", found ", dx->to_string());
    }
    Tensor dx2 = dx->reshape({rows, in_features});
    gemm(context, dy2, weight_in_dtype(context, weight, x.dtype()), dx2, false, false, 1.0f,
         accumulate_dx ? 1.0f : 0.0f);
  }
  if (dweight != nullptr) {
    require_on_context(op, "dweight", *dweight, context);
    require_shape(op, "dweight", *dweight, weight.shape());
    gemm(context, dy2, x2, *dweight, true, false, 1.0f, 1.0f);
  }
  if (dbias != nullptr) {
    require_on_context(op, "dbias", *dbias, context);
    require_float(op, "dbias", *dbias);
    require_shape(op, "dbias", *dbias, {out_features});
    if (rows > 0 && out_features > 0) launch_accumulate_column_sums(context, dy2, *dbias, rows, out_features);
  }
}

}  // namespace llmft::cuda
