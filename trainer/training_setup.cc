#include "trainer/training_setup.h"

#include <cstdio>

#include "core/error.h"
#include "data/tokenizer.h"
#include "peft/bottleneck.h"
#include "peft/lora.h"
#include "peft/prefix_tuning.h"
#include "peft/prompt_tuning.h"
#include "trainer/checkpoint.h"

namespace llmft::trainer {

DType parse_float_dtype(const std::string& name, const std::string& field) {
  std::optional<DType> dtype = parse_dtype(name);
  if (!dtype || !is_floating(*dtype)) throw_bad_input(field, ": '", name, "' is not one of f32, bf16, f16");
  return *dtype;
}

std::vector<Parameter*> TrainingModel::trainable_parameters() {
  std::vector<Parameter*> result;
  for (Parameter* parameter : trainable_registry().all())
    if (parameter->trainable) result.push_back(parameter);
  return result;
}

ParameterRegistry& TrainingModel::trainable_registry() { return peft ? peft->parameters() : model->parameters(); }

std::vector<NamedTensor> TrainingModel::trainable_tensors() {
  std::vector<NamedTensor> tensors;
  for (Parameter* parameter : trainable_parameters()) tensors.push_back({parameter->name, parameter->value});
  return tensors;
}

void TrainingModel::set_training(bool training) {
  if (peft) peft->set_training(training);
}

std::unique_ptr<PeftMethod> attach_peft_method(Context& context, LlamaModel& model,
                                               const config::TrainOptions& options) {
  if (options.peft == "lora") {
    LoraSettings lora_config;
    lora_config.r = options.lora_r;
    lora_config.alpha = options.lora_alpha;
    lora_config.dropout = options.lora_dropout;
    lora_config.use_rslora = options.lora_use_rslora;
    lora_config.target_modules = options.lora_target_modules;
    lora_config.seed = options.seed;
    lora_config.validate(options.source + ": peft.lora");
    return std::make_unique<LoraModel>(context, model, lora_config);
  }
  if (options.peft == "prompt_tuning" || options.peft == "p_tuning") {
    PromptTuning::Config config;
    config.type = options.peft == "p_tuning" ? PeftType::kPTuning : PeftType::kPromptTuning;
    config.num_virtual_tokens = options.num_virtual_tokens;
    config.encoder_hidden_size = options.encoder_hidden_size;
    config.seed = options.seed;
    config.init = options.prompt_init == "text"           ? PromptTuning::Init::kText
                  : options.prompt_init == "sample_vocab" ? PromptTuning::Init::kSampleVocab
                                                          : PromptTuning::Init::kRandom;
    if (config.init == PromptTuning::Init::kText) {
      // PEFT tokenizes init text with the model's tokenizer, special tokens
      // included (tokenizer(init_text)["input_ids"]).
      config.init_text = options.prompt_init_text;
      config.init_token_ids = load_tokenizer(options.hf_dir)->encode_with_special_tokens(options.prompt_init_text);
    }
    config.validate(str_cat(options.source, ": peft.", options.peft));
    return std::make_unique<PromptTuning>(context, model, config);
  }
  if (options.peft == "prefix_tuning") {
    PrefixTuning::Config config;
    config.num_virtual_tokens = options.num_virtual_tokens;
    config.prefix_projection = options.prefix_projection;
    config.encoder_hidden_size = options.encoder_hidden_size;
    config.seed = options.seed;
    config.validate(options.source + ": peft.prefix_tuning");
    return std::make_unique<PrefixTuning>(context, model, config);
  }
  if (options.peft == "bottleneck") {
    BottleneckAdapters::Config config;
    config.placement = options.bottleneck_placement == "houlsby" ? BottleneckAdapters::Placement::kHoulsby
                                                                 : BottleneckAdapters::Placement::kPfeiffer;
    config.bottleneck = options.bottleneck_size;
    config.reduction_factor = options.bottleneck_reduction_factor;
    config.activation = options.bottleneck_activation == "gelu"   ? ops::Activation::kGelu
                        : options.bottleneck_activation == "silu" ? ops::Activation::kSilu
                        : options.bottleneck_activation == "tanh" ? ops::Activation::kTanh
                                                                  : ops::Activation::kRelu;
    config.seed = options.seed;
    config.validate(options.source + ": peft.bottleneck");
    return std::make_unique<BottleneckAdapters>(context, model, config);
  }
  throw_bad_input(options.source, ": field 'peft': unknown method '", options.peft,
                  "', expected none, lora, prompt_tuning, p_tuning, prefix_tuning or bottleneck");
}

std::unique_ptr<TrainingModel> build_training_model(Context& context, const config::TrainOptions& options, bool for_training,
                                                    parallel::Communicator* tensor_parallel) {
  const DType compute_dtype = parse_float_dtype(options.compute_dtype, options.source + ": precision.compute_dtype");
  const DType weights_dtype = parse_float_dtype(options.weights_dtype, options.source + ": model.weights_dtype");
  LlamaOptions llama_options;
  llama_options.compute_dtype = compute_dtype;
  llama_options.weights_dtype = weights_dtype;
  llama_options.grad_dtype = DType::kF32;  // accumulation across micro-batches in fp32
  llama_options.tensor_parallel = tensor_parallel;

  auto result = std::make_unique<TrainingModel>();
  {
    MemoryCategoryScope category(options.peft != "none" ? MemoryCategory::kFrozenWeights
                                                        : MemoryCategory::kTrainableWeights);
    result->model = LlamaModel::load(context, options.hf_dir, llama_options);
  }
  if (options.activation_checkpointing != "none") {
    if (options.checkpoint_every_n_layers < 1)
      throw_bad_input(options.source, ": field 'memory.checkpoint_every_n_layers': ", options.checkpoint_every_n_layers,
                      ", expected >= 1");
    const ActivationPolicy policy = options.activation_checkpointing == "full" ? ActivationPolicy::kRecompute
                                                                               : ActivationPolicy::kSelective;
    for (int64_t layer = 0; layer < result->model->config().num_hidden_layers; ++layer)
      if (layer % options.checkpoint_every_n_layers == 0) result->model->set_activation_policy(layer, policy);
  }
  if (options.peft == "none") {
    result->model->parameters().set_trainable([](const std::string&) { return true; });
    if (for_training) result->model->parameters().allocate_grads(context, DType::kF32);
  } else {
    result->peft = attach_peft_method(context, *result->model, options);
  }
  result->fingerprint_text = training_fingerprint_text(*result->model, options, result->peft.get());
  result->fingerprint = training_fingerprint(*result->model, options, result->peft.get());
  return result;
}

namespace {

constexpr uint64_t kFnvOffsetBasis = 1469598103934665603ull;

uint64_t fnv1a(uint64_t hash, const void* data, size_t bytes) {
  const auto* begin = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    hash ^= begin[i];
    hash *= 1099511628211ull;
  }
  return hash;
}

}  // namespace

