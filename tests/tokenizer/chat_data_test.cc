// Conversation records in `llmft data build` (data/dataset_builder.h): the
// loss masks of each format and --train-on mode, written out by hand here
// for a small template and a byte-level tokenizer fixture whose every token
// is one byte except the special tokens and two merges; the end-of-turn rule;
// a response that also appears in the user turn; and one line per bad record.
// Tokenizer::token_offsets is checked against offsets counted by hand.
// Against transformers on the real SmolLM2 template: tests/interop/test_chat_data.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/chat_template.h"
#include "data/dataset_builder.h"
#include "data/example.h"
#include "data/tfrecord.h"

namespace llmft::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Ids of the fixture: byte b is id b; then the special tokens and two merges.
constexpr int32_t kEnd = 256, kUser = 257, kBot = 258, kSys = 259, kColonH = 260, kBangSpace = 261, kEot = 262;

// GPT-2's bytes_to_unicode (openai/gpt-2 src/encoder.py), written out here so
// the fixture does not come from the code under test: printable Latin-1 bytes
// stand for themselves, the others for U+0100 onwards in byte order.
std::string byte_level_char(int byte) {
  auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  int code_point = byte;
  if (!printable(byte)) {
    code_point = 256;
    for (int b = 0; b < byte; ++b)
      if (!printable(b)) ++code_point;
  }
  std::string utf8;
  if (code_point < 0x80) {
    utf8 += static_cast<char>(code_point);
  } else {
    utf8 += static_cast<char>(0xC0 | (code_point >> 6));
    utf8 += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return utf8;
}

// The text each fixture id stands for, to print token sequences in expectations.
std::map<int64_t, std::string> fixture_pieces() {
  std::map<int64_t, std::string> pieces;
  for (int b = 0; b < 256; ++b) pieces[b] = std::string(1, static_cast<char>(b));
  pieces[kEnd] = "<|end|>";
  pieces[kUser] = "<|user|>";
  pieces[kBot] = "<|bot|>";
  pieces[kSys] = "<|sys|>";
  pieces[kColonH] = ":H";
  pieces[kBangSpace] = "! ";
  pieces[kEot] = "<|eot|>";
  return pieces;
}

std::unique_ptr<BpeTokenizer> fixture_tokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_char(b)] = b;
  vocab[":H"] = kColonH;
  vocab["!" + byte_level_char(' ')] = kBangSpace;
  json added = json::array();
  for (auto [id, content] : std::vector<std::pair<int32_t, const char*>>{
           {kEnd, "<|end|>"}, {kUser, "<|user|>"}, {kBot, "<|bot|>"}, {kSys, "<|sys|>"}, {kEot, "<|eot|>"}})
    added.push_back({{"id", id}, {"content", content}, {"special", true}, {"normalized", false}});
  json tokenizer_json = {
      {"added_tokens", added},
      {"normalizer", nullptr},
      // No regex split: the whole text between special tokens is one piece,
      // so the merges can join template text to content across a span edge.
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", json::array({json::array({":", "H"}), json::array({"!", byte_level_char(' ')})})}}}};
  json config = {{"eos_token", "<|end|>"}, {"add_bos_token", false}, {"add_eos_token", false}};
  return std::make_unique<BpeTokenizer>(tokenizer_json, config, "fixture/tokenizer.json");
}

// Assistant turns end " <|end|>\n", Llama-2 style: a space before the end-of-turn token.
constexpr const char* kTemplate =
    "{% for m in messages %}{% if m.role == 'user' %}{{ '<|user|>' + m.content + '\\n' }}"
    "{% elif m.role == 'assistant' %}{{ '<|bot|>:' + m.content + ' <|end|>\\n' }}"
    "{% else %}{{ '<|sys|>' + m.content + '\\n' }}{% endif %}{% endfor %}";

ModelChatTemplate fixture_template(const std::string& source = kTemplate) {
  return ModelChatTemplate{ChatTemplate(source, "fixture/template"), "", "<|end|>"};
}

