// Subcommands of the llmft binary. Each takes the arguments after its name,
// returns the exit code, and throws llmft::Error for bad input (main() prints
// it on one line and exits with its code).
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace llmft::launch {

int run_inspect(std::span<char*> args);  // launch/inspect_command.cc
int run_convert(std::span<char*> args);  // launch/convert_command.cc
int run_data(std::span<char*> args);     // launch/data_command.cc
int run_generate(std::span<char*> args);  // launch/generate_command.cc
int run_tokenize(std::span<char*> args);  // launch/tokenize_command.cc
int run_train(std::span<char*> args);     // launch/train_command.cc
int run_eval(std::span<char*> args);      // launch/eval_command.cc
int run_export(std::span<char*> args);    // launch/export_command.cc

// "5GB" -> 5'000'000'000, "2GiB" -> 2^31, "1000" -> 1000 (launch/export_command.cc).
uint64_t parse_byte_size(const std::string& text);

}  // namespace llmft::launch
