// SIGTERM/SIGINT as a polite stop request: the handler only sets a flag
// (a lock-free atomic store is async-signal-safe); the training loop polls it
// at each optimizer-step boundary, writes a checkpoint and returns. The
// handlers are installed with SA_RESETHAND, so a second signal takes the
// default action (terminate) at once — checkpoints are crash-safe, so that
// loses at most the checkpoint in progress.
//
// A signal disposition is process-wide, so the flag is too (the one global of
// the trainer, confined here; the Trainer itself takes a pointer to it).
#pragma once

#include <atomic>

namespace llmft::trainer {

// Installs the handlers (again, after a previous signal reset them) and
// clears the flag. Returns the flag.
const std::atomic<bool>& install_stop_signal_handlers();
// The signal that set the flag (SIGTERM, SIGINT), 0 while none has arrived.
int stop_signal_number();

}  // namespace llmft::trainer
