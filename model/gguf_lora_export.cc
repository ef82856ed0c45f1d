// LoRA adapter -> GGUF (see gguf_lora_export.h).
#include "model/gguf_lora_export.h"

#include <cmath>
#include <map>
#include <optional>

#include "core/error.h"
#include "model/gguf_convert.h"
#include "model/gguf_export.h"
#include "model/gguf_names.h"
#include "model/gguf_quantize.h"

namespace llmft::gguf {

bool can_write_lora_type(GgmlType type) {
  return type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16 || type == GgmlType::kQ8_0;
}

const char* lora_type_names() { return "f32, f16, bf16, q8_0"; }

GgufLoraExport GgufLoraExport::plan(LoraAdapterSource source, const GgufLoraExportOptions& options) {
  const ModelConfig& config = source.config;
  if (!can_write_lora_type(options.type))
    throw_bad_input("GGUF adapter export: type ", ggml_type_name(static_cast<uint32_t>(options.type)),
                    " is not supported (supported: ", lora_type_names(),
                    ", the types llama.cpp's convert_lora_to_gguf.py writes)");
  const std::string arch = gguf_architecture(config, source.config_source);
  const std::string& where = source.adapter_source;
  if (!std::isfinite(source.alpha) || source.alpha <= 0.0f)
    throw_bad_input(where, ": LoRA alpha ", source.alpha,
                    " cannot be written: llama.cpp reads adapter.lora.alpha 0 as scale 1, and expects alpha > 0");
  if (source.pairs.empty()) throw_bad_input(where, ": the adapter has no LoRA matrices to write");

  GgufLoraExport result;
  result.source_ = std::move(source);
  const LoraAdapterSource& lora = result.source_;
  GgufWriter& writer = result.writer_;
  writer.add_string("general.architecture", arch);
  writer.add_string("general.type", "adapter");
  if (!options.name.empty()) writer.add_string("general.name", options.name);
  writer.add_u32("general.quantization_version", 2);  // GGML_QNT_VERSION, as the converter's metadata
  writer.add_string("adapter.type", "lora");
  writer.add_f32("adapter.lora.alpha", lora.alpha);

  // The block projections: the embedding's pair would be stored flipped
  // (llama.cpp's token_embd special case), and LoRA here never adapts it or the head.
  std::map<std::string, Shape> matrices;
  for (const auto& [name, shape] : gguf_model_tensors(config))
    if (shape.size() == 2 && name.starts_with("model.layers.")) matrices[name] = shape;
  const std::optional<GgmlTypeTraits> traits = ggml_type_traits(static_cast<uint32_t>(options.type));
  const int64_t rank = lora.pairs.front().a_shape.empty() ? 0 : lora.pairs.front().a_shape[0];
  int64_t fallbacks = 0;
  std::map<std::string, bool> seen;
  for (size_t index = 0; index < lora.pairs.size(); ++index) {
    const LoraPairSource& pair = lora.pairs[index];
    const std::string gguf_name = gguf_tensor_name(pair.base_weight);
    auto base = matrices.find(pair.base_weight);
    if (base == matrices.end() || gguf_name.empty())
      throw_bad_input(where, ": LoRA on ", pair.base_weight, ", which is not a projection of a GGUF ", arch,
                      " block (attn_q/k/v/output, ffn_gate/up/down)");
    if (!seen.emplace(pair.base_weight, true).second)
      throw_bad_input(where, ": two LoRA pairs on ", pair.base_weight);
    const int64_t out = base->second[0], in = base->second[1];
    const Shape a_expected = {rank, in}, b_expected = {out, rank};
    if (pair.a_shape != a_expected)
      throw_bad_input(where, ": LoRA A of ", pair.base_weight, ": shape ", shape_to_string(pair.a_shape), ", expected ",
                      shape_to_string(a_expected), " (rank ", rank, ", the weight's ", in, " input features)");
    if (pair.b_shape != b_expected)
      throw_bad_input(where, ": LoRA B of ", pair.base_weight, ": shape ", shape_to_string(pair.b_shape), ", expected ",
                      shape_to_string(b_expected), " (the weight's ", out, " output features, rank ", rank, ")");
    const int64_t heads = gguf_rope_permute_heads(arch, config, pair.base_weight);
    for (const bool b : {false, true}) {
      const Shape& shape = b ? pair.b_shape : pair.a_shape;
      GgmlType type = options.type;
      if (shape[1] % traits->block_size != 0) {
        type = GgmlType::kF16;
        ++fallbacks;
      }
      writer.add_tensor(gguf_name + (b ? ".lora_b" : ".lora_a"), shape, type);
      result.tensors_.push_back({index, b, shape, type, b ? heads : 0});
    }
  }
  if (fallbacks > 0)
    result.notes_.push_back(str_cat(fallbacks, " LoRA matrices have rows that are not whole ", traits->name,
                                    " blocks (B's rows are r = ", rank, " long): written as F16"));
  return result;
}

void GgufLoraExport::write(const GgufWriter::Sink& sink) const {
  writer_.write(sink, [&](size_t index, std::span<uint8_t> out) {
    const PlannedTensor& tensor = tensors_[index];
    std::vector<float> values = source_.load(tensor.pair, tensor.b);
    LLMFT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(tensor.shape), "LoRA ",
                tensor.b ? "B" : "A", " of ", source_.pairs[tensor.pair].base_weight, ": loader gave ", values.size(),
                " values");
    if (tensor.permute_heads > 0)
      values = permute_rope_rows(values, tensor.shape[0], tensor.shape[1], tensor.permute_heads);
    quantize_row(tensor.type, values, out);
  });
}

}  // namespace llmft::gguf
