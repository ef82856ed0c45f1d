// Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous
// Prompts for Generation"; P-tuning v2, Liu et al. 2022) with Hugging Face
// PEFT's conventions (0.21: peft/tuners/prefix_tuning, PeftModel.get_prompt):
//
//  * every layer gets P trainable key and value vectors per KV head, which
//    every real token attends to as leading cache positions; they enter
//    attention as given (no RoPE: transformers treats them as an already
//    rotated DynamicCache), and the real tokens' positions start at P
//    (PEFT offsets position_ids by num_virtual_tokens; without them
//    transformers counts from the cache length);
//  * the values form one tensor [P, layers · 2 · kv_heads · head_dim],
//    viewed as [P, layers · 2, kv_heads, head_dim] with layer l's keys at
//    2l and values at 2l + 1 — trained directly (N(0, 1) init, as
//    torch.nn.Embedding), or with prefix_projection computed by
//    Linear(kv, H) → tanh → Linear(H, layers · 2 · kv) from a trainable
//    [P, kv] embedding (kv = kv_heads · head_dim, PEFT's token_dim for
//    grouped-query models);
//  * the adapter stores that tensor as computed ("prompt_embeddings"), so
//    the projection is folded away at export; a loaded adapter has none.
//
// The keys/values are read from the prefix's own tensor (one per layer,
// shared by every sequence); the model copies them into each sequence's
// attention rows.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "peft/dense_stack.h"
#include "peft/peft_method.h"

namespace llmft {

class PrefixTuning : public PeftMethod, public AttentionPrefixHook {
 public:
  struct Config {
    int64_t num_virtual_tokens = 20;
    bool prefix_projection = false;
    int64_t encoder_hidden_size = 0;  // with the projection; 0 means the model's hidden size
    bool encoder = true;              // false: the stored tensor itself (a loaded adapter)
    uint64_t seed = 0;

    void validate(const std::string& source) const;
  };

  // As PromptTuning's: registers, initialises, hooks into `model`'s
  // attention, freezes the base. kBadInput under tensor parallelism (not
  // supported yet).
  PrefixTuning(Context& context, LlamaModel& model, const Config& config);
  ~PrefixTuning() override;

  const Config& config() const { return config_; }

  // PeftMethod
  PeftType type() const override { return PeftType::kPrefixTuning; }
  std::string fingerprint_text() const override;
  std::string merge_unsupported_reason() const override;
  std::vector<NamedTensor> merged_state_dict(std::optional<DType> dtype = std::nullopt) const override;
  void save_adapter(const std::filesystem::path& directory, const std::string& base_model_name_or_path,
                    std::optional<DType> dtype = std::nullopt) const override;
  void load_adapter_weights(const std::filesystem::path& directory) override;

  // AttentionPrefixHook. Layer 0's forward computes every layer's keys and
  // values (the projection runs once per forward); layer L-1's backward
  // starts a step's gradient and layer 0's finishes it.
  int64_t num_prefix() const override { return config_.num_virtual_tokens; }
  void forward(Context& context, int64_t layer, Tensor& keys, Tensor& values) override;
  void backward(Context& context, int64_t layer, const Tensor& dkeys, const Tensor& dvalues) override;

  // The stored tensor [P, layers · 2 · kv] as the model uses it, host f32.
  Tensor key_values() const;

 private:
  int64_t kv_width() const { return model_.config().kv_size(); }
  int64_t num_layers() const { return model_.config().num_hidden_layers; }
  int64_t encoder_width() const {
    return config_.encoder_hidden_size > 0 ? config_.encoder_hidden_size : model_.config().hidden_size;
  }
  // `from` seen as [outer, inner, kv] into `to` as [inner, outer, kv], one
  // row of kv at a time: [P, layers·2·kv] -> [layers·2, P, kv] and back.
  void transpose_rows(const Tensor& from, Tensor& to, int64_t outer, int64_t inner) const;

  Context& context_;
  Config config_;
  Parameter* embedding_ = nullptr;
  std::unique_ptr<DenseStack> encoder_;
  Tensor layer_major_;           // [layers·2, P, kv] in the compute dtype: this forward's keys/values
  Tensor layer_major_gradient_;  // f32 [layers·2, P, kv]: summed over the batch
};

}  // namespace llmft
