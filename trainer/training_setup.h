// What the trainer, `llmft eval` and `llmft export` build from a training
// configuration: the base model in its precision, the PEFT method (or none
// for full fine-tuning), the list of trainable parameters, the checkpoint fingerprint, the
// EOS id and the data-loader options.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/context.h"
#include "data/loader.h"
#include "model/llama.h"
#include "peft/peft_method.h"
#include "config/train_options.h"

namespace llmft::trainer {

// "f32"/"bf16"/"f16" -> DType; kBadInput naming `field` otherwise.
DType parse_float_dtype(const std::string& name, const std::string& field);

struct TrainingModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<PeftMethod> peft;  // null for full fine-tuning
  std::string fingerprint;          // see training_fingerprint
  std::string fingerprint_text;     // its canonical text, for messages

  // The PEFT method's parameters, or every base parameter for full
  // fine-tuning, in registry order.
  std::vector<Parameter*> trainable_parameters();
  ParameterRegistry& trainable_registry();
  // Trainable values by name (what a checkpoint's trainable.safetensors holds).
  std::vector<NamedTensor> trainable_tensors();
  // Dropout on (training) or off (evaluation, export).
  void set_training(bool training);
};

// The PEFT method options.peft names (lora, prompt_tuning, p_tuning,
// prefix_tuning), attached to `model` and initialised from options.seed; the
// base is frozen. kBadInput naming options.source and the field for a value
// the method refuses.
std::unique_ptr<PeftMethod> attach_peft_method(Context& context, LlamaModel& model, const config::TrainOptions& options);

// Loads options.hf_dir with its parameters in model.weights_dtype and
// activations in precision.compute_dtype (LlamaOptions::weights_dtype; any
// pair of float dtypes), then attaches the PEFT method (seed data.seed) or marks every parameter
// trainable, and allocates fp32 gradients. Without `for_training` (eval,
// export) full fine-tuning allocates no gradients. With `tensor_parallel`
// (size > 1) each rank holds and loads its slices (model/llama.h).
std::unique_ptr<TrainingModel> build_training_model(Context& context, const config::TrainOptions& options,
                                                    bool for_training = true,
                                                    parallel::Communicator* tensor_parallel = nullptr);

// Canonical text of what the checkpoint tensors belong to: the model's
// config.json (every architecture field), a sample of the base weights as
// loaded (see base_weights_sample_hash), and the PEFT method with the fields
// that shape or scale its tensors (PeftMethod::fingerprint_text; LoRA r,
// alpha, rsLoRA, resolved targets).
// Dropout, data and optimizer settings may change across a resume and are
// left out; dtypes are checked tensor by tensor when a checkpoint loads.
std::string training_fingerprint_text(const LlamaModel& model, const config::TrainOptions& options,
                                      const PeftMethod* peft);
// 16 hex digits of FNV-1a 64 over that text (short enough for error lines).
std::string training_fingerprint(const LlamaModel& model, const config::TrainOptions& options,
                                 const PeftMethod* peft);
// FNV-1a 64 over the bytes of the first and last row of every parameter's
// full tensor in `checkpoint` (the whole of 1-D ones), in the model's
// registry order: two checkpoints of one architecture (a base model and its
// instruct version) differ here, at the cost of reading a few KB rather than
// every weight. Read from the files, not the model, so it is the same for
// every tensor-parallel layout and before or after training. The sample is
// hashed as `dtype` values (rounded as loading in that dtype rounds).
uint64_t base_weights_sample_hash(const SafetensorsCheckpoint& checkpoint, const LlamaModel& model, DType dtype);

// The id that ends a document: config.json's (first) eos_token_id.
// kBadInput naming the file when the model has none.
int64_t model_eos_id(const std::filesystem::path& hf_dir, const ModelConfig& config);

// The loader's eos_id for `options`: model_eos_id when data.append_eos
// (required then), else config.json's first eos id or -1.
int64_t document_eos_id(const config::TrainOptions& options, const ModelConfig& config);

// Loader options for the training split or, with `validation`, the
// validation split (file order, no shuffling, one epoch, the last partial
// row and batch padded rather than dropped, so every token is evaluated, in
// training's row layout), either dealt over the data-parallel ranks (dp
// rank/size given: record g to rank g % dp_size). A long_documents or
// pack_window outside its range is a kBadInput naming options.source.
data::LoaderOptions make_loader_options(const config::TrainOptions& options, const ModelConfig& model_config, int64_t eos_id,
                                        bool validation, int dp_rank = 0, int dp_size = 1);

// Copies the trainable weights of checkpoint `where` ("latest" or a
// directory; checkpoint_dir resolves "latest") into `model`, after the
// fingerprint check. Returns the checkpoint's directory.
std::filesystem::path load_checkpoint_weights(TrainingModel& model, const config::TrainOptions& options,
                                              const std::string& where);

// The model of checkpoint `where` for export, in fp32 whatever the run's
// compute dtype: the base from options.hf_dir in f32 and the trainable
// weights from their fp32 AdamW masters (a bf16/f16 run's 16-bit copies lose
// what the masters kept). `source` receives the checkpoint's directory.
std::unique_ptr<TrainingModel> load_fp32_model_for_export(Context& context, const config::TrainOptions& options,
                                                          const std::string& where,
                                                          std::filesystem::path* source = nullptr);

}  // namespace llmft::trainer
