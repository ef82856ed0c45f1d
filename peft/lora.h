// LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models")
// attached to the model's Linear layers through the LinearAdapter hook, with
// the conventions of Hugging Face PEFT (peft/tuners/lora/layer.py, 0.21):
//
//   y = W x + scaling · B (A dropout(x)),   A [r, in], B [out, r],
//   scaling = alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023),
//   A ~ kaiming_uniform_(a = sqrt(5)), B = 0, so the initial model equals the base.
//
// The LoRA parameters live in the LoraModel's own registry under PEFT's
// module names ("model.layers.0.self_attn.q_proj.lora_A.weight"), trainable,
// with fp32 gradients; every base parameter is frozen and has no gradient.
//
// Tensor parallelism (DESIGN.md "Tensor parallelism"): on a column-parallel
// linear (q, k, v, gate, up) A is replicated and B split by output rows; the
// input gradient's share goes into the block's reduction, and dhidden = dy B
// is all-reduced ([rows, r]) for A's gradient. On a row-parallel linear (o,
// down) A is split by input columns and B replicated: hidden = x Aᵀ is
// all-reduced ([rows, r]) and B·hidden added to the partial output once (by
// tp rank 0). So replicated LoRA matrices get the same gradient on every tp
// rank and no gradient is reduced over tp. A is drawn at full shape and then
// sliced, and dropout masks are keyed by the element's offset in the whole
// input (ops::DropoutLayout), so every layout trains the same model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "model/llama.h"
#include "peft/peft_method.h"

namespace llmft {

// The projections LoRA can target, by the last component of the module name.
inline const std::vector<std::string>& lora_target_module_names() {
  static const std::vector<std::string> names = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};
  return names;
}

// LoRA's hyperparameters. (Not "LoraConfig": proto/llmft.proto's message of
// that name is generated as llmft::LoraConfig, and two classes of one name in
// one namespace broke the One Definition Rule: the linker gave this struct's
// copy constructor call the protobuf message's, which the ASan build showed
// as a null std::string inside protobuf's RepeatedPtrField copy.)
struct LoraSettings {
  int64_t r = 8;
  float alpha = 16.0f;
  float dropout = 0.0f;     // probability, in [0, 1)
  bool use_rslora = false;  // scaling alpha / sqrt(r) instead of alpha / r
  // Names among lora_target_module_names(), or the single entry "all-linear"
  // (every one of them; PEFT's all-linear also leaves out the LM head).
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  uint64_t seed = 0;  // Philox seed of A's initialisation and of the dropout masks

  float scaling() const;
  // Throws kBadInput naming `source` and the field for r < 1, dropout outside
  // [0, 1), an empty or unknown target module.
  void validate(const std::string& source) const;
  // target_modules with "all-linear" expanded, in lora_target_module_names() order.
  std::vector<std::string> resolved_target_modules() const;
};

// One LoRA pair on one Linear. Forward: y += scaling · (dropout(x) Aᵀ) Bᵀ;
// backward: dB += scaling · dyᵀ h, dA += (scaling · dy B)ᵀ dropout(x), and
// dx += dropout_backward(scaling · dy B A), with h = dropout(x) Aᵀ recomputed
// from x (so gradient checkpointing needs nothing extra).
class LoraAdapter : public LinearAdapter {
 public:
  LoraAdapter(const Linear& base, Parameter& lora_a, Parameter& lora_b, float scaling, float dropout,
              uint64_t dropout_seed);

  void forward(Context& context, const Tensor& x, Tensor& y_accumulate) override;
  void backward(Context& context, const Tensor& dy, const Tensor& x, Tensor* dx_accumulate) override;

  const Linear& base() const { return base_; }
  Parameter& lora_a() const { return lora_a_; }
  Parameter& lora_b() const { return lora_b_; }
  float scaling() const { return scaling_; }

  // Dropout is applied only while training; the mask is a pure function of
  // (dropout seed, step, element), so the backward and a recomputed forward of
  // the same step regenerate it. The trainer advances `step` per micro-batch.
  void set_training(bool training) { training_ = training; }
  void set_dropout_step(uint64_t step) { dropout_step_ = step; }
  // Data parallelism: this rank's rows are rows rank * N .. of the global
  // batch for the dropout masks, so ranks draw different masks.
  void set_data_parallel_rank(int rank) { data_parallel_rank_ = rank; }
  // While merged, W already holds scaling·B·A and the adapter adds nothing.
  void set_merged(bool merged) { merged_ = merged; }
  bool merged() const { return merged_; }

