// Tokenizers against independent references: ids made by Hugging Face
// `tokenizers` and `sentencepiece` (Python) with
// tests/testdata/tokenizer/make_expected.py, Unicode facts from the standard.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer.h"
#include "data/tokenizer_unicode.h"
#include "tests/test_util.h"

namespace llmft {
namespace {

using ::llmft::testing::bad_input_message;

using nlohmann::json;

const std::filesystem::path kTestData = std::filesystem::path(LLMFT_SOURCE_DIR) / "tests/testdata/tokenizer";

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return json::parse(buffer.str());
}

// Loaded once: the SmolLM2 files are 1.5 MB of JSON.
const json& smollm2_json() {
  static const json parsed = read_json(kTestData / "smollm2/tokenizer.json");
  return parsed;
}
const json& smollm2_config() {
  static const json parsed = read_json(kTestData / "smollm2/tokenizer_config.json");
  return parsed;
}
const json& smollm2_expected() {
  static const json parsed = read_json(kTestData / "smollm2_expected.json");
  return parsed;
}
const BpeTokenizer& smollm2() {
  static const std::unique_ptr<BpeTokenizer> tokenizer = load_bpe_tokenizer(kTestData / "smollm2/tokenizer.json");
  return *tokenizer;
}

std::vector<int32_t> ids_of(const json& list) { return list.get<std::vector<int32_t>>(); }

TEST(Smollm2Tokenizer, MatchesHuggingFaceTokenizersIdsForEveryTestString) {
  const json& expected = smollm2_expected();
  const json& strings = expected["strings"];
  const json& as_saved = expected["variants"][0];
  ASSERT_EQ(as_saved["name"], "as_saved");
  ASSERT_EQ(smollm2().vocab_size(), expected["vocab_size"].get<int32_t>());
  for (size_t i = 0; i < strings.size(); ++i) {
    std::string text = strings[i];
    EXPECT_EQ(smollm2().encode_with_special_tokens(text), ids_of(as_saved["ids"][i])) << "text: " << text;
  }
}

TEST(Smollm2Tokenizer, DecodeInvertsEncode) {
  for (const json& entry : smollm2_expected()["strings"]) {
    std::string text = entry;
    EXPECT_EQ(smollm2().decode(smollm2().encode(text)), text);
  }
}

TEST(Smollm2Tokenizer, SpecialTokensMatchedInTextAndSkippableOnDecode) {
  const json& expected = smollm2_expected();
  for (auto& [token, id] : expected["special_tokens"].items()) {
    EXPECT_EQ(smollm2().encode(token), std::vector<int32_t>{id.get<int32_t>()}) << token;
    EXPECT_EQ(smollm2().id_to_piece(id.get<int32_t>()), token);
  }
  const json& strings = expected["strings"];
  for (size_t i = 0; i < strings.size(); ++i) {
    std::vector<int32_t> ids = smollm2().encode(strings[i].get<std::string>());
    EXPECT_EQ(smollm2().decode(ids, /*skip_special_tokens=*/true), expected["skip_special"][i].get<std::string>());
  }
  // Hand-checked: the chat markers disappear, the text between them stays.
  EXPECT_EQ(smollm2().decode(smollm2().encode("<|im_start|>user\nhi<|im_end|>"), true), "user\nhi");
}

TEST(Smollm2Tokenizer, BosAndEosFollowTokenizerConfig) {
  // tokenizer_config.json: bos <|im_start|> (1), eos <|im_end|> (2), add_bos_token false.
  EXPECT_EQ(smollm2().bos_id(), 1);
  EXPECT_EQ(smollm2().eos_id(), 2);
  EXPECT_TRUE(smollm2().prefix_ids().empty());
  EXPECT_TRUE(smollm2().suffix_ids().empty());

  json config = smollm2_config();
  config["add_bos_token"] = true;
  config["add_eos_token"] = true;
  BpeTokenizer with_both(smollm2_json(), config, "smollm2/tokenizer.json");
  std::vector<int32_t> body = smollm2().encode("Hello world");
  std::vector<int32_t> expected = {1};
  expected.insert(expected.end(), body.begin(), body.end());
  expected.push_back(2);
  EXPECT_EQ(with_both.encode_with_special_tokens("Hello world"), expected);
}

TEST(Smollm2Tokenizer, EveryPreTokenizerVariantMatchesTokenizers) {
  const json& expected = smollm2_expected();
  const json& strings = expected["strings"];
  for (const json& variant : expected["variants"]) {
    std::string name = variant["name"];
    json tokenizer_json = smollm2_json();
    if (!variant["pre_tokenizer"].is_null()) tokenizer_json["pre_tokenizer"] = variant["pre_tokenizer"];
    if (!variant["normalizer"].is_null()) tokenizer_json["normalizer"] = variant["normalizer"];
    BpeTokenizer tokenizer(tokenizer_json, smollm2_config(), name);
    for (size_t i = 0; i < strings.size(); ++i) {
      std::string text = strings[i];
      EXPECT_EQ(tokenizer.encode_with_special_tokens(text), ids_of(variant["ids"][i])) << name << ": " << text;
      EXPECT_EQ(tokenizer.decode(tokenizer.encode(text)), variant["decoded"][i].get<std::string>()) << name;
      EXPECT_EQ(tokenizer.pre_tokenize(text), variant["pieces"][i].get<std::vector<std::string>>())
          << name << ": " << text;
    }
  }
}

TEST(Smollm2Tokenizer, RandomStringsMatchTokenizersForEveryRegex) {
  // 400 seeded random strings over an alphabet chosen to hit every branch of the
  // hand-written regex matchers (smollm2_random_expected.json).
  json expected = read_json(kTestData / "smollm2_random_expected.json");
  const json& strings = expected["strings"];
  for (const json& variant : expected["variants"]) {
    std::string name = variant["name"];
    json tokenizer_json = smollm2_json();
    if (!variant["pre_tokenizer"].is_null()) tokenizer_json["pre_tokenizer"] = variant["pre_tokenizer"];
    if (!variant["normalizer"].is_null()) tokenizer_json["normalizer"] = variant["normalizer"];
    BpeTokenizer tokenizer(tokenizer_json, smollm2_config(), name);
    size_t mismatches = 0;
    for (size_t i = 0; i < strings.size(); ++i) {
      std::string text = strings[i];
      std::vector<int32_t> ids = tokenizer.encode(text);
      if (ids != ids_of(variant["ids"][i]) && ++mismatches <= 5)
        ADD_FAILURE() << name << ": string " << i << ": " << json(text).dump();
    }
    EXPECT_EQ(mismatches, 0u) << name;
  }
}

TEST(Smollm2Tokenizer, CutUtf8DecodesToReplacementCharactersLikeTokenizers) {
  for (const json& entry : smollm2_expected()["partial_decode"]) {
    std::vector<int32_t> ids = ids_of(entry["ids"]);
    for (size_t k = 0; k <= ids.size(); ++k)
      EXPECT_EQ(smollm2().decode(std::span(ids).first(k)), entry["prefix_texts"][k].get<std::string>()) << k;
  }
}

TEST(Smollm2Tokenizer, RejectsInvalidUtf8AndOutOfRangeIds) {
  EXPECT_NE(bad_input_message([] { smollm2().encode("ok\xC3"); }).find("not valid UTF-8 at byte 2"),
            std::string::npos);
  std::vector<int32_t> bad_id = {49152};
  EXPECT_NE(bad_input_message([&] { smollm2().decode(bad_id); }).find("token id 49152 outside [0, 49152)"),
            std::string::npos);
}

TEST(ByteFallbackTokenizer, MatchesTokenizersIdsTemplateAndDecoder) {
  auto tokenizer = load_tokenizer(kTestData / "byte_fallback/tokenizer.json");
  // TemplateProcessing "<s> $A </s>" with <s> = 1 and </s> = 2.
  EXPECT_EQ(tokenizer->prefix_ids(), std::vector<int32_t>{1});
  EXPECT_EQ(tokenizer->suffix_ids(), std::vector<int32_t>{2});
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  // Held in a variable: a range-for over read_json(...)["cases"] iterates a
  // member of a temporary destroyed before the loop body runs (ASan:
  // heap-use-after-free; the temporary's lifetime is not extended through operator[]).
  const json expected = read_json(kTestData / "byte_fallback_expected.json");
  for (const json& entry : expected["cases"]) {
    std::string text = entry["text"];
    EXPECT_EQ(tokenizer->encode(text), ids_of(entry["ids"])) << text;
    EXPECT_EQ(tokenizer->encode_with_special_tokens(text), ids_of(entry["ids_with_special"])) << text;
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(text)), entry["decoded"].get<std::string>()) << text;
  }
}

