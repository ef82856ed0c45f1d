// The parts of the chat-template engine (data/chat_template.h), shared by its
// files and by no one else: Python-like values that remember which bytes came
// from the caller's data (chat_template_value.cc), the syntax tree that the
// lexer and recursive-descent parser build (chat_template_parser.cc), and the
// tree-walking renderer (chat_template_renderer.cc). chat_template.cc holds
// the public API on top.
//
// Limits (ChatTemplateLimits): the parser counts nesting as it recurses; the
// renderer keeps a RenderBudget of loop iterations and of bytes built, and
// everything that grows a string or a list checks its size against it before
// allocating. Helpers below the renderer throw TemplateError, which the
// renderer turns into kBadInput naming the template position of the construct
// being evaluated.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "data/chat_template.h"

namespace llmft::chat_template_internal {

// An error below the renderer (a limit passed, a value it cannot take); the
// renderer adds the template, line and column of the construct.
struct TemplateError {
  std::string message;
};

// ---- Limits of one render -------------------------------------------------------------

// What one render has spent of its ChatTemplateLimits. Throws TemplateError
// naming the limit and how to raise it.
class RenderBudget {
 public:
  explicit RenderBudget(const ChatTemplateLimits& limits) : limits_(limits) {}
  const ChatTemplateLimits& limits() const { return limits_; }

  // A string or list of `bytes` is about to be built; `what` names it ("the
  // rendered conversation", "a string").
  void check_size(uint64_t bytes, std::string_view what) const;
  // `count` more items in a list the template builds.
  void check_list_items(uint64_t count, std::string_view what) const;
  // Bytes allocated for a string or list built or copied.
  void charge_bytes(uint64_t bytes);
  // Loop iterations, or list items stepped through.
  void charge_iterations(uint64_t count);

 private:
  ChatTemplateLimits limits_;
  uint64_t bytes_built_ = 0;
  uint64_t iterations_ = 0;
};

// "16 MiB" for byte counts that are whole MiB, else "1234 bytes".
std::string byte_count(uint64_t bytes);

// ---- Values ------------------------------------------------------------------------

// Where a string's bytes came from: the template, the "content" of message i
// (i + 1), another field of message i such as its role (-(i + 2)), or another
// caller variable (kFromOtherData).
constexpr int32_t kFromTemplate = 0;
constexpr int32_t kFromOtherData = -1;
constexpr int32_t message_content_source(size_t message) { return static_cast<int32_t>(message) + 1; }
constexpr int32_t message_field_source(size_t message) { return -static_cast<int32_t>(message) - 2; }

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered, like a Python dict

struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict };
  Kind kind = Kind::kUndefined;
  bool boolean = false;
  int64_t integer = 0;
  double number = 0.0;
  std::string text;
  // Per byte of `text`, where it came from (a Source); empty when all of it is the template's.
  std::vector<int32_t> from_data;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // shared: a namespace() is mutated through every copy
  bool is_namespace = false;
  // Lists and dicts nested in this value, itself included (0 for a scalar);
  // for a namespace, as of its creation.
  int32_t depth = 0;

  static Value none();
  static Value of_bool(bool b);
  static Value of_int(int64_t i);
  static Value of_float(double d);
  static Value of_string(std::string s, int32_t source = kFromTemplate);
  static Value of_list(List items = {});
  static Value of_dict(Dict items = {});

  bool is_string() const { return kind == Kind::kString; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  double as_double() const {
    return kind == Kind::kFloat ? number : kind == Kind::kBool ? (boolean ? 1.0 : 0.0) : static_cast<double>(integer);
  }
  // Floats truncate toward zero and saturate at the int64 range (NaN is 0).
  int64_t as_int() const;

  const Value* find(std::string_view key) const;
  // Heap bytes a copy of this value allocates: a string's text and marks (a
  // list or dict is shared, not copied).
  uint64_t copy_bytes() const { return text.size() + from_data.size() * sizeof(int32_t); }
};

const char* kind_name(const Value& value);
bool truthy(const Value& value);

// A string being built that keeps the data marks of its pieces, within the
// render's budget: every append checks the size it would reach first.
class MarkedText {
 public:
  explicit MarkedText(RenderBudget& budget, std::string_view what = "a string") : budget_(budget), what_(what) {}

  void append(std::string_view piece, const std::vector<int32_t>& marks);  // marks: empty or one per byte
  void append(const Value& string_value) { append(string_value.text, string_value.from_data); }
  void append_plain(std::string_view piece) { append(piece, {}); }
  // `piece` `times` times, its size checked once before anything grows.
  void append_repeated(const Value& piece, int64_t times);
  // The bytes [begin, end) of `s`, with their marks.
  void append_part(const Value& s, size_t begin, size_t end);
  size_t size() const { return text.size(); }
  Value to_value() &&;

  std::string text;
  std::vector<int32_t> from_data;
  bool any_data = false;

 private:
  void append_marked(std::string_view piece, const int32_t* marks);  // marks: null or one per byte

  RenderBudget& budget_;
  std::string_view what_;
};

