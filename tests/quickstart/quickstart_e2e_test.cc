// The quickstart's pieces end to end:
// - quickstart_task make: deterministic files in the OpenAI messages format,
//   answers that state exactly the sentence's name, age and city, and a
//   held-out split whose first names, last names and cities never occur in
//   training;
// - llmft generate --batch: on a small random model, each generation equals
//   the library's generate() on the same conversation, exact match is counted
//   by the documented rule against hand-made expectations, self-stopping is
//   counted, and every bad batch file or option is one error line, exit 2;
// - quickstart_task compare: prints before/after side by side.
// usage: quickstart_e2e_test LLMFT_BINARY QUICKSTART_TASK_BINARY
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "model/generation.h"
#include "tests/model/tiny_chat_model.h"
#include "tests/test_util.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;

std::string g_llmft, g_quickstart_task;  // set by main() from argv

using testing::CommandResult;

CommandResult run(const std::string& command_line) { return testing::run_command(command_line); }

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

fs::path fresh_directory(const std::string& name) {
  const fs::path directory = fs::temp_directory_path() / name;
  fs::remove_all(directory);
  fs::create_directories(directory);
  return directory;
}

// ---------------------------------------------------------------- make

TEST(QuickstartTaskTest, SameSeedSameFilesOtherSeedOtherFiles) {
  const fs::path a = fresh_directory("llmft_quickstart_task_a"), b = fresh_directory("llmft_quickstart_task_b"),
                 c = fresh_directory("llmft_quickstart_task_c");
  for (const auto& [directory, seed] : {std::pair{a, 7}, std::pair{b, 7}, std::pair{c, 8}}) {
    const CommandResult result = run(g_quickstart_task + " make --out " + directory.string() +
                                     " --train 300 --heldout 40 --seed " + std::to_string(seed));
    ASSERT_EQ(result.exit_code, 0) << result.err;
  }
  EXPECT_EQ(read_file(a / "train.jsonl"), read_file(b / "train.jsonl"));
  EXPECT_EQ(read_file(a / "heldout.jsonl"), read_file(b / "heldout.jsonl"));
  EXPECT_NE(read_file(a / "train.jsonl"), read_file(c / "train.jsonl"));
  EXPECT_NE(read_file(a / "heldout.jsonl"), read_file(c / "heldout.jsonl"));
  // The held-out split does not depend on the size of the training split.
  const fs::path d = fresh_directory("llmft_quickstart_task_d");
  ASSERT_EQ(run(g_quickstart_task + " make --out " + d.string() + " --train 10 --heldout 40 --seed 7").exit_code, 0);
  EXPECT_EQ(read_file(a / "heldout.jsonl"), read_file(d / "heldout.jsonl"));
  for (const fs::path& directory : {a, b, c, d}) fs::remove_all(directory);
}

// The answer, parsed independently of the generator: the format
// {"name": "First Last", "age": N, "city": "City"} and nothing else.
struct Answer {
  std::string first, last, city;
  int age;
};
Answer parse_answer(const std::string& answer) {
  static const std::regex format(
      R"re(^\{"name": "([A-Za-z]+) ([A-Za-z]+)", "age": ([0-9]+), "city": "([A-Za-z]+)"\}$)re");
  std::smatch match;
  if (!std::regex_match(answer, match, format)) {
    ADD_FAILURE() << "answer not in the fixed format: " << answer;
    return {};
  }
  return {match[1], match[2], match[4], std::stoi(match[3])};
}

