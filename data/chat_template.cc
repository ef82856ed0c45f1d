// The chat-template renderer: a lexer that cuts the template into text and
// tags (applying Jinja's whitespace control and transformers' trim_blocks /
// lstrip_blocks), a recursive-descent parser with Jinja's operator precedence
// (jinja2/parser.py: or < and < not < compare < + - < ~ < * / // % < unary <
// filters/tests < postfix), and a tree-walking evaluator over Python-like
// values. Strings carry a per-byte mark of whether they came from the caller's
// data, so the rendering knows which bytes are user content.
#include "data/chat_template.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "core/error.h"

namespace llmft {
namespace {

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

  static Value none() {
    Value v;
    v.kind = Kind::kNone;
    return v;
  }
  static Value of_bool(bool b) {
    Value v;
    v.kind = Kind::kBool;
    v.boolean = b;
    return v;
  }
  static Value of_int(int64_t i) {
    Value v;
    v.kind = Kind::kInt;
    v.integer = i;
    return v;
  }
  static Value of_float(double d) {
    Value v;
    v.kind = Kind::kFloat;
    v.number = d;
    return v;
  }
  static Value of_string(std::string s, int32_t source = kFromTemplate) {
    Value v;
    v.kind = Kind::kString;
    if (source != kFromTemplate && !s.empty()) v.from_data.assign(s.size(), source);
    v.text = std::move(s);
    return v;
  }
  static Value of_list(List items = {}) {
    Value v;
    v.kind = Kind::kList;
    v.list = std::make_shared<List>(std::move(items));
    return v;
  }
  static Value of_dict(Dict items = {}) {
    Value v;
    v.kind = Kind::kDict;
    v.dict = std::make_shared<Dict>(std::move(items));
    return v;
  }

  bool is_string() const { return kind == Kind::kString; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  double as_double() const {
    return kind == Kind::kFloat ? number : kind == Kind::kBool ? (boolean ? 1.0 : 0.0) : static_cast<double>(integer);
  }
  int64_t as_int() const {
    return kind == Kind::kBool ? (boolean ? 1 : 0) : kind == Kind::kFloat ? static_cast<int64_t>(number) : integer;
  }

  const Value* find(std::string_view key) const {
    if (kind != Kind::kDict) return nullptr;
    for (const auto& [name, value] : *dict)
      if (name == key) return &value;
    return nullptr;
  }
};

const char* kind_name(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kUndefined: return "undefined";
    case Value::Kind::kNone: return "none";
    case Value::Kind::kBool: return "bool";
    case Value::Kind::kInt: return "int";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return "string";
    case Value::Kind::kList: return "list";
    case Value::Kind::kDict: return value.is_namespace ? "namespace" : "dict";
  }
  return "?";
}

bool truthy(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return false;
    case Value::Kind::kBool: return value.boolean;
    case Value::Kind::kInt: return value.integer != 0;
    case Value::Kind::kFloat: return value.number != 0.0;
    case Value::Kind::kString: return !value.text.empty();
    case Value::Kind::kList: return !value.list->empty();
    case Value::Kind::kDict: return value.is_namespace || !value.dict->empty();
  }
  return false;
}

// A string that keeps the data marks of its pieces.
struct MarkedText {
  std::string text;
  std::vector<int32_t> from_data;
  bool any_data = false;

  void append(const std::string& piece, const std::vector<int32_t>& marks) {
    if (!marks.empty() && !any_data) {
      from_data.assign(text.size(), 0);
      any_data = true;
    }
    text += piece;
    if (any_data) {
      if (marks.empty()) from_data.insert(from_data.end(), piece.size(), 0);
      else from_data.insert(from_data.end(), marks.begin(), marks.end());
    }
  }
  void append(const Value& string_value) { append(string_value.text, string_value.from_data); }
  void append_plain(const std::string& piece) { append(piece, {}); }
  Value to_value() && {
    Value v = Value::of_string(std::move(text));
    if (any_data) v.from_data = std::move(from_data);
    return v;
  }
};

Value substring(const Value& s, size_t begin, size_t end) {
  Value v = Value::of_string(s.text.substr(begin, end - begin));
  if (!s.from_data.empty())
    v.from_data.assign(s.from_data.begin() + static_cast<std::ptrdiff_t>(begin),
                       s.from_data.begin() + static_cast<std::ptrdiff_t>(end));
  return v;
}

std::string python_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == std::floor(d) && std::fabs(d) < 1e16) {
    std::ostringstream out;
    out.precision(17);
    out << d;
    std::string s = out.str();
    if (s.find('.') == std::string::npos && s.find('e') == std::string::npos) s += ".0";
    return s;
  }
  // repr: the shortest string that round-trips.
  for (int precision = 1; precision <= 17; ++precision) {
    std::ostringstream out;
    out.precision(precision);
    out << d;
    if (std::stod(out.str()) == d) return out.str();
  }
  return std::to_string(d);
}

std::string python_repr_string(const std::string& s) {
  const char quote = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (char c : s) {
    if (c == quote || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else out += c;
  }
  return out + quote;
}

// str(value) as Python prints it (what {{ }} and ~ write).
void append_str(const Value& value, MarkedText& out, bool repr = false) {
  switch (value.kind) {
    case Value::Kind::kUndefined: return;
    case Value::Kind::kNone: out.append_plain("None"); return;
    case Value::Kind::kBool: out.append_plain(value.boolean ? "True" : "False"); return;
    case Value::Kind::kInt: out.append_plain(std::to_string(value.integer)); return;
    case Value::Kind::kFloat: out.append_plain(python_float(value.number)); return;
    case Value::Kind::kString:
      if (repr) {
        const std::string quoted = python_repr_string(value.text);
        out.append(quoted, value.from_data.empty() ? std::vector<int32_t>()
                                                   : std::vector<int32_t>(quoted.size(), value.from_data.front()));
      } else {
        out.append(value);
      }
      return;
    case Value::Kind::kList: {
      out.append_plain("[");
      for (size_t i = 0; i < value.list->size(); ++i) {
        if (i > 0) out.append_plain(", ");
        append_str((*value.list)[i], out, true);
      }
      out.append_plain("]");
      return;
    }
    case Value::Kind::kDict: {
      out.append_plain("{");
      bool first = true;
      for (const auto& [key, item] : *value.dict) {
        if (!first) out.append_plain(", ");
        first = false;
        out.append_plain(python_repr_string(key) + ": ");
        append_str(item, out, true);
      }
      out.append_plain("}");
      return;
    }
  }
}

Value to_string_value(const Value& value) {
  if (value.is_string()) return value;
  MarkedText out;
  append_str(value, out);
  return std::move(out).to_value();
}

// json.dumps(value, ensure_ascii=False, indent=indent) as transformers' tojson calls it.
void append_json(const Value& value, std::string& out, std::optional<int> indent, int depth) {
  auto newline = [&](int level) {
    if (!indent) return;
    out += '\n';
    out.append(static_cast<size_t>(*indent * level), ' ');
  };
  switch (value.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: out += "null"; return;
    case Value::Kind::kBool: out += value.boolean ? "true" : "false"; return;
    case Value::Kind::kInt: out += std::to_string(value.integer); return;
    case Value::Kind::kFloat: out += python_float(value.number); return;
    case Value::Kind::kString: {
      out += '"';
      for (unsigned char c : value.text) {
        switch (c) {
          case '"': out += "\\\""; break;
          case '\\': out += "\\\\"; break;
          case '\n': out += "\\n"; break;
          case '\r': out += "\\r"; break;
          case '\t': out += "\\t"; break;
          case '\b': out += "\\b"; break;
          case '\f': out += "\\f"; break;
          default:
            if (c < 0x20) {
              char buffer[8];
              std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
              out += buffer;
            } else {
              out += static_cast<char>(c);
            }
        }
      }
      out += '"';
      return;
    }
    case Value::Kind::kList: {
      if (value.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < value.list->size(); ++i) {
        if (i > 0) out += indent ? "," : ", ";
        newline(depth + 1);
        append_json((*value.list)[i], out, indent, depth + 1);
      }
      newline(depth);
      out += ']';
      return;
    }
    case Value::Kind::kDict: {
      if (value.dict->empty()) {
        out += "{}";
        return;
      }
      out += '{';
      bool first = true;
      for (const auto& [key, item] : *value.dict) {
        if (!first) out += indent ? "," : ", ";
        first = false;
        newline(depth + 1);
        append_json(Value::of_string(key), out, indent, depth + 1);
        out += ": ";
        append_json(item, out, indent, depth + 1);
      }
      newline(depth);
      out += '}';
      return;
    }
  }
}

Value from_json(const nlohmann::ordered_json& json, int32_t source) {
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::of_bool(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
    case nlohmann::ordered_json::value_t::number_unsigned: return Value::of_int(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_float: return Value::of_float(json.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::of_string(json.get<std::string>(), source);
    case nlohmann::ordered_json::value_t::array: {
      List items;
      for (const auto& item : json) items.push_back(from_json(item, source));
      return Value::of_list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict items;
      for (const auto& [key, item] : json.items()) items.emplace_back(key, from_json(item, source));
      return Value::of_dict(std::move(items));
    }
    default: return Value();
  }
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Value::Kind::kFloat || b.kind == Value::Kind::kFloat) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return true;
    case Value::Kind::kString: return a.text == b.text;
    case Value::Kind::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i)
        if (!equal((*a.list)[i], (*b.list)[i])) return false;
      return true;
    case Value::Kind::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [key, item] : *a.dict) {
        const Value* other = b.find(key);
        if (other == nullptr || !equal(item, *other)) return false;
      }
      return true;
    default: return false;
  }
}