uint64_t base_weights_sample_hash(const SafetensorsCheckpoint& checkpoint, const LlamaModel& model, DType dtype) {
  uint64_t hash = kFnvOffsetBasis;
  for (const Parameter* parameter : model.parameters().all()) {
    const Tensor stored = checkpoint.tensor(parameter->name);  // a view of the mapping: only the rows read are
    std::vector<Tensor> samples;
    if (stored.dim() <= 1) {
      samples.push_back(stored);
    } else {
      samples.push_back(stored.slice_rows(0, 1));
      samples.push_back(stored.slice_rows(stored.size(0) - 1, stored.size(0)));
    }
    for (Tensor sample : samples) {
      if (sample.dtype() != dtype) sample = Tensor::from_floats(sample.shape(), sample.to_floats(), dtype);
      hash = fnv1a(hash, sample.raw_data(), sample.nbytes());
    }
  }
  return hash;
}

std::string training_fingerprint_text(const LlamaModel& model, const config::TrainOptions& options,
                                      const PeftMethod* peft) {
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(options.hf_dir);
  // The base weights as the run holds them (model.weights_dtype).
  const DType dtype = parse_float_dtype(options.weights_dtype, "model.weights_dtype");
  return str_cat("model=", model.config().to_json().dump(), ";weights=", std::hex,
                 base_weights_sample_hash(checkpoint, model, dtype), std::dec, ";peft=",
                 peft != nullptr ? peft->fingerprint_text() : "none");
}

std::string training_fingerprint(const LlamaModel& model, const config::TrainOptions& options,
                                 const PeftMethod* peft) {
  const std::string text = training_fingerprint_text(model, options, peft);
  const uint64_t hash = fnv1a(kFnvOffsetBasis, text.data(), text.size());
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(hash));
  return hex;
}