TEST(QuickstartTaskTest, AnswersStateTheSentenceAndHeldOutEntitiesAreUnseen) {
  const fs::path directory = fresh_directory("llmft_quickstart_task_split");
  const CommandResult result =
      run(g_quickstart_task + " make --out " + directory.string() + " --train 2000 --heldout 200 --seed 1");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const std::vector<nlohmann::json> train = read_jsonl(directory / "train.jsonl");
  const std::vector<nlohmann::json> heldout = read_jsonl(directory / "heldout.jsonl");
  ASSERT_EQ(train.size(), 2000u);
  ASSERT_EQ(heldout.size(), 200u);

  auto check = [](const std::string& prompt, const Answer& answer) {
    EXPECT_TRUE(prompt.starts_with("Extract the record as JSON: ")) << prompt;
    EXPECT_NE(prompt.find(answer.first + " " + answer.last), std::string::npos) << prompt;
    EXPECT_NE(prompt.find(answer.city), std::string::npos) << prompt;
    EXPECT_NE(prompt.find(std::to_string(answer.age)), std::string::npos) << prompt;
    EXPECT_GE(answer.age, 18);
    EXPECT_LE(answer.age, 89);
  };
  std::set<std::string> train_first, train_last, train_cities, train_prompts;
  for (const nlohmann::json& line : train) {
    ASSERT_EQ(line["messages"].size(), 2u) << line.dump();
    EXPECT_EQ(line["messages"][0]["role"], "user");
    EXPECT_EQ(line["messages"][1]["role"], "assistant");
    const std::string prompt = line["messages"][0]["content"];
    const Answer answer = parse_answer(line["messages"][1]["content"]);
    check(prompt, answer);
    train_first.insert(answer.first);
    train_last.insert(answer.last);
    train_cities.insert(answer.city);
    train_prompts.insert(prompt);
  }
  std::set<std::string> heldout_first, heldout_cities;
  for (const nlohmann::json& line : heldout) {
    ASSERT_EQ(line["messages"].size(), 1u) << line.dump();
    EXPECT_EQ(line["messages"][0]["role"], "user");
    const std::string prompt = line["messages"][0]["content"];
    const Answer answer = parse_answer(line["expected"]);
    check(prompt, answer);
    EXPECT_FALSE(train_first.contains(answer.first)) << answer.first << " is in the training split";
    EXPECT_FALSE(train_last.contains(answer.last)) << answer.last << " is in the training split";
    EXPECT_FALSE(train_cities.contains(answer.city)) << answer.city << " is in the training split";
    EXPECT_FALSE(train_prompts.contains(prompt));
    heldout_first.insert(answer.first);
    heldout_cities.insert(answer.city);
  }
  // `prompt FILE N` prints line N's user message, for `llmft generate --chat`.
  const CommandResult third = run(g_quickstart_task + " prompt " + (directory / "heldout.jsonl").string() + " 3");
  ASSERT_EQ(third.exit_code, 0) << third.err;
  EXPECT_EQ(third.out, heldout[2]["messages"][0]["content"].get<std::string>() + "\n");
  // Both splits are varied, not one entity repeated.
  EXPECT_GE(train_first.size(), 40u);
  EXPECT_GE(train_cities.size(), 40u);
  EXPECT_GE(heldout_first.size(), 10u);
  EXPECT_GE(heldout_cities.size(), 10u);
  fs::remove_all(directory);
}

TEST(QuickstartTaskTest, BadArgumentsAreOneLineExitTwo) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "usage: quickstart_task make"},
      {"bake", "unknown verb 'bake'"},
      {"make", "make: --out DIR is required"},
      {"make --out /tmp/x --train many", "--train: expected a non-negative integer, found 'many'"},
      {"make --out /tmp/x --bogus", "unexpected argument '--bogus'"},
      {"compare --before /nonexistent/b.jsonl --after /nonexistent/a.jsonl", "/nonexistent/b.jsonl: cannot open"},
      {"compare --before x", "--before FILE and --after FILE are required"},
      {"prompt /nonexistent/h.jsonl 1", "/nonexistent/h.jsonl: cannot open"},
      {"prompt /nonexistent/h.jsonl", "prompt: expected FILE.jsonl N"},
  };
  for (const auto& [arguments, message] : cases) {
    const CommandResult result = run(g_quickstart_task + " " + arguments);
    EXPECT_EQ(result.exit_code, 2) << arguments << "\n" << result.err;
    EXPECT_NE(result.err.find(message), std::string::npos) << arguments << "\n" << result.err;
  }
}

