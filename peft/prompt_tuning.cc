#include "peft/prompt_tuning.h"

#include "core/allocator.h"
#include "core/error.h"
#include "core/philox.h"
#include "peft/prompt_learning_io.h"

namespace llmft {

void PromptTuning::Config::validate(const std::string& source) const {
  if (num_virtual_tokens < 1)
    throw_bad_input(source, ": field 'num_virtual_tokens': expected an integer >= 1, found ", num_virtual_tokens);
  if (type == PeftType::kPromptTuning && init == Init::kText && init_token_ids.empty())
    throw_bad_input(source, ": field 'init_text': expected text with at least one token for init TEXT, found \"",
                    init_text, "\"");
  if (encoder_hidden_size < 0)
    throw_bad_input(source, ": field 'encoder_hidden_size': expected an integer >= 0, found ", encoder_hidden_size);
  if (type != PeftType::kPromptTuning && type != PeftType::kPTuning)
    throw_runtime(source, ": PromptTuning holds PROMPT_TUNING or P_TUNING, not ", peft_type_name(type));
}

PromptTuning::PromptTuning(Context& context, LlamaModel& model, const Config& config)
    : PeftMethod(model), context_(context), config_(config) {
  config_.validate("prompt tuning config");
  const int64_t p = config_.num_virtual_tokens, hidden = model.config().hidden_size;
  const DType dtype = model.options().compute_dtype;
  MemoryCategoryScope category(MemoryCategory::kTrainableWeights);
  embedding_ = &parameters_.add(context, "prompt_encoder.embedding.weight", {p, hidden}, dtype);
  PhiloxGenerator generator(config_.seed);
  std::vector<float> values(static_cast<size_t>(p * hidden));
  const bool from_vocabulary = config_.type == PeftType::kPromptTuning && config_.init != Init::kRandom;
  if (!from_vocabulary) {
    for (float& value : values) value = generator.next_normal();  // torch.nn.Embedding: N(0, 1)
  } else {
    // PEFT PromptEmbedding: the word embeddings of the init ids (TEXT: the
    // text's ids repeated and cut to P; SAMPLE_VOCAB: P uniform draws).
    std::vector<int32_t> ids;
    const int64_t vocab = model.config().vocab_size;
    if (config_.init == Init::kText) {
      while (static_cast<int64_t>(ids.size()) < p)
        ids.insert(ids.end(), config_.init_token_ids.begin(), config_.init_token_ids.end());
      ids.resize(static_cast<size_t>(p));
    } else {
      for (int64_t i = 0; i < p; ++i) ids.push_back(static_cast<int32_t>(generator.next_below(vocab)));
    }
    const Tensor table = model.parameters().get("model.embed_tokens.weight").value;
    for (int64_t i = 0; i < p; ++i) {
      const int32_t id = ids[static_cast<size_t>(i)];
      if (id < 0 || id >= vocab)
        throw_bad_input("prompt tuning: field 'init_text': token id ", id, " outside the vocabulary [0, ", vocab, ")");
      const std::vector<float> row = table.slice_rows(id, id + 1).to(default_host_allocator()).to_floats();
      std::copy(row.begin(), row.end(), values.begin() + i * hidden);
    }
  }
  {
    MemoryCategoryScope scratch(MemoryCategory::kWorkspace);
    embedding_->value.copy_from(Tensor::from_floats({p, hidden}, values, dtype));
  }
  if (config_.type == PeftType::kPTuning && config_.encoder) {
    const int64_t width = encoder_width();
    encoder_ = std::make_unique<DenseStack>(
        context, parameters_, "prompt_encoder.mlp_head", hidden,
        std::vector<DenseStack::Layer>{{width, ops::Activation::kRelu}, {width, ops::Activation::kRelu}, {hidden, {}}},
        dtype, generator);
  }
  model.parameters().set_trainable([](const std::string&) { return false; });
  model.parameters().allocate_grads(context, model.options().grad_dtype);  // drops every base gradient
  {
    MemoryCategoryScope gradients(MemoryCategory::kGradients);
    parameters_.allocate_grads(context, DType::kF32);
  }
  model.set_prompt_embedding_hook(this);
}

PromptTuning::~PromptTuning() { model_.set_prompt_embedding_hook(nullptr); }

std::string PromptTuning::fingerprint_text() const {
  if (encoder_)
    return str_cat("p_tuning(tokens=", config_.num_virtual_tokens, ",encoder_hidden=", encoder_width(), ")");
  return str_cat(config_.type == PeftType::kPTuning ? "p_tuning" : "prompt_tuning", "(tokens=",
                 config_.num_virtual_tokens, ")");
}

std::string PromptTuning::merge_unsupported_reason() const { return unmergeable_reason(type()); }

std::vector<NamedTensor> PromptTuning::merged_state_dict(std::optional<DType>) const {
  throw_bad_input("merge: ", merge_unsupported_reason());
}

void PromptTuning::forward(Context& context, Tensor& embeddings) {
  if (!encoder_) {
    embeddings.copy_from(embedding_->value);
    return;
  }
  const Tensor computed = encoder_->forward(context, embedding_->value);
  embeddings.copy_from(computed);
}

void PromptTuning::backward(Context& context, const Tensor& dembeddings) {
  // Every sequence used the same P embeddings: their gradient is the sum over
  // the batch.
  const int64_t p = config_.num_virtual_tokens, hidden = model_.config().hidden_size;
  const Tensor per_sequence = dembeddings.reshape({-1, hidden});
  const int64_t batch = per_sequence.size(0) / p;
  if (!encoder_) {
    for (int64_t s = 0; s < batch; ++s) ops::add_scaled(context, 1.0f, per_sequence.slice_rows(s * p, (s + 1) * p),
                                                        embedding_->grad);
    return;
  }
  Tensor summed = context.empty({p, hidden}, DType::kF32);
  ops::fill(context, summed, 0.0f);
  for (int64_t s = 0; s < batch; ++s)
    ops::add_scaled(context, 1.0f, per_sequence.slice_rows(s * p, (s + 1) * p), summed);
  const Tensor dinput = encoder_->backward(context, summed);
  ops::add_scaled(context, 1.0f, dinput, embedding_->grad);
}

Tensor PromptTuning::virtual_token_embeddings() const {
  const int64_t p = config_.num_virtual_tokens, hidden = model_.config().hidden_size;
  Tensor computed = context_.empty({p, hidden}, embedding_->value.dtype());
  // The encoder's saved activations are only read by a backward of the same
  // step, which an export never runs.
  const_cast<PromptTuning*>(this)->forward(context_, computed);
  const Tensor host = computed.device().is_cpu() ? computed : computed.to(default_host_allocator());
  return Tensor::from_floats({p, hidden}, host.to_floats(), DType::kF32);
}

void PromptTuning::save_adapter(const std::filesystem::path& directory, const std::string& base_model_name_or_path,
                                std::optional<DType> dtype) const {
  nlohmann::json json =
      prompt_learning_config_json(config_.type, model_.config(), config_.num_virtual_tokens, base_model_name_or_path);
  if (config_.type == PeftType::kPromptTuning) {
    json["prompt_tuning_init"] =
        config_.init == Init::kText ? "TEXT" : config_.init == Init::kSampleVocab ? "SAMPLE_VOCAB" : "RANDOM";
    json["prompt_tuning_init_text"] = config_.init == Init::kText ? nlohmann::json(config_.init_text) : nullptr;
    json["tokenizer_name_or_path"] = config_.init == Init::kText ? nlohmann::json(base_model_name_or_path) : nullptr;
    json["tokenizer_kwargs"] = nullptr;
  } else {
    json["encoder_reparameterization_type"] = "MLP";
    json["encoder_hidden_size"] = encoder_width();
    json["encoder_num_layers"] = 2;
    json["encoder_dropout"] = 0.0;
  }
  write_prompt_learning_adapter(directory, json, virtual_token_embeddings(),
                                dtype.value_or(embedding_->value.dtype()));
}

void PromptTuning::load_adapter_weights(const std::filesystem::path& directory) {
  if (encoder_)
    throw_bad_input((directory / "adapter_model.safetensors").string(),
                    ": a P_TUNING adapter holds the encoder's output, not the encoder; load it without one (for "
                    "inference, as PEFT does)");
  const Tensor loaded = read_prompt_embeddings(directory, embedding_->value.shape(), embedding_->value.dtype());
  embedding_->value.copy_from(loaded);
}

}  // namespace llmft
