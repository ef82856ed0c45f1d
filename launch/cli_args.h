// Argument parsing shared by the llmft subcommands: one cursor over the
// arguments and one parser per value kind, so every command words its errors
// the same way ("<command>: <flag>: expected ..., found '...'").
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmft::launch {

// "cpu" -> -1, "cuda" -> 0, "cuda:N" -> N; otherwise
// "<command>: --device: expected cpu, cuda or cuda:N, found '<text>'".
int parse_device(std::string_view command, const std::string& text);

// A whole decimal integer in [min, max]; otherwise
// "<command>: <flag>: expected <a positive integer | ...>, found '<text>'".
int64_t parse_int(std::string_view command, std::string_view flag, const std::string& text,
                  int64_t min = std::numeric_limits<int64_t>::min(), int64_t max = std::numeric_limits<int64_t>::max());

// CPU threads per rank as `llmft train` runs them, for train and for inspect's
// estimate of it: `requested` (--threads) when positive; else, with several
// ranks on a node and OMP_NUM_THREADS unset, the node's cores shared among
// them (torchrun likewise sets OMP_NUM_THREADS=1 rather than let every rank
// take every core); else 0, OpenMP's default.
int64_t threads_per_rank(int64_t requested, int64_t ranks_on_node);

// Walks a command's arguments: `for (ArgCursor cursor("train", args); cursor.next();)`,
// then compare cursor.arg() with the flags and take a flag's value with value().
class ArgCursor {
 public:
  ArgCursor(std::string_view command, std::span<char*> args) : command_(command), args_(args) {}

  // Moves to the next argument; false when there is none left.
  bool next() { return ++index_ < args_.size(); }
  std::string_view arg() const { return args_[index_]; }
  std::string_view command() const { return command_; }
  // The argument after the current flag, consumed; "<command>: <flag> needs a
  // value" when the flag is the last argument.
  std::string value();
  // value() parsed with parse_int / parse_device above, errors naming this
  // command and flag.
  int64_t int_value(int64_t min = std::numeric_limits<int64_t>::min(),
                    int64_t max = std::numeric_limits<int64_t>::max());
  int device_value();

 private:
  std::string_view command_;
  std::span<char*> args_;
  size_t index_ = static_cast<size_t>(-1);
};

// --config RUN.pbtxt and its --set field.path=value overrides (--set=... too),
// taken by train, eval and export alike.
struct ConfigArgs {
  std::optional<std::string> path;
  std::vector<std::string> overrides;

  // Takes the cursor's current argument when it is one of these flags.
  bool take(ArgCursor& cursor);
};

}  // namespace llmft::launch