bool is_python_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Bytes in the UTF-8 sequence that starts with `lead` (1 for a stray continuation byte).
size_t utf8_length(unsigned char lead) { return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

// Python strings index, slice and iterate by code point, not by byte.
List characters(const Value& s) {
  List items;
  for (size_t i = 0; i < s.text.size();) {
    const size_t end = std::min(s.text.size(), i + utf8_length(static_cast<unsigned char>(s.text[i])));
    items.push_back(substring(s, i, end));
    i = end;
  }
  return items;
}

// Whether the code point encoded by `piece` is whitespace for Python's
// str.isspace (what str.strip() and str.split() use): the ASCII ones, U+001C..
// U+001F, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F,
// U+205F, U+3000.
bool is_python_space(std::string_view piece) {
  if (piece.size() == 1)
    return is_python_space(piece[0]) ||
           (static_cast<unsigned char>(piece[0]) >= 0x1C && static_cast<unsigned char>(piece[0]) <= 0x1F);
  static const char* const kSpaces[] = {"\u0085", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003",
                                        "\u2004", "\u2005", "\u2006", "\u2007", "\u2008", "\u2009", "\u200a",
                                        "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"};
  for (const char* space : kSpaces)
    if (piece == space) return true;
  return false;
}

// ---- Lexer -------------------------------------------------------------------------

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

}  // namespace

// ---- Syntax tree ---------------------------------------------------------------------

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
};

struct ChatTemplate::Node {
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kBreak, kContinue, kBody } kind;
  size_t offset = 0;
  std::string text;            // kText
  std::unique_ptr<Expr> expr;  // kOutput, kSet value, kFor iterable
  std::vector<std::pair<std::unique_ptr<Expr>, std::vector<std::unique_ptr<Node>>>> branches;  // kIf
  std::vector<std::unique_ptr<Node>> body, else_body;  // kFor, kIf else, kSetBlock, kBody
  std::vector<std::string> targets;                    // kFor loop variables; kSet: name [, attribute]
  std::unique_ptr<Expr> filter;                        // kFor: `if` condition
};

namespace {

using Node = ChatTemplate::Node;

struct Position {
  size_t line = 1, column = 1;
};

Position position_of(const std::string& source, size_t offset) {
  Position p;
  for (size_t i = 0; i < offset && i < source.size(); ++i) {
    if (source[i] == '\n') ++p.line, p.column = 1;
    else ++p.column;
  }
  return p;
}

class Lexer {
 public:
  Lexer(const std::string& source, const std::string& origin) : source_(source), origin_(origin) {}

  [[noreturn]] void fail(size_t offset, const std::string& message) const {
    const Position p = position_of(source_, offset);
    throw_bad_input(origin_, ": line ", p.line, " column ", p.column, ": ", message);
  }

  std::vector<Chunk> run() {
    std::vector<Chunk> chunks;
    size_t i = 0;
    bool strip_next_leading = false;  // the previous tag ended with -
    bool trim_next_newline = false;   // trim_blocks after a block tag
    while (i < source_.size()) {
      size_t open = find_tag(i);
      std::string text = source_.substr(i, open - i);
      if (strip_next_leading) {
        size_t k = 0;
        while (k < text.size() && is_python_space(text[k])) ++k;
        text.erase(0, k);
      } else if (trim_next_newline && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);
      } else if (trim_next_newline && text.size() >= 2 && text[0] == '\r' && text[1] == '\n') {
        text.erase(0, 2);
      }
      strip_next_leading = trim_next_newline = false;
      if (open == source_.size()) {
        if (!text.empty()) chunks.push_back({Chunk::Kind::kText, std::move(text), {}, i});
        break;
      }
      const char kind = source_[open + 1];  // '{', '%' or '#'
      size_t body = open + 2;
      const bool strip_before = body < source_.size() && source_[body] == '-';
      const bool keep_before = body < source_.size() && source_[body] == '+';
      if (strip_before || keep_before) ++body;
      if (strip_before) {
        while (!text.empty() && is_python_space(text.back())) text.pop_back();
      } else if (kind != '{' && !keep_before) {
        // lstrip_blocks: spaces and tabs from the start of the line up to a block tag.
        size_t run_start = open;
        while (run_start > i && (source_[run_start - 1] == ' ' || source_[run_start - 1] == '\t')) --run_start;
        if (run_start == 0 || source_[run_start - 1] == '\n')
          text.erase(text.size() - std::min(text.size(), open - run_start));
      }
      if (!text.empty()) chunks.push_back({Chunk::Kind::kText, std::move(text), {}, i});

      const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
      size_t end = kind == '#' ? source_.find(close, body) : find_close(body, close);
      if (end == std::string::npos) fail(open, str_cat("unclosed '", source_.substr(open, 2), "'"));
      size_t content_end = end;
      bool keep_newline = false;  // `+%}` turns trim_blocks off for this tag
      if (end > body && source_[end - 1] == '-') {
        strip_next_leading = true;
        content_end = end - 1;
      } else if (end > body && source_[end - 1] == '+' && kind != '{') {
        keep_newline = true;
        content_end = end - 1;
      }
      if (kind != '{' && !keep_newline) trim_next_newline = true;
      if (kind != '#') {
        Chunk chunk{kind == '{' ? Chunk::Kind::kOutput : Chunk::Kind::kStatement, {}, {}, open};
        chunk.tokens = tokenize(body, content_end);
        chunks.push_back(std::move(chunk));
      }
      i = end + 2;
    }
    return chunks;
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < source_.size(); ++i)
      if (source_[i] == '{' && (source_[i + 1] == '{' || source_[i + 1] == '%' || source_[i + 1] == '#')) return i;
    return source_.size();
  }

  // The closing delimiter of a tag, skipping string literals inside it.
  size_t find_close(size_t from, const std::string& close) const {
    for (size_t i = from; i < source_.size(); ++i) {
      const char c = source_[i];
      if (c == '\'' || c == '"') {
        size_t j = i + 1;
        while (j < source_.size() && source_[j] != c) j += source_[j] == '\\' ? 2 : 1;
        i = j;
        continue;
      }
      if (source_.compare(i, close.size(), close) == 0) return i;
    }
    return std::string::npos;
  }

  std::vector<Token> tokenize(size_t begin, size_t end) const {
    std::vector<Token> tokens;
    size_t i = begin;
    while (i < end) {
      const char c = source_[i];
      if (is_python_space(c)) {
        ++i;
        continue;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t j = i;
        while (j < end && (std::isalnum(static_cast<unsigned char>(source_[j])) || source_[j] == '_')) ++j;
        tokens.push_back({Token::Kind::kName, source_.substr(i, j - i), i});
        i = j;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t j = i;
        while (j < end && std::isdigit(static_cast<unsigned char>(source_[j]))) ++j;
        bool is_float = false;
        if (j + 1 < end && source_[j] == '.' && std::isdigit(static_cast<unsigned char>(source_[j + 1]))) {
          is_float = true;
          ++j;
          while (j < end && std::isdigit(static_cast<unsigned char>(source_[j]))) ++j;
        }
        tokens.push_back({is_float ? Token::Kind::kFloat : Token::Kind::kInt, source_.substr(i, j - i), i});
        i = j;
      } else if (c == '\'' || c == '"') {
        std::string value;
        size_t j = i + 1;
        while (j < end && source_[j] != c) {
          if (source_[j] == '\\' && j + 1 < end) {
            const char escaped = source_[j + 1];
            switch (escaped) {
              case 'n': value += '\n'; break;
              case 't': value += '\t'; break;
              case 'r': value += '\r'; break;
              case '\\': value += '\\'; break;
              case '\'': value += '\''; break;
              case '"': value += '"'; break;
              case '\n': break;
              default: value += '\\'; value += escaped;
            }
            j += 2;
          } else {
            value += source_[j++];
          }
        }
        if (j >= end) fail(i, "unterminated string literal");
        tokens.push_back({Token::Kind::kString, std::move(value), i});
        i = j + 1;
      } else {
        static const char* const kOperators[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                                 ">",  "(",  ")",  "[",  "]",  "{",  "}", ",", ":", ".", "|", "="};
        bool matched = false;
        for (const char* op : kOperators) {
          const size_t length = std::char_traits<char>::length(op);
          if (i + length <= end && source_.compare(i, length, op) == 0) {
            tokens.push_back({Token::Kind::kOperator, op, i});
            i += length;
            matched = true;
            break;
          }
        }
        if (!matched) fail(i, str_cat("unexpected character '", std::string(1, c), "'"));
      }
    }
    tokens.push_back({Token::Kind::kEnd, "", end});
    return tokens;
  }

  const std::string& source_;
  const std::string& origin_;
};

