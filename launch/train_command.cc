// `llmft train --config run.pbtxt [--set field.path=value ...] [--check]
// [--threads N]`: trains as the configuration (proto/llmft.proto) says, with
// the loop of trainer/trainer.h. --check only loads, validates and prints the
// resolved config.
//
// SIGTERM/SIGINT: the current optimizer step finishes, a checkpoint is
// written, and the command exits with 128 + the signal number (143 for
// SIGTERM, 130 for SIGINT), the shell's convention for "stopped by a signal":
// the checkpoint is complete and resumable, but the run is not finished, so
// `llmft train ... && llmft export ...` must not go on to export. A second
// signal terminates at once.
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "launch/cli_args.h"
#include "launch/commands.h"
#include "trainer/stop_signal.h"
#include "trainer/train_options.h"
#include "trainer/trainer.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage: llmft train --config RUN.pbtxt [--set field.path=value ...] [--check] [--device cpu|cuda[:N]]\n"
    "                   [--threads N]\n"
    "  RUN.pbtxt is an llmft.TrainConfig in Protobuf text format (fields, defaults and ranges: proto/llmft.proto;\n"
    "  commented examples: examples/*.pbtxt). --set overrides one field; repeated fields take a comma list.\n"
    "  --check: load, validate and print the resolved config (every default written out), then exit.\n"
    "  --device: where the model and the AdamW update run (default cpu); with data parallelism on CUDA the\n"
    "  update runs on host copies of the trainable weights. --threads N: CPU threads (default: OpenMP's).\n"
    "  Resume: --set checkpoint.resume=latest (or a step-N directory). SIGTERM/SIGINT checkpoint at the next\n"
    "  step boundary and exit with 128 + the signal number.\n";

}  // namespace

int run_train(std::span<char*> args) {
  ConfigArgs config;
  bool check = false;
  int64_t threads = 0;
  int cuda_device = -1;
  for (ArgCursor cursor("train", args); cursor.next();) {
    const std::string_view arg = cursor.arg();
    if (config.take(cursor)) continue;
    if (arg == "--check") {
      check = true;
    } else if (arg == "--device") {
      cuda_device = cursor.device_value();
    } else if (arg == "--threads") {
      threads = cursor.int_value(0);
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      throw_bad_input("train: unexpected argument '", arg, "'; see llmft train --help");
    }
  }
  if (!config.path) throw_bad_input("train: --config is required; see llmft train --help");
  if (check) {
    const std::string text = trainer::resolved_train_config_text(*config.path, config.overrides);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  const trainer::TrainOptions options = trainer::load_train_options(*config.path, config.overrides);
  auto context = cuda_device >= 0 ? Context::cuda(cuda_device, options.seed)
                                  : Context::cpu(options.seed, static_cast<int>(threads));
  trainer::TrainerHooks hooks;
  hooks.stop_requested = &trainer::install_stop_signal_handlers();
  trainer::Trainer trainer(*context, options, hooks);
  const trainer::TrainResult result = trainer.train();
  if (result.reason == trainer::StopReason::kStopRequested) {
    const int signal_number = trainer::stop_signal_number();
    std::fprintf(stderr,
                 "llmft train: stopped by signal %d at step %lld/%lld; checkpoint %s is complete; continue with "
                 "--set checkpoint.resume=latest\n",
                 signal_number, static_cast<long long>(result.final_step), static_cast<long long>(options.total_steps),
                 result.checkpoint ? result.checkpoint->string().c_str() : "(none: no step was taken)");
    return 128 + signal_number;
  }
  std::printf("finished at step %lld/%lld%s%s\n", static_cast<long long>(result.final_step),
              static_cast<long long>(options.total_steps), result.checkpoint ? "; checkpoint " : "",
              result.checkpoint ? result.checkpoint->string().c_str() : "");
  return 0;
}

}  // namespace llmft::launch