TEST(MetaspaceTokenizer, LlamaTwoStyleFilesMatchTokenizers) {
  // The tiny sentencepiece model as tokenizer.json (Metaspace, byte fallback,
  // Replace/ByteFallback/Fuse/Strip decoder), plus the older Prepend/Replace
  // normalizer layout and other Metaspace settings.
  json base = read_json(kTestData / "metaspace/tokenizer.json");
  json expected = read_json(kTestData / "metaspace_expected.json");
  const json& strings = expected["strings"];
  for (const json& variant : expected["variants"]) {
    std::string name = variant["name"];
    json tokenizer_json = base;
    for (const char* key : {"normalizer", "pre_tokenizer", "decoder"}) tokenizer_json[key] = variant[key];
    BpeTokenizer tokenizer(tokenizer_json, json(), name);
    for (size_t i = 0; i < strings.size(); ++i) {
      std::string text = strings[i];
      std::vector<int32_t> ids = tokenizer.encode_with_special_tokens(text);
      EXPECT_EQ(ids, ids_of(variant["ids"][i])) << name << ": " << json(text).dump();
      EXPECT_EQ(tokenizer.decode(ids_of(variant["ids"][i])), variant["decoded"][i].get<std::string>())
          << name << ": " << json(text).dump();
      EXPECT_EQ(tokenizer.decode(tokenizer.encode(text)), variant["decoded_without_bos"][i].get<std::string>())
          << name << ": " << json(text).dump();
    }
  }
}

