// libFuzzer target for the run configuration (config/train_config.h): the
// input up to the first NUL byte is a TrainConfig in Protobuf text format,
// each line after it one `--set field.path=value` override. Parsing, the
// overrides, defaults and validation must succeed or raise llmft::Error, and a
// configuration that passes must print as text that parses back to the same
// message (what `llmft train --check` shows is what runs).
// A thin call into the public functions `llmft train` uses, whichever library
// holds them. Built and run by fuzz/run_fuzz.sh (ctest fuzz.config_fuzz).
#include <google/protobuf/util/message_differencer.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "config/train_config.h"
#include "core/error.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace llmft;
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  try {
    TrainConfig config = config::parse_train_config(input.substr(0, nul), "fuzz.pbtxt");
    if (nul != std::string::npos) {
      std::istringstream overrides(input.substr(nul + 1));
      for (std::string line; std::getline(overrides, line);) config::apply_override(config, line);
    }
    config::fill_train_config_defaults(config);
    config::validate_train_config(config, "fuzz.pbtxt");
    const std::string text = config::train_config_to_text(config);
    const TrainConfig reparsed = config::parse_train_config(text, "printed");
    LLMFT_FUZZ_EXPECT(google::protobuf::util::MessageDifferencer::Equals(config, reparsed));
  } catch (const Error&) {
  }
  return 0;
}
