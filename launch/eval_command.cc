// `llmft eval`: mean cross-entropy over every trained token of a dataset, and
// perplexity = exp(loss).
//
//   llmft eval --config RUN.pbtxt [--set ...] [--checkpoint latest|DIR|none] [--data GLOB]
//     the run's model (+ LoRA) with the trainable weights of a checkpoint
//     (default: the newest in checkpoint.dir, or the base model when there is
//     none; "none" forces the base model), on data.validation_files or GLOB;
//   llmft eval --model DIR --data GLOB [--seq-len N] [--long-documents truncate|split|drop] [--append-eos]
//     a Hugging Face model directory as it is.
// Every token is evaluated: records are read in file order and laid out as
// training lays them out (best-fit packed rows by default: no record is cut
// unless it is longer than seq_len), and the last partial row and batch are
// padded, not dropped. So the loss does not depend on seq_len, batch size or
// layout (`--padded`, one record per row, gives the same; it is kept for
// scripts that pass it).
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "launch/cli_args.h"
#include "launch/commands.h"
#include "trainer/checkpoint.h"
#include "config/train_options.h"
#include "trainer/trainer.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage: llmft eval --config RUN.pbtxt [--set field.path=value ...] [--checkpoint latest|DIR|none] [--data GLOB]\n"
    "       llmft eval --model DIR --data GLOB [--seq-len N] [--long-documents truncate|split|drop] [--padded]\n"
    "                  [--append-eos]\n"
    "  both: [--device cpu|cuda[:N]] [--threads N]\n"
    "  Prints the mean loss over every trained token of the data, the perplexity exp(loss), and the trained\n"
    "  tokens, records and rows it covered. Records are packed whole into rows as training packs them; one\n"
    "  longer than --seq-len (default 1024) is truncated (default), split or dropped, and reported.\n"
    "  --checkpoint: default the newest checkpoint of checkpoint.dir, or the base model when there is none.\n";

}  // namespace

int run_eval(std::span<char*> args) {
  ConfigArgs config;
  std::optional<std::string> model_dir, data, checkpoint;
  std::optional<int64_t> seq_len;
  std::optional<std::string> long_documents;
  bool padded = false, append_eos = false;
  int64_t threads = 0;
  int cuda_device = -1;
  for (ArgCursor cursor("eval", args); cursor.next();) {
    const std::string_view arg = cursor.arg();
    if (config.take(cursor)) continue;
    if (arg == "--checkpoint") {
      checkpoint = cursor.value();
    } else if (arg == "--model") {
      model_dir = cursor.value();
    } else if (arg == "--data") {
      data = cursor.value();
    } else if (arg == "--seq-len") {
      seq_len = cursor.int_value(1);
    } else if (arg == "--long-documents") {
      long_documents = cursor.value();
      if (!data::parse_long_documents(*long_documents))
        throw_bad_input("eval: --long-documents '", *long_documents, "', expected truncate, split or drop");
    } else if (arg == "--padded") {
      padded = true;
    } else if (arg == "--append-eos") {
      append_eos = true;
    } else if (arg == "--device") {
      cuda_device = cursor.device_value();
    } else if (arg == "--threads") {
      threads = cursor.int_value(1);
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      throw_bad_input("eval: unexpected argument '", arg, "'; see llmft eval --help");
    }
  }
  if (config.path.has_value() == model_dir.has_value())
    throw_bad_input("eval: give exactly one of --config RUN.pbtxt or --model DIR; see llmft eval --help");

  config::TrainOptions options;
  std::string what;
  if (config.path) {
    if (seq_len || padded || append_eos || long_documents)
      throw_bad_input("eval: --seq-len, --long-documents, --padded and --append-eos go with --model; with --config "
                      "use --set data.*");
    options = config::load_train_options(*config.path, config.overrides);
    if (data) options.validation_files = {*data};
    if (options.validation_files.empty())
      throw_bad_input(*config.path, ": field 'data.validation_files' is empty; write it or pass --data GLOB");
  } else {
    if (checkpoint || !config.overrides.empty()) throw_bad_input("eval: --checkpoint and --set go with --config");
    if (!data) throw_bad_input("eval: --model needs --data GLOB");
    options.source = "--model " + *model_dir;
    options.hf_dir = *model_dir;
    options.validation_files = {*data};
    options.seq_len = seq_len.value_or(1024);
    options.packed = !padded;
    if (long_documents) options.long_documents = *long_documents;
    options.append_eos = append_eos;
    what = *model_dir;
  }

  auto context = cuda_device >= 0 ? Context::cuda(cuda_device, options.seed)
                                  : Context::cpu(options.seed, static_cast<int>(threads));
  auto model = trainer::build_training_model(*context, options, /*for_training=*/false);
  if (config.path) {
    std::string where = checkpoint.value_or("");
    if (where.empty()) where = trainer::latest_checkpoint(options.checkpoint_dir) ? "latest" : "none";
    if (where == "none") {
      what = options.hf_dir + (options.lora()             ? " (LoRA at initialisation: the base model)"
                               : options.peft != "none" ? " (peft." + options.peft + " at initialisation)"
                                                        : "");
    } else {
      what = options.hf_dir + " + " + trainer::load_checkpoint_weights(*model, options, where).string();
    }
  }
  model->set_training(false);
  data::Loader loader(trainer::make_loader_options(options, model->model->config(),
                                                   trainer::document_eos_id(options, model->model->config()),
                                                   /*validation=*/true));
  const trainer::EvalResult result = trainer::evaluate_loss(*context, *model->model, loader);
  std::printf("model: %s\ndata: %s\nloss %.6f perplexity %.4f tokens %lld records %lld rows %lld\n", what.c_str(),
              options.validation_files.front().c_str(), result.loss, result.perplexity,
              static_cast<long long>(result.trained_tokens), static_cast<long long>(result.records),
              static_cast<long long>(result.rows));
  if (!result.long_documents.empty()) std::printf("%s\n", result.long_documents.c_str());
  return 0;
}

}  // namespace llmft::launch