TEST(SentencePieceTokenizer, MatchesSentencepieceLibraryIds) {
  json expected = read_json(kTestData / "sp_expected.json");
  auto tokenizer = load_tokenizer(kTestData / "sp/tiny.model");
  EXPECT_EQ(tokenizer->vocab_size(), expected["vocab_size"].get<int32_t>());
  EXPECT_EQ(tokenizer->bos_id(), expected["bos_id"].get<int32_t>());
  EXPECT_EQ(tokenizer->eos_id(), expected["eos_id"].get<int32_t>());
  // No tokenizer_config.json: BOS added, EOS not (transformers' LlamaTokenizer default).
  EXPECT_EQ(tokenizer->prefix_ids(), std::vector<int32_t>{expected["bos_id"].get<int32_t>()});
  EXPECT_TRUE(tokenizer->suffix_ids().empty());
  for (const json& entry : expected["cases"]) {
    std::string text = entry["text"];
    std::vector<int32_t> ids = tokenizer->encode(text);
    EXPECT_EQ(ids, ids_of(entry["ids"])) << text;
    EXPECT_EQ(tokenizer->decode(ids), entry["decoded"].get<std::string>()) << text;
    std::vector<std::string> pieces;
    for (int32_t id : ids) pieces.push_back(tokenizer->id_to_piece(id));
    EXPECT_EQ(pieces, entry["pieces"].get<std::vector<std::string>>()) << text;
  }
}

TEST(SentencePieceTokenizer, RejectsAFileThatIsNotAModel) {
  std::filesystem::path path = std::filesystem::temp_directory_path() / "llmft_tokenizer_test_bad.model";
  std::ofstream(path) << "not a model";
  std::string message = bad_input_message([&] { load_tokenizer(path); });
  EXPECT_NE(message.find(path.string() + ": not a sentencepiece model"), std::string::npos) << message;
  std::filesystem::remove(path);
}

