#include "launch/cli_args.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <thread>

#include "core/error.h"

namespace llmft::launch {

std::string ArgCursor::value() {
  if (index_ + 1 >= args_.size()) throw_bad_input(command_, ": ", arg(), " needs a value");
  return args_[++index_];
}

int64_t ArgCursor::int_value(int64_t min, int64_t max) {
  const std::string_view flag = arg();
  return parse_int(command_, flag, value(), min, max);
}

int ArgCursor::device_value() { return parse_device(command_, value()); }

bool ConfigArgs::take(ArgCursor& cursor) {
  const std::string_view arg = cursor.arg();
  if (arg == "--config") {
    path = cursor.value();
  } else if (arg == "--set") {
    overrides.push_back(cursor.value());
  } else if (arg.starts_with("--set=")) {
    overrides.emplace_back(arg.substr(6));
  } else {
    return false;
  }
  return true;
}

namespace {

// The whole of `text` as a decimal integer (no sign other than '-', no
// spaces), or nothing when it is not one or does not fit.
std::optional<int64_t> whole_integer(std::string_view text) {
  int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

int parse_device(std::string_view command, const std::string& text) {
  if (text == "cpu") return -1;
  if (text == "cuda") return 0;
  if (text.starts_with("cuda:")) {
    const std::optional<int64_t> index = whole_integer(std::string_view(text).substr(5));
    if (index && *index >= 0 && *index <= std::numeric_limits<int>::max()) return static_cast<int>(*index);
  }
  throw_bad_input(command, ": --device: expected cpu, cuda or cuda:N, found '", text, "'");
}

int64_t parse_int(std::string_view command, std::string_view flag, const std::string& text, int64_t min,
                  int64_t max) {
  const std::optional<int64_t> value = whole_integer(text);
  if (value && *value >= min && *value <= max) return *value;
  constexpr int64_t kLowest = std::numeric_limits<int64_t>::min(), kHighest = std::numeric_limits<int64_t>::max();
  const std::string expected = min == kLowest && max == kHighest ? "an integer"
                               : min == 1 && max == kHighest     ? "a positive integer"
                               : min == 0 && max == kHighest     ? "a non-negative integer"
                               : max == kHighest                 ? str_cat("an integer >= ", min)
                                                                 : str_cat("an integer from ", min, " to ", max);
  throw_bad_input(command, ": ", flag, ": expected ", expected, ", found '", text, "'");
}

int64_t threads_per_rank(int64_t requested, int64_t ranks_on_node) {
  if (requested > 0 || ranks_on_node <= 1 || std::getenv("OMP_NUM_THREADS") != nullptr) return requested;
  return std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) / ranks_on_node);
}

}  // namespace llmft::launch
