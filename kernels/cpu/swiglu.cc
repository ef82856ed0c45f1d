// SwiGLU MLP activation (Shazeer 2020, "GLU Variants Improve Transformer"):
// out = silu(gate) * up, the product inside Llama's down(silu(gate(x)) * up(x)).
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

inline float sigmoid(float value) { return 1.0f / (1.0f + fast_exp(-value)); }

LLMFT_CPU_MULTIVERSION void swiglu_span(const float* gate, const float* up, int64_t n, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

// d silu(g)/dg = s (1 + g (1 - s)) with s = sigmoid(g). Inputs of element i are
// read before its outputs are written, so dgate/dup may be gate/up.
LLMFT_CPU_MULTIVERSION void swiglu_backward_span(const float* dout, const float* gate, const float* up, int64_t n,
                                                 float* dgate, float* dup) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gate_value = gate[i], up_value = up[i], gradient = dout[i];
    const float s = sigmoid(gate_value);
    dgate[i] = gradient * up_value * s * (1.0f + gate_value * (1.0f - s));
    dup[i] = gradient * gate_value * s;
  }
}

}  // namespace

void swiglu_forward(Context& context, const Tensor& gate, const Tensor& up, Tensor& out) {
  constexpr std::string_view op = "swiglu_forward";
  require_float(op, "gate", gate);
  require_float(op, "up", up);
  require_float(op, "out", out);
  require_shape(op, "up", up, gate.shape());
  require_shape(op, "out", out, gate.shape());
  FloatReader gate_reader(gate), up_reader(up);
  FloatWriter out_writer(out);
  parallel_chunks(gate.numel(), [&](int64_t begin, int64_t count) {
    float gate_scratch[kChunk], up_scratch[kChunk], out_scratch[kChunk];
    const float* g = gate_reader.read(begin, count, gate_scratch);
    const float* u = up_reader.read(begin, count, up_scratch);
    float* result = out_writer.open(begin, count, out_scratch);
    swiglu_span(g, u, count, result);
    out_writer.commit(begin, count, result);
  });
}

void swiglu_backward(Context& context, const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup) {
  constexpr std::string_view op = "swiglu_backward";
  require_float(op, "dout", dout);
  require_float(op, "gate", gate);
  require_float(op, "up", up);
  require_float(op, "dgate", dgate);
  require_float(op, "dup", dup);
  require_shape(op, "up", up, gate.shape());
  require_shape(op, "dout", dout, gate.shape());
  require_shape(op, "dgate", dgate, gate.shape());
  require_shape(op, "dup", dup, gate.shape());
  FloatReader dout_reader(dout), gate_reader(gate), up_reader(up);
  FloatWriter dgate_writer(dgate), dup_writer(dup);
  // dgate/dup may alias gate/up: each element's inputs are read before its
  // outputs are written, and a converted chunk is read whole before commit.
  parallel_chunks(gate.numel(), [&](int64_t begin, int64_t count) {
    float dout_scratch[kChunk], gate_scratch[kChunk], up_scratch[kChunk], dgate_scratch[kChunk], dup_scratch[kChunk];
    const float* d = dout_reader.read(begin, count, dout_scratch);
    const float* g = gate_reader.read(begin, count, gate_scratch);
    const float* u = up_reader.read(begin, count, up_scratch);
    float* dg = dgate_writer.open(begin, count, dgate_scratch);
    float* du = dup_writer.open(begin, count, dup_scratch);
    swiglu_backward_span(d, g, u, count, dg, du);
    dgate_writer.commit(begin, count, dg);
    dup_writer.commit(begin, count, du);
  });
}

}  // namespace llmft::cpu