// A record as its text with each trained run in [[ ]] (every fixture token is
// one byte except the specials, so this shows the mask token by token).
std::string show(const TokenizedRecord& record) {
  static const std::map<int64_t, std::string> pieces = fixture_pieces();
  std::string out;
  for (size_t i = 0; i < record.input_ids.size(); ++i) {
    bool trained = record.loss_mask[i] != 0;
    bool was_trained = i > 0 && record.loss_mask[i - 1] != 0;
    if (trained && !was_trained) out += "[[";
    if (!trained && was_trained) out += "]]";
    out += pieces.at(record.input_ids[i]);
  }
  if (!record.loss_mask.empty() && record.loss_mask.back() != 0) out += "]]";
  return out;
}

// Token by token: "a|[b]|c", for where token boundaries matter.
std::string show_tokens(const TokenizedRecord& record) {
  static const std::map<int64_t, std::string> pieces = fixture_pieces();
  std::string out;
  for (size_t i = 0; i < record.input_ids.size(); ++i) {
    const std::string& piece = pieces.at(record.input_ids[i]);
    out += (i ? "|" : "") + (record.loss_mask[i] ? "[" + piece + "]" : piece);
  }
  return out;
}

class ChatData : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmft_chat_data_test_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  TokenizedRecord tokenize(const std::string& line, TrainOn train_on = TrainOn::kAssistant,
                           InputFormat format = InputFormat::kAuto) {
    DatasetBuildOptions options;
    options.format = format;
    options.chat_template = &template_;
    options.chat.train_on = train_on;
    RecordTokenizer record_tokenizer(*tokenizer_, options);
    return record_tokenizer.tokenize(line);
  }

  DatasetBuildOptions options_for(const std::string& jsonl) {
    fs::path input = dir_ / "input.jsonl";
    std::ofstream(input, std::ios::binary) << jsonl;
    DatasetBuildOptions options;
    options.input_path = input.string();
    options.output_prefix = (dir_ / "out/train").string();
    options.chat_template = &template_;
    return options;
  }
  std::string error_for(const std::string& jsonl) { return error_for(options_for(jsonl)); }
  std::string error_for(const DatasetBuildOptions& options) {
    try {
      build_dataset(*tokenizer_, options);
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
      return error.what();
    }
    ADD_FAILURE() << "no error";
    return "";
  }
  std::vector<TokenExample> read_all(const std::string& path) {
    std::vector<TokenExample> records;
    RecordReader reader(path);
    std::string_view bytes;
    while (reader.read(bytes)) records.push_back(decode_example(bytes, {}, {path, 0, 0}));
    return records;
  }
  std::string input() const { return (dir_ / "input.jsonl").string(); }

  fs::path dir_;
  std::unique_ptr<BpeTokenizer> tokenizer_ = fixture_tokenizer();
  ModelChatTemplate template_ = fixture_template();
};

// The user asks for the very text the assistant answers ("Yes."), so a mask
// found by searching for the response would train on the user turn.
const std::string kConversation =
    R"({"messages": [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "Say Yes."},)"
    R"( {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "Again"},)"
    R"( {"role": "assistant", "content": "No"}]})";

TEST_F(ChatData, MessagesMaskEveryAssistantTurnWithItsEndOfTurnButNotTheNewlineAfter) {
  EXPECT_EQ(show(tokenize(kConversation)),
            "<|sys|>Be kind\n<|user|>Say Yes.\n<|bot|>:[[Yes. <|end|>]]\n<|user|>Again\n<|bot|>:[[No <|end|>]]\n");
}

TEST_F(ChatData, TrainOnLastMasksOnlyTheFinalAssistantTurn) {
  EXPECT_EQ(show(tokenize(kConversation, TrainOn::kLast)),
            "<|sys|>Be kind\n<|user|>Say Yes.\n<|bot|>:Yes. <|end|>\n<|user|>Again\n<|bot|>:[[No <|end|>]]\n");
}

