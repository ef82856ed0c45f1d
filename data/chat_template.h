// Chat templates: the Jinja subset that the `chat_template` of Hugging Face
// tokenizer_config.json files is written in (Llama-3, SmolLM2, Qwen2/2.5,
// Mistral, ChatML), rendered the way transformers renders it
// (tokenization_utils_base.py / utils/chat_template_utils.py:
// `_compile_jinja_template` uses an ImmutableSandboxedEnvironment with
// trim_blocks=True, lstrip_blocks=True and the loopcontrols extension, and a
// `tojson` with ensure_ascii=False). The same renderer serves `llmft generate
// --chat` and the chat-data builder, so training and inference see the same text.
//
// Supported: text; {{ expr }}; {% if/elif/else/endif %}; {% for x in xs [if
// cond] %} … {% else %} … {% endfor %} with loop.index/index0/revindex/
// revindex0/first/last/length/previtem/nextitem and {% break %}/{% continue %};
// {% set x = expr %}, {% set ns.attr = expr %}, {% set x %}…{% endset %};
// {% generation %}…{% endgeneration %} (rendered as its body); {# comments #};
// whitespace control {%- -%} {{- -}} and {%+. Expressions: literals (strings,
// numbers, true/false/none, lists, dicts), names, attribute and item access,
// slices, calls, filters, tests (is [not] defined/none/string/…), unary -/not,
// + - * / // % ~, comparisons, in / not in, and/or, `a if c else b`.
// Functions: raise_exception(msg), namespace(...), range(...). Filters: trim,
// length/count, tojson, upper, lower, capitalize, title, string, int, float,
// default/d, first, last, join, list, items, replace, safe. Methods: strip,
// lstrip, rstrip, startswith, endswith, split, upper, lower, replace, title,
// capitalize on strings; items, keys, values, get on dicts. Anything else is a
// kBadInput error naming the template, line and column.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "data/tokenizer.h"

namespace llmft {

// A rendered conversation. `content_spans` are the byte ranges of `text` that
// came from the caller's data (message roles and contents) rather than from
// the template, in order, each with the index of the message it came from
// (-1: another variable, e.g. tools). They keep special-token text typed by a
// user from becoming a control token, and locate each turn's content for loss
// masks.
//
// Adjacent bytes from different fields of one message (its role and its
// content) are separate spans; `from_content` marks those of the message's
// "content" field, which is what the chat-data builder trains on.
struct ContentSpan {
  size_t begin = 0, end = 0;  // [begin, end) in RenderedChat::text
  int64_t message = -1;       // index into ChatTemplateInputs::messages
  bool from_content = false;  // from messages[message]["content"] (not its role or another field)
};
struct RenderedChat {
  std::string text;
  std::vector<ContentSpan> content_spans;
};

struct ChatTemplateInputs {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();  // [{"role", "content", ...}, ...]
  bool add_generation_prompt = false;
  std::string bos_token, eos_token;
  // Further variables the template may read (e.g. "tools"), by name; absent
  // ones are undefined, as in transformers.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
};

class ChatTemplate {
 public:
  // Parses `source`; `origin` names it in errors ("models/x/tokenizer_config.json: chat_template").
  // Throws kBadInput naming origin, line and column for syntax outside the subset.
  ChatTemplate(std::string source, std::string origin);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Throws kBadInput (origin, line, column) for errors while rendering, and
  // for raise_exception() with the template's message.
  RenderedChat render(const ChatTemplateInputs& inputs) const;

  const std::string& source() const { return source_; }
  const std::string& origin() const { return origin_; }

  struct Node;

 private:
  std::string source_;
  std::string origin_;
  std::vector<std::unique_ptr<Node>> body_;
};

// The chat template of a model: tokenizer_config.json's "chat_template" in
// `model_directory` (a string, or the entry named "default" of a list of
// {"name", "template"}), or chat_template.jinja beside it (newer transformers).
// Also fills bos/eos token text from tokenizer_config.json. Throws kBadInput
// naming the file when there is no template.
struct ModelChatTemplate {
  ChatTemplate chat_template;
  std::string bos_token, eos_token;
};
ModelChatTemplate load_chat_template(const std::filesystem::path& model_directory);

// Token ids of a rendered conversation, as transformers' apply_chat_template
// gives them (no BOS/EOS added around it: the template writes its own).
// Special tokens written by the template are control tokens; special-token
// text inside content_spans stays plain text unless
// `special_tokens_in_content` (issue 9: user content is not interpreted).
std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const RenderedChat& rendered,
                                 bool special_tokens_in_content = false);

}  // namespace llmft