int64_t model_eos_id(const std::filesystem::path& hf_dir, const ModelConfig& config) {
  if (config.eos_token_ids.empty())
    throw_bad_input((hf_dir / "config.json").string(),
                    ": no eos_token_id, which data.append_eos needs to separate documents (add it, or set "
                    "data.append_eos: false)");
  return config.eos_token_ids.front();
}

int64_t document_eos_id(const config::TrainOptions& options, const ModelConfig& config) {
  if (options.append_eos) return model_eos_id(options.hf_dir, config);
  return config.eos_token_ids.empty() ? -1 : config.eos_token_ids.front();
}

data::LoaderOptions make_loader_options(const config::TrainOptions& options, const ModelConfig& model_config, int64_t eos_id,
                                        bool validation, int dp_rank, int dp_size) {
  data::LoaderOptions loader;
  const std::vector<std::string>& files = validation ? options.validation_files : options.train_files;
  if (files.size() == 1) {
    loader.pattern = files.front();
  } else {
    for (const std::string& entry : files) {
      if (entry.find_first_of("*?[") == std::string::npos) {
        loader.files.push_back(entry);
      } else {
        for (std::string& file : data::expand_shard_pattern(entry, data::local_file_system()))
          loader.files.push_back(std::move(file));
      }
    }
  }
  loader.batch_size = options.batch_size;
  loader.seq_len = options.seq_len;
  loader.mode = !options.packed            ? data::BatchMode::kPadded
                : options.packed_contiguous ? data::BatchMode::kPackedContiguous
                                            : data::BatchMode::kPacked;
  const std::optional<data::LongDocuments> long_documents = data::parse_long_documents(options.long_documents);
  if (!long_documents)
    throw_bad_input(options.source, ": field 'data.long_documents': '", options.long_documents,
                    "', expected TRUNCATE, SPLIT or DROP");
  loader.long_documents = *long_documents;
  if (options.pack_window < 1)
    throw_bad_input(options.source, ": field 'data.pack_window': ", options.pack_window, " out of range, expected >= 1");
  loader.pack_window = static_cast<size_t>(options.pack_window);
  // Evaluation sees every token: the last partial row and batch are padded,
  // not dropped, and the rows follow training's layout rules.
  loader.drop_remainder = !validation;
  loader.append_eos = options.append_eos;
  loader.eos_id = eos_id;
  loader.pad_id = eos_id >= 0 ? eos_id : 0;  // padding has target -100 and its own attention segment
  loader.vocab_size = model_config.vocab_size;
  // The validation split is dealt over the data-parallel ranks too (the
  // trainer sums the ranks' losses and token counts).
  loader.dp_rank = dp_rank;
  loader.dp_size = dp_size;
  loader.seed = options.seed;
  loader.shuffle_shards = !validation;
  loader.shuffle_buffer = validation ? 0 : static_cast<size_t>(options.shuffle_buffer);
  loader.num_epochs = validation ? 1 : 0;
  loader.names.input_ids = options.input_ids_feature;
  loader.names.labels = options.labels_feature;
  loader.names.loss_mask = options.loss_mask_feature;
  loader.reader.skip_corrupt_records = options.skip_corrupt_records;
  return loader;
}

std::unique_ptr<TrainingModel> load_fp32_model_for_export(Context& context, const config::TrainOptions& options,
                                                          const std::string& where, std::filesystem::path* source) {
  config::TrainOptions fp32 = options;
  fp32.compute_dtype = fp32.weights_dtype = "f32";
  std::unique_ptr<TrainingModel> model = build_training_model(context, fp32, /*for_training=*/false);
  // The run's fingerprint: its base-weight sample hashed in its weights dtype.
  model->fingerprint = training_fingerprint(*model->model, options, model->peft.get());
  model->fingerprint_text = training_fingerprint_text(*model->model, options, model->peft.get());
  CheckpointReader reader = CheckpointReader::open(where, options.checkpoint_dir, model->fingerprint);
  reader.load_fp32_weights(model->trainable_tensors());
  if (source) *source = reader.directory();
  return model;
}

std::filesystem::path load_checkpoint_weights(TrainingModel& model, const config::TrainOptions& options,
                                              const std::string& where) {
  CheckpointReader reader = CheckpointReader::open(where, options.checkpoint_dir, model.fingerprint);
  const std::vector<NamedTensor> tensors = model.trainable_tensors();
  reader.load_trainable(tensors);
  return reader.directory();
}

}  // namespace llmft::trainer
