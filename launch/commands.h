// Subcommands of the llmft binary. Each takes the arguments after its name,
// returns the exit code, and throws llmft::Error for bad input (main() prints
// it on one line and exits with its code).
#pragma once

#include <span>

namespace llmft::launch {

int run_inspect(std::span<char*> args);  // launch/inspect_command.cc
int run_convert(std::span<char*> args);  // launch/convert_command.cc
int run_data(std::span<char*> args);     // launch/data_command.cc
int run_generate(std::span<char*> args);  // launch/generate_command.cc
int run_tokenize(std::span<char*> args);  // launch/tokenize_command.cc
int run_train(std::span<char*> args);     // launch/train_command.cc
int run_eval(std::span<char*> args);      // launch/eval_command.cc
int run_export(std::span<char*> args);    // launch/export_command.cc

}  // namespace llmft::launch
