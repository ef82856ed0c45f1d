// libFuzzer target for the JSONL records of `llmft data build`
// (data/dataset_builder.h), with the SmolLM2 tokenizer and chat template
// (tests/testdata/tokenizer/smollm2). Each input is a JSONL file:
//   - every line through RecordTokenizer, once with the format detected and
//     once with a format named as --format would (chosen by the input's
//     length), must give input_ids and an equally long 0/1 loss_mask of ids in
//     the vocabulary, or raise llmft::Error;
//   - the whole file through build_dataset (2 shards, a validation split,
//     truncation at 24 tokens, bad records skipped) must either fail with one
//     error and leave no file behind, or write shards whose counts add up to
//     the records read.
// Built and run by fuzz/run_fuzz.sh (ctest fuzz.dataset_builder_fuzz).
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>

#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/chat_template.h"
#include "data/dataset_builder.h"
#include "fuzz/fuzz_util.h"

namespace {

using namespace llmft;
using namespace llmft::data;

struct Fixture {
  std::unique_ptr<BpeTokenizer> tokenizer;
  ModelChatTemplate chat_template;
};

const Fixture& fixture() {
  static const Fixture loaded = [] {
    const std::filesystem::path directory = LLMFT_SOURCE_DIR "/tests/testdata/tokenizer/smollm2";
    ChatTemplateLimits limits;
    limits.max_output_bytes = 1 << 20;
    return Fixture{load_bpe_tokenizer(directory / "tokenizer.json"), load_chat_template(directory, limits)};
  }();
  return loaded;
}

void tokenize_lines(std::string_view input, const DatasetBuildOptions& options) {
  const Tokenizer& tokenizer = *fixture().tokenizer;
  RecordTokenizer record_tokenizer(tokenizer, options);
  std::istringstream lines{std::string(input)};
  for (std::string line; std::getline(lines, line);) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      TokenizedRecord record = record_tokenizer.tokenize(line);
      LLMFT_FUZZ_EXPECT(record.input_ids.size() == record.loss_mask.size());
      for (int64_t id : record.input_ids) LLMFT_FUZZ_EXPECT(id >= 0 && id < tokenizer.vocab_size());
      for (int64_t mask : record.loss_mask) LLMFT_FUZZ_EXPECT(mask == 0 || mask == 1);
    } catch (const Error&) {
    }
  }
}

void build(std::string_view input, DatasetBuildOptions options) {
  const std::filesystem::path directory = fuzz::scratch_directory() / "build";
  std::filesystem::remove_all(directory);
  std::filesystem::create_directories(directory);
  options.input_path = (directory / "input.jsonl").string();
  options.output_prefix = (directory / "out" / "train").string();
  options.shards = 2;
  options.seq_len = 24;
  options.val_fraction = 0.25;
  options.skip_bad_records = true;
  fuzz::write_file(options.input_path, input);
  try {
    const DatasetBuildSummary summary = build_dataset(*fixture().tokenizer, options);
    uint64_t written = summary.validation ? summary.validation->records : 0;
    for (const ShardSummary& shard : summary.train_shards) {
      LLMFT_FUZZ_EXPECT(std::filesystem::exists(shard.path));
      written += shard.records;
    }
    LLMFT_FUZZ_EXPECT(written == summary.records_written);
  } catch (const Error&) {
    // A failed build leaves nothing but the input.
    LLMFT_FUZZ_EXPECT(!std::filesystem::exists(directory / "out") || std::filesystem::is_empty(directory / "out"));
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)fixture();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  DatasetBuildOptions options;
  options.chat_template = &fixture().chat_template;
  options.chat.train_on = static_cast<TrainOn>(size % 3);
  options.chat.special_tokens_in_content = size % 2 == 0;
  tokenize_lines(input, options);
  constexpr InputFormat kNamed[] = {InputFormat::kText, InputFormat::kPromptCompletion, InputFormat::kMessages,
                                    InputFormat::kShareGpt, InputFormat::kAlpaca};
  options.format = kNamed[size % 5];
  tokenize_lines(input, options);
  options.format = InputFormat::kAuto;
  build(input, options);
  return 0;
}
