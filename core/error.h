// Errors with context. Boundaries (files, configs, user input) throw llmft::Error
// carrying the file, record or field and what was expected; `launch/` turns the
// error kind into the process exit code (1 runtime failure, 2 bad input).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace llmft {

enum class ErrorKind {
  kRuntime = 1,   // something failed while running (I/O, CUDA, MPI, numerics)
  kBadInput = 2,  // the user's files, config or arguments are wrong
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_code() const { return static_cast<int>(kind_); }

 private:
  ErrorKind kind_;
};

// Concatenates any streamable values into one string: str_cat("record ", 7, ": bad").
template <typename... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

template <typename... Args>
[[noreturn]] void throw_bad_input(Args&&... args) {
  throw Error(ErrorKind::kBadInput, str_cat(std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void throw_runtime(Args&&... args) {
  throw Error(ErrorKind::kRuntime, str_cat(std::forward<Args>(args)...));
}

}  // namespace llmft

// Internal invariant / API misuse check (always on: these guard shapes and
// dtypes at op boundaries, not inner loops).
#define LLMFT_CHECK(cond, ...)                                                                  \
  do {                                                                                          \
    if (!(cond)) ::llmft::throw_runtime(__FILE__, ":", __LINE__, ": check failed: " #cond ": ", \
                                        ##__VA_ARGS__);                                         \
  } while (0)

// Debug-only check for hot loops.
#ifdef NDEBUG
#define LLMFT_DCHECK(cond, ...) \
  do {                          \
  } while (0)
#else
#define LLMFT_DCHECK(cond, ...) LLMFT_CHECK(cond, ##__VA_ARGS__)
#endif
