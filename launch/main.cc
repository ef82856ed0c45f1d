// The llmft binary: one subcommand per verb. Exit codes: 0 ok, 1 runtime
// failure, 2 bad input or config (llmft::ErrorKind).
#include <cstdio>
#include <cstring>
#include <string>
#include <exception>
#include <span>
#include <string_view>

#include "core/error.h"
#include "launch/commands.h"

namespace {

struct Subcommand {
  std::string_view name;
  std::string_view summary;
  int (*run)(std::span<char*> args);
};

constexpr Subcommand kSubcommands[] = {
    {"inspect", "inspect MODEL_DIR: architecture, parameters by dtype and module, training memory",
     llmft::launch::run_inspect},
    {"convert", "convert --gguf FILE --out DIR [--dtype f32|bf16]: a llama.cpp GGUF model as a Hugging Face directory",
     llmft::launch::run_convert},
    {"data", "data build --input X.jsonl --tokenizer T --output P --shards N | data inspect FILE: token shards",
     llmft::launch::run_data},
    {"generate", "generate --model DIR (--prompt TEXT | --chat TEXT [--system TEXT]): text with the KV cache",
     llmft::launch::run_generate},
    {"tokenize", "tokenize --tokenizer T (--text TEXT | --input X.jsonl): token ids, one line per text",
     llmft::launch::run_tokenize},
    {"train", "train --config RUN.pbtxt [--set field.path=value ...] [--check]: fine-tune (LoRA or full)",
     llmft::launch::run_train},
    {"eval", "eval --config RUN.pbtxt [--checkpoint latest|DIR] | --model DIR --data GLOB: loss and perplexity",
     llmft::launch::run_eval},
    {"export", "export --config RUN.pbtxt [--checkpoint DIR] (--merged OUT | --adapter OUT): HF model or adapter",
     llmft::launch::run_export},
};

void print_usage(FILE* out) {
  std::fprintf(out, "usage: llmft <command> [args]\n\ncommands:\n");
  for (const Subcommand& command : kSubcommands)
    std::fprintf(out, "  %-10s %.*s\n", std::string(command.name).c_str(), static_cast<int>(command.summary.size()),
                 command.summary.data());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    print_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string_view name = argv[1];
  for (const Subcommand& command : kSubcommands) {
    if (command.name != name) continue;
    try {
      return command.run(std::span<char*>(argv + 2, static_cast<size_t>(argc - 2)));
    } catch (const llmft::Error& error) {
      std::fprintf(stderr, "llmft %s: error: %s\n", argv[1], error.what());
      return error.exit_code();
    } catch (const std::exception& error) {
      std::fprintf(stderr, "llmft %s: error: %s\n", argv[1], error.what());
      return 1;
    }
  }
  std::fprintf(stderr, "llmft: unknown command '%s'\n", argv[1]);
  print_usage(stderr);
  return 2;
}
