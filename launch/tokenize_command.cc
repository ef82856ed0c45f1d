// `llmft tokenize`: token ids of texts, one output line per input text, for
// checking llmft's tokenizers against Hugging Face tokenizers on the same
// files (tests/interop/test_tokenizer_ids.py) and for looking at how a text
// tokenizes.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.h"
#include "core/json_depth.h"
#include "data/tokenizer.h"
#include "launch/cli_args.h"
#include "launch/commands.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage: llmft tokenize --tokenizer DIR_OR_FILE (--text TEXT | --input FILE.jsonl) [--ordinary]\n"
    "                      [--add-special-tokens]\n"
    "  Prints the ids of each text on one line. Each line of FILE.jsonl is one JSON string.\n"
    "  --ordinary: special-token text stays text; --add-special-tokens: BOS/EOS as the tokenizer adds them.\n";

}  // namespace

int run_tokenize(std::span<char*> args) {
  std::optional<std::string> tokenizer_path, text, input;
  bool ordinary = false, add_special_tokens = false;
  for (ArgCursor cursor("tokenize", args); cursor.next();) {
    const std::string_view arg = cursor.arg();
    if (arg == "--tokenizer") tokenizer_path = cursor.value();
    else if (arg == "--text") text = cursor.value();
    else if (arg == "--input") input = cursor.value();
    else if (arg == "--ordinary") ordinary = true;
    else if (arg == "--add-special-tokens") add_special_tokens = true;
    else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      throw_bad_input("tokenize: unexpected argument '", arg, "'; see llmft tokenize --help");
    }
  }
  if (!tokenizer_path || text.has_value() == input.has_value())
    throw_bad_input("tokenize: --tokenizer and one of --text or --input are required; see llmft tokenize --help");
  if (ordinary && add_special_tokens)
    throw_bad_input("tokenize: --ordinary and --add-special-tokens exclude each other");
  std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(*tokenizer_path);

  std::string line_out;
  auto print_ids = [&](const std::string& piece) {
    const std::vector<int32_t> ids = ordinary             ? tokenizer->encode_ordinary(piece)
                                     : add_special_tokens ? tokenizer->encode_with_special_tokens(piece)
                                                          : tokenizer->encode(piece);
    line_out.clear();
    for (int32_t id : ids) line_out += str_cat(line_out.empty() ? "" : " ", id);
    line_out += '\n';
    std::fwrite(line_out.data(), 1, line_out.size(), stdout);
  };
  if (text) {
    print_ids(*text);
    return 0;
  }
  std::ifstream in(*input, std::ios::binary);
  if (!in) throw_bad_input(*input, ": cannot open");
  std::string line;
  for (int64_t line_number = 1; std::getline(in, line); ++line_number) {
    nlohmann::json parsed = parse_json(line, str_cat(*input, ": line ", line_number), /*allow_exceptions=*/false);
    if (parsed.is_discarded() || !parsed.is_string())
      throw_bad_input(*input, ": line ", line_number, ": expected a JSON string");
    print_ids(parsed.get<std::string>());
  }
  return 0;
}

}  // namespace llmft::launch
