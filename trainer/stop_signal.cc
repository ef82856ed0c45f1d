#include "trainer/stop_signal.h"

#include <csignal>
#include <cstring>

#include "core/error.h"

namespace llmft::trainer {
namespace {

std::atomic<bool> stop_requested{false};
std::atomic<int> stop_signal{0};
static_assert(std::atomic<bool>::is_always_lock_free && std::atomic<int>::is_always_lock_free,
              "a signal handler may only touch lock-free atomics");

extern "C" void on_stop_signal(int signal_number) {
  stop_signal.store(signal_number);
  stop_requested.store(true);
}

}  // namespace

const std::atomic<bool>& install_stop_signal_handlers() {
  stop_requested.store(false);
  stop_signal.store(0);
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND | SA_RESTART;
  for (int signal_number : {SIGTERM, SIGINT})
    if (sigaction(signal_number, &action, nullptr) != 0)
      throw_runtime("sigaction(", signal_number, "): ", std::strerror(errno));
  return stop_requested;
}

int stop_signal_number() { return stop_signal.load(); }

}  // namespace llmft::trainer