TEST_F(ChatData, TrainOnAllMasksEveryToken) {
  EXPECT_EQ(show(tokenize(kConversation, TrainOn::kAll)),
            "[[<|sys|>Be kind\n<|user|>Say Yes.\n<|bot|>:Yes. <|end|>\n<|user|>Again\n<|bot|>:No <|end|>\n]]");
}

TEST_F(ChatData, ResponseRepeatedInTheUserTurnAndEarlierTurnsIsNotTrainedThere) {
  // The last answer is word for word the user's text and the first answer.
  const std::string line =
      R"({"messages": [{"role": "user", "content": "Echo: Sure"}, {"role": "assistant", "content": "Sure"},)"
      R"( {"role": "user", "content": "Sure"}, {"role": "assistant", "content": "Sure"}]})";
  EXPECT_EQ(show(tokenize(line, TrainOn::kLast)),
            "<|user|>Echo: Sure\n<|bot|>:Sure <|end|>\n<|user|>Sure\n<|bot|>:[[Sure <|end|>]]\n");
  EXPECT_EQ(show(tokenize(line)),
            "<|user|>Echo: Sure\n<|bot|>:[[Sure <|end|>]]\n<|user|>Sure\n<|bot|>:[[Sure <|end|>]]\n");
}

TEST_F(ChatData, ShareGptGivesTheSameTokensAndMaskAsMessages) {
  const std::string line =
      R"({"conversations": [{"from": "system", "value": "Be kind"}, {"from": "human", "value": "Say Yes."},)"
      R"( {"from": "gpt", "value": "Yes."}, {"from": "user", "value": "Again"},)"
      R"( {"from": "assistant", "value": "No"}]})";
  TokenizedRecord sharegpt = tokenize(line);
  EXPECT_EQ(show(sharegpt),
            "<|sys|>Be kind\n<|user|>Say Yes.\n<|bot|>:[[Yes. <|end|>]]\n<|user|>Again\n<|bot|>:[[No <|end|>]]\n");
  TokenizedRecord messages = tokenize(kConversation);
  EXPECT_EQ(sharegpt.input_ids, messages.input_ids);
  EXPECT_EQ(sharegpt.loss_mask, messages.loss_mask);
}

TEST_F(ChatData, AlpacaIsInstructionBlankLineInputThenOutput) {
  EXPECT_EQ(show(tokenize(R"({"instruction": "Add", "input": "2 2", "output": "4"})")),
            "<|user|>Add\n\n2 2\n<|bot|>:[[4 <|end|>]]\n");
  // An empty or absent input leaves the instruction alone.
  EXPECT_EQ(show(tokenize(R"({"instruction": "Add", "input": "", "output": "4"})")),
            "<|user|>Add\n<|bot|>:[[4 <|end|>]]\n");
  EXPECT_EQ(show(tokenize(R"({"instruction": "Add", "output": "4"})", TrainOn::kAssistant, InputFormat::kAlpaca)),
            "<|user|>Add\n<|bot|>:[[4 <|end|>]]\n");
}

TEST_F(ChatData, TokenStraddlingASpanEdgeIsTrainedWhenAnyOfItsBytesIsInside) {
  // ":H" starts in the template (':') and ends in the content: trained.
  // "! " starts in the content ('!') and ends in the template: trained.
  EXPECT_EQ(show_tokens(tokenize(
                R"({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Hi!"}]})")),
            "<|user|>|x|\n|<|bot|>|[:H]|[i]|[! ]|[<|end|>]|\n");
  // The same merges in a user turn are not trained.
  EXPECT_EQ(show_tokens(tokenize(
                R"({"messages": [{"role": "user", "content": ":Hi! "}, {"role": "assistant", "content": "x"}]})")),
            "<|user|>|:H|i|! |\n|<|bot|>|:|[x]|[ ]|[<|end|>]|\n");
}

