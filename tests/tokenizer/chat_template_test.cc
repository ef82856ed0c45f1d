// The chat-template renderer against renderings written out by hand here for
// ChatML-style (SmolLM2, Qwen) and Llama-3-style templates, Jinja's whitespace
// rules as transformers configures them (trim_blocks, lstrip_blocks), the
// expression subset, and errors that name the template position. The real
// templates are also compared with transformers' apply_chat_template character
// for character in tests/interop/test_chat_template.py.
#include "data/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <tuple>

#include "core/error.h"

namespace llmft {
namespace {

const std::filesystem::path kTestData = std::filesystem::path(LLMFT_SOURCE_DIR) / "tests/testdata/tokenizer";

nlohmann::ordered_json conversation(std::initializer_list<std::pair<const char*, const char*>> turns) {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  for (const auto& [role, content] : turns) messages.push_back({{"role", role}, {"content", content}});
  return messages;
}

std::string render(const std::string& source, const nlohmann::ordered_json& messages, bool add_generation_prompt,
                   const std::string& bos = "<s>", const std::string& eos = "</s>") {
  ChatTemplateInputs inputs;
  inputs.messages = messages;
  inputs.add_generation_prompt = add_generation_prompt;
  inputs.bos_token = bos;
  inputs.eos_token = eos;
  return ChatTemplate(source, "test template").render(inputs).text;
}

// SmolLM2-135M-Instruct's template as its GGUF carries it.
const char* const kSmolLm2Template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

TEST(ChatTemplate, SmolLm2ChatMlWithAndWithoutSystem) {
  EXPECT_EQ(render(kSmolLm2Template, conversation({{"user", "Hi"}}), true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(
      render(kSmolLm2Template,
             conversation({{"system", "Be brief."}, {"user", "2+2?"}, {"assistant", "4"}, {"user", "3+3?"}}), false),
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
      "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n");
  // An empty system message is still a system message (no default one added).
  EXPECT_EQ(render(kSmolLm2Template, conversation({{"system", ""}, {"user", "Hi"}}), true),
            "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

// Meta-Llama-3-8B-Instruct's template: `| trim` binds to message['content']
// only, BOS once in front of the first message.
TEST(ChatTemplate, Llama3) {
  const std::string source =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
      "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
      "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
  EXPECT_EQ(render(source, conversation({{"system", " Be kind. "}, {"user", "Hello\n"}}), true, "<|begin_of_text|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// Mistral-7B-Instruct-v0.1: alternation enforced with raise_exception.
TEST(ChatTemplate, MistralAndRaiseException) {
  const std::string source =
      "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
      "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
      "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
      "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
  EXPECT_EQ(render(source, conversation({{"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}}), false),
            "<s>[INST] Hi [/INST]Hello!</s>[INST] Bye [/INST]");
  try {
    render(source, conversation({{"user", "Hi"}, {"user", "Again"}}), false);
    FAIL() << "expected raise_exception to throw";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    const std::string message = error.what();
    EXPECT_NE(message.find("test template: line 1 column"), std::string::npos) << message;
    EXPECT_NE(message.find("Conversation roles must alternate"), std::string::npos) << message;
  }
}

// transformers renders with trim_blocks and lstrip_blocks: the newline after a
// block tag and the indentation before one vanish; {{ }} keeps both; `-`
// strips all whitespace on its side; `+%}` keeps the newline.
TEST(ChatTemplate, WhitespaceControl) {
  const std::string source =
      "{% for m in messages %}\n"
      "    {% if m.role == 'user' %}\n"
      "  U: {{ m.content }}\n"
      "    {% endif %}\n"
      "{% endfor %}\n"
      "end {{- '  x  ' -}}  !\n"
      "{%- if true +%}\n"
      "kept\n"
      "{%- endif %}\n";
  EXPECT_EQ(render(source, conversation({{"user", "a"}, {"assistant", "b"}, {"user", "c"}}), false),
            "  U: a\n  U: c\nend  x  !\nkept");  // the template's final newline is dropped, as Jinja does
}

TEST(ChatTemplate, ExpressionSubset) {
  const std::string source =
      "{% set ns = namespace(n=0) %}{% for m in messages if m.role != 'system' %}{% set ns.n = ns.n + 1 %}"
      "{{ loop.index }}/{{ loop.length }}:{{ m.content.strip().startswith('Q') }},{{ m['content'][1:3] }},"
      "{{ 'last' if loop.last else 'more' }};{% endfor %}"
      "{{ ns.n ~ '|' ~ (7 // 2) ~ '|' ~ (-7 % 3) ~ '|' ~ (1 / 4) ~ '|' ~ messages | length }}"
      "|{{ 'x' in 'xyz' and not ('w' in ['a']) }}|{{ messages[-1].missing is defined }}"
      "|{{ {'a': [1, 'b', none, true]} | tojson }}|{{ ' A b '.split() | join(',') | lower }}"
      "|{{ messages[0].get('role') | upper }}|{{ 'abc'.replace('b', 'B') }}{# comment #}";
  EXPECT_EQ(
      render(source, conversation({{"system", "s"}, {"user", " Quiz"}, {"assistant", "Answer"}}), false),
      "1/2:True,Qu,more;2/2:False,ns,last;2|3|2|0.25|3|True|False|{\"a\": [1, \"b\", null, true]}|a,b|SYSTEM|aBc");
}

// Strings behave as Python's: indexed by code point, stripped of Unicode
// whitespace (U+00A0, U+3000, U+2003 here), iterated by character.
TEST(ChatTemplate, StringsAreCodePointsAndUnicodeWhitespace) {
  const std::string source =
      "{% for m in messages %}[{{ m.content | trim }}|{{ m.content[1:3] }}|{{ m.content[-1] }}|{{ m.content | length }}"
      "|{{ m.content.split() | join('/') }}|{% for c in m.content.strip()[:2] %}<{{ c }}>{% endfor %}]{% endfor %}";
  EXPECT_EQ(render(source, conversation({{"user", "\u00a0日本語 é\u2003\u3000"}}), false),
            "[日本語 é|日本|\u3000|8|日本語/é|<日><本>]");
}

TEST(ChatTemplate, LoopControlsAndElse) {
  const std::string source =
      "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{% if loop.index > 3 %}"
      "{% break %}{% endif %}{{ m.content }}{% else %}none{% endfor %}"
      "{% for x in [] %}x{% else %}-empty{% endfor %}";
  EXPECT_EQ(render(source, conversation({{"system", "S"}, {"user", "a"}, {"user", "b"}, {"user", "c"}}), false),
            "ab-empty");
}

// Errors name the template (origin), line and column of the construct.
void expect_syntax_error(const std::string& source, const std::string& position, const std::string& words) {
  try {
    render(source, conversation({{"user", "x"}}), false);
    FAIL() << "expected an error for " << source;
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    const std::string message = error.what();
    EXPECT_NE(message.find("test template: " + position), std::string::npos) << message;
    EXPECT_NE(message.find(words), std::string::npos) << message;
  }
}

TEST(ChatTemplate, UnsupportedSyntaxNamesThePosition) {
  expect_syntax_error("ok\n{% macro f() %}{% endmacro %}", "line 2 column 4", "unsupported statement '{% macro %}'");
  expect_syntax_error("{{ x | wordwrap }}", "line 1 column 8", "unsupported filter 'wordwrap'");
  expect_syntax_error("{{ messages[0].role.zfill(3) }}", "line 1 column 21", "unsupported method string.zfill()");
  expect_syntax_error("{{ strftime_now('%Y') }}", "line 1 column 4", "unsupported function 'strftime_now()'");
  expect_syntax_error("{% if true %}never closed", "line 1 column 1", "missing '{% endif %}'");
  expect_syntax_error("\n\n  {{ 'unterminated }}", "line 3 column", "unclosed '{{'");
  expect_syntax_error("{{ 1 + }}", "line 1 column 8", "expected an expression");
  expect_syntax_error("{{ x is prime }}", "line 1 column", "unsupported test 'is prime'");
  expect_syntax_error("{{ messages.nothing.deeper }}", "line 1 column", "undefined value has no attribute 'deeper'");
  expect_syntax_error("{{ 'a' + 1 }}", "line 1 column 8", "unsupported operands for '+': string and int");
}

TEST(ChatTemplate, ContentSpansMarkTheCallersText) {
  ChatTemplateInputs inputs;
  inputs.messages = conversation({{"system", "S"}, {"user", "Hi"}, {"assistant", "Hello"}});
  const RenderedChat rendered = ChatTemplate(kSmolLm2Template, "t").render(inputs);
  std::vector<std::tuple<std::string, int64_t, bool>> spans;
  for (const auto& [begin, end, message, from_content] : rendered.content_spans)
    spans.emplace_back(rendered.text.substr(begin, end - begin), message, from_content);
  // Role and content are separated by the template's '\n', so each is its own span.
  EXPECT_EQ(spans, (std::vector<std::tuple<std::string, int64_t, bool>>{{"system", 0, false},
                                                                        {"S", 0, true},
                                                                        {"user", 1, false},
                                                                        {"Hi", 1, true},
                                                                        {"assistant", 2, false},
                                                                        {"Hello", 2, true}}));
  // A role glued to its content (no template text between) is still two spans.
  inputs.messages = conversation({{"assistant", "Yes"}});
  const RenderedChat role_glued = ChatTemplate("{% for m in messages %}{{ m.role + m.content }}{% endfor %}", "t")
                                      .render(inputs);
  ASSERT_EQ(role_glued.content_spans.size(), 2u);
  EXPECT_EQ(role_glued.content_spans[1].begin, 9u);
  EXPECT_EQ(role_glued.content_spans[1].end, 12u);
  EXPECT_TRUE(role_glued.content_spans[1].from_content);
  EXPECT_FALSE(role_glued.content_spans[0].from_content);
  // Adjacent text of two messages stays two spans.
  inputs.messages = conversation({{"user", "a"}, {"user", "b"}});
  const RenderedChat glued = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", "t").render(inputs);
  ASSERT_EQ(glued.content_spans.size(), 2u);
  EXPECT_EQ(glued.content_spans[1].begin, 1u);
  EXPECT_EQ(glued.content_spans[1].message, 1);
}

// Special-token text typed by a user stays text; the template's own special
// tokens are control tokens (issue 9).
TEST(ChatTemplate, EncodeKeepsUserSpecialTokenTextAsText) {
  std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(kTestData / "smollm2");
  ChatTemplateInputs inputs;
  inputs.messages = conversation({{"system", "S"}, {"user", "Say <|im_end|> now"}});
  inputs.add_generation_prompt = true;
  const RenderedChat rendered = ChatTemplate(kSmolLm2Template, "t").render(inputs);
  const int32_t im_end = tokenizer->encode("<|im_end|>").at(0);
  const std::vector<int32_t> safe = encode_chat(*tokenizer, rendered);
  const std::vector<int32_t> interpreted = encode_chat(*tokenizer, rendered, /*special_tokens_in_content=*/true);
  EXPECT_EQ(std::count(safe.begin(), safe.end(), im_end), 2);  // closing the system and user turns
  EXPECT_EQ(std::count(interpreted.begin(), interpreted.end(), im_end), 3);
  EXPECT_EQ(interpreted, tokenizer->encode(rendered.text));  // what transformers gives
  EXPECT_EQ(tokenizer->decode(safe), rendered.text);
  // Without special-token text in the content both are the plain encoding.
  inputs.messages = conversation({{"user", "Say hi"}});
  const RenderedChat plain = ChatTemplate(kSmolLm2Template, "t").render(inputs);
  EXPECT_EQ(encode_chat(*tokenizer, plain), tokenizer->encode(plain.text));
}

TEST(ChatTemplate, LoadsTheTemplateFromTokenizerConfig) {
  const std::filesystem::path directory = std::filesystem::temp_directory_path() / "llmft_chat_template_test";
  std::filesystem::create_directories(directory);
  {
    std::ofstream out(directory / "tokenizer_config.json");
    out << nlohmann::json{{"chat_template", "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"},
                          {"bos_token", "<B>"},
                          {"eos_token", {{"content", "<E>"}, {"special", true}}}}
               .dump();
  }
  ModelChatTemplate loaded = load_chat_template(directory);
  EXPECT_EQ(loaded.bos_token, "<B>");
  EXPECT_EQ(loaded.eos_token, "<E>");
  std::filesystem::remove(directory / "tokenizer_config.json");
  try {
    load_chat_template(directory);
    FAIL() << "expected an error for a directory without a template";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("no chat_template"), std::string::npos) << error.what();
  }
  std::filesystem::remove_all(directory);
}

}  // namespace
}  // namespace llmft
