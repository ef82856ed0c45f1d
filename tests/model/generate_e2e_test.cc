// `llmft generate` end to end on a small random model with a real tokenizer
// file (tests/testdata/tokenizer/metaspace): the binary's greedy ids equal the
// library's generate() on the same prompt, a chat template from
// tokenizer_config.json is rendered and stops at its end-of-turn token, and
// every bad argument or directory is one error line with exit code 2.
// usage: generate_e2e_test LLMFT_BINARY
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer.h"
#include "model/generation.h"
#include "core/philox.h"
#include "peft/lora.h"
#include "peft/prefix_tuning.h"
#include "peft/prompt_tuning.h"
#include "tests/model/tiny_chat_model.h"
#include "tests/test_util.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;

std::string g_llmft;  // set by main() from argv

using testing::CommandResult;

// `llmft ARGUMENTS`.
CommandResult run(const std::string& arguments) { return testing::run_command(g_llmft + " " + arguments); }

std::vector<int32_t> parse_ids(const std::string& line) {
  std::vector<int32_t> ids;
  std::istringstream in(line);
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

class GenerateE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = fs::temp_directory_path() / "llmft_generate_e2e_model";
    fs::remove_all(directory_);
    fs::create_directories(directory_);
    testing::write_tiny_chat_model(directory_, /*seed=*/3);
    std::ofstream(directory_ / "generation_config.json") << R"({"eos_token_id": 2})";
  }
  static void TearDownTestSuite() { fs::remove_all(directory_); }

  static fs::path directory_;
};
fs::path GenerateE2eTest::directory_;

TEST_F(GenerateE2eTest, GreedyIdsEqualTheLibrarysGenerate) {
  const CommandResult result =
      run("generate --model " + directory_.string() + " --prompt 'hello world' --print-ids --max-new-tokens 12");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const std::vector<int32_t> ours = parse_ids(result.out);

  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, directory_);
  std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(directory_);
  GenerationOptions options;
  options.max_new_tokens = 12;
  options.stop_ids = {2};
  const GenerationResult expected =
      generate(*context, *model, tokenizer->encode_with_special_tokens("hello world"), options);
  EXPECT_EQ(ours, expected.tokens);
  EXPECT_FALSE(ours.empty());

  // The text mode prints the decoded completion.
  const CommandResult text =
      run("generate --model " + directory_.string() + " --prompt 'hello world' --max-new-tokens 12");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_EQ(text.out, tokenizer->decode(expected.tokens, /*skip_special_tokens=*/true) + "\n");
}

// --adapter: every PEFT method's adapter directory, applied by the binary,
// gives the library's greedy ids with the method attached.
TEST_F(GenerateE2eTest, AdapterOfEveryMethodGivesTheLibrarysIds) {
  for (const char* method : {"lora", "prompt_tuning", "p_tuning", "prefix_tuning"}) {
    SCOPED_TRACE(method);
    auto context = Context::cpu(0, 2);
    auto model = LlamaModel::load(*context, directory_);
    std::unique_ptr<PeftMethod> attached;
    if (std::string(method) == "lora") {
      LoraSettings config;
      config.target_modules = {"all-linear"};
      auto lora = std::make_unique<LoraModel>(*context, *model, config);
      PhiloxGenerator generator(5);
      for (Parameter* parameter : lora->parameters().all()) {
        std::vector<float> values(static_cast<size_t>(parameter->value.numel()));
        for (float& value : values) value = 0.05f * generator.next_normal();
        parameter->value.copy_from(Tensor::from_floats(parameter->value.shape(), values));
      }
      attached = std::move(lora);
    } else if (std::string(method) == "prefix_tuning") {
      PrefixTuning::Config config;
      config.num_virtual_tokens = 3;
      config.prefix_projection = true;
      attached = std::make_unique<PrefixTuning>(*context, *model, config);
    } else {
      PromptTuning::Config config;
      config.type = std::string(method) == "p_tuning" ? PeftType::kPTuning : PeftType::kPromptTuning;
      config.num_virtual_tokens = 4;
      attached = std::make_unique<PromptTuning>(*context, *model, config);
    }
    attached->set_training(false);
    const fs::path adapter = fs::temp_directory_path() / (std::string("llmft_generate_e2e_adapter_") + method);
    attached->save_adapter(adapter, directory_.string());
    std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(directory_);
    GenerationOptions options;
    options.max_new_tokens = 12;
    options.stop_ids = {2};
    const GenerationResult expected =
        generate(*context, *model, tokenizer->encode_with_special_tokens("hello world"), options);
    const CommandResult result = run("generate --model " + directory_.string() + " --adapter " + adapter.string() +
                                     " --prompt 'hello world' --print-ids --max-new-tokens 12");
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_EQ(parse_ids(result.out), expected.tokens);
    // The adapter changes what the model says (else the comparison means little).
    attached.reset();
    const GenerationResult base =
        generate(*context, *model, tokenizer->encode_with_special_tokens("hello world"), options);
    EXPECT_NE(base.tokens, expected.tokens);
    fs::remove_all(adapter);
  }
}

