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

// "cpu" -> -1, "cuda" -> 0, "cuda:N" -> N.
int parse_device(const std::string& text) {
  if (text == "cpu") return -1;
  if (text == "cuda") return 0;
  if (text.starts_with("cuda:")) {
    try {
      size_t used = 0;
      const int index = std::stoi(text.substr(5), &used);
      if (used == text.size() - 5 && index >= 0) return index;
    } catch (const std::exception&) {
    }
  }
  throw_bad_input("train: --device: expected cpu, cuda or cuda:N, found '", text, "'");
}

int64_t parse_count(std::string_view flag, const std::string& text) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used == text.size() && value >= 0) return value;
  } catch (const std::exception&) {
  }
  throw_bad_input("train: ", flag, " expects a non-negative integer, got '", text, "'");
}

}  // namespace

int run_train(std::span<char*> args) {
  std::optional<std::string> config_path;
  std::vector<std::string> overrides;
  bool check = false;
  int64_t threads = 0;
  int cuda_device = -1;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw_bad_input("train: ", arg, " needs a value");
      return args[++i];
    };
    if (arg == "--config") {
      config_path = value();
    } else if (arg == "--set") {
      overrides.push_back(value());
    } else if (arg.starts_with("--set=")) {
      overrides.emplace_back(arg.substr(6));
    } else if (arg == "--check") {
      check = true;
    } else if (arg == "--device") {
      cuda_device = parse_device(value());
    } else if (arg == "--threads") {
      threads = parse_count(arg, value());
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      throw_bad_input("train: unexpected argument '", arg, "'; see llmft train --help");
    }
  }
  if (!config_path) throw_bad_input("train: --config is required; see llmft train --help");
  if (check) {
    const std::string text = trainer::resolved_train_config_text(*config_path, overrides);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  const trainer::TrainOptions options = trainer::load_train_options(*config_path, overrides);
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