// ---------------------------------------------------------------- generate --batch

constexpr const char* kChatTemplate =
    "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}";

class GenerateBatchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = fresh_directory("llmft_quickstart_e2e_model");
    testing::write_tiny_chat_model(directory_, /*seed=*/5);
    nlohmann::json tokenizer_config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"chat_template", kChatTemplate}};
    std::ofstream(directory_ / "tokenizer_config.json") << tokenizer_config.dump();

    // An EOS that the model reaches by itself: the fourth greedy token of the
    // first conversation (generation then stops there, or earlier when the
    // same token came before), so the batch has both kinds of endings.
    fs::remove(directory_ / "generation_config.json");
    const std::vector<int32_t> first = reference(conversations()[0], /*max_new_tokens=*/8).tokens;
    ASSERT_FALSE(first.empty());
    std::ofstream(directory_ / "generation_config.json")
        << "{\"eos_token_id\": " << first[std::min<size_t>(3, first.size() - 1)] << "}";
  }
  static void TearDownTestSuite() { fs::remove_all(directory_); }

  static std::vector<nlohmann::json> conversations() {
    return {
        nlohmann::json::array({{{"role", "user"}, {"content", "hello world"}}}),
        nlohmann::json::array(
            {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "a b c"}}}),
        nlohmann::json::array({{{"role", "user"}, {"content", "the quick brown fox"}}}),
        nlohmann::json::array({{{"role", "user"}, {"content", "one"}},
                               {{"role", "assistant"}, {"content", "two"}},
                               {{"role", "user"}, {"content", "three"}}}),
    };
  }

  // The library's greedy generation of one conversation, with the stop ids
  // that `llmft generate` takes from a model directory (config EOS ids and the
  // tokenizer's EOS; the test vocabulary has no ChatML end-of-turn token).
  static std::vector<int32_t> prompt_ids(const nlohmann::json& messages) {
    std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(directory_);
    ModelChatTemplate model_template = load_chat_template(directory_);
    ChatTemplateInputs inputs;
    inputs.messages = nlohmann::ordered_json::parse(messages.dump());
    inputs.bos_token = model_template.bos_token;
    inputs.eos_token = model_template.eos_token;
    inputs.add_generation_prompt = true;
    return encode_chat(*tokenizer, model_template.chat_template.render(inputs));
  }
  static GenerationResult reference(const nlohmann::json& messages, int64_t max_new_tokens) {
    std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(directory_);
    const std::vector<int32_t> prompt = prompt_ids(messages);
    auto context = Context::cpu(0, 2);
    auto model = LlamaModel::load(*context, directory_);
    GenerationOptions options;
    options.max_new_tokens = max_new_tokens;
    options.stop_ids = read_eos_token_ids(directory_);
    if (tokenizer->eos_id() &&
        std::find(options.stop_ids.begin(), options.stop_ids.end(), *tokenizer->eos_id()) == options.stop_ids.end())
      options.stop_ids.push_back(*tokenizer->eos_id());
    return generate(*context, *model, prompt, options);
  }

  static fs::path directory_;
};
fs::path GenerateBatchTest::directory_;

