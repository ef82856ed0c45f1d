// SwiGLU MLP activation (Shazeer 2020, "GLU Variants Improve Transformer"):
// out = silu(gate) * up, the product inside Llama's down(silu(gate(x)) * up(x)).
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

inline float sigmoid(float value) { return 1.0f / (1.0f + std::exp(-value)); }

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
    for (int64_t i = 0; i < count; ++i) result[i] = g[i] * sigmoid(g[i]) * u[i];
    out_writer.commit(begin, count, result);
  });
}

// d silu(g)/dg = s (1 + g (1 - s)) with s = sigmoid(g).
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
    for (int64_t i = 0; i < count; ++i) {
      const float gate_value = g[i], up_value = u[i], gradient = d[i];
      const float s = sigmoid(gate_value);
      dg[i] = gradient * up_value * s * (1.0f + gate_value * (1.0f - s));
      du[i] = gradient * gate_value * s;
    }
    dgate_writer.commit(begin, count, dg);
    dup_writer.commit(begin, count, du);
  });
}

}  // namespace llmft::cpu