// ---- Parser --------------------------------------------------------------------------

class Parser {
 public:
  Parser(std::vector<Chunk> chunks, const Lexer& lexer) : chunks_(std::move(chunks)), lexer_(lexer) {}

  std::vector<std::unique_ptr<Node>> parse_template() {
    std::vector<std::unique_ptr<Node>> body = parse_until({});
    return body;
  }

 private:
  [[noreturn]] void fail(size_t offset, const std::string& message) const { lexer_.fail(offset, message); }

  // Parses nodes until a statement whose first word is in `ends` (left unconsumed).
  std::vector<std::unique_ptr<Node>> parse_until(const std::vector<std::string>& ends) {
    std::vector<std::unique_ptr<Node>> nodes;
    while (chunk_ < chunks_.size()) {
      Chunk& chunk = chunks_[chunk_];
      if (chunk.kind == Chunk::Kind::kText) {
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::kText;
        node->offset = chunk.offset;
        node->text = chunk.text;
        nodes.push_back(std::move(node));
        ++chunk_;
        continue;
      }
      tokens_ = &chunk.tokens;
      position_ = 0;
      if (chunk.kind == Chunk::Kind::kOutput) {
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::kOutput;
        node->offset = chunk.offset;
        node->expr = parse_expression();
        expect_end();
        nodes.push_back(std::move(node));
        ++chunk_;
        continue;
      }
      const Token& keyword = peek();
      if (keyword.kind != Token::Kind::kName) fail(keyword.offset, "expected a statement name after '{%'");
      if (std::find(ends.begin(), ends.end(), keyword.text) != ends.end()) return nodes;
      ++chunk_;
      nodes.push_back(parse_statement(chunk.offset));
    }
    if (!ends.empty()) fail(chunks_.empty() ? 0 : chunks_.back().offset, str_cat("missing '{% ", ends.back(), " %}'"));
    return nodes;
  }

  // The statement whose tokens are current (its chunk already consumed).
  std::unique_ptr<Node> parse_statement(size_t offset) {
    const Token keyword = next();
    auto node = std::make_unique<Node>();
    node->offset = offset;
    if (keyword.text == "if") {
      node->kind = Node::Kind::kIf;
      std::unique_ptr<Expr> condition = parse_expression();
      expect_end();
      while (true) {
        std::vector<std::unique_ptr<Node>> body = parse_until({"elif", "else", "endif"});
        node->branches.emplace_back(std::move(condition), std::move(body));
        const std::string end = enter_end_statement();
        if (end == "elif") {
          condition = parse_expression();
          expect_end();
          continue;
        }
        if (end == "else") {
          expect_end();
          node->else_body = parse_until({"endif"});
          enter_end_statement();
        }
        expect_end();
        break;
      }
    } else if (keyword.text == "for") {
      node->kind = Node::Kind::kFor;
      do {
        const Token target = next();
        if (target.kind != Token::Kind::kName) fail(target.offset, "expected a loop variable name");
        node->targets.push_back(target.text);
      } while (accept(","));
      expect_name("in");
      node->expr = parse_or_expression();  // not `a if b else c`: its `if` is the loop filter
      if (accept_name("if")) node->filter = parse_expression();
      if (peek().kind == Token::Kind::kName && peek().text == "recursive")
        fail(peek().offset, "recursive loops are not supported");
      expect_end();
      node->body = parse_until({"else", "endfor"});
      if (enter_end_statement() == "else") {
        expect_end();
        node->else_body = parse_until({"endfor"});
        enter_end_statement();
      }
      expect_end();
    } else if (keyword.text == "set") {
      const Token target = next();
      if (target.kind != Token::Kind::kName) fail(target.offset, "expected a variable name after 'set'");
      node->targets.push_back(target.text);
      if (accept(".")) {
        const Token attribute = next();
        if (attribute.kind != Token::Kind::kName) fail(attribute.offset, "expected an attribute name");
        node->targets.push_back(attribute.text);
      }
      if (accept("=")) {
        node->kind = Node::Kind::kSet;
        node->expr = parse_expression();
        expect_end();
      } else {
        if (node->targets.size() != 1) fail(target.offset, "a block set takes a plain variable name");
        node->kind = Node::Kind::kSetBlock;
        expect_end();
        node->body = parse_until({"endset"});
        enter_end_statement();
        expect_end();
      }
    } else if (keyword.text == "generation") {
      node->kind = Node::Kind::kBody;
      expect_end();
      node->body = parse_until({"endgeneration"});
      enter_end_statement();
      expect_end();
    } else if (keyword.text == "break" || keyword.text == "continue") {
      node->kind = keyword.text == "break" ? Node::Kind::kBreak : Node::Kind::kContinue;
      expect_end();
    } else {
      fail(keyword.offset, str_cat("unsupported statement '{% ", keyword.text, " %}'"));
    }
    return node;
  }

  // Makes the next chunk (an end/else/elif statement) current and consumes its keyword.
  std::string enter_end_statement() {
    Chunk& chunk = chunks_[chunk_++];
    tokens_ = &chunk.tokens;
    position_ = 0;
    return next().text;
  }

  // ---- Expressions (jinja2/parser.py precedence) ----

  std::unique_ptr<Expr> make(Expr::Kind kind, size_t offset) {
    auto expr = std::make_unique<Expr>();
    expr->kind = kind;
    expr->offset = offset;
    return expr;
  }

  std::unique_ptr<Expr> parse_expression() {
    std::unique_ptr<Expr> value = parse_or_expression();
    while (peek().kind == Token::Kind::kName && peek().text == "if") {
      const size_t offset = next().offset;
      auto conditional = make(Expr::Kind::kConditional, offset);
      std::unique_ptr<Expr> condition = parse_or_expression();
      std::unique_ptr<Expr> otherwise;
      if (accept_name("else")) otherwise = parse_expression();
      conditional->children.push_back(std::move(condition));
      conditional->children.push_back(std::move(value));
      if (otherwise) conditional->children.push_back(std::move(otherwise));
      value = std::move(conditional);
    }
    return value;
  }

  std::unique_ptr<Expr> parse_or_expression() {
    std::unique_ptr<Expr> left = parse_and();
    while (peek().kind == Token::Kind::kName && peek().text == "or") {
      auto node = make(Expr::Kind::kOr, next().offset);
      node->children.push_back(std::move(left));
      node->children.push_back(parse_and());
      left = std::move(node);
    }
    return left;
  }

  std::unique_ptr<Expr> parse_and() {
    std::unique_ptr<Expr> left = parse_not();
    while (peek().kind == Token::Kind::kName && peek().text == "and") {
      auto node = make(Expr::Kind::kAnd, next().offset);
      node->children.push_back(std::move(left));
      node->children.push_back(parse_not());
      left = std::move(node);
    }
    return left;
  }

  std::unique_ptr<Expr> parse_not() {
    if (peek().kind == Token::Kind::kName && peek().text == "not") {
      auto node = make(Expr::Kind::kNot, next().offset);
      node->children.push_back(parse_not());
      return node;
    }
    return parse_compare();
  }

  std::unique_ptr<Expr> parse_compare() {
    std::unique_ptr<Expr> left = parse_math1();
    while (true) {
      const Token& token = peek();
      std::string op;
      if (token.kind == Token::Kind::kOperator && (token.text == "==" || token.text == "!=" || token.text == "<" ||
                                                   token.text == ">" || token.text == "<=" || token.text == ">=")) {
        op = token.text;
        next();
      } else if (token.kind == Token::Kind::kName && token.text == "in") {
        op = "in";
        next();
      } else if (token.kind == Token::Kind::kName && token.text == "not" && peek(1).kind == Token::Kind::kName &&
                 peek(1).text == "in") {
        op = "not in";
        next();
        next();
      } else {
        return left;
      }
      auto node = make(Expr::Kind::kBinary, token.offset);
      node->name = op;
      node->children.push_back(std::move(left));
      node->children.push_back(parse_math1());
      left = std::move(node);
    }
  }

  std::unique_ptr<Expr> parse_binary_level(const std::vector<std::string>& ops,
                                           std::unique_ptr<Expr> (Parser::*lower)()) {
    std::unique_ptr<Expr> left = (this->*lower)();
    while (peek().kind == Token::Kind::kOperator && std::find(ops.begin(), ops.end(), peek().text) != ops.end()) {
      const Token op = next();
      auto node = make(Expr::Kind::kBinary, op.offset);
      node->name = op.text;
      node->children.push_back(std::move(left));
      node->children.push_back((this->*lower)());
      left = std::move(node);
    }
    return left;
  }
  std::unique_ptr<Expr> parse_math1() { return parse_binary_level({"+", "-"}, &Parser::parse_concat); }
  std::unique_ptr<Expr> parse_concat() { return parse_binary_level({"~"}, &Parser::parse_math2); }
  std::unique_ptr<Expr> parse_math2() { return parse_binary_level({"*", "/", "//", "%"}, &Parser::parse_pow); }
  std::unique_ptr<Expr> parse_pow() { return parse_binary_level({"**"}, &Parser::parse_unary); }