TEST_F(ChatData, EndOfTurnIsTheFirstEndTokenAfterTheContentWithOnlyWhitespaceBetween) {
  // ChatML-like: the token right after the content; what follows it is not trained.
  template_ = fixture_template("{% for m in messages %}{{ '<|bot|>' + m.role + '\\n' + m.content + '<|end|>\\n\\n' }}"
                               "{% endfor %}");
  EXPECT_EQ(
      show(tokenize(R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})")),
      "<|bot|>user\nq<|end|>\n\n<|bot|>assistant\n[[a<|end|>]]\n\n");

  // A template that never closes the assistant turn: the model would not learn to stop.
  template_ = fixture_template("{% for m in messages %}{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}");
  try {
    tokenize(R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})");
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()),
              "fixture/template: messages[1] (assistant) is not closed by an end-of-turn token (\"<|end|>\") "
              "right after its content; found \"\\n\": a model trained on it would not learn to stop "
              "(--end-of-turn TOKEN names the template's)");
  }
  // Text other than whitespace before the end token does not count as closing.
  template_ = fixture_template("{% for m in messages %}{{ m.content + ' (end)<|end|>' }}{% endfor %}");
  EXPECT_THROW(tokenize(R"({"messages": [{"role": "assistant", "content": "a"}]})"), Error);
}

TEST_F(ChatData, EndOfTurnTokensBesidesEosAreNamedByTheCaller) {
  template_ = fixture_template("{% for m in messages %}{{ '<|bot|>' + m.content + '<|eot|>\\n' }}{% endfor %}");
  const std::string line = R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})";
  EXPECT_THROW(tokenize(line), Error);
  DatasetBuildOptions options;
  options.chat_template = &template_;
  options.chat.end_of_turn_tokens = {"<|eot|>"};
  EXPECT_EQ(show(RecordTokenizer(*tokenizer_, options).tokenize(line)), "<|bot|>q<|eot|>\n<|bot|>[[a<|eot|>]]\n");
  options.chat.end_of_turn_tokens = {"ab"};
  try {
    RecordTokenizer(*tokenizer_, options).tokenize(line);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()),
              "--end-of-turn \"ab\": expected one token of fixture/tokenizer.json (BPE, 263 ids), found 2 ids");
  }
}

TEST_F(ChatData, SpecialTokenTextInContentStaysTextUnlessAsked) {
  const std::string line =
      R"({"messages": [{"role": "user", "content": "<|end|>"}, {"role": "assistant", "content": "a<|end|>b"}]})";
  TokenizedRecord as_text = tokenize(line);
  EXPECT_EQ(show(as_text), "<|user|><|end|>\n<|bot|>:[[a<|end|>b <|end|>]]\n");
  EXPECT_EQ(std::count(as_text.input_ids.begin(), as_text.input_ids.end(), kEnd), 1);  // only the template's
  DatasetBuildOptions options;
  options.chat_template = &template_;
  options.chat.special_tokens_in_content = true;
  TokenizedRecord as_control = RecordTokenizer(*tokenizer_, options).tokenize(line);
  EXPECT_EQ(show(as_control), "<|user|><|end|>\n<|bot|>:[[a<|end|>b <|end|>]]\n");
  EXPECT_EQ(std::count(as_control.input_ids.begin(), as_control.input_ids.end(), kEnd), 3);
}