TEST_F(GenerateBatchTest, CountsExactMatchesAndSelfStopsOfTheLibrarysGenerations) {
  constexpr int64_t kMaxNewTokens = 8;
  std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(directory_);
  std::vector<GenerationResult> expected_results;
  std::vector<std::string> expected_texts;
  for (const nlohmann::json& messages : conversations()) {
    expected_results.push_back(reference(messages, kMaxNewTokens));
    expected_texts.push_back(tokenizer->decode(expected_results.back().tokens, /*skip_special_tokens=*/true));
  }
  ASSERT_TRUE(expected_results[0].stopped) << "the test's EOS is a token the first conversation reaches";
  int64_t stopped = 0;
  for (const GenerationResult& result : expected_results) stopped += result.stopped;
  ASSERT_LT(stopped, 4) << "the test wants both endings; pick another model seed";

  // Expected answers made by hand around the library's text: 0 matches with
  // extra outer whitespace, 1 has one character more, 2 matches as is, 3 is
  // unrelated. So exact_match must be 2/4.
  const std::vector<std::string> expected_answers = {"\n  " + expected_texts[0] + " \t", expected_texts[1] + "!",
                                                     expected_texts[2], "nothing like the model's text"};
  const fs::path batch = fresh_directory("llmft_quickstart_e2e_batch") / "batch.jsonl";
  const fs::path output = batch.parent_path() / "out.jsonl";
  {
    std::ofstream out(batch);
    for (size_t i = 0; i < 4; ++i) {
      out << nlohmann::json({{"messages", conversations()[i]}, {"expected", expected_answers[i]}}).dump() << '\n';
      if (i == 1) out << "\n";  // blank lines are skipped
    }
  }
  const CommandResult result =
      run(g_llmft + " generate --model " + directory_.string() + " --batch " + batch.string() + " --batch-output " +
          output.string() + " --max-new-tokens " + std::to_string(kMaxNewTokens) + " --show 2");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("exact_match 2/4 = 50.0%\n"), std::string::npos) << result.out;
  char stopped_line[64];
  std::snprintf(stopped_line, sizeof(stopped_line), "stopped_by_itself %lld/4 = %.1f%%\n",
                static_cast<long long>(stopped), 25.0 * static_cast<double>(stopped));
  EXPECT_NE(result.out.find(stopped_line), std::string::npos) << result.out;
  // --show 2: the first two conversations are printed, the third is not.
  EXPECT_NE(result.out.find("[1] prompt:    hello world\n"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("[2] prompt:    a b c\n"), std::string::npos) << result.out;
  EXPECT_EQ(result.out.find("[3] prompt:"), std::string::npos) << result.out;

  const std::vector<nlohmann::json> lines = read_jsonl(output);
  ASSERT_EQ(lines.size(), 4u);
  const std::vector<bool> exact = {true, false, true, false};
  const std::vector<std::string> prompts = {"hello world", "a b c", "the quick brown fox", "three"};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(lines[i]["prompt"], prompts[i]) << i;
    EXPECT_EQ(lines[i]["expected"], expected_answers[i]) << i;
    EXPECT_EQ(lines[i]["generated"], expected_texts[i]) << i;
    EXPECT_EQ(lines[i]["exact"], exact[i]) << i;
    EXPECT_EQ(lines[i]["stopped"], expected_results[i].stopped) << i;
    EXPECT_EQ(lines[i]["new_tokens"], expected_results[i].tokens.size()) << i;
    EXPECT_EQ(lines[i]["generated_ids"].get<std::vector<int32_t>>(), expected_results[i].tokens) << i;
    EXPECT_EQ(lines[i]["prompt_ids"].get<std::vector<int32_t>>(), prompt_ids(conversations()[i])) << i;
  }
  fs::remove_all(batch.parent_path());
}

TEST_F(GenerateBatchTest, CompareShowsBeforeAndAfterSideBySide) {
  const fs::path directory = fresh_directory("llmft_quickstart_e2e_compare");
  std::ofstream(directory / "before.jsonl")
      << R"({"prompt": "Extract: Ann Lee, 30, Oslo", "expected": "{\"name\": \"Ann Lee\"}", "generated": "Sure!\nHere", "exact": false})"
      << "\n";
  std::ofstream(directory / "after.jsonl")
      << R"({"prompt": "Extract: Ann Lee, 30, Oslo", "expected": "{\"name\": \"Ann Lee\"}", "generated": "{\"name\": \"Ann Lee\"}", "exact": true})"
      << "\n";
  const CommandResult result = run(g_quickstart_task + " compare --before " + (directory / "before.jsonl").string() +
                                   " --after " + (directory / "after.jsonl").string());
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out,
            "prompt:   Extract: Ann Lee, 30, Oslo\n"
            "expected: {\"name\": \"Ann Lee\"}\n"
            "  before [miss] Sure!\\nHere\n"
            "  after  [ok  ] {\"name\": \"Ann Lee\"}\n\n");
  // Files of different conversations are refused.
  std::ofstream(directory / "other.jsonl") << R"({"prompt": "another", "expected": "x", "generated": "y"})"
                                           << "\n";
  const CommandResult mismatch = run(g_quickstart_task + " compare --before " + (directory / "before.jsonl").string() +
                                     " --after " + (directory / "other.jsonl").string());
  EXPECT_EQ(mismatch.exit_code, 2);
  EXPECT_NE(mismatch.err.find("line 1 is not the same prompt"), std::string::npos) << mismatch.err;
  fs::remove_all(directory);
}

