#include "peft/prefix_tuning.h"

#include "core/allocator.h"
#include "core/error.h"
#include "core/philox.h"
#include "peft/prompt_learning_io.h"

namespace llmft {

void PrefixTuning::Config::validate(const std::string& source) const {
  if (num_virtual_tokens < 1)
    throw_bad_input(source, ": field 'num_virtual_tokens': expected an integer >= 1, found ", num_virtual_tokens);
  if (encoder_hidden_size < 0)
    throw_bad_input(source, ": field 'encoder_hidden_size': expected an integer >= 0, found ", encoder_hidden_size);
}

PrefixTuning::PrefixTuning(Context& context, LlamaModel& model, const Config& config)
    : PeftMethod(model), context_(context), config_(config) {
  config_.validate("prefix tuning config");
  if (model.tensor_parallel_size() > 1)
    throw_bad_input("peft.prefix_tuning: not supported with tensor parallelism yet (parallel.tp ",
                    model.tensor_parallel_size(), "); use parallel.tp 1");
  const int64_t p = config_.num_virtual_tokens, kv = kv_width(), total = num_layers() * 2 * kv;
  const bool projected = config_.prefix_projection && config_.encoder;
  const DType dtype = model.options().compute_dtype;
  MemoryCategoryScope category(MemoryCategory::kTrainableWeights);
  const Shape embedding_shape = projected ? Shape{p, kv} : Shape{p, total};
  embedding_ = &parameters_.add(context, "prefix_encoder.embedding.weight", embedding_shape, dtype);
  PhiloxGenerator generator(config_.seed);
  std::vector<float> values(static_cast<size_t>(shape_numel(embedding_shape)));
  for (float& value : values) value = generator.next_normal();  // torch.nn.Embedding: N(0, 1)
  {
    MemoryCategoryScope scratch(MemoryCategory::kWorkspace);
    embedding_->value.copy_from(Tensor::from_floats(embedding_shape, values, dtype));
  }
  if (projected)
    encoder_ = std::make_unique<DenseStack>(
        context, parameters_, "prefix_encoder.transform", kv,
        std::vector<DenseStack::Layer>{{encoder_width(), ops::Activation::kTanh}, {total, {}}}, dtype, generator);
  model.parameters().set_trainable([](const std::string&) { return false; });
  model.parameters().allocate_grads(context, model.options().grad_dtype);
  {
    MemoryCategoryScope gradients(MemoryCategory::kGradients);
    parameters_.allocate_grads(context, DType::kF32);
  }
  model.set_attention_prefix_hook(this);
}

PrefixTuning::~PrefixTuning() { model_.set_attention_prefix_hook(nullptr); }

std::string PrefixTuning::fingerprint_text() const {
  if (encoder_)
    return str_cat("prefix_tuning(tokens=", config_.num_virtual_tokens, ",projection=", encoder_width(), ")");
  return str_cat("prefix_tuning(tokens=", config_.num_virtual_tokens, ")");
}

std::string PrefixTuning::merge_unsupported_reason() const { return unmergeable_reason(type()); }

std::vector<NamedTensor> PrefixTuning::merged_state_dict(std::optional<DType>) const {
  throw_bad_input("merge: ", merge_unsupported_reason());
}

void PrefixTuning::transpose_rows(const Tensor& from, Tensor& to, int64_t outer, int64_t inner) const {
  const int64_t kv = kv_width();
  const Tensor source = from.reshape({outer * inner, kv});
  Tensor target = to.reshape({inner * outer, kv});
  for (int64_t i = 0; i < outer; ++i)
    for (int64_t j = 0; j < inner; ++j)
      target.slice_rows(j * outer + i, j * outer + i + 1).copy_from(source.slice_rows(i * inner + j, i * inner + j + 1));
}

void PrefixTuning::forward(Context& context, int64_t layer, Tensor& keys, Tensor& values) {
  const int64_t p = config_.num_virtual_tokens, kv = kv_width();
  if (layer == 0 || !layer_major_.defined()) {
    // Recomputed for layer 0 under gradient checkpointing too: same values.
    const Tensor token_major = encoder_ ? encoder_->forward(context, embedding_->value) : embedding_->value;
    if (!layer_major_.defined())
      layer_major_ = context.empty({num_layers() * 2, p, kv}, model_.options().compute_dtype);
    transpose_rows(token_major, layer_major_, p, num_layers() * 2);
  }
  keys.reshape({p, kv}).copy_from(layer_major_.slice_rows(2 * layer, 2 * layer + 1).reshape({p, kv}));
  values.reshape({p, kv}).copy_from(layer_major_.slice_rows(2 * layer + 1, 2 * layer + 2).reshape({p, kv}));
}

void PrefixTuning::backward(Context& context, int64_t layer, const Tensor& dkeys, const Tensor& dvalues) {
  const int64_t p = config_.num_virtual_tokens, kv = kv_width();
  if (!layer_major_gradient_.defined()) layer_major_gradient_ = context.empty({num_layers() * 2, p, kv}, DType::kF32);
  if (layer == num_layers() - 1) ops::fill(context, layer_major_gradient_, 0.0f);
  // Already summed over the batch by attention (AttentionPrefixHook::backward).
  Tensor key_gradient = layer_major_gradient_.slice_rows(2 * layer, 2 * layer + 1).reshape({p, kv});
  Tensor value_gradient = layer_major_gradient_.slice_rows(2 * layer + 1, 2 * layer + 2).reshape({p, kv});
  ops::add_scaled(context, 1.0f, dkeys.reshape({p, kv}), key_gradient);
  ops::add_scaled(context, 1.0f, dvalues.reshape({p, kv}), value_gradient);
  if (layer != 0) return;
  Tensor token_major = context.empty({p, num_layers() * 2 * kv}, DType::kF32);
  transpose_rows(layer_major_gradient_, token_major, num_layers() * 2, p);
  if (!encoder_) {
    ops::add_scaled(context, 1.0f, token_major, embedding_->grad);
    return;
  }
  const Tensor dinput = encoder_->backward(context, token_major);
  ops::add_scaled(context, 1.0f, dinput, embedding_->grad);
}

Tensor PrefixTuning::key_values() const {
  const int64_t p = config_.num_virtual_tokens, total = num_layers() * 2 * kv_width();
  Tensor computed =
      encoder_ ? encoder_->forward(context_, embedding_->value) : embedding_->value;  // saved activations unused
  const Tensor host = computed.device().is_cpu() ? computed : computed.to(default_host_allocator());
  return Tensor::from_floats({p, total}, host.to_floats(), DType::kF32);
}

void PrefixTuning::save_adapter(const std::filesystem::path& directory, const std::string& base_model_name_or_path,
                                std::optional<DType> dtype) const {
  nlohmann::json json = prompt_learning_config_json(PeftType::kPrefixTuning, model_.config(),
                                                    config_.num_virtual_tokens, base_model_name_or_path);
  json["prefix_projection"] = config_.prefix_projection;
  json["encoder_hidden_size"] = encoder_width();
  json["init_weights"] = nullptr;
  write_prompt_learning_adapter(directory, json, key_values(), dtype.value_or(embedding_->value.dtype()));
}

void PrefixTuning::load_adapter_weights(const std::filesystem::path& directory) {
  if (encoder_)
    throw_bad_input((directory / "adapter_model.safetensors").string(),
                    ": a PREFIX_TUNING adapter holds the projection's output, not the projection; load it without "
                    "one (for inference, as PEFT does)");
  const Tensor loaded = read_prompt_embeddings(directory, embedding_->value.shape(), embedding_->value.dtype());
  embedding_->value.copy_from(loaded);
}

}  // namespace llmft