TEST_F(ChatData, FormatIsDetectedPerFileFromTheFirstRecordAndCanBeNamed) {
  const std::string alpaca = R"({"instruction": "Add", "input": "2 2", "output": "4"})";
  DatasetBuildOptions options = options_for("\n" + kConversation + "\n" + kConversation + "\n");
  DatasetBuildSummary summary = build_dataset(*tokenizer_, options);
  EXPECT_EQ(summary.format, InputFormat::kMessages);
  EXPECT_EQ(summary.format_line, 2u);
  std::vector<TokenExample> records = read_all(summary.train_shards[0].path);
  ASSERT_EQ(records.size(), 2u);
  TokenizedRecord first{records[0].input_ids, records[0].loss_mask};
  EXPECT_EQ(show(first),
            "<|sys|>Be kind\n<|user|>Say Yes.\n<|bot|>:[[Yes. <|end|>]]\n<|user|>Again\n<|bot|>:[[No <|end|>]]\n");
  EXPECT_EQ(summary.train_shards[0].loss_tokens, 2u * (6 + 4));

  // Once detected, every line must be of that format.
  EXPECT_EQ(error_for(kConversation + "\n" + alpaca + "\n"),
            input() + ":2: unexpected key \"instruction\" (expected {\"messages\": [{\"role\", \"content\"}, ...]})");
  // A named format is not second-guessed.
  options = options_for(kConversation + "\n");
  options.format = InputFormat::kText;
  EXPECT_EQ(error_for(options), input() + ":1: unexpected key \"messages\" (expected {\"text\"})");
  options = options_for("{\"text\": \"a\"}\n{\"prompt\": \"p\", \"completion\": \"c\"}\n");
  options.format = InputFormat::kPromptCompletion;
  EXPECT_EQ(error_for(options), input() + ":1: unexpected key \"text\" (expected {\"prompt\", \"completion\"})");
  EXPECT_EQ(parse_input_format("sharegpt"), InputFormat::kShareGpt);
  EXPECT_EQ(parse_input_format("prompt-completion"), InputFormat::kPromptCompletion);
  EXPECT_EQ(parse_input_format("chatml"), std::nullopt);
}

TEST_F(ChatData, EachBadRecordIsOneLineNamingFileLineAndField) {
  const std::string good = kConversation + "\n";
  auto messages = [](const std::string& list) { return "{\"messages\": " + list + "}\n"; };
  const std::string user = R"({"role": "user", "content": "q"})";
  const std::string expected_messages = " (expected {\"messages\": [{\"role\", \"content\"}, ...]})";
  EXPECT_EQ(error_for(good + messages("[" + user + R"(, {"role": "bot", "content": "a"}])")),
            input() + ":2: messages[1].role: unknown role \"bot\" (expected system, user or assistant)");
  EXPECT_EQ(error_for(good + messages("[]")), input() + ":2: messages: empty conversation");
  EXPECT_EQ(error_for(good + messages("{}")), input() + ":2: messages: expected an array, found object");
  EXPECT_EQ(error_for(good + messages("[" + user + R"(, {"role": "assistant"}])")),
            input() + ":2: messages[1]: missing \"content\"" + expected_messages);
  EXPECT_EQ(error_for(good + messages("[" + user + R"(, {"role": "assistant", "content": 7}])")),
            input() + ":2: messages[1].content: expected a string, found number");
  EXPECT_EQ(error_for(good + messages("[" + user + R"(, {"role": null, "content": "a"}])")),
            input() + ":2: messages[1].role: expected a string, found null");
  EXPECT_EQ(error_for(good + messages("[" + user + R"(, "hello"])")),
            input() + ":2: messages[1]: expected an object, found string");
  EXPECT_EQ(error_for(good + messages("[" + user + R"(, {"role": "assistant", "content": "a", "name": "x"}])")),
            input() + ":2: messages[1]: unexpected key \"name\"" + expected_messages);
  EXPECT_EQ(error_for(good + messages("[" + user + "]")),
            input() + ":2: messages: no assistant message to train on (--train-on all trains on every token)");
  EXPECT_EQ(
      error_for(good + messages("[" + user + R"(, {"role": "assistant", "content": ""}])")),
      input() + ":2: messages[1].content: empty assistant message (nothing to train on but the end-of-turn token)");
  EXPECT_EQ(error_for(good + R"({"messages": [], "id": 3})" + "\n"),
            input() + ":2: unexpected key \"id\"" + expected_messages);
  EXPECT_EQ(
      error_for(R"({"conversations": [{"from": "robot", "value": "a"}]})"),
      input() + ":1: conversations[0].from: unknown role \"robot\" (expected system, human, gpt, user or assistant)");
  EXPECT_EQ(
      error_for(R"({"conversations": [{"from": "gpt"}]})"),
      input() + ":1: conversations[0]: missing \"value\" (expected {\"conversations\": [{\"from\", \"value\"}, ...]})");
  EXPECT_EQ(error_for(R"({"instruction": "a", "input": "b"})"),
            input() + ":1: missing \"output\" (expected {\"instruction\", \"input\", \"output\"})");
  EXPECT_EQ(error_for(R"({"instruction": "a", "input": 3, "output": "c"})"),
            input() + ":1: input: expected a string, found number");
  EXPECT_EQ(error_for(R"({"instruction": "a", "output": ""})"),
            input() + ":1: output: empty assistant message (nothing to train on but the end-of-turn token)");
  EXPECT_EQ(error_for(R"({"question": "a", "answer": "b"})"),
            input() + ":1: cannot tell the input format from keys \"question\", \"answer\" (expected {\"text\"}, "
                      "{\"prompt\", \"completion\"}, {\"messages\"}, {\"conversations\"} or {\"instruction\", "
                      "\"input\", \"output\"}; --format names it)");
  // The template's own raise_exception is the record's error too.
  template_ = fixture_template("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system "
                               "turns') }}{% endif %}{{ m.content + '<|end|>' }}{% endfor %}");
  EXPECT_EQ(error_for(kConversation + "\n"),
            input() + ":1: fixture/template: line 1 column 69: the chat template raised an exception: no system turns");
}