// Malformed tokenizer.json files: each error names the file and the field.
class MalformedTokenizerJson : public ::testing::Test {
 protected:
  std::string load_error(const json& tokenizer_json) {
    return bad_input_message([&] { BpeTokenizer(tokenizer_json, json(), "bad/tokenizer.json"); });
  }
};

TEST_F(MalformedTokenizerJson, MissingVocab) {
  json broken = smollm2_json();
  broken["model"].erase("vocab");
  EXPECT_EQ(load_error(broken), "bad/tokenizer.json: model.vocab: missing");
}

TEST_F(MalformedTokenizerJson, MergeEntryWithoutTwoParts) {
  json broken = smollm2_json();
  broken["model"]["merges"][3] = "abc";
  EXPECT_EQ(load_error(broken),
            "bad/tokenizer.json: model.merges[3]: expected \"LEFT RIGHT\" with exactly one space, found \"abc\"");
  broken["model"]["merges"][3] = json::array({"a", 5});
  EXPECT_EQ(load_error(broken),
            "bad/tokenizer.json: model.merges[3]: expected \"LEFT RIGHT\" or [\"LEFT\", \"RIGHT\"], found [\"a\",5]");
}

TEST_F(MalformedTokenizerJson, MergeOfTokensOutsideTheVocabulary) {
  json broken = smollm2_json();
  broken["model"]["merges"][7] = json::array({"zzqx", "t"});
  EXPECT_EQ(load_error(broken), "bad/tokenizer.json: model.merges[7]: token \"zzqx\" is not in model.vocab");
}

TEST_F(MalformedTokenizerJson, UnsupportedPreTokenizerType) {
  json broken = smollm2_json();
  broken["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Whitespace"}};
  EXPECT_EQ(load_error(broken),
            "bad/tokenizer.json: pre_tokenizer.pretokenizers[0].type: \"Whitespace\" is not supported "
            "(supported: ByteLevel, Split, Digits, Metaspace, Sequence)");
}

TEST_F(MalformedTokenizerJson, UnsupportedSplitRegexAndNormalizerAndModel) {
  json broken = smollm2_json();
  broken["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\w+"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(load_error(broken).find("bad/tokenizer.json: pre_tokenizer.pattern.Regex: regex \"\\w+\" is not supported"),
            std::string::npos);
  broken = smollm2_json();
  broken["normalizer"] = {{"type", "NFKC"}};
  EXPECT_EQ(load_error(broken),
            "bad/tokenizer.json: normalizer.type: \"NFKC\" is not supported (supported: NFC, Prepend, Replace, Sequence, or "
            "null)");
  broken = smollm2_json();
  broken["model"]["type"] = "WordPiece";
  EXPECT_EQ(load_error(broken), "bad/tokenizer.json: model.type: \"WordPiece\" is not supported (supported: BPE)");
}

TEST_F(MalformedTokenizerJson, VocabIdThatIsNotAnInteger) {
  json broken = smollm2_json();
  broken["model"]["vocab"]["hello"] = "seven";
  EXPECT_EQ(load_error(broken), "bad/tokenizer.json: model.vocab.hello: expected an integer, found \"seven\"");
}

TEST(TokenizerFiles, ErrorsNameTheFile) {
  std::filesystem::path dir = std::filesystem::temp_directory_path() / "llmft_tokenizer_test_files";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << "{\"model\": ";
  std::string message = bad_input_message([&] { load_tokenizer(dir); });
  EXPECT_NE(message.find((dir / "tokenizer.json").string() + ": not valid JSON"), std::string::npos) << message;

  std::ofstream(dir / "tokenizer.json") << smollm2_json().dump();
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "<|nope|>"})";
  message = bad_input_message([&] { load_tokenizer(dir); });
  EXPECT_NE(message.find((dir / "tokenizer_config.json").string() + ": eos_token: \"<|nope|>\" is not a token"),
            std::string::npos)
      << message;
  std::filesystem::remove_all(dir);

  message = bad_input_message([&] { load_tokenizer(dir); });
  EXPECT_NE(message.find("tokenizer file not found"), std::string::npos) << message;
}