 private:
  bool dropout_active() const { return training_ && dropout_ > 0.0f; }
  // 2^40 elements per step and adapter; x's rows start at global row
  // data_parallel_rank * rows.
  uint64_t dropout_offset(int64_t rows) const {
    return (dropout_step_ << 40) + static_cast<uint64_t>(data_parallel_rank_) * static_cast<uint64_t>(rows) *
                                       static_cast<uint64_t>(full_in_features());
  }
  int64_t full_in_features() const { return lora_a_.full_shape()[1]; }
  ops::DropoutLayout dropout_layout() const;
  bool row_parallel() const { return base_.shard_kind() == ShardKind::kRow; }
  bool column_parallel() const { return base_.shard_kind() == ShardKind::kColumn; }
  // dropout(x) (x itself when dropout is off) and hidden = dropout(x) Aᵀ [rows, r];
  // the backward recomputes both with the same mask as the forward.
  struct DownProjection {
    Tensor dropped;
    Tensor hidden;
  };
  DownProjection down_project(Context& context, const Tensor& x) const;

  const Linear& base_;
  Parameter& lora_a_;
  Parameter& lora_b_;
  float scaling_;
  float dropout_;
  uint64_t dropout_seed_;
  uint64_t dropout_step_ = 0;
  int data_parallel_rank_ = 0;
  bool training_ = true;
  bool merged_ = false;
};

class LoraModel : public PeftMethod {
 public:
  // Attaches an adapter to every targeted Linear of `model` (layer by layer,
  // q, k, v, o, gate, up, down), draws every A from Philox(config.seed) in that
  // order, zeroes every B, freezes all base parameters (dropping their
  // gradients) and allocates the fp32 LoRA gradients. `model` must outlive this.
  LoraModel(Context& context, LlamaModel& model, const LoraSettings& config);
  // Detaches its adapters, leaving any other adapter of the model; merged
  // weights stay merged.
  ~LoraModel() override;
  LoraModel(const LoraModel&) = delete;
  LoraModel& operator=(const LoraModel&) = delete;

  const LoraSettings& config() const { return config_; }
  PeftType type() const override { return PeftType::kLora; }
  // The LoRA parameters (trainable, fp32 gradients), A then B per module.
  // LlamaModel::forward_backward adds into their gradients; they are not in
  // the model's registry, so the trainer zeroes them through this one.
  const std::vector<std::shared_ptr<LoraAdapter>>& adapters() const { return adapters_; }
  // The module names adapted ("model.layers.0.self_attn.q_proj", ...).
  std::vector<std::string> adapted_modules() const;

  void set_training(bool training) override;
  void set_dropout_step(uint64_t step) override;
  void set_data_parallel_rank(int rank) override;
  // "lora(r=8,alpha=16,rslora=0,targets=q_proj v_proj )".
  std::string fingerprint_text() const override;
  std::string merge_unsupported_reason() const override { return unmergeable_reason(type()); }
  // peft/adapter_io.h save_lora_adapter / load_lora_adapter_weights.
  void save_adapter(const std::filesystem::path& directory, const std::string& base_model_name_or_path,
                    std::optional<DType> dtype = std::nullopt) const override;
  void load_adapter_weights(const std::filesystem::path& directory) override;

  // W += scaling · B A (unmerge: -=), computed in fp32 and cast back to W's
  // dtype. Merging twice or unmerging an unmerged model is an error.
  void merge(Context& context);
  void unmerge(Context& context);
  bool merged() const { return merged_; }

  // The base model's weights with every adapter merged (W + scaling · B A in
  // fp32, then cast to `dtype`, default the compute dtype), as host tensors
  // under HF names; the model itself is left untouched. Not under tensor
  // parallelism (export from the layout-free checkpoint instead).
  std::vector<NamedTensor> merged_state_dict(std::optional<DType> dtype = std::nullopt) const override;

 private:
  void apply_delta(Context& context, float sign);

  LoraSettings config_;
  std::vector<Linear*> linears_;
  std::vector<std::shared_ptr<LoraAdapter>> adapters_;
  bool merged_ = false;
};

}  // namespace llmft
