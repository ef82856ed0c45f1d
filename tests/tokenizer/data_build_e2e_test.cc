// End to end: `llmft data build` on a committed JSONL with the SmolLM2
// tokenizer, shards read back with the TFRecord/Example reader and with
// `llmft data inspect`, compared with build_expected.json (made by Hugging Face
// tokenizers in tests/testdata/tokenizer/make_expected.py).
// Run as: data_build_e2e_test PATH_TO_LLMFT
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/dataset_builder.h"
#include "data/example.h"
#include "data/tfrecord.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string g_llmft;  // set by main() from argv
const fs::path kTestData = fs::path(LLMFT_SOURCE_DIR) / "tests/testdata/tokenizer";

struct CommandResult {
  int exit_code;
  std::string output;  // stdout and stderr
};

CommandResult run(const std::string& arguments) {
  std::string command = g_llmft + " " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

struct Record {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> loss_mask;
  bool operator==(const Record&) const = default;
  bool operator<(const Record& other) const { return input_ids < other.input_ids; }
};

std::vector<Record> read_shard(const fs::path& path) {
  std::vector<Record> records;
  data::RecordReader reader(path.string());
  std::string_view bytes;
  while (reader.read(bytes)) {
    data::TokenExample example = data::decode_example(bytes, {}, {path.string(), 0, 0});
    records.push_back({example.input_ids, example.loss_mask});
  }
  return records;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

class DataBuildE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(g_llmft.empty()) << "pass the llmft binary as the first argument";
    out_ = fs::temp_directory_path() / ("llmft_data_build_e2e_" + std::to_string(getpid()));
    fs::remove_all(out_);
    json parsed = json::parse(read_file(kTestData / "build_expected.json"));
    for (const json& record : parsed["records"]) {
      expected_.push_back({record["input_ids"].get<std::vector<int64_t>>(), record["loss_mask"].get<std::vector<int64_t>>()});
      expected_json_.push_back(record);
    }
  }
  void TearDown() override { fs::remove_all(out_); }

  std::string build(const std::string& prefix, const std::string& extra) {
    CommandResult result = run("data build --input " + (kTestData / "build_input.jsonl").string() + " --tokenizer " +
                               (kTestData / "smollm2").string() + " --output " + (out_ / prefix).string() + " " + extra);
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return result.output;
  }

  fs::path out_;
  std::vector<Record> expected_;
  std::vector<json> expected_json_;
};

TEST_F(DataBuildE2E, ShardsHoldTheReferenceIdsDealtRoundRobin) {
  std::string output = build("train", "--shards 3");
  for (int shard = 0; shard < 3; ++shard) {
    std::vector<Record> records = read_shard(data::shard_file_name((out_ / "train").string(), shard, 3));
    std::vector<Record> expected;
    for (size_t i = static_cast<size_t>(shard); i < expected_.size(); i += 3) expected.push_back(expected_[i]);
    EXPECT_EQ(records, expected) << "shard " << shard;
  }
  EXPECT_FALSE(fs::exists(out_ / "train-val-00000-of-00001.tfrecord"));
  EXPECT_NE(output.find("train total"), std::string::npos) << output;
  EXPECT_NE(output.find("records written 8"), std::string::npos) << output;
}

TEST_F(DataBuildE2E, InspectDecodesRecordsBackToTheReferenceText) {
  build("one", "--shards 1");
  CommandResult result = run("data inspect " + data::shard_file_name((out_ / "one").string(), 0, 1) +
                             " --limit 0 --tokenizer " + (kTestData / "smollm2").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  for (const json& record : expected_json_) {
    std::string text_line = "  text: " + json(record["text"]).dump() + "\n";
    EXPECT_NE(result.output.find(text_line), std::string::npos) << text_line << "in\n" << result.output;
    if (record.contains("prompt")) {
      EXPECT_NE(result.output.find("  prompt: " + json(record["prompt"]).dump() + "\n"), std::string::npos);
      EXPECT_NE(result.output.find("  completion: " + json(record["completion"]).dump() + "\n"), std::string::npos);
    }
  }
  // Ids only, without a tokenizer.
  result = run("data inspect " + data::shard_file_name((out_ / "one").string(), 0, 1) + " --limit 1");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("  input_ids: [19556, 905]\n"), std::string::npos) << result.output;
  EXPECT_EQ(result.output.find("text:"), std::string::npos) << result.output;
}