TEST_F(GenerateE2eTest, ChatTemplateFromTokenizerConfig) {
  const fs::path chat_directory = fs::temp_directory_path() / "llmft_generate_e2e_chat";
  fs::remove_all(chat_directory);
  fs::copy(directory_, chat_directory);
  std::ofstream(chat_directory / "tokenizer_config.json")
      << R"({"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"})";
  const CommandResult rendered =
      run("generate --model " + chat_directory.string() + " --chat 'Hi' --system 'Be brief.' --render-only");
  ASSERT_EQ(rendered.exit_code, 0) << rendered.err;
  EXPECT_EQ(rendered.out, "<s>[system] Be brief.</s>[user] Hi</s>[assistant] ");
  const CommandResult generated = run("generate --model " + chat_directory.string() + " --chat 'Hi' --print-ids");
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
  EXPECT_NE(generated.err.find("new tokens"), std::string::npos) << generated.err;
  fs::remove_all(chat_directory);
}

TEST_F(GenerateE2eTest, BadArgumentsAreOneLineExitTwo) {
  const std::string model = " --model " + directory_.string();
  std::vector<std::pair<std::string, std::string>> cases = {
      {"generate --prompt hi", "--model DIR is required"},
      {"generate --model /nonexistent/model --prompt hi", "/nonexistent/model: not a model directory"},
      {"generate" + model, "exactly one of --prompt, --chat or --messages"},
      {"generate" + model + " --prompt a --chat b", "exactly one of --prompt, --chat or --messages"},
      {"generate" + model + " --prompt a --top-p 2", "top_p must be in (0, 1]"},
      {"generate" + model + " --prompt a --max-new-tokens many", "--max-new-tokens: expected an integer"},
      {"generate" + model + " --prompt a --dtype f16", "--dtype: expected f32 or bf16"},
      {"generate" + model + " --prompt a --bogus", "unexpected argument '--bogus'"},
      {"generate" + model + " --prompt a --threads -2", "--threads: expected 0 (default) to 4096"},
      {"tokenize --text hi", "--tokenizer and one of --text or --input are required"},
      {"tokenize --tokenizer " + directory_.string() + " --input /nonexistent.jsonl",
       "/nonexistent.jsonl: cannot open"},
      {"generate" + model + " --chat hi", "tokenizer_config.json: no chat_template"},
      {"generate" + model + " --messages /nonexistent.json", "/nonexistent.json: cannot open the messages file"},
      {"generate --model " + (fs::path(LLMFT_SOURCE_DIR) / "tests/testdata/model/tiny_llama").string() + " --prompt hi",
       "tiny_llama"},
  };
  const fs::path bad_jsonl = fs::temp_directory_path() / "llmft_generate_e2e_bad.jsonl";
  std::ofstream(bad_jsonl) << "\"fine\"\n{\"text\": 1}\n";
  cases.emplace_back("tokenize --tokenizer " + directory_.string() + " --input " + bad_jsonl.string(),
                     bad_jsonl.string() + ": line 2: expected a JSON string");
  for (const auto& [arguments, message] : cases) {
    const CommandResult result = run(arguments);
    EXPECT_EQ(result.exit_code, 2) << arguments << "\n" << result.err;
    EXPECT_NE(result.err.find(message), std::string::npos) << arguments << "\n" << result.err;
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << arguments << "\n" << result.err;
  }
}

}  // namespace
}  // namespace llmft

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 1) llmft::g_llmft = argv[1];
  return RUN_ALL_TESTS();
}