// The bytes [begin, end) of string `s`, with their marks.
Value substring(const Value& s, size_t begin, size_t end, RenderBudget& budget);

std::string python_float(double d);
std::string python_repr_string(const std::string& s);
// str(value) as Python prints it (what {{ }} and ~ write).
void append_str(const Value& value, MarkedText& out, bool repr = false);
Value to_string_value(const Value& value, RenderBudget& budget);
// json.dumps(value, ensure_ascii=False, indent=indent) as transformers' tojson calls it.
std::string to_json(const Value& value, std::optional<int64_t> indent, RenderBudget& budget);
// A JSON input (a message, a variable) as a value, every string marked `source`.
// Throws TemplateError past `max_depth` levels.
Value from_json(const nlohmann::ordered_json& json, int32_t source, int64_t max_depth);
// Python ==; each list or dict item compared is an iteration of the budget.
bool equal(const Value& a, const Value& b, RenderBudget& budget);

// ---- Strings as Python sees them: code points --------------------------------------

bool is_python_space(char c);
// Whether the code point encoded by `piece` is whitespace for str.isspace().
bool is_python_space(std::string_view piece);
// Bytes in the UTF-8 sequence that starts with `lead` (1 for a stray continuation byte).
inline size_t utf8_length(unsigned char lead) { return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }
// The end of the code point that starts at byte `at` of `text`.
inline size_t next_code_point(std::string_view text, size_t at) {
  return std::min(text.size(), at + utf8_length(static_cast<unsigned char>(text[at])));
}
// Code points in `text` (what Python's len() counts).
size_t code_point_count(std::string_view text);
// The byte offset of code point `index` (the size for index == count).
size_t code_point_offset(std::string_view text, size_t index);
// The code points of `s` as one-character strings (for iterating a string);
// at most limits().max_range of them.
List characters(const Value& s, RenderBudget& budget);
// First position of `needle` in `haystack` at or after `from` (npos when
// none), in time linear in their lengths.
size_t find_text(std::string_view haystack, std::string_view needle, size_t from = 0);

// ---- Syntax tree ---------------------------------------------------------------------

struct Token {
  enum class Kind { kName, kString, kInt, kFloat, kOperator, kEnd } kind;
  std::string text;
  size_t offset;  // in the template source
};

// A chunk of the template: literal text, or the tokens of one {{ }} / {% %} tag.
struct Chunk {
  enum class Kind { kText, kOutput, kStatement } kind;
  std::string text;
  std::vector<Token> tokens;
  size_t offset;
};

struct Expr {
  enum class Kind {
    kLiteral,
    kName,
    kAttr,
    kItem,
    kSlice,
    kCall,
    kFilter,
    kTest,
    kNot,
    kNeg,
    kBinary,
    kAnd,
    kOr,
    kConditional,
    kList,
    kDict
  } kind;
  size_t offset = 0;
  Value literal;
  std::string name;                             // kName, kAttr, kFilter, kTest, kBinary operator
  bool negated = false;                         // kTest: `is not`
  std::vector<std::unique_ptr<Expr>> children;  // operands; kCall: callee then args; kFilter/kTest: subject then args
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> keywords;  // kCall/kFilter keyword arguments
  bool has_slice_part[3] = {false, false, false};  // kSlice: which of start, stop, step are present (children in order)
  int64_t depth = 1;  // levels of the tree from this node down (a leaf is 1)
};

using Node = ChatTemplate::Node;

struct Position {
  size_t line = 1, column = 1;
};
Position position_of(const std::string& source, size_t offset);

// `source` (newlines already normalized) as a syntax tree; kBadInput naming
// `origin`, line and column for syntax outside the subset or nesting deeper
// than limits.max_nesting_depth.
std::vector<std::unique_ptr<Node>> parse_template(const std::string& source, const std::string& origin,
                                                  const ChatTemplateLimits& limits);

// Renders `body` with `globals` as the outermost scope; kBadInput naming
// `origin`, line and column of the construct that failed or passed a limit.
MarkedText render_template(const std::vector<std::unique_ptr<Node>>& body, std::map<std::string, Value> globals,
                           const std::string& source, const std::string& origin, RenderBudget& budget);

}  // namespace llmft::chat_template_internal

namespace llmft {

struct ChatTemplate::Node {
  using Expr = chat_template_internal::Expr;
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kBreak, kContinue, kBody } kind;
  size_t offset = 0;
  std::string text;            // kText
  std::unique_ptr<Expr> expr;  // kOutput, kSet value, kFor iterable
  std::vector<std::pair<std::unique_ptr<Expr>, std::vector<std::unique_ptr<Node>>>> branches;  // kIf
  std::vector<std::unique_ptr<Node>> body, else_body;  // kFor, kIf else, kSetBlock, kBody
  std::vector<std::string> targets;                    // kFor loop variables; kSet: name [, attribute]
  std::unique_ptr<Expr> filter;                        // kFor: `if` condition
  bool reads_neighbour_items = true;                   // kFor: the body spells loop.previtem/nextitem
};

}  // namespace llmft
