// A naive host cuBLASLt for the emulator, written from the cuBLASLt docs:
// column-major; a layout (rows, cols, ld) describes the matrix as stored;
// TRANSA/TRANSB apply to the stored A/B; D = alpha op(A) op(B) + beta C
// (+ bias[row] with CUBLASLT_EPILOGUE_BIAS); strided batches.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include "cuda_runtime.h"
#include "core/half.h"

typedef void* cublasLtHandle_t;
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasLtEpilogue_t { CUBLASLT_EPILOGUE_DEFAULT = 1, CUBLASLT_EPILOGUE_BIAS = 4 };
enum cublasLtMatmulDescAttributes_t {
  CUBLASLT_MATMUL_DESC_TRANSA = 3, CUBLASLT_MATMUL_DESC_TRANSB = 4, CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26 };
enum cublasLtMatrixLayoutAttribute_t { CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6 };
enum cublasLtMatmulPreferenceAttributes_t {
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8 };

struct cublasLtMatmulDescOpaque_t {
  cublasOperation_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int32_t bias_type = -1;
};
struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType_t type; uint64_t rows, cols; int64_t ld; int32_t batch = 1; int64_t stride = 0;
};
struct cublasLtMatmulPreferenceOpaque_t { int unused = 0; };
typedef cublasLtMatmulDescOpaque_t* cublasLtMatmulDesc_t;
typedef cublasLtMatrixLayoutOpaque_t* cublasLtMatrixLayout_t;
typedef cublasLtMatmulPreferenceOpaque_t* cublasLtMatmulPreference_t;
struct cublasLtMatmulAlgo_t { uint64_t data[8]; };
struct cublasLtMatmulHeuristicResult_t { cublasLtMatmulAlgo_t algo; size_t workspaceSize; cublasStatus_t state; float wavesCount; int reserved[4]; };

inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t c, cudaDataType_t s) {
  if (c != CUBLAS_COMPUTE_32F || s != CUDA_R_32F) return CUBLAS_STATUS_INVALID_VALUE;
  *d = new cublasLtMatmulDescOpaque_t(); return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { delete d; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void* v, size_t n) {
  switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA: if (n != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE; std::memcpy(&d->transa, v, n); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: if (n != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE; std::memcpy(&d->transb, v, n); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: if (n != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE; std::memcpy(&d->epilogue, v, n); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: if (n != sizeof(void*)) return CUBLAS_STATUS_INVALID_VALUE; std::memcpy(&d->bias, v, n); break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: if (n != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE; std::memcpy(&d->bias_type, v, n); break;
  }
  return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType_t t, uint64_t r, uint64_t c, int64_t ld) {
  if (ld < (int64_t)r) return CUBLAS_STATUS_INVALID_VALUE;  // column-major: ld >= rows
  *l = new cublasLtMatrixLayoutOpaque_t{t, r, c, ld}; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { delete l; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a, const void* v, size_t n) {
  if (a == CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT) { if (n != 4) return CUBLAS_STATUS_INVALID_VALUE; std::memcpy(&l->batch, v, 4); }
  if (a == CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET) { if (n != 8) return CUBLAS_STATUS_INVALID_VALUE; std::memcpy(&l->stride, v, 8); }
  return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) { *p = new cublasLtMatmulPreferenceOpaque_t(); return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { delete p; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t a, const void*, size_t n) {
  if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES && n != 8) return CUBLAS_STATUS_INVALID_VALUE;
  if (a != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES && n != 4) return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
    cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int, cublasLtMatmulHeuristicResult_t*, int* found) {
  *found = 1; return CUBLAS_STATUS_SUCCESS; }

inline float emu_blas_load(const void* p, cudaDataType_t t, int64_t i) {
  switch (t) { case CUDA_R_16BF: return llmft::bf16_bits_to_float(((const uint16_t*)p)[i]);
    case CUDA_R_16F: return llmft::f16_bits_to_float(((const uint16_t*)p)[i]); default: return ((const float*)p)[i]; } }
inline void emu_blas_store(void* p, cudaDataType_t t, int64_t i, float v) {
  switch (t) { case CUDA_R_16BF: ((uint16_t*)p)[i] = llmft::float_to_bf16_bits(v); return;
    case CUDA_R_16F: ((uint16_t*)p)[i] = llmft::float_to_f16_bits(v); return; default: ((float*)p)[i] = v; } }
inline size_t emu_blas_size(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t d, const void* alpha_p, const void* A, cublasLtMatrixLayout_t la,
    const void* B, cublasLtMatrixLayout_t lb, const void* beta_p, const void* C, cublasLtMatrixLayout_t lc, void* D,
    cublasLtMatrixLayout_t ld, const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t) {
  const float alpha = *(const float*)alpha_p, beta = *(const float*)beta_p;
  const int64_t m = ld->rows, n = ld->cols;
  const int64_t ka = d->transa == CUBLAS_OP_N ? la->cols : la->rows;
  const int64_t ma = d->transa == CUBLAS_OP_N ? la->rows : la->cols;
  const int64_t kb = d->transb == CUBLAS_OP_N ? lb->rows : lb->cols;
  const int64_t nb = d->transb == CUBLAS_OP_N ? lb->cols : lb->rows;
  if (ma != m || nb != n || ka != kb || lc->rows != ld->rows || lc->cols != ld->cols) throw std::runtime_error("emu cublasLt: shape mismatch");
  if (la->batch != ld->batch || lb->batch != ld->batch || lc->batch != ld->batch) throw std::runtime_error("emu cublasLt: batch mismatch");
  const cudaDataType_t bias_type = d->bias_type < 0 ? ld->type : (cudaDataType_t)d->bias_type;
  for (int64_t b = 0; b < ld->batch; ++b) {
    const char* a_ptr = (const char*)A + b * la->stride * emu_blas_size(la->type);
    const char* b_ptr = (const char*)B + b * lb->stride * emu_blas_size(lb->type);
    const char* c_ptr = (const char*)C + b * lc->stride * emu_blas_size(lc->type);
    char* d_ptr = (char*)D + b * ld->stride * emu_blas_size(ld->type);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        float sum = 0;
        for (int64_t k = 0; k < ka; ++k) {
          const float av = d->transa == CUBLAS_OP_N ? emu_blas_load(a_ptr, la->type, i + k * la->ld) : emu_blas_load(a_ptr, la->type, k + i * la->ld);
          const float bv = d->transb == CUBLAS_OP_N ? emu_blas_load(b_ptr, lb->type, k + j * lb->ld) : emu_blas_load(b_ptr, lb->type, j + k * lb->ld);
          sum += av * bv;
        }
        float value = alpha * sum;
        if (beta != 0.0f) value += beta * emu_blas_load(c_ptr, lc->type, i + j * lc->ld);
        if (d->epilogue == CUBLASLT_EPILOGUE_BIAS) value += emu_blas_load(d->bias, bias_type, i);
        emu_blas_store(d_ptr, ld->type, i + j * ld->ld, value);
      }
  }
  return CUBLAS_STATUS_SUCCESS;
}