TEST(Unicode, CharacterClassesFromTheStandard) {
  using unicode::CharClass;
  using unicode::char_class;
  EXPECT_EQ(char_class(U'a'), CharClass::kLetter);
  EXPECT_EQ(char_class(U'\u00E9'), CharClass::kLetter);   // é, Ll
  EXPECT_EQ(char_class(U'\u4E2D'), CharClass::kLetter);   // 中, Lo
  EXPECT_EQ(char_class(U'\u02B0'), CharClass::kLetter);   // ʰ, Lm
  EXPECT_EQ(char_class(U'\u0663'), CharClass::kNumber);   // Arabic-Indic three, Nd
  EXPECT_EQ(char_class(U'\u00B2'), CharClass::kNumber);   // superscript two, No
  EXPECT_EQ(char_class(U'\u216B'), CharClass::kNumber);   // Roman numeral twelve, Nl
  EXPECT_EQ(char_class(U'\u3000'), CharClass::kWhitespace);
  EXPECT_EQ(char_class(U'\u00A0'), CharClass::kWhitespace);
  EXPECT_EQ(char_class(U'\u0085'), CharClass::kWhitespace);
  EXPECT_EQ(char_class(U'\u001C'), CharClass::kOther);    // not White_Space, although Python's isspace() says so
  EXPECT_EQ(char_class(U'\u0301'), CharClass::kOther);    // combining acute, Mn
  EXPECT_EQ(char_class(U'$'), CharClass::kOther);
  EXPECT_EQ(char_class(U'\U0001F600'), CharClass::kOther);  // 😀, So
}

TEST(Unicode, FindsInvalidUtf8) {
  using unicode::find_invalid_utf8;
  EXPECT_EQ(find_invalid_utf8("plain \xC3\xA9 \xF0\x9F\x98\x80"), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("\xC0\x80"), 0u);               // overlong NUL
  EXPECT_EQ(find_invalid_utf8("ab\xED\xA0\x80"), 2u);         // surrogate U+D800
  EXPECT_EQ(find_invalid_utf8("abc\xF4\x90\x80\x80"), 3u);    // above U+10FFFF
  EXPECT_EQ(find_invalid_utf8("\xE6\x97"), 0u);               // truncated
  EXPECT_EQ(find_invalid_utf8("x\x80"), 1u);                  // stray continuation byte
}

TEST(Unicode, LossyDecodingReplacesMaximalSubparts) {
  // Unicode §3.9, "U+FFFD Substitution of Maximal Subparts" (Table 3-8 style cases).
  const std::string replacement = "\xEF\xBF\xBD";
  EXPECT_EQ(unicode::utf8_lossy("a\xF0\x9F\x98" "b"), "a" + replacement + "b");
  EXPECT_EQ(unicode::utf8_lossy("\xC0\xAF"), replacement + replacement);
  EXPECT_EQ(unicode::utf8_lossy("\xED\xA0\x80"), replacement + replacement + replacement);
  EXPECT_EQ(unicode::utf8_lossy("\xE6\x97\xA5"), "\xE6\x97\xA5");
}

TEST(Unicode, NfcMatchesPythonUnicodedata) {
  for (const json& entry : smollm2_expected()["nfc"])
    EXPECT_EQ(unicode::nfc(entry["text"].get<std::string>()), entry["nfc"].get<std::string>());
  // Hand-checked: e + combining acute -> é; Angstrom sign -> Å; jamo -> 각.
  EXPECT_EQ(unicode::nfc("e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(unicode::nfc("\xE2\x84\xAB"), "\xC3\x85");
  EXPECT_EQ(unicode::nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");
}

}  // namespace
}  // namespace llmft
