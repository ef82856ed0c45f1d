// Writes a training-like run of metrics with trainer/metrics.h for
// tests/interop/test_tensorboard_events.py, which reads them back with
// TensorBoard's own event reader:
//
//   llmft_write_events --dir DIR [--steps N]
//
// DIR gets the event file and metrics.jsonl. Each value is a closed-form
// function of the step that the Python test recomputes on its own:
//   loss = 5 - 0.0625 step + 0.01 (step mod 3), lr = 2e-4 step / N,
//   grad_norm = 1 / step, tokens_per_second = 7000 + 13.5 step
// at every step 1..N (one event per step), and eval_loss = 3 - 0.01 step as a
// separate event at every 10th step.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/error.h"
#include "trainer/metrics.h"

int main(int argc, char** argv) {
  std::string dir;
  long steps = 50;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else if (arg == "--steps" && i + 1 < argc) {
      steps = std::strtol(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: llmft_write_events --dir DIR [--steps N]\n");
      return 2;
    }
  }
  if (dir.empty() || steps <= 0) {
    std::fprintf(stderr, "usage: llmft_write_events --dir DIR [--steps N > 0]\n");
    return 2;
  }
  try {
    llmft::trainer::MetricsWriterOptions options;
    options.tensorboard_dir = dir;
    options.jsonl_path = dir + "/metrics.jsonl";
    llmft::trainer::MetricsWriter writer(options);
    for (long step = 1; step <= steps; ++step) {
      double s = static_cast<double>(step);
      writer.log_scalars(step, {{"loss", 5.0 - 0.0625 * s + 0.01 * static_cast<double>(step % 3)},
                                {"lr", 2e-4 * s / static_cast<double>(steps)},
                                {"grad_norm", 1.0 / s},
                                {"tokens_per_second", 7000.0 + 13.5 * s}});
      if (step % 10 == 0) writer.log_scalars(step, {{"eval_loss", 3.0 - 0.01 * s}});
    }
    writer.close();
    std::printf("%s\n", writer.event_file_path().c_str());
  } catch (const llmft::Error& error) {
    std::fprintf(stderr, "llmft_write_events: %s\n", error.what());
    return 1;
  }
  return 0;
}
