// Loads the golden files written by tests/optim/make_golden.py (PyTorch).
#pragma once

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace llmft::testing {

inline nlohmann::json load_optim_golden(const std::string& file) {
  const std::string path = std::string(LLMFT_SOURCE_DIR) + "/tests/testdata/optim/" + file;
  std::ifstream stream(path);
  EXPECT_TRUE(stream.good()) << "cannot open " << path << " (regenerate with tests/optim/make_golden.py)";
  return nlohmann::json::parse(stream);
}

inline std::vector<float> json_floats(const nlohmann::json& array) {
  std::vector<float> values;
  for (const auto& element : array) values.push_back(static_cast<float>(element.get<double>()));
  return values;
}

inline Shape json_shape(const nlohmann::json& array) {
  Shape shape;
  for (const auto& element : array) shape.push_back(element.get<int64_t>());
  return shape;
}

// |actual - expected| <= relative * |expected| + absolute, element by element.
inline void expect_close(const std::vector<float>& actual, const std::vector<float>& expected, double relative,
                         double absolute, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double tolerance = relative * std::abs(static_cast<double>(expected[i])) + absolute;
    EXPECT_NEAR(actual[i], expected[i], tolerance) << what << " element " << i;
  }
}

}  // namespace llmft::testing