TEST_F(ChatData, SkipBadRecordsCountsThemAndKeepsTheGoodOnes) {
  DatasetBuildOptions options = options_for(kConversation + "\n" + R"({"messages": []})" + "\n" + kConversation +
                                            "\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\nnot json\n" +
                                            kConversation + "\n");
  options.skip_bad_records = true;
  DatasetBuildSummary summary = build_dataset(*tokenizer_, options);
  EXPECT_EQ(summary.records_written, 3u);
  EXPECT_EQ(summary.bad_records_skipped, 3u);
  ASSERT_EQ(summary.first_bad_records.size(), 3u);
  EXPECT_EQ(summary.first_bad_records[0], input() + ":2: messages: empty conversation");
  EXPECT_EQ(summary.first_bad_records[1],
            input() + ":4: messages: no assistant message to train on (--train-on all trains on every token)");
  EXPECT_NE(summary.first_bad_records[2].find(input() + ":5: not valid JSON"), std::string::npos);
  // With --train-on all a conversation without an assistant turn is data like any other.
  options.chat.train_on = TrainOn::kAll;
  summary = build_dataset(*tokenizer_, options);
  EXPECT_EQ(summary.records_written, 4u);
  EXPECT_EQ(summary.bad_records_skipped, 2u);
}

TEST_F(ChatData, ConversationsWithoutATemplateStopTheBuildEvenWhenSkippingBadRecords) {
  DatasetBuildOptions options = options_for(kConversation + "\n" + kConversation + "\n");
  options.chat_template = nullptr;
  options.skip_bad_records = true;
  EXPECT_EQ(error_for(options),
            input() + ":1: --format messages needs a chat template: give --tokenizer a model directory whose "
                      "tokenizer_config.json has a chat_template, or --chat-template FILE");
}

TEST_F(ChatData, TruncationThatCutsEveryTrainedTokenDropsTheRecord) {
  DatasetBuildOptions options = options_for(kConversation + "\n");
  options.seq_len = 8;  // "<|sys|>Be kind": no assistant token left
  DatasetBuildSummary summary = build_dataset(*tokenizer_, options);
  EXPECT_EQ(summary.records_written, 0u);
  EXPECT_EQ(summary.dropped_no_loss, 1u);
}