  std::unique_ptr<Expr> parse_unary() {
    if (peek().kind == Token::Kind::kOperator && (peek().text == "-" || peek().text == "+")) {
      const Token op = next();
      std::unique_ptr<Expr> operand = parse_unary();
      if (op.text == "+") return operand;
      auto node = make(Expr::Kind::kNeg, op.offset);
      node->children.push_back(std::move(operand));
      return node;
    }
    return parse_filters_and_tests(parse_postfix(parse_primary()));
  }

  std::unique_ptr<Expr> parse_filters_and_tests(std::unique_ptr<Expr> subject) {
    while (true) {
      if (accept("|")) {
        const Token name = next();
        if (name.kind != Token::Kind::kName) fail(name.offset, "expected a filter name after '|'");
        auto node = make(Expr::Kind::kFilter, name.offset);
        node->name = name.text;
        node->children.push_back(std::move(subject));
        if (peek().kind == Token::Kind::kOperator && peek().text == "(") parse_arguments(*node);
        subject = parse_postfix(std::move(node));
      } else if (peek().kind == Token::Kind::kName && peek().text == "is") {
        next();
        auto node = make(Expr::Kind::kTest, peek().offset);
        node->negated = accept_name("not");
        const Token name = next();
        if (name.kind != Token::Kind::kName) fail(name.offset, "expected a test name after 'is'");
        node->name = name.text;
        node->children.push_back(std::move(subject));
        if (peek().kind == Token::Kind::kOperator && peek().text == "(") {
          parse_arguments(*node);
        } else if (peek().kind == Token::Kind::kString || peek().kind == Token::Kind::kInt ||
                   (peek().kind == Token::Kind::kName && peek().text != "and" && peek().text != "or" &&
                    peek().text != "else" && peek().text != "if")) {
          node->children.push_back(parse_primary());  // `x is sameas y`, `x is divisibleby 3`
        }
        subject = std::move(node);
      } else {
        return subject;
      }
    }
  }

  // `(a, b, key=c)` after a callee/filter/test; arguments appended to node.children.
  void parse_arguments(Expr& node) {
    expect("(");
    if (accept(")")) return;
    do {
      if (peek().kind == Token::Kind::kName && peek(1).kind == Token::Kind::kOperator && peek(1).text == "=") {
        const std::string key = next().text;
        next();
        node.keywords.emplace_back(key, parse_expression());
      } else {
        if (!node.keywords.empty()) fail(peek().offset, "positional argument after a keyword argument");
        node.children.push_back(parse_expression());
      }
    } while (accept(","));
    expect(")");
  }

  std::unique_ptr<Expr> parse_postfix(std::unique_ptr<Expr> subject) {
    while (true) {
      const Token& token = peek();
      if (token.kind != Token::Kind::kOperator) return subject;
      if (token.text == ".") {
        next();
        const Token name = next();
        if (name.kind != Token::Kind::kName && name.kind != Token::Kind::kInt)
          fail(name.offset, "expected an attribute name after '.'");
        auto node = make(Expr::Kind::kAttr, name.offset);
        node->name = name.text;
        node->children.push_back(std::move(subject));
        subject = std::move(node);
      } else if (token.text == "[") {
        const size_t offset = next().offset;
        std::unique_ptr<Expr> parts[3];
        bool present[3] = {false, false, false};
        int part = 0;
        bool is_slice = false;
        while (true) {
          if (peek().kind == Token::Kind::kOperator && (peek().text == ":" || peek().text == "]")) {
            if (peek().text == "]") break;
            next();
            is_slice = true;
            if (++part > 2) fail(offset, "too many ':' in a slice");
            continue;
          }
          if (present[part]) fail(peek().offset, "expected ':' or ']'");
          parts[part] = parse_expression();
          present[part] = true;
        }
        expect("]");
        auto node = make(is_slice ? Expr::Kind::kSlice : Expr::Kind::kItem, offset);
        node->children.push_back(std::move(subject));
        if (!is_slice && !present[0]) fail(offset, "empty subscript");
        for (int k = 0; k < 3; ++k) {
          node->has_slice_part[k] = present[k];
          if (present[k]) node->children.push_back(std::move(parts[k]));
        }
        subject = std::move(node);
      } else if (token.text == "(") {
        auto node = make(Expr::Kind::kCall, token.offset);
        node->children.push_back(std::move(subject));
        parse_arguments(*node);
        subject = std::move(node);
      } else {
        return subject;
      }
    }
  }

  std::unique_ptr<Expr> parse_primary() {
    const Token token = next();
    switch (token.kind) {
      case Token::Kind::kString: {
        auto node = make(Expr::Kind::kLiteral, token.offset);
        std::string text = token.text;
        while (peek().kind == Token::Kind::kString) text += next().text;  // adjacent literals concatenate
        node->literal = Value::of_string(std::move(text));
        return node;
      }
      case Token::Kind::kInt: {
        auto node = make(Expr::Kind::kLiteral, token.offset);
        node->literal = Value::of_int(std::stoll(token.text));
        return node;
      }
      case Token::Kind::kFloat: {
        auto node = make(Expr::Kind::kLiteral, token.offset);
        node->literal = Value::of_float(std::stod(token.text));
        return node;
      }
      case Token::Kind::kName: {
        auto node = make(Expr::Kind::kLiteral, token.offset);
        if (token.text == "true" || token.text == "True") node->literal = Value::of_bool(true);
        else if (token.text == "false" || token.text == "False") node->literal = Value::of_bool(false);
        else if (token.text == "none" || token.text == "None") node->literal = Value::none();
        else {
          node->kind = Expr::Kind::kName;
          node->name = token.text;
        }
        return node;
      }
      case Token::Kind::kOperator:
        if (token.text == "(") {
          std::unique_ptr<Expr> inner = parse_expression();
          if (peek().kind == Token::Kind::kOperator && peek().text == ",")
            fail(peek().offset, "tuples are not supported");
          expect(")");
          return inner;
        }
        if (token.text == "[") {
          auto node = make(Expr::Kind::kList, token.offset);
          if (!accept("]")) {
            do {
              if (peek().kind == Token::Kind::kOperator && peek().text == "]") break;
              node->children.push_back(parse_expression());
            } while (accept(","));
            expect("]");
          }
          return node;
        }
        if (token.text == "{") {
          auto node = make(Expr::Kind::kDict, token.offset);
          if (!accept("}")) {
            do {
              if (peek().kind == Token::Kind::kOperator && peek().text == "}") break;
              node->children.push_back(parse_expression());
              expect(":");
              node->children.push_back(parse_expression());
            } while (accept(","));
            expect("}");
          }
          return node;
        }
        break;
      case Token::Kind::kEnd: fail(token.offset, "unexpected end of the tag: expected an expression");
    }
    fail(token.offset, str_cat("unexpected '", token.text, "'"));
  }

  const Token& peek(size_t ahead = 0) const {
    const size_t index = std::min(position_ + ahead, tokens_->size() - 1);
    return (*tokens_)[index];
  }
  Token next() {
    const Token& token = peek();
    if (position_ < tokens_->size() - 1) ++position_;
    return token;
  }
  bool accept(const char* op) {
    if (peek().kind == Token::Kind::kOperator && peek().text == op) {
      next();
      return true;
    }
    return false;
  }
  bool accept_name(const char* name) {
    if (peek().kind == Token::Kind::kName && peek().text == name) {
      next();
      return true;
    }
    return false;
  }
  void expect(const char* op) {
    if (!accept(op)) fail(peek().offset, str_cat("expected '", op, "', found '", peek().text, "'"));
  }
  void expect_name(const char* name) {
    if (!accept_name(name)) fail(peek().offset, str_cat("expected '", name, "', found '", peek().text, "'"));
  }
  void expect_end() {
    if (peek().kind != Token::Kind::kEnd) fail(peek().offset, str_cat("unexpected '", peek().text, "'"));
  }

  std::vector<Chunk> chunks_;
  const Lexer& lexer_;
  size_t chunk_ = 0;
  const std::vector<Token>* tokens_ = nullptr;
  size_t position_ = 0;
};

// ---- Evaluator -----------------------------------------------------------------------

enum class LoopSignal { kNone, kBreak, kContinue };

class Renderer {
 public:
  Renderer(const std::string& source, const std::string& origin) : source_(source), origin_(origin) {}

  [[noreturn]] void fail(size_t offset, const std::string& message) const {
    const Position p = position_of(source_, offset);
    throw_bad_input(origin_, ": line ", p.line, " column ", p.column, ": ", message);
  }

  std::vector<std::map<std::string, Value>> scopes;