TEST_F(DataBuildE2E, ValidationSplitIsExactDeterministicAndDisjoint) {
  build("a", "--shards 2 --val-fraction 0.25 --seed 7");
  build("b", "--shards 2 --val-fraction 0.25 --seed 7");
  std::vector<Record> all;
  for (const std::string& name : {std::string("a-00000-of-00002.tfrecord"), std::string("a-00001-of-00002.tfrecord"),
                                  std::string("a-val-00000-of-00001.tfrecord")}) {
    // Records, not bytes: protobuf may serialise the feature map in either order.
    std::vector<Record> records = read_shard(out_ / name);
    EXPECT_EQ(records, read_shard(out_ / ("b" + name.substr(1)))) << name << ": same seed, different records";
    if (name.find("val") != std::string::npos) {
      EXPECT_EQ(records.size(), 2u);  // round(0.25 * 8)
    }
    all.insert(all.end(), records.begin(), records.end());
  }
  std::vector<Record> expected = expected_;
  std::sort(all.begin(), all.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(all, expected);  // every record exactly once across train and validation
}

TEST_F(DataBuildE2E, SeqLenTruncatesAndDropsRecordsLeftWithoutCompletion) {
  std::string output = build("cut", "--shards 1 --seq-len 8");
  std::vector<Record> expected;
  size_t truncated = 0, dropped = 0;
  for (Record record : expected_) {
    if (record.input_ids.size() > 8) {
      ++truncated;
      record.input_ids.resize(8);
      record.loss_mask.resize(8);
      if (std::count(record.loss_mask.begin(), record.loss_mask.end(), 1) == 0) {
        ++dropped;
        continue;
      }
    }
    expected.push_back(record);
  }
  EXPECT_EQ(read_shard(out_ / "cut-00000-of-00001.tfrecord"), expected);
  EXPECT_NE(output.find(": " + std::to_string(truncated) + " records; dropped with no trained tokens left: " +
                        std::to_string(dropped)),
            std::string::npos)
      << output;
}

TEST_F(DataBuildE2E, BadLineFailsWithFileLineAndExitCode2) {
  fs::path bad = kTestData / "build_bad.jsonl";
  CommandResult result = run("data build --input " + bad.string() + " --tokenizer " + (kTestData / "smollm2").string() +
                             " --output " + (out_ / "bad").string() + " --shards 2");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(bad.string() + ":3: not valid JSON"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(out_ / "bad-00000-of-00002.tfrecord")) << "no shard set is left behind on error";
  EXPECT_FALSE(fs::exists(out_ / "bad-00000-of-00002.tfrecord.partial"));

  result = run("data build --input " + bad.string() + " --tokenizer " + (kTestData / "smollm2").string() +
               " --output " + (out_ / "skip").string() + " --shards 1 --skip-bad-records");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("bad records skipped: 2"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find(bad.string() + ":5: missing \"completion\""), std::string::npos) << result.output;
  EXPECT_EQ(read_shard(out_ / "skip-00000-of-00001.tfrecord").size(), 3u);

  result = run("data build --input " + bad.string() + " --tokenizer " + (kTestData / "smollm2").string() +
               " --output " + (out_ / "x").string() + " --shards 0");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("--shards: expected 1..99999, found 0"), std::string::npos) << result.output;
}

// A conversation file with SmolLM2's own template (tokenizer_config.json of
// the tokenizer directory), shown by `data inspect --show-mask`: brackets when
// stdout is not a terminal; the trained text is the assistant content and its
// <|im_end|> only (the default system prompt is the template's own).
TEST_F(DataBuildE2E, ConversationsUseTheModelTemplateAndShowMaskBracketsTrainedTokens) {
  fs::create_directories(out_);
  fs::path input = out_ / "chat.jsonl";
  std::ofstream(input)
      << R"({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})"
      << "\n";
  CommandResult result = run("data build --input " + input.string() + " --tokenizer " +
                             (kTestData / "smollm2").string() + " --output " + (out_ / "chat").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("format messages (detected from line 1), trained on every assistant turn"),
            std::string::npos)
      << result.output;
  fs::path shard = out_ / "chat-00000-of-00001.tfrecord";
  result = run("data inspect " + shard.string() + " --show-mask --tokenizer " + (kTestData / "smollm2").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find(
                ": 37 tokens, loss on 2\n<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                "Hugging Face<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n[[4<|im_end|>]]\n\n"),
            std::string::npos)
      << result.output;
  // Without a tokenizer: ids, the trained ones ("4" and <|im_end|>, id 2) in brackets, then "\n" (198).
  result = run("data inspect " + shard.string() + " --show-mask --records 1");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find(" 2]] 198\n"), std::string::npos) << result.output;
  EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '['), 2) << result.output;

  // --chat-template FILE replaces the directory's template; --train-on all trains on everything.
  fs::path template_file = out_ / "template.jinja";
  std::ofstream(template_file) << "{% for m in messages %}{{ m.role + ': ' + m.content + '<|im_end|>' }}{% endfor %}";
  result =
      run("data build --input " + input.string() + " --tokenizer " + (kTestData / "smollm2/tokenizer.json").string() +
          " --chat-template " + template_file.string() + " --output " + (out_ / "custom").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  result = run("data inspect " + (out_ / "custom-00000-of-00001.tfrecord").string() + " --show-mask --tokenizer " +
               (kTestData / "smollm2").string());
  EXPECT_NE(result.output.find("\nuser: 2+2?<|im_end|>assistant: [[4<|im_end|>]]\n"), std::string::npos)
      << result.output;
  result = run("data build --input " + input.string() + " --tokenizer " + (kTestData / "smollm2").string() +
               " --train-on all --output " + (out_ / "all").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(read_shard(out_ / "all-00000-of-00001.tfrecord")[0].loss_mask, std::vector<int64_t>(37, 1));

  result = run("data build --input " + input.string() + " --tokenizer " + (kTestData / "smollm2").string() +
               " --format chatml --output " + (out_ / "x").string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(
      result.output.find("--format: expected text, prompt-completion, messages, sharegpt or alpaca, found \"chatml\""),
      std::string::npos)
      << result.output;
  result = run("data build --input " + input.string() + " --tokenizer " + (kTestData / "smollm2").string() +
               " --train-on user --output " + (out_ / "x").string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("--train-on: expected assistant, last or all, found \"user\""), std::string::npos)
      << result.output;
}

}  // namespace
}  // namespace llmft

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 1) llmft::g_llmft = argv[1];
  return RUN_ALL_TESTS();
}
