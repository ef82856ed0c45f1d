// A LoRA adapter -> GGUF, as llama.cpp's convert_lora_to_gguf.py writes it, for
// `llama-cli -m base.gguf --lora adapter.gguf` (llama_adapter_lora_init in
// src/llama-adapter.cpp, which checks everything below):
//  - general.type "adapter", general.architecture of the base ("llama" for
//    Llama and Mistral, "qwen2"; it must equal the base GGUF's),
//    adapter.type "lora", adapter.lora.alpha (f32);
//  - for each adapted matrix W [out, in] of GGUF name N (gguf_names.h, e.g.
//    "blk.0.attn_q.weight"): "N.lora_a" holding A [r, in] (ne {in, r}) and
//    "N.lora_b" holding B [out, r] (ne {r, out}); llama.cpp requires
//    W.ne[0] == A.ne[0], W.ne[1] == B.ne[1] and A.ne[1] == B.ne[0];
//  - llama.cpp adds scale · B (A x) to W x with scale = alpha / B.ne[0]
//    (llama_adapter_lora_weight::get_scale: alpha over the rank read from the
//    tensor, and 1 when alpha is 0), so the alpha written is the one that
//    makes alpha / r the trainer's scaling;
//  - in the llama architecture the base's q and k rows are permuted
//    (LlamaModel.permute). convert_lora_to_gguf.py applies that permute to its
//    LoraTorchTensor, which reshapes and permutes B's rows and leaves A:
//    P(W + s·B·A) = P(W) + s·P(B)·A. So B of q and k is permuted, A never;
//  - A and B are F32 unless asked otherwise (the converter's --outtype default
//    is f32); it also writes F16, BF16 and Q8_0, and a Q8_0 matrix whose rows
//    are not whole 32-element blocks (B's rows are r long) falls back to F16,
//    as the converter does on gguf-py's QuantError.
// plan() checks everything before a byte is written; write() streams one
// tensor at a time through GgufWriter.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/gguf_dequantize.h"
#include "model/gguf_writer.h"
#include "model/model_config.h"

namespace llmft::gguf {

struct GgufLoraExportOptions {
  GgmlType type = GgmlType::kF32;  // of A and B: F32, F16, BF16 or Q8_0
  std::string name;                // general.name
};

// Whether a LoRA adapter GGUF may hold `type` (convert_lora_to_gguf.py --outtype).
bool can_write_lora_type(GgmlType type);
// "f32, f16, bf16, q8_0": for error messages.
const char* lora_type_names();

// One adapted matrix: the base weight's Hugging Face name
// ("model.layers.0.self_attn.q_proj.weight") and the shapes of A [r, in] and B [out, r].
struct LoraPairSource {
  std::string base_weight;
  Shape a_shape;
  Shape b_shape;
};

// The adapter to write: the base model's config, llama.cpp's alpha, the pairs
// and a loader of each matrix.
struct LoraAdapterSource {
  ModelConfig config;
  std::string config_source;  // path named in config errors
  std::string adapter_source;  // what the pairs came from, named in their errors
  // adapter.lora.alpha: llama.cpp scales B·A by alpha / r.
  float alpha = 0.0f;
  std::vector<LoraPairSource> pairs;
  // All elements of pair `index`'s A (b = false) or B (b = true) as f32, row-major.
  std::function<std::vector<float>(size_t index, bool b)> load;
};

class GgufLoraExport {
 public:
  // Throws llmft::Error (kBadInput) naming the file and field or tensor for
  // anything llama.cpp would refuse: an architecture other than
  // llama/mistral/qwen2, a type llama.cpp's converter does not write, an alpha
  // that is not a positive finite number, no pairs, a base weight that is not
  // a block projection (q, k, v, o, gate, up, down), A or B of a shape that
  // does not fit it or the other, ranks that differ between pairs.
  static GgufLoraExport plan(LoraAdapterSource source, const GgufLoraExportOptions& options);

  const GgufWriter& writer() const { return writer_; }
  const std::vector<std::string>& notes() const { return notes_; }
  // Streams the file into `sink`, loading, permuting and quantizing one matrix at a time.
  void write(const GgufWriter::Sink& sink) const;

 private:
  struct PlannedTensor {
    size_t pair;
    bool b;
    Shape shape;
    GgmlType type;
    int64_t permute_heads;  // > 0: B of q/k, rows permuted with this many heads
  };
  LoraAdapterSource source_;
  GgufWriter writer_;
  std::vector<PlannedTensor> tensors_;
  std::vector<std::string> notes_;
};

}  // namespace llmft::gguf
