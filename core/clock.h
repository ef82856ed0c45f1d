// The monotonic clock in seconds, for durations (step times, timeouts,
// communication figures); never wall time.
#pragma once

#include <chrono>

namespace llmft {

inline double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace llmft
