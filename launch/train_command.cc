// `llmft train --config run.pbtxt [--set field.path=value ...] --check`: loads
// the training configuration (proto/llmft.proto), applies the overrides, fills
// the defaults, validates, and prints the resolved config in text format.
// Only --check exists so far: the training loop itself comes next (issue 8,
// item 4); without --check the command says so and exits 2.
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "launch/commands.h"
#include "launch/train_config.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage: llmft train --config RUN.pbtxt [--set field.path=value ...] --check\n"
    "  RUN.pbtxt is an llmft.TrainConfig in Protobuf text format (fields, defaults and ranges: proto/llmft.proto;\n"
    "  commented examples: examples/*.pbtxt). --set overrides one field; repeated fields take a comma list.\n"
    "  --check: load, validate and print the resolved config (every default written out), then exit.\n"
    "  Training itself is not implemented yet; --check is required.\n";

}  // namespace

int run_train(std::span<char*> args) {
  std::optional<std::string> config_path;
  std::vector<std::string> overrides;
  bool check = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw_bad_input("train: ", arg, " needs a value");
      return args[++i];
    };
    if (arg == "--config") {
      config_path = value();
    } else if (arg == "--set") {
      overrides.push_back(value());
    } else if (arg.starts_with("--set=")) {
      overrides.emplace_back(arg.substr(6));
    } else if (arg == "--check") {
      check = true;
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      throw_bad_input("train: unexpected argument '", arg, "'; see llmft train --help");
    }
  }
  if (!config_path) throw_bad_input("train: --config is required; see llmft train --help");
  const TrainConfig config = load_train_config(*config_path, overrides);
  if (!check)
    throw_bad_input("train: ", *config_path,
                    " is valid, but the training loop is not implemented yet; run with --check to print the "
                    "resolved config");
  const std::string text = train_config_to_text(config);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

}  // namespace llmft::launch
