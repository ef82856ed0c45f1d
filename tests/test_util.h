// Helpers shared by every test binary.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "core/error.h"

namespace llmft::testing {

// Runs `body`, expects it to throw llmft::Error of `kind`, and returns the
// message so a test can assert on the words a user would read. Records a test
// failure (and returns "") when nothing, or an error of another kind, is thrown.
template <typename Body>
std::string error_message(Body&& body, ErrorKind kind = ErrorKind::kBadInput) {
  try {
    body();
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), kind) << error.what();
    return error.what();
  }
  ADD_FAILURE() << "expected llmft::Error";
  return "";
}

template <typename Body>
std::string bad_input_message(Body&& body) {
  return error_message(std::forward<Body>(body), ErrorKind::kBadInput);
}

// What a command line printed and how it exited (end-to-end tests of the
// llmft binary and the example tools).
struct CommandResult {
  int exit_code;  // -1 when it did not exit normally or could not be started
  std::string out, err;
};

// Runs `command_line` through the shell, with stdout and stderr captured apart
// (stderr through a file named by this process's id, so test binaries that
// ctest runs in parallel do not share one).
inline CommandResult run_command(const std::string& command_line) {
  const std::filesystem::path err_path =
      std::filesystem::temp_directory_path() / ("llmft_test_stderr_" + std::to_string(::getpid()) + ".txt");
  const std::string command = command_line + " 2>" + err_path.string();
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return {-1, "", "popen failed"};
  std::string out;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) out.append(buffer, n);
  const int status = pclose(pipe);
  std::ifstream err_file(err_path);
  std::stringstream err;
  err << err_file.rdbuf();
  err_file.close();
  std::filesystem::remove(err_path);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out, err.str()};
}

}  // namespace llmft::testing