  LoopSignal render(const std::vector<std::unique_ptr<Node>>& nodes, MarkedText& out) {
    for (const auto& node : nodes) {
      const LoopSignal signal = render(*node, out);
      if (signal != LoopSignal::kNone) return signal;
    }
    return LoopSignal::kNone;
  }

 private:
  LoopSignal render(const Node& node, MarkedText& out) {
    switch (node.kind) {
      case Node::Kind::kText: out.append_plain(node.text); return LoopSignal::kNone;
      case Node::Kind::kOutput: append_str(evaluate(*node.expr), out); return LoopSignal::kNone;
      case Node::Kind::kIf:
        for (const auto& [condition, body] : node.branches)
          if (truthy(evaluate(*condition))) return render(body, out);
        return render(node.else_body, out);
      case Node::Kind::kFor: return render_for(node, out);
      case Node::Kind::kSet: {
        Value value = evaluate(*node.expr);
        if (node.targets.size() == 1) {
          scopes.back()[node.targets[0]] = std::move(value);
        } else {
          const Value target = lookup(node.targets[0]);
          if (target.kind != Value::Kind::kDict || !target.is_namespace)
            fail(node.offset, str_cat("'", node.targets[0], "' is not a namespace(): cannot set an attribute on a ",
                                      kind_name(target)));
          set_item(*target.dict, node.targets[1], std::move(value));
        }
        return LoopSignal::kNone;
      }
      case Node::Kind::kSetBlock: {
        MarkedText captured;
        render(node.body, captured);
        scopes.back()[node.targets[0]] = std::move(captured).to_value();
        return LoopSignal::kNone;
      }
      case Node::Kind::kBody: return render(node.body, out);
      case Node::Kind::kBreak: return LoopSignal::kBreak;
      case Node::Kind::kContinue: return LoopSignal::kContinue;
    }
    return LoopSignal::kNone;
  }

  static void set_item(Dict& dict, const std::string& key, Value value) {
    for (auto& [name, item] : dict)
      if (name == key) {
        item = std::move(value);
        return;
      }
    dict.emplace_back(key, std::move(value));
  }

  LoopSignal render_for(const Node& node, MarkedText& out) {
    const Value iterable = evaluate(*node.expr);
    List items;
    if (iterable.kind == Value::Kind::kList) items = *iterable.list;
    else if (iterable.kind == Value::Kind::kDict && !iterable.is_namespace)
      for (const auto& [key, item] : *iterable.dict) items.push_back(Value::of_string(key));
    else if (iterable.is_string()) items = characters(iterable);
    else if (iterable.kind != Value::Kind::kUndefined && iterable.kind != Value::Kind::kNone)
      fail(node.expr->offset, str_cat("cannot iterate over a ", kind_name(iterable)));
    else if (iterable.kind == Value::Kind::kNone) fail(node.expr->offset, "cannot iterate over none");

    // Bind targets (one name, or unpack a list item into several).
    auto bind = [&](std::map<std::string, Value>& scope, const Value& item) {
      if (node.targets.size() == 1) {
        scope[node.targets[0]] = item;
        return;
      }
      if (item.kind != Value::Kind::kList || item.list->size() != node.targets.size())
        fail(node.offset,
             str_cat("cannot unpack a ", kind_name(item), " into ", node.targets.size(), " loop variables"));
      for (size_t k = 0; k < node.targets.size(); ++k) scope[node.targets[k]] = (*item.list)[k];
    };
    if (node.filter) {  // `for x in xs if cond`: the loop sees only the kept items
      List kept;
      for (const Value& item : items) {
        scopes.emplace_back();
        bind(scopes.back(), item);
        const bool keep = truthy(evaluate(*node.filter));
        scopes.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return render(node.else_body, out);
    const int64_t length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      scopes.emplace_back();
      bind(scopes.back(), items[static_cast<size_t>(i)]);
      Dict loop = {{"index", Value::of_int(i + 1)},         {"index0", Value::of_int(i)},
                   {"revindex", Value::of_int(length - i)}, {"revindex0", Value::of_int(length - i - 1)},
                   {"first", Value::of_bool(i == 0)},       {"last", Value::of_bool(i == length - 1)},
                   {"length", Value::of_int(length)}};
      if (i > 0) loop.emplace_back("previtem", items[static_cast<size_t>(i - 1)]);
      if (i + 1 < length) loop.emplace_back("nextitem", items[static_cast<size_t>(i + 1)]);
      scopes.back()["loop"] = Value::of_dict(std::move(loop));
      const LoopSignal signal = render(node.body, out);
      scopes.pop_back();
      if (signal == LoopSignal::kBreak) break;
    }
    return LoopSignal::kNone;
  }

  Value lookup(const std::string& name) const {
    for (auto scope = scopes.rbegin(); scope != scopes.rend(); ++scope) {
      auto found = scope->find(name);
      if (found != scope->end()) return found->second;
    }
    return Value();
  }

  Value evaluate(const Expr& expr) {
    switch (expr.kind) {
      case Expr::Kind::kLiteral: return expr.literal;
      case Expr::Kind::kName: return lookup(expr.name);
      case Expr::Kind::kAttr: {
        const Value subject = evaluate(*expr.children[0]);
        return get_item(subject, Value::of_string(expr.name), expr.offset, /*attribute=*/true);
      }
      case Expr::Kind::kItem: {
        const Value subject = evaluate(*expr.children[0]);
        return get_item(subject, evaluate(*expr.children[1]), expr.offset, /*attribute=*/false);
      }
      case Expr::Kind::kSlice: return evaluate_slice(expr);
      case Expr::Kind::kCall: return evaluate_call(expr);
      case Expr::Kind::kFilter: return evaluate_filter(expr);
      case Expr::Kind::kTest: {
        const bool result = evaluate_test(expr);
        return Value::of_bool(expr.negated ? !result : result);
      }
      case Expr::Kind::kNot: return Value::of_bool(!truthy(evaluate(*expr.children[0])));
      case Expr::Kind::kNeg: {
        const Value operand = evaluate(*expr.children[0]);
        if (operand.kind == Value::Kind::kFloat) return Value::of_float(-operand.number);
        if (operand.is_number()) return Value::of_int(-operand.as_int());
        fail(expr.offset, str_cat("cannot negate a ", kind_name(operand)));
      }
      case Expr::Kind::kAnd: {
        Value left = evaluate(*expr.children[0]);
        return truthy(left) ? evaluate(*expr.children[1]) : left;
      }
      case Expr::Kind::kOr: {
        Value left = evaluate(*expr.children[0]);
        return truthy(left) ? left : evaluate(*expr.children[1]);
      }
      case Expr::Kind::kConditional:
        if (truthy(evaluate(*expr.children[0]))) return evaluate(*expr.children[1]);
        return expr.children.size() > 2 ? evaluate(*expr.children[2]) : Value();
      case Expr::Kind::kBinary: return evaluate_binary(expr);
      case Expr::Kind::kList: {
        List items;
        for (const auto& child : expr.children) items.push_back(evaluate(*child));
        return Value::of_list(std::move(items));
      }
      case Expr::Kind::kDict: {
        Dict items;
        for (size_t i = 0; i + 1 < expr.children.size(); i += 2) {
          const Value key = evaluate(*expr.children[i]);
          if (!key.is_string()) fail(expr.children[i]->offset, "dict keys must be strings");
          set_item(items, key.text, evaluate(*expr.children[i + 1]));
        }
        return Value::of_dict(std::move(items));
      }
    }
    fail(expr.offset, "unsupported expression");
  }

  static int64_t normalize_index(int64_t index, int64_t size) { return index < 0 ? index + size : index; }

  Value get_item(const Value& subject, const Value& key, size_t offset, bool attribute) {
    switch (subject.kind) {
      case Value::Kind::kUndefined:
        fail(offset,
             str_cat("undefined value has no ", attribute ? "attribute '" : "item '", to_string_value(key).text, "'"));
      case Value::Kind::kDict:
        if (key.is_string())
          if (const Value* found = subject.find(key.text)) return *found;
        return Value();
      case Value::Kind::kList:
      case Value::Kind::kString: {
        if (!key.is_number() || key.kind == Value::Kind::kFloat) {
          if (attribute) return Value();  // e.g. a method name read without a call
          fail(offset, str_cat("a ", kind_name(subject), " index must be an integer, found a ", kind_name(key)));
        }
        const List string_items = subject.is_string() ? characters(subject) : List();
        const List& items = subject.is_string() ? string_items : *subject.list;
        const int64_t index = normalize_index(key.as_int(), static_cast<int64_t>(items.size()));
        if (index < 0 || index >= static_cast<int64_t>(items.size())) return Value();
        return items[static_cast<size_t>(index)];
      }
      default: return Value();
    }
  }

  Value evaluate_slice(const Expr& expr) {
    const Value subject = evaluate(*expr.children[0]);
    std::optional<int64_t> bounds[3];
    size_t child = 1;
    for (int k = 0; k < 3; ++k) {
      if (!expr.has_slice_part[k]) continue;
      const Value v = evaluate(*expr.children[child++]);
      if (v.kind == Value::Kind::kNone) continue;
      if (!v.is_number() || v.kind == Value::Kind::kFloat) fail(expr.offset, "slice bounds must be integers");
      bounds[k] = v.as_int();
    }
    const int64_t step = bounds[2].value_or(1);
    if (step == 0) fail(expr.offset, "slice step cannot be zero");
    if (subject.kind != Value::Kind::kList && !subject.is_string())
      fail(expr.offset, str_cat("cannot slice a ", kind_name(subject)));
    const List string_items = subject.is_string() ? characters(subject) : List();
    const List& items = subject.is_string() ? string_items : *subject.list;
    const int64_t size = static_cast<int64_t>(items.size());
    // Python's slice.indices().
    auto clamp = [&](std::optional<int64_t> bound, int64_t fallback) {
      if (!bound) return fallback;
      int64_t v = *bound < 0 ? *bound + size : *bound;
      if (step > 0) return std::clamp<int64_t>(v, 0, size);
      return std::clamp<int64_t>(v, -1, size - 1);
    };
    const int64_t start = clamp(bounds[0], step > 0 ? 0 : size - 1);
    const int64_t stop = clamp(bounds[1], step > 0 ? size : -1);
    std::vector<int64_t> indices;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) indices.push_back(i);
    if (subject.kind == Value::Kind::kList) {
      List sliced;
      for (int64_t i : indices) sliced.push_back(items[static_cast<size_t>(i)]);
      return Value::of_list(std::move(sliced));
    }
    MarkedText out;
    for (int64_t i : indices) out.append(items[static_cast<size_t>(i)]);
    return std::move(out).to_value();
  }

