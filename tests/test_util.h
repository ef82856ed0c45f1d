// Helpers shared by every test binary.
#pragma once

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

}  // namespace llmft::testing
