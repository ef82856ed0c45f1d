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
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "launch/cli_args.h"
#include "launch/commands.h"
#include "parallel/parallel_context.h"
#include "trainer/stop_signal.h"
#include "config/train_options.h"
#include "trainer/trainer.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage: llmft train --config RUN.pbtxt [--set field.path=value ...] [--check] [--device cpu|cuda[:N]]\n"
    "                   [--threads N]\n"
    "  RUN.pbtxt is an llmft.TrainConfig in Protobuf text format (fields, defaults and ranges: proto/llmft.proto;\n"
    "  commented examples: examples/*.pbtxt). --set overrides one field; repeated fields take a comma list.\n"
    "  --check: load, validate and print the resolved config (every default written out), then exit.\n"
    "  --device: where the model and the AdamW update run (default cpu); under mpirun each rank of a node\n"
    "  takes GPU <local rank>. --threads N: CPU threads per rank (default: OpenMP's; under mpirun, the node's\n"
    "  cores / its ranks unless OMP_NUM_THREADS is set).\n"
    "  Data parallelism: mpirun -np N llmft train ... (parallel.dp defaults to N; see README).\n"
    "  Resume: --set checkpoint.resume=latest (or a step-N directory). SIGTERM/SIGINT checkpoint at the next\n"
    "  step boundary and exit with 128 + the signal number.\n";

int train(const config::TrainOptions& options, parallel::ParallelContext& grid, int cuda_device, int64_t threads) {
  // With several ranks on a node, rank i uses GPU i of the node.
  if (cuda_device >= 0 && grid.world_size() > 1) cuda_device = grid.cuda_device_for_rank(cuda_device_count());
  // Several ranks on one node share its cores (launch/cli_args.h).
  threads = threads_per_rank(threads, grid.local_size());
  auto context = cuda_device >= 0 ? Context::cuda(cuda_device, options.seed)
                                  : Context::cpu(options.seed, static_cast<int>(threads));
  trainer::TrainerHooks hooks;
  hooks.parallel = &grid;
  hooks.stop_requested = &trainer::install_stop_signal_handlers();
  trainer::Trainer trainer(*context, options, hooks);
  const trainer::TrainResult result = trainer.train();
  if (result.reason == trainer::StopReason::kStopRequested) {
    if (grid.world_rank() == 0)
      std::fprintf(stderr,
                   "llmft train: stopped by signal %d at step %lld/%lld; checkpoint %s is complete; continue with "
                   "--set checkpoint.resume=latest\n",
                   result.stop_signal, static_cast<long long>(result.final_step),
                   static_cast<long long>(options.total_steps),
                   result.checkpoint ? result.checkpoint->string().c_str() : "(none: no step was taken)");
    return 128 + result.stop_signal;
  }
  if (grid.world_rank() == 0)
    std::printf("finished at step %lld/%lld%s%s\n", static_cast<long long>(result.final_step),
                static_cast<long long>(options.total_steps), result.checkpoint ? "; checkpoint " : "",
                result.checkpoint ? result.checkpoint->string().c_str() : "");
  return 0;
}

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
    const std::string text = config::resolved_train_config_text(*config.path, config.overrides);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  const config::TrainOptions options = config::load_train_options(*config.path, config.overrides);
  // The process grid: MPI under mpirun/srun, one process otherwise.
  auto grid = parallel::ParallelContext::from_launcher(options.tp, options.timeout_s);
  try {
    return train(options, *grid, cuda_device, threads);
  } catch (const Error& error) {
    if (grid->world_size() == 1) throw;
    // Other ranks may be waiting for this one in a collective: end the job
    // (mpirun reports it) rather than leave them to the hang guard.
    std::fprintf(stderr, "llmft train: error: %s [%s]\n", error.what(), grid->describe().c_str());
    grid->abort_job(error.exit_code());
    throw;
  }
}

}  // namespace llmft::launch
