// Input files nested deeper than kMaxJsonDepth (core/json_depth.h) are one
// kBadInput line naming the file (and the JSONL line), not a stack overflow:
// a data-build record, tokenizer.json and tokenizer_config.json 100,000
// levels deep. The control shows that such a file does crash a process that
// reads it without the bound.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/json_depth.h"
#include "data/chat_template.h"
#include "data/dataset_builder.h"
#include "data/tokenizer.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;
const fs::path kTestData = fs::path(LLMFT_SOURCE_DIR) / "tests/testdata/tokenizer";

std::string nested_arrays(int depth) {
  return std::string(static_cast<size_t>(depth), '[') + std::string(static_cast<size_t>(depth), ']');
}

class JsonDepth : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmft_json_depth_test_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  fs::path dir_;
};

TEST_F(JsonDepth, TheBoundIsExactlyMaxJsonDepth) {
  EXPECT_NO_THROW(parse_json(nested_arrays(kMaxJsonDepth), "ok.json"));
  EXPECT_NO_THROW(parse_json(std::string(kMaxJsonDepth - 1, '[') + "{\"a\": 1}" + std::string(kMaxJsonDepth - 1, ']'),
                             "ok.json"));
  try {
    parse_json(nested_arrays(kMaxJsonDepth + 1), "deep.json");
    FAIL() << "accepted " << kMaxJsonDepth + 1 << " levels";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_STREQ(error.what(),
                 "deep.json: JSON nested deeper than 512 levels of arrays and objects (the bound llmft puts on "
                 "input files)");
  }
  // allow_exceptions=false still reports depth (a syntax error is a discarded value).
  EXPECT_TRUE(parse_json("{", "x", /*allow_exceptions=*/false).is_discarded());
  EXPECT_THROW(parse_json(nested_arrays(100000), "x", /*allow_exceptions=*/false), Error);
}

TEST_F(JsonDepth, ADeepJsonlRecordIsABadRecordWithItsLine) {
  auto tokenizer = load_tokenizer(kTestData / "smollm2");
  const std::string deep = "{\"text\": " + nested_arrays(100000) + "}\n";
  data::DatasetBuildOptions options;
  options.input_path = write("train.jsonl", "{\"text\": \"ok\"}\n" + deep + "{\"text\": \"fine\"}\n").string();
  options.output_prefix = (dir_ / "out/train").string();
  try {
    data::build_dataset(*tokenizer, options);
    FAIL() << "accepted a record 100000 levels deep";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_EQ(std::string(error.what()), options.input_path + ":2: JSON nested deeper than 512 levels of arrays and "
                                                              "objects (the bound llmft puts on input files)");
  }
  options.skip_bad_records = true;
  const data::DatasetBuildSummary summary = data::build_dataset(*tokenizer, options);
  EXPECT_EQ(summary.records_written, 2u);
  EXPECT_EQ(summary.bad_records_skipped, 1u);
  // The format is still detected when the first record is the deep one.
  options.input_path = write("deep_first.jsonl", deep + "{\"text\": \"ok\"}\n").string();
  EXPECT_EQ(data::build_dataset(*tokenizer, options).records_written, 1u);
}

TEST_F(JsonDepth, ADeepTokenizerJsonOrConfigNamesTheFile) {
  const fs::path tokenizer_json = write("deep_tokenizer/tokenizer.json", "{\"model\": " + nested_arrays(100000) + "}");
  try {
    load_tokenizer(tokenizer_json.parent_path());
    FAIL() << "accepted a tokenizer.json 100000 levels deep";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find(tokenizer_json.string() + ": JSON nested deeper than 512 levels"),
              std::string::npos)
        << error.what();
  }
  const fs::path config =
      write("deep_config/tokenizer_config.json", "{\"chat_template\": " + nested_arrays(100000) + "}");
  try {
    load_chat_template(config.parent_path());
    FAIL() << "accepted a tokenizer_config.json 100000 levels deep";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(config.string() + ": JSON nested deeper than 512 levels"),
              std::string::npos)
        << error.what();
  }
}

// Control: the same document read without the bound overflows the stack of
// a child process (nlohmann parses it, then copying it recurses per level).
TEST_F(JsonDepth, ControlWithoutTheBoundTheDocumentCrashesTheProcess) {
  const std::string deep = nested_arrays(300000);
  const pid_t child = fork();
  if (child == 0) {
    rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    rlimit stack{8 << 20, 8 << 20};  // the usual default, whatever this shell's ulimit -s
    setrlimit(RLIMIT_STACK, &stack);
    const nlohmann::json parsed = nlohmann::json::parse(deep);
    const nlohmann::json copy = parsed;
    _exit(copy.is_array() ? 0 : 1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the unbounded parse and copy exited normally";
  // SIGSEGV; under AddressSanitizer, which catches the overflow itself, the
  // SIGABRT of its report (scripts/test --sanitize: abort_on_error=1).
  EXPECT_TRUE(WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGABRT) << "signal " << WTERMSIG(status);
}

}  // namespace
}  // namespace llmft