  Value evaluate_binary(const Expr& expr) {
    const std::string& op = expr.name;
    const Value left = evaluate(*expr.children[0]);
    const Value right = evaluate(*expr.children[1]);
    if (op == "==") return Value::of_bool(equal(left, right));
    if (op == "!=") return Value::of_bool(!equal(left, right));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (right.is_string()) {
        if (!left.is_string())
          fail(expr.offset, str_cat("'in <string>' needs a string on the left, found a ", kind_name(left)));
        found = right.text.find(left.text) != std::string::npos;
      } else if (right.kind == Value::Kind::kList) {
        for (const Value& item : *right.list) found = found || equal(left, item);
      } else if (right.kind == Value::Kind::kDict) {
        found = left.is_string() && right.find(left.text) != nullptr;
      } else if (right.kind != Value::Kind::kUndefined) {
        fail(expr.offset, str_cat("'in' needs a string, list or dict on the right, found a ", kind_name(right)));
      }
      return Value::of_bool(op == "in" ? found : !found);
    }
    if (op == "~") {
      MarkedText out;
      append_str(left, out);
      append_str(right, out);
      return std::move(out).to_value();
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int comparison;
      if (left.is_number() && right.is_number()) {
        const double a = left.as_double(), b = right.as_double();
        comparison = a < b ? -1 : a > b ? 1 : 0;
      } else if (left.is_string() && right.is_string()) {
        comparison = left.text.compare(right.text);
      } else {
        fail(expr.offset, str_cat("cannot compare a ", kind_name(left), " with a ", kind_name(right)));
      }
      return Value::of_bool(op == "<"    ? comparison < 0
                            : op == ">"  ? comparison > 0
                            : op == "<=" ? comparison <= 0
                                         : comparison >= 0);
    }
    if (op == "+") {
      if (left.is_string() && right.is_string()) {
        MarkedText out;
        out.append(left);
        out.append(right);
        return std::move(out).to_value();
      }
      if (left.kind == Value::Kind::kList && right.kind == Value::Kind::kList) {
        List items = *left.list;
        items.insert(items.end(), right.list->begin(), right.list->end());
        return Value::of_list(std::move(items));
      }
    }
    if (left.is_number() && right.is_number()) {
      const bool floats = left.kind == Value::Kind::kFloat || right.kind == Value::Kind::kFloat;
      const double a = left.as_double(), b = right.as_double();
      const int64_t x = left.as_int(), y = right.as_int();
      if (op == "+") return floats ? Value::of_float(a + b) : Value::of_int(x + y);
      if (op == "-") return floats ? Value::of_float(a - b) : Value::of_int(x - y);
      if (op == "*") return floats ? Value::of_float(a * b) : Value::of_int(x * y);
      if (op == "**")
        return floats || y < 0 ? Value::of_float(std::pow(a, b))
                               : Value::of_int(static_cast<int64_t>(std::llround(std::pow(a, b))));
      if (b == 0) fail(expr.offset, "division by zero");
      if (op == "/") return Value::of_float(a / b);
      if (op == "//") {
        if (floats) return Value::of_float(std::floor(a / b));
        int64_t q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
        return Value::of_int(q);
      }
      if (op == "%") {
        if (floats) return Value::of_float(a - b * std::floor(a / b));
        int64_t r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) r += y;
        return Value::of_int(r);
      }
    }
    if (op == "*" && left.is_string() && right.kind == Value::Kind::kInt) {
      MarkedText out;
      for (int64_t i = 0; i < right.integer; ++i) out.append(left);
      return std::move(out).to_value();
    }
    fail(expr.offset, str_cat("unsupported operands for '", op, "': ", kind_name(left), " and ", kind_name(right)));
  }

  std::vector<Value> positional(const Expr& expr, size_t first) {
    std::vector<Value> args;
    for (size_t i = first; i < expr.children.size(); ++i) args.push_back(evaluate(*expr.children[i]));
    return args;
  }

  std::optional<Value> keyword(const Expr& expr, const std::string& name) {
    for (const auto& [key, value] : expr.keywords)
      if (key == name) return evaluate(*value);
    return std::nullopt;
  }

  void expect_args(const Expr& expr, const std::string& what, const std::vector<Value>& args, size_t least,
                   size_t most) {
    if (args.size() < least || args.size() > most)
      fail(expr.offset, str_cat(what, " takes ", least == most ? std::to_string(least) : str_cat(least, " to ", most),
                                " arguments, found ", args.size()));
  }

  Value string_argument(const Expr& expr, const std::string& what, const Value& value) {
    if (!value.is_string())
      fail(expr.offset, str_cat(what, ": expected a string argument, found a ", kind_name(value)));
    return value;
  }

  // str.strip / lstrip / rstrip: Unicode whitespace, or the code points in `chars`.
  static Value strip(const Value& s, bool left, bool right, const std::optional<std::string>& chars) {
    const List pieces = characters(s);
    const List strip_set = chars ? characters(Value::of_string(*chars)) : List();
    auto strippable = [&](const Value& piece) {
      if (!chars) return is_python_space(std::string_view(piece.text));
      return std::any_of(strip_set.begin(), strip_set.end(), [&](const Value& c) { return c.text == piece.text; });
    };
    size_t begin = 0, end = pieces.size();
    if (left)
      while (begin < end && strippable(pieces[begin])) ++begin;
    if (right)
      while (end > begin && strippable(pieces[end - 1])) --end;
    MarkedText out;
    for (size_t i = begin; i < end; ++i) out.append(pieces[i]);
    return std::move(out).to_value();
  }

  static Value replace_all(const Value& s, const Value& old_text, const Value& new_text, int64_t count) {
    MarkedText out;
    size_t i = 0;
    int64_t done = 0;
    if (old_text.text.empty()) return s;
    while (true) {
      size_t found = (count < 0 || done < count) ? s.text.find(old_text.text, i) : std::string::npos;
      if (found == std::string::npos) {
        out.append(substring(s, i, s.text.size()));
        break;
      }
      out.append(substring(s, i, found));
      out.append(new_text);
      i = found + old_text.text.size();
      ++done;
    }
    return std::move(out).to_value();
  }

  static Value change_case(const Value& s, int mode) {  // 0 lower, 1 upper, 2 capitalize, 3 title
    Value out = s;
    bool word_start = true;
    for (size_t i = 0; i < out.text.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(out.text[i]);
      const bool letter = std::isalpha(c) != 0;
      bool upper = mode == 1 || (mode == 2 && i == 0) || (mode == 3 && word_start);
      out.text[i] = static_cast<char>(upper ? std::toupper(c) : std::tolower(c));
      word_start = !letter;
    }
    return out;
  }

  Value evaluate_call(const Expr& expr) {
    const Expr& callee = *expr.children[0];
    if (callee.kind == Expr::Kind::kAttr) {
      const Value subject = evaluate(*callee.children[0]);
      const std::string& method = callee.name;
      std::vector<Value> args = positional(expr, 1);
      const std::string what = str_cat(kind_name(subject), ".", method, "()");
      if (subject.is_string()) {
        if (method == "strip" || method == "lstrip" || method == "rstrip") {
          expect_args(expr, what, args, 0, 1);
          std::optional<std::string> chars;
          if (!args.empty() && args[0].kind != Value::Kind::kNone) chars = string_argument(expr, what, args[0]).text;
          return strip(subject, method != "rstrip", method != "lstrip", chars);
        }
        if (method == "startswith" || method == "endswith") {
          expect_args(expr, what, args, 1, 1);
          std::vector<std::string> candidates;
          if (args[0].kind == Value::Kind::kList)
            for (const Value& item : *args[0].list) candidates.push_back(string_argument(expr, what, item).text);
          else candidates.push_back(string_argument(expr, what, args[0]).text);
          for (const std::string& candidate : candidates)
            if (method == "startswith" ? subject.text.starts_with(candidate) : subject.text.ends_with(candidate))
              return Value::of_bool(true);
          return Value::of_bool(false);
        }
        if (method == "upper" || method == "lower" || method == "capitalize" || method == "title") {
          expect_args(expr, what, args, 0, 0);
          return change_case(subject, method == "lower" ? 0 : method == "upper" ? 1 : method == "capitalize" ? 2 : 3);
        }
        if (method == "replace") {
          expect_args(expr, what, args, 2, 3);
          return replace_all(subject, string_argument(expr, what, args[0]), string_argument(expr, what, args[1]),
                             args.size() > 2 ? args[2].as_int() : -1);
        }
        if (method == "split") {
          expect_args(expr, what, args, 0, 2);
          List parts;
          const int64_t max_split = args.size() > 1 ? args[1].as_int() : -1;
          if (args.empty() || args[0].kind == Value::Kind::kNone) {
            const List pieces = characters(subject);
            auto space = [&](size_t k) { return is_python_space(std::string_view(pieces[k].text)); };
            auto join = [&](size_t begin, size_t end) {
              MarkedText out;
              for (size_t k = begin; k < end; ++k) out.append(pieces[k]);
              return std::move(out).to_value();
            };
            size_t i = 0;
            int64_t done = 0;
            while (true) {
              while (i < pieces.size() && space(i)) ++i;
              if (i >= pieces.size()) break;
              if (max_split >= 0 && done == max_split) {
                parts.push_back(strip(join(i, pieces.size()), false, true, std::nullopt));
                break;
              }
              size_t j = i;
              while (j < pieces.size() && !space(j)) ++j;
              parts.push_back(join(i, j));
              ++done;
              i = j;
            }
          } else {
            const std::string separator = string_argument(expr, what, args[0]).text;
            if (separator.empty()) fail(expr.offset, "str.split(): empty separator");
            size_t i = 0;
            int64_t done = 0;
            while (true) {
              size_t found = (max_split < 0 || done < max_split) ? subject.text.find(separator, i) : std::string::npos;
              if (found == std::string::npos) {
                parts.push_back(substring(subject, i, subject.text.size()));
                break;
              }
              parts.push_back(substring(subject, i, found));
              i = found + separator.size();
              ++done;
            }
          }
          return Value::of_list(std::move(parts));
        }
      } else if (subject.kind == Value::Kind::kDict && !subject.is_namespace) {
        if (method == "items" || method == "keys" || method == "values") {
          expect_args(expr, what, args, 0, 0);
          List items;
          for (const auto& [key, item] : *subject.dict) {
            if (method == "keys") items.push_back(Value::of_string(key));
            else if (method == "values") items.push_back(item);
            else items.push_back(Value::of_list({Value::of_string(key), item}));
          }
          return Value::of_list(std::move(items));
        }
        if (method == "get") {
          expect_args(expr, what, args, 1, 2);
          if (args[0].is_string())
            if (const Value* found = subject.find(args[0].text)) return *found;
          return args.size() > 1 ? args[1] : Value::none();
        }
      }
      fail(callee.offset, str_cat("unsupported method ", what));
    }
    if (callee.kind != Expr::Kind::kName) fail(callee.offset, "only named functions and methods can be called");
    std::vector<Value> args = positional(expr, 1);
    if (callee.name == "raise_exception") {
      expect_args(expr, "raise_exception()", args, 1, 1);
      const Position p = position_of(source_, expr.offset);
      throw_bad_input(origin_, ": line ", p.line, " column ", p.column,
                      ": the chat template raised an exception: ", to_string_value(args[0]).text);
    }
    if (callee.name == "namespace") {
      Value ns = Value::of_dict();
      ns.is_namespace = true;
      for (const Value& arg : args) {
        if (arg.kind != Value::Kind::kDict) fail(expr.offset, "namespace() takes keyword arguments or a dict");
        for (const auto& [key, item] : *arg.dict) set_item(*ns.dict, key, item);
      }
      for (const auto& [key, value] : expr.keywords) set_item(*ns.dict, key, evaluate(*value));
      return ns;
    }
    if (callee.name == "range") {
      expect_args(expr, "range()", args, 1, 3);
      for (const Value& arg : args)
        if (arg.kind != Value::Kind::kInt) fail(expr.offset, "range() takes integers");
      const int64_t start = args.size() > 1 ? args[0].integer : 0;
      const int64_t stop = args.size() > 1 ? args[1].integer : args[0].integer;
      const int64_t step = args.size() > 2 ? args[2].integer : 1;
      if (step == 0) fail(expr.offset, "range() step cannot be zero");
      List items;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) items.push_back(Value::of_int(i));
      return Value::of_list(std::move(items));
    }
    fail(callee.offset, str_cat("unsupported function '", callee.name, "()'"));
  }

  Value evaluate_filter(const Expr& expr) {
    const Value subject = evaluate(*expr.children[0]);
    const std::vector<Value> args = positional(expr, 1);
    const std::string& name = expr.name;
    const std::string what = str_cat("filter '", name, "'");
    if (name == "trim") {
      expect_args(expr, what, args, 0, 1);
      std::optional<std::string> chars;
      if (!args.empty()) chars = string_argument(expr, what, args[0]).text;
      return strip(to_string_value(subject), true, true, chars);
    }
    if (name == "length" || name == "count") {
      if (subject.is_string()) {  // characters, not bytes
        int64_t characters = 0;
        for (unsigned char c : subject.text) characters += (c & 0xC0) != 0x80;
        return Value::of_int(characters);
      }
      if (subject.kind == Value::Kind::kList) return Value::of_int(static_cast<int64_t>(subject.list->size()));
      if (subject.kind == Value::Kind::kDict) return Value::of_int(static_cast<int64_t>(subject.dict->size()));
      if (subject.kind == Value::Kind::kUndefined) return Value::of_int(0);
      fail(expr.offset, str_cat("a ", kind_name(subject), " has no length"));
    }
    if (name == "tojson") {
      std::optional<int> indent;
      std::optional<Value> indent_value = keyword(expr, "indent");
      if (!indent_value && !args.empty()) indent_value = args[0];
      if (indent_value && indent_value->kind == Value::Kind::kInt) indent = static_cast<int>(indent_value->integer);
      std::string json;
      append_json(subject, json, indent, 0);
      const int32_t source = !subject.from_data.empty() ? subject.from_data.front()
                             : subject.kind == Value::Kind::kList || subject.kind == Value::Kind::kDict ? kFromOtherData
                                                                                                        : kFromTemplate;
      return Value::of_string(std::move(json), source);
    }
    if (name == "upper" || name == "lower" || name == "capitalize" || name == "title") {
      return change_case(to_string_value(subject), name == "lower"        ? 0
                                                   : name == "upper"      ? 1
                                                   : name == "capitalize" ? 2
                                                                          : 3);
    }
    if (name == "string") return to_string_value(subject);
    if (name == "safe") return subject;
    if (name == "int") {
      if (subject.is_number()) return Value::of_int(subject.as_int());
      if (subject.is_string()) {
        try {
          return Value::of_int(std::stoll(subject.text));
        } catch (const std::exception&) { return Value::of_int(0); }
      }
      return Value::of_int(0);
    }
    if (name == "float") {
      if (subject.is_number()) return Value::of_float(subject.as_double());
      return Value::of_float(0.0);
    }
    if (name == "default" || name == "d") {
      const Value fallback = args.empty() ? Value::of_string("") : args[0];
      const bool boolean = args.size() > 1 && truthy(args[1]);
      if (subject.kind == Value::Kind::kUndefined || (boolean && !truthy(subject))) return fallback;
      return subject;
    }
    if (name == "first" || name == "last") {
      if (subject.kind == Value::Kind::kList) {
        if (subject.list->empty()) return Value();
        return name == "first" ? subject.list->front() : subject.list->back();
      }
      if (subject.is_string()) {
        const List pieces = characters(subject);
        if (pieces.empty()) return Value();
        return name == "first" ? pieces.front() : pieces.back();
      }
      fail(expr.offset, str_cat(what, ": expected a list or string, found a ", kind_name(subject)));
    }
    if (name == "join") {
      if (subject.kind != Value::Kind::kList)
        fail(expr.offset, str_cat(what, ": expected a list, found a ", kind_name(subject)));
      const Value separator = args.empty() ? Value::of_string("") : to_string_value(args[0]);
      MarkedText out;
      for (size_t i = 0; i < subject.list->size(); ++i) {
        if (i > 0) out.append(separator);
        append_str((*subject.list)[i], out);
      }
      return std::move(out).to_value();
    }
    if (name == "list") {
      if (subject.kind == Value::Kind::kList) return subject;
      if (subject.is_string()) return Value::of_list(characters(subject));
      fail(expr.offset, str_cat(what, ": cannot make a list of a ", kind_name(subject)));
    }
    if (name == "items") {
      if (subject.kind != Value::Kind::kDict)
        fail(expr.offset, str_cat(what, ": expected a dict, found a ", kind_name(subject)));
      List items;
      for (const auto& [key, item] : *subject.dict) items.push_back(Value::of_list({Value::of_string(key), item}));
      return Value::of_list(std::move(items));
    }
    if (name == "replace") {
      expect_args(expr, what, args, 2, 3);
      return replace_all(to_string_value(subject), to_string_value(args[0]), to_string_value(args[1]),
                         args.size() > 2 ? args[2].as_int() : -1);
    }
    fail(expr.offset, str_cat("unsupported filter '", name, "'"));
  }

  bool evaluate_test(const Expr& expr) {
    const Value subject = evaluate(*expr.children[0]);
    const std::vector<Value> args = positional(expr, 1);
    const std::string& name = expr.name;
    if (name == "defined") return subject.kind != Value::Kind::kUndefined;
    if (name == "undefined") return subject.kind == Value::Kind::kUndefined;
    if (name == "none") return subject.kind == Value::Kind::kNone;
    if (name == "string") return subject.is_string();
    if (name == "number") return subject.kind == Value::Kind::kInt || subject.kind == Value::Kind::kFloat;
    if (name == "integer") return subject.kind == Value::Kind::kInt;
    if (name == "float") return subject.kind == Value::Kind::kFloat;
    if (name == "boolean") return subject.kind == Value::Kind::kBool;
    if (name == "true") return subject.kind == Value::Kind::kBool && subject.boolean;
    if (name == "false") return subject.kind == Value::Kind::kBool && !subject.boolean;
    if (name == "mapping") return subject.kind == Value::Kind::kDict;
    if (name == "sequence")
      return subject.kind == Value::Kind::kList || subject.is_string() || subject.kind == Value::Kind::kDict;
    if (name == "iterable")
      return subject.kind == Value::Kind::kList || subject.is_string() || subject.kind == Value::Kind::kDict;
    if (name == "odd" || name == "even") {
      if (!subject.is_number()) fail(expr.offset, str_cat("test '", name, "' needs a number"));
      return (subject.as_int() % 2 != 0) == (name == "odd");
    }
    if (name == "eq" || name == "equalto" || name == "==") {
      if (args.size() != 1) fail(expr.offset, str_cat("test '", name, "' takes one argument"));
      return equal(subject, args[0]);
    }
    if (name == "ne" || name == "!=") {
      if (args.size() != 1) fail(expr.offset, str_cat("test '", name, "' takes one argument"));
      return !equal(subject, args[0]);
    }
    fail(expr.offset, str_cat("unsupported test 'is ", name, "'"));
  }

  const std::string& source_;
  const std::string& origin_;
};

}  // namespace

