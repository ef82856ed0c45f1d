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
// kBadInput error naming the template, line and column. Parsing and rendering
// are bounded by ChatTemplateLimits (below); a namespace() cannot be stored in
// a list, dict or namespace (which real templates never do), so no value can
// contain itself.
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

// Bounds on one template, so that a hostile one (templates arrive with model
// directories from anywhere) fails with one line instead of taking the
// machine's memory or time: a render's memory stays within about
// max_bytes_built, and at the defaults each limit is reached in under a
// second. Every error names the template, line and column and the limit. The defaults are far above
// what real templates need: SmolLM2, Llama 3, Mistral, Gemma, Phi-3 and
// Qwen2.5 render a 2,000-turn conversation within a quarter of each
// (tests/tokenizer/chat_template_limits_test.cc).
struct ChatTemplateLimits {
  // Bytes of the rendered conversation, and of any one string the template
  // builds on the way (concatenation, repetition, join, replace, tojson):
  // checked before allocating.
  int64_t max_output_bytes = int64_t{16} << 20;
  // for-loop iterations in one render, all loops together (nested loops
  // multiply). Each statement and expression run in a loop body counts as one
  // more, so a long body cannot multiply the work either, and so does each
  // list item that `in`, `==` and join step through.
  int64_t max_loop_iterations = 10'000'000;
  // Items of one range(): the bound of Jinja's sandbox (MAX_RANGE in
  // jinja2/sandbox.py), which transformers renders with. Also bounds any other
  // list a template builds (concatenation, split, a string's characters).
  int64_t max_range = 100'000;
  // Bytes of strings and lists built or copied over one render (what bounds
  // its memory): a loop that regrows a string by copying it is quadratic long
  // before the string is long. Real templates build about 35 times their
  // output (the caller's text carries 4 bytes of marks per byte), so this is
  // 64 times max_output_bytes, and the flag scales it with output_mb.
  int64_t max_bytes_built = int64_t{1} << 30;
  // Nesting of blocks, brackets and operators in the source, and of a value
  // a namespace() keeps across loop iterations (the parser, the renderer and
  // the values' destructors recurse on it). At most 1000.
  int64_t max_nesting_depth = 200;
};

// "output_mb=32,loop_iterations=20000000,range=200000,built_mb=2048,depth=300":
// any subset, the rest from `defaults`; output_mb without built_mb sets
// built_mb to 64 times it. Throws kBadInput naming `flag` for an unknown key or
// a value that is not a positive integer.
ChatTemplateLimits parse_chat_template_limits(const std::string& text, const std::string& flag,
                                              ChatTemplateLimits defaults = {});

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
  // Throws kBadInput naming origin, line and column for syntax outside the
  // subset, and for nesting deeper than limits.max_nesting_depth.
  ChatTemplate(std::string source, std::string origin, ChatTemplateLimits limits = {});
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Throws kBadInput (origin, line, column) for errors while rendering, for
  // raise_exception() with the template's message, and for a render that
  // passes one of limits().
  RenderedChat render(const ChatTemplateInputs& inputs) const;

  const std::string& source() const { return source_; }
  const std::string& origin() const { return origin_; }
  const ChatTemplateLimits& limits() const { return limits_; }

  struct Node;

 private:
  std::string source_;
  std::string origin_;
  ChatTemplateLimits limits_;
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
ModelChatTemplate load_chat_template(const std::filesystem::path& model_directory,
                                     const ChatTemplateLimits& limits = {});

// Token ids of a rendered conversation, as transformers' apply_chat_template
// gives them (no BOS/EOS added around it: the template writes its own).
// Special tokens written by the template are control tokens; special-token
// text inside content_spans stays plain text unless
// `special_tokens_in_content` (issue 9: user content is not interpreted).
std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const RenderedChat& rendered,
                                 bool special_tokens_in_content = false);

}  // namespace llmft