TEST_F(ChatData, SentencepieceStyleTokenizerMasksByOffsetsToo) {
  // Metaspace pieces ("▁world") and a Mistral-style template closing answers with "</s>".
  std::unique_ptr<Tokenizer> metaspace =
      load_tokenizer(fs::path(LLMFT_SOURCE_DIR) / "tests/testdata/tokenizer/metaspace/tokenizer.json");
  template_ = fixture_template(
      "{{ '<s>' }}{% for m in messages %}{% if m.role == 'user' %}{{ '[INST] ' + m.content + ' [/INST]' }}"
      "{% else %}{{ ' ' + m.content + '</s>' }}{% endif %}{% endfor %}");
  ChatMaskOptions options;
  options.end_of_turn_tokens = {"</s>"};
  json messages = json::array({{{"role", "user"}, {"content", "hello world"}},
                               {{"role", "assistant"}, {"content", "world hello"}},
                               {{"role", "user"}, {"content", "world"}},
                               {{"role", "assistant"}, {"content", "hello"}}});
  TokenizedRecord record = tokenize_conversation(*metaspace, template_, messages, options);
  std::vector<std::string> trained_runs;
  std::vector<int32_t> run;
  for (size_t i = 0; i <= record.input_ids.size(); ++i) {
    if (i < record.input_ids.size() && record.loss_mask[i]) {
      run.push_back(static_cast<int32_t>(record.input_ids[i]));
    } else if (!run.empty()) {
      trained_runs.push_back(metaspace->decode(run));
      run.clear();
    }
  }
  // The first answer starts with the piece "▁w": the template's space and the
  // answer's "w", trained. The second is cut "▁" | "he" ...: the lone "▁" is
  // all template, not trained.
  std::vector<std::string> pieces;
  for (int64_t id : record.input_ids) pieces.push_back(metaspace->id_to_piece(static_cast<int32_t>(id)));
  EXPECT_EQ(trained_runs, (std::vector<std::string>{"world hello</s>", "hello</s>"}))
      << ::testing::PrintToString(pieces);
}

// ---- Tokenizer::token_offsets, against offsets counted by hand -------------------

TEST(TokenOffsets, ByteLevelTokensWalkTheTextByteByByte) {
  std::unique_ptr<BpeTokenizer> tokenizer = fixture_tokenizer();
  // "é" is two bytes, two byte-level tokens; ":H" and "! " are merges; <|end|> is added.
  const std::string text = "é:Hi! <|end|>x";
  std::vector<int32_t> ids = tokenizer->encode(text);
  ASSERT_EQ(ids, (std::vector<int32_t>{0xC3, 0xA9, kColonH, 'i', kBangSpace, kEnd, 'x'}));
  EXPECT_EQ(tokenizer->token_offsets(text, ids), (std::vector<size_t>{0, 1, 2, 4, 5, 7, 14}));
  // Ids that do not spell the text are refused, not guessed at.
  EXPECT_THROW(tokenizer->token_offsets("abc", std::vector<int32_t>{'a', 'c'}), Error);
  EXPECT_THROW(tokenizer->token_offsets("abc", std::vector<int32_t>{'a', 'b'}), Error);
  // A token that does not continue the text and is half of a UTF-8 character
  // (byte 0xC3): the error names it with U+FFFD for the ill-formed byte, where
  // the JSON quoting of its text used to throw type_error 316 out of the
  // error path itself (fuzz/tokenizer_fuzz found it).
  const std::string message =
      testing::bad_input_message([&] { tokenizer->token_offsets("abc", std::vector<int32_t>{0xC3}); });
  EXPECT_NE(message.find("token 0 (id 195, \"\xEF\xBF\xBD\") does not continue the text at byte 0"), std::string::npos)
      << message;
}

TEST(TokenOffsets, MetaspacePrefixTakesNoText) {
  // Llama-2-style tokenizer.json (Metaspace "▁", prepend_scheme first, byte fallback).
  std::unique_ptr<Tokenizer> tokenizer =
      load_tokenizer(fs::path(LLMFT_SOURCE_DIR) / "tests/testdata/tokenizer/metaspace/tokenizer.json");
  const std::string text = "Hello world\n";
  std::vector<int32_t> ids = tokenizer->encode(text);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(tokenizer->id_to_piece(id));
  // The first piece is the prepended "▁" alone, which is not in the text.
  ASSERT_EQ(pieces, (std::vector<std::string>{"\u2581", "H", "e", "ll", "o", "\u2581w", "or", "l", "d", "<0x0A>"}));
  EXPECT_EQ(tokenizer->token_offsets(text, ids), (std::vector<size_t>{0, 0, 1, 2, 4, 5, 7, 9, 10, 11}));
}

}  // namespace
}  // namespace llmft::data