namespace {

// Jinja's lexer first normalizes newlines (\r\n and \r become \n) and, with
// keep_trailing_newline=False (transformers' setting), drops one newline at the
// very end of the template (jinja2/lexer.py, Lexer.tokeniter).
std::string normalize_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source, std::string origin)
    : source_(normalize_newlines(source)), origin_(std::move(origin)) {
  Lexer lexer(source_, origin_);
  Parser parser(lexer.run(), lexer);
  body_ = parser.parse_template();
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

RenderedChat ChatTemplate::render(const ChatTemplateInputs& inputs) const {
  if (!inputs.messages.is_array()) throw_bad_input(origin_, ": messages must be a list");
  Renderer renderer(source_, origin_);
  renderer.scopes.emplace_back();
  std::map<std::string, Value>& globals = renderer.scopes.back();
  if (inputs.extra.is_object())
    for (const auto& [key, value] : inputs.extra.items()) globals[key] = from_json(value, kFromOtherData);
  List messages;
  for (size_t i = 0; i < inputs.messages.size(); ++i) {
    const nlohmann::ordered_json& message = inputs.messages[i];
    if (!message.is_object()) {
      messages.push_back(from_json(message, message_field_source(i)));
      continue;
    }
    // The content is told apart from the role and other fields for loss masks.
    Dict fields;
    for (const auto& [key, item] : message.items())
      fields.emplace_back(key, from_json(item, key == "content" ? message_content_source(i) : message_field_source(i)));
    messages.push_back(Value::of_dict(std::move(fields)));
  }
  globals["messages"] = Value::of_list(std::move(messages));
  globals["add_generation_prompt"] = Value::of_bool(inputs.add_generation_prompt);
  globals["bos_token"] = Value::of_string(inputs.bos_token);
  globals["eos_token"] = Value::of_string(inputs.eos_token);
  MarkedText out;
  renderer.render(body_, out);

  RenderedChat rendered;
  rendered.text = std::move(out.text);
  for (size_t i = 0; i < out.from_data.size();) {
    const int32_t source = out.from_data[i];
    size_t j = i;
    while (j < out.from_data.size() && out.from_data[j] == source) ++j;
    if (source > 0) rendered.content_spans.push_back({i, j, source - 1, /*from_content=*/true});
    else if (source < kFromOtherData) rendered.content_spans.push_back({i, j, -source - 2, /*from_content=*/false});
    else if (source == kFromOtherData) rendered.content_spans.push_back({i, j, -1, /*from_content=*/false});
    i = j;
  }
  return rendered;
}

namespace {

// A token field of tokenizer_config.json: a string, or an AddedToken object {"content": ...}.
std::string token_text(const nlohmann::json& config, const char* field, const std::filesystem::path& file) {
  if (!config.contains(field) || config[field].is_null()) return "";
  const nlohmann::json& value = config[field];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  throw_bad_input(file.string(), ": ", field, ": expected a string or {\"content\": string}, found ", value.dump());
}

}  // namespace

ModelChatTemplate load_chat_template(const std::filesystem::path& model_directory) {
  const std::filesystem::path config_path = model_directory / "tokenizer_config.json";
  nlohmann::json config = nlohmann::json::object();
  if (std::filesystem::exists(config_path)) {
    std::ifstream in(config_path);
    config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) throw_bad_input(config_path.string(), ": not a JSON object");
  }
  std::string source, origin;
  const std::filesystem::path jinja_path = model_directory / "chat_template.jinja";
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    const nlohmann::json& field = config["chat_template"];
    origin = config_path.string() + ": chat_template";
    if (field.is_string()) {
      source = field.get<std::string>();
    } else if (field.is_array()) {
      for (const nlohmann::json& entry : field)
        if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
            entry["template"].is_string())
          source = entry["template"].get<std::string>();
      if (source.empty())
        throw_bad_input(origin, ": a list of templates without one named \"default\" with a string \"template\"");
    } else {
      throw_bad_input(origin, ": expected a string or a list of {name, template}, found ", field.dump());
    }
  } else if (std::filesystem::exists(jinja_path)) {
    std::ifstream in(jinja_path, std::ios::binary);
    source.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    origin = jinja_path.string();
  } else {
    throw_bad_input(config_path.string(), ": no chat_template (and no chat_template.jinja in ",
                    model_directory.string(), "): this model has no chat format (--chat-template FILE gives one; `generate --prompt` needs none)");
  }
  return ModelChatTemplate{ChatTemplate(std::move(source), std::move(origin)),
                           token_text(config, "bos_token", config_path), token_text(config, "eos_token", config_path)};
}