TEST_F(GenerateBatchTest, BadBatchInputIsOneLineExitTwo) {
  const fs::path directory = fresh_directory("llmft_quickstart_e2e_bad");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(directory / name) << text;
    return (directory / name).string();
  };
  const std::string model = g_llmft + " generate --model " + directory_.string();
  const std::string good = R"({"messages": [{"role": "user", "content": "hi"}], "expected": "x"})";
  const std::string not_json = write("not_json.jsonl", good + "\n{oops\n");
  const std::string no_expected = write("no_expected.jsonl", R"({"messages": [{"role": "user", "content": "hi"}]})");
  const std::string number_expected =
      write("number_expected.jsonl", R"({"messages": [{"role": "user", "content": "hi"}], "expected": 3})");
  const std::string no_messages = write("no_messages.jsonl", good + "\n" + R"({"expected": "x"})");
  const std::string empty_messages = write("empty_messages.jsonl", R"({"messages": [], "expected": "x"})");
  const std::string no_role = write("no_role.jsonl", R"({"messages": [{"content": "hi"}], "expected": "x"})");
  const std::string empty = write("empty.jsonl", "\n\n");
  const std::string batch = write("good.jsonl", good);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {model + " --batch /nonexistent/batch.jsonl", "/nonexistent/batch.jsonl: cannot open the batch file"},
      {model + " --batch " + not_json, not_json + ": line 2: expected a JSON object"},
      {model + " --batch " + no_expected, no_expected + ": line 1: expected a string field \"expected\""},
      {model + " --batch " + number_expected, number_expected + ": line 1: expected a string field \"expected\""},
      {model + " --batch " + no_messages, no_messages + ": line 2: missing field \"messages\""},
      {model + " --batch " + empty_messages, empty_messages + ": line 1: expected a non-empty list"},
      {model + " --batch " + no_role, no_role + ": line 1: message 0: expected an object with a string \"role\""},
      {model + " --batch " + empty, empty + ": no conversations"},
      {model + " --batch " + batch + " --prompt hi", "exactly one of --prompt, --chat or --messages, or --batch FILE"},
      {model + " --prompt hi --batch-output /tmp/x.jsonl", "--batch-output goes with --batch"},
      {model + " --batch " + batch + " --print-ids", "--render-only and --print-ids do not go with --batch"},
      {model + " --batch " + batch + " --show -1", "--show: expected >= 0"},
      {model + " --batch " + batch + " --batch-output /nonexistent/dir/out.jsonl",
       "/nonexistent/dir/out.jsonl: cannot open for writing"},
  };
  for (const auto& [command, message] : cases) {
    const CommandResult result = run(command);
    EXPECT_EQ(result.exit_code, 2) << command << "\n" << result.err;
    EXPECT_NE(result.err.find(message), std::string::npos) << command << "\n" << result.err;
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << command << "\n" << result.err;
  }
  fs::remove_all(directory);
}

}  // namespace
}  // namespace llmft

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 2) {
    llmft::g_llmft = argv[1];
    llmft::g_quickstart_task = argv[2];
  }
  return RUN_ALL_TESTS();
}
