// Prompt tuning (Lester et al. 2021, "The Power of Scale for
// Parameter-Efficient Prompt Tuning") and P-tuning (Liu et al. 2021, "GPT
// Understands, Too"), with Hugging Face PEFT's conventions (0.21:
// peft/tuners/prompt_tuning, peft/tuners/p_tuning, PeftModelForCausalLM):
//
//  * P virtual token embeddings [P, hidden] go in front of every sequence's
//    input embeddings; their positions carry no loss, and positions run
//    0 .. P+T-1 (PEFT drops explicit position_ids for prompt learning, so the
//    model numbers virtual and real tokens together).
//  * Prompt tuning trains the embeddings themselves, initialised RANDOM
//    (N(0, 1), torch.nn.Embedding's init), TEXT (the base model's embeddings
//    of init_text's token ids, repeated or cut to P) or SAMPLE_VOCAB (of P
//    token ids drawn uniformly from the vocabulary).
//  * P-tuning computes them with a trainable MLP encoder from a trainable
//    N(0, 1) embedding: Linear(hidden, H) → ReLU → Linear(H, H) → ReLU →
//    Linear(H, hidden) (PEFT's PromptEncoder "MLP"; H = encoder_hidden_size).
//  * The adapter stores the computed embeddings ("prompt_embeddings" [P,
//    hidden]), as PEFT does; a loaded adapter has no encoder (PEFT's
//    inference mode), for both methods.
//
// Packed rows (several documents per row) cannot take per-sequence virtual
// tokens; the trainer asks for PADDED rows.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "peft/dense_stack.h"
#include "peft/peft_method.h"

namespace llmft {

class PromptTuning : public PeftMethod, public PromptEmbeddingHook {
 public:
  enum class Init { kRandom, kText, kSampleVocab };

  struct Config {
    PeftType type = PeftType::kPromptTuning;  // or kPTuning
    int64_t num_virtual_tokens = 20;
    // Prompt tuning: how the embeddings start. TEXT uses init_token_ids (the
    // caller tokenizes init_text, which the adapter config records).
    Init init = Init::kRandom;
    std::string init_text;
    std::vector<int32_t> init_token_ids;
    // P-tuning: the MLP's hidden width; 0 means the model's hidden size.
    int64_t encoder_hidden_size = 0;
    // false: plain embeddings whatever the type (a loaded adapter).
    bool encoder = true;
    uint64_t seed = 0;  // Philox seed of the initialisation

    // kBadInput naming `source` and the field: num_virtual_tokens < 1, TEXT
    // without token ids, a negative encoder width.
    void validate(const std::string& source) const;
  };

  // Registers and initialises the parameters, sets itself as `model`'s
  // prompt-embedding hook, freezes every base parameter (dropping their
  // gradients) and allocates fp32 gradients for its own. `model` and
  // `context` must outlive this.
  PromptTuning(Context& context, LlamaModel& model, const Config& config);
  ~PromptTuning() override;

  const Config& config() const { return config_; }

  // PeftMethod
  PeftType type() const override { return config_.type; }
  std::string fingerprint_text() const override;
  std::string merge_unsupported_reason() const override;
  std::vector<NamedTensor> merged_state_dict(std::optional<DType> dtype = std::nullopt) const override;
  void save_adapter(const std::filesystem::path& directory, const std::string& base_model_name_or_path,
                    std::optional<DType> dtype = std::nullopt) const override;
  void load_adapter_weights(const std::filesystem::path& directory) override;

  // PromptEmbeddingHook
  int64_t num_virtual_tokens() const override { return config_.num_virtual_tokens; }
  void forward(Context& context, Tensor& embeddings) override;
  void backward(Context& context, const Tensor& dembeddings) override;

  // The virtual token embeddings [P, hidden] as the model sees them, on the host
  // in f32 (the encoder applied for P-tuning).
  Tensor virtual_token_embeddings() const;

 private:
  int64_t encoder_width() const {
    return config_.encoder_hidden_size > 0 ? config_.encoder_hidden_size : model_.config().hidden_size;
  }

  Context& context_;
  Config config_;
  Parameter* embedding_ = nullptr;
  std::unique_ptr<DenseStack> encoder_;  // P-tuning while training
};

}  // namespace llmft
