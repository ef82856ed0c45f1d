// Hugging Face llama-family model -> GGUF, as llama.cpp's convert_hf_to_gguf.py
// writes it, so llama.cpp, Ollama and LM Studio load it:
//  - general.* and <arch>.* metadata (arch "llama" for Llama and Mistral,
//    "qwen2" for Qwen2), with the keys of gguf-py/gguf/constants.py (Keys);
//  - the tokenizer as tokenizer.ggml.* (model "gpt2": byte-level BPE tokens,
//    token types, merges, pre-tokenizer name, special ids, add-bos/eos flags)
//    and tokenizer.chat_template;
//  - tensor names of gguf_names.h, dims reversed (ne[0] fastest), q/k rows
//    permuted as LlamaModel.permute does for the llama arch;
//  - 1-D tensors (norms, biases) in F32 and the matrices in the requested type
//    (F16 where a row does not fill whole blocks), as the converter does.
// plan() checks everything before a byte is written; write() then streams the
// file one tensor at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "model/gguf_dequantize.h"
#include "model/gguf_writer.h"
#include "model/model_config.h"

namespace llmft::gguf {

struct GgufExportOptions {
  GgmlType type = GgmlType::kF16;  // of the matrices (gguf_quantize.h can_quantize)
  std::string name;                // general.name
};

// The model to write: config, tokenizer files and a loader of each tensor.
struct HfModelSource {
  ModelConfig config;
  std::string config_source;                  // path named in config errors
  std::filesystem::path directory;  // holds tokenizer.json, tokenizer_config.json, chat_template.jinja; named in errors
  std::vector<std::pair<std::string, Shape>> tensors;  // Hugging Face names and shapes
  // All elements of one tensor as f32, row-major.
  std::function<std::vector<float>(const std::string& name)> load;
};

class GgufModelExport {
 public:
  // Throws llmft::Error (kBadInput) naming the file and field for anything the
  // GGUF cannot express: an architecture other than llama/mistral/qwen2, a
  // type without a quantizer, a tokenizer that is not byte-level BPE, a merge
  // or token the tokenizer.ggml.* arrays cannot hold, a missing tensor.
  static GgufModelExport plan(HfModelSource source, const GgufExportOptions& options);

  const GgufWriter& writer() const { return writer_; }
  const std::vector<std::string>& notes() const { return notes_; }
  // Streams the file into `sink`, loading, permuting and quantizing one tensor at a time.
  void write(const GgufWriter::Sink& sink) const;

 private:
  struct PlannedTensor {
    std::string hf_name;
    Shape shape;
    GgmlType type;
    int64_t permute_heads;  // > 0: apply permute_rope_rows with this many heads
  };
  HfModelSource source_;
  GgufWriter writer_;
  std::vector<PlannedTensor> tensors_;
  std::vector<std::string> notes_;
};

// llama.cpp's general.file_type (LlamaFileType) for files whose matrices are `type`.
uint32_t llama_file_type(GgmlType type);

// general.architecture for `config`: "llama" (Llama, Mistral) or "qwen2";
// kBadInput naming `where` and field 'model_type' for anything else.
std::string gguf_architecture(const ModelConfig& config, const std::string& where);

// The Hugging Face tensors of a llama-family model with `config`, with their
// shapes, in the order convert_hf_to_gguf.py writes them.
std::vector<std::pair<std::string, Shape>> gguf_model_tensors(const ModelConfig& config);

// The head count LlamaModel.permute uses for the rows of `hf_name` in a GGUF of
// `arch` (q: attention heads, k: KV heads, llama arch only), or 0: not permuted.
int64_t gguf_rope_permute_heads(const std::string& arch, const ModelConfig& config, const std::string& hf_name);

}  // namespace llmft::gguf