std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const RenderedChat& rendered,
                                 bool special_tokens_in_content) {
  // Content with no special-token text tokenizes the same either way; then
  // the whole text goes through at once, exactly as transformers does it
  // (cutting it at content boundaries could change the pre-tokenizer's pieces).
  bool content_has_control_text = false;
  if (!special_tokens_in_content) {
    for (const auto& [begin, end, message, from_content] : rendered.content_spans) {
      const std::string_view span(rendered.text.data() + begin, end - begin);
      if (tokenizer.encode(span) != tokenizer.encode_ordinary(span)) {
        content_has_control_text = true;
        break;
      }
    }
  }
  if (!content_has_control_text) return tokenizer.encode(rendered.text);
  std::vector<int32_t> ids;
  size_t at = 0;
  auto append = [&](std::vector<int32_t> part) { ids.insert(ids.end(), part.begin(), part.end()); };
  for (const auto& [begin, end, message, from_content] : rendered.content_spans) {
    if (begin > at) append(tokenizer.encode(std::string_view(rendered.text).substr(at, begin - at)));
    append(tokenizer.encode_ordinary(std::string_view(rendered.text).substr(begin, end - begin)));
    at = end;
  }
  if (at < rendered.text.size()) append(tokenizer.encode(std::string_view(rendered.text).substr(at)));
  return ids;
}

}  // namespace llmft
