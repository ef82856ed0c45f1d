// Python-like values of the chat-template engine and the budget that bounds
// one render (data/chat_template_internal.h).
#include <string.h>  // memmem

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "data/chat_template_internal.h"

namespace llmft::chat_template_internal {

// ---- Limits of one render -------------------------------------------------------------

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// "(--template-limits output_mb=N raises it)": how a user lifts the limit.
std::string raise_hint(std::string_view key) { return str_cat("(--template-limits ", key, "=N raises it)"); }

uint64_t saturating_add(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max() : a + b;
}

}  // namespace

std::string byte_count(uint64_t bytes) {
  if (bytes >= kMiB && bytes % kMiB == 0) return str_cat(bytes / kMiB, " MiB");
  return str_cat(bytes, " bytes");
}

void RenderBudget::check_size(uint64_t bytes, std::string_view what) const {
  const uint64_t limit = static_cast<uint64_t>(limits_.max_output_bytes);
  if (bytes > limit)
    throw TemplateError{str_cat(what, " would be ", bytes, " bytes, longer than the limit of ", byte_count(limit),
                                " ", raise_hint("output_mb"))};
}

void RenderBudget::check_list_items(uint64_t count, std::string_view what) const {
  const uint64_t limit = static_cast<uint64_t>(limits_.max_range);
  if (count > limit)
    throw TemplateError{str_cat(what, " would have ", count, " items, more than the limit of ", limit,
                                ", which Jinja's sandbox puts on range() ", raise_hint("range"))};
}

void RenderBudget::charge_bytes(uint64_t bytes) {
  bytes_built_ = saturating_add(bytes_built_, bytes);
  const uint64_t limit = static_cast<uint64_t>(limits_.max_bytes_built);
  if (bytes_built_ > limit)
    throw TemplateError{str_cat("this render has built or copied more than ", byte_count(limit),
                                " of strings and lists, the limit ", raise_hint("built_mb"))};
}

void RenderBudget::charge_iterations(uint64_t count) {
  iterations_ = saturating_add(iterations_, count);
  const uint64_t limit = static_cast<uint64_t>(limits_.max_loop_iterations);
  if (iterations_ > limit)
    throw TemplateError{str_cat("this render passed the limit of ", limit,
                                " loop iterations (each statement and expression run in a loop body counts as one) ",
                                raise_hint("loop_iterations"))};
}

// ---- Values ------------------------------------------------------------------------

Value Value::none() {
  Value v;
  v.kind = Kind::kNone;
  return v;
}

Value Value::of_bool(bool b) {
  Value v;
  v.kind = Kind::kBool;
  v.boolean = b;
  return v;
}

Value Value::of_int(int64_t i) {
  Value v;
  v.kind = Kind::kInt;
  v.integer = i;
  return v;
}

Value Value::of_float(double d) {
  Value v;
  v.kind = Kind::kFloat;
  v.number = d;
  return v;
}

Value Value::of_string(std::string s, int32_t source) {
  Value v;
  v.kind = Kind::kString;
  if (source != kFromTemplate && !s.empty()) v.from_data.assign(s.size(), source);
  v.text = std::move(s);
  return v;
}

Value Value::of_list(List items) {
  Value v;
  v.kind = Kind::kList;
  int32_t deepest = 0;
  for (const Value& item : items) deepest = std::max(deepest, item.depth);
  v.depth = deepest + 1;
  v.list = std::make_shared<List>(std::move(items));
  return v;
}

Value Value::of_dict(Dict items) {
  Value v;
  v.kind = Kind::kDict;
  int32_t deepest = 0;
  for (const auto& [key, item] : items) deepest = std::max(deepest, item.depth);
  v.depth = deepest + 1;
  v.dict = std::make_shared<Dict>(std::move(items));
  return v;
}

int64_t Value::as_int() const {
  if (kind == Kind::kBool) return boolean ? 1 : 0;
  if (kind != Kind::kFloat) return integer;
  // Saturate instead of the undefined behaviour of an out-of-range cast.
  if (std::isnan(number)) return 0;
  if (number >= 9223372036854775808.0) return std::numeric_limits<int64_t>::max();
  if (number < -9223372036854775808.0) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(number);
}

const Value* Value::find(std::string_view key) const {
  if (kind != Kind::kDict) return nullptr;
  for (const auto& [name, value] : *dict)
    if (name == key) return &value;
  return nullptr;
}

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

void MarkedText::append(std::string_view piece, const std::vector<int32_t>& marks) {
  append_marked(piece, marks.empty() ? nullptr : marks.data());
}

void MarkedText::append_marked(std::string_view piece, const int32_t* marks) {
  budget_.check_size(static_cast<uint64_t>(text.size()) + piece.size(), what_);
  const bool start_marks = marks != nullptr && !any_data;
  const bool marked = any_data || marks != nullptr;
  budget_.charge_bytes(piece.size() * (marked ? 1 + sizeof(int32_t) : 1) +
                       (start_marks ? text.size() * sizeof(int32_t) : 0));
  if (start_marks) {
    from_data.assign(text.size(), kFromTemplate);
    any_data = true;
  }
  text.append(piece);
  if (any_data) {
    if (marks == nullptr) from_data.insert(from_data.end(), piece.size(), kFromTemplate);
    else from_data.insert(from_data.end(), marks, marks + piece.size());
  }
}

void MarkedText::append_repeated(const Value& piece, int64_t times) {
  if (times <= 0 || piece.text.empty()) return;
  // The size it would reach, checked before anything grows (saturating: "x" * 10**18).
  const uint64_t count = static_cast<uint64_t>(times);
  const uint64_t piece_size = piece.text.size();
  const uint64_t added = count > std::numeric_limits<uint64_t>::max() / piece_size
                             ? std::numeric_limits<uint64_t>::max()
                             : count * piece_size;
  budget_.check_size(saturating_add(text.size(), added), what_);
  if (piece.from_data.empty() && !any_data) {  // the common case: template text, one allocation
    budget_.charge_bytes(added);
    text.reserve(text.size() + added);
    for (uint64_t i = 0; i < count; ++i) text += piece.text;
    return;
  }
  for (uint64_t i = 0; i < count; ++i) append(piece);
}

void MarkedText::append_part(const Value& s, size_t begin, size_t end) {
  append_marked(std::string_view(s.text).substr(begin, end - begin),
                s.from_data.empty() ? nullptr : s.from_data.data() + begin);
}

Value MarkedText::to_value() && {
  Value v = Value::of_string(std::move(text));
  if (any_data) v.from_data = std::move(from_data);
  return v;
}

Value substring(const Value& s, size_t begin, size_t end, RenderBudget& budget) {
  budget.charge_bytes((end - begin) * (s.from_data.empty() ? 1 : 1 + sizeof(int32_t)));
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
    if (std::strtod(out.str().c_str(), nullptr) == d) return out.str();  // not stod: it throws on subnormals
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

void append_str(const Value& value, MarkedText& out, bool repr) {
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

Value to_string_value(const Value& value, RenderBudget& budget) {
  if (value.is_string()) {
    budget.charge_bytes(value.copy_bytes());
    return value;
  }
  MarkedText out(budget);
  append_str(value, out);
  return std::move(out).to_value();
}

namespace {

// Writes JSON into a string that stays within the budget's output bound.
class JsonWriter {
 public:
  JsonWriter(std::optional<int64_t> indent, RenderBudget& budget) : indent_(indent), budget_(budget) {}

  void write(const Value& value, int64_t level) {
    switch (value.kind) {
      case Value::Kind::kUndefined:
      case Value::Kind::kNone: put("null"); return;
      case Value::Kind::kBool: put(value.boolean ? "true" : "false"); return;
      case Value::Kind::kInt: put(std::to_string(value.integer)); return;
      case Value::Kind::kFloat: put(python_float(value.number)); return;
      case Value::Kind::kString: write_string(value.text); return;
      case Value::Kind::kList: {
        if (value.list->empty()) {
          put("[]");
          return;
        }
        put("[");
        for (size_t i = 0; i < value.list->size(); ++i) {
          if (i > 0) put(indent_ ? "," : ", ");
          newline(level + 1);
          write((*value.list)[i], level + 1);
        }
        newline(level);
        put("]");
        return;
      }
      case Value::Kind::kDict: {
        if (value.dict->empty()) {
          put("{}");
          return;
        }
        put("{");
        bool first = true;
        for (const auto& [key, item] : *value.dict) {
          if (!first) put(indent_ ? "," : ", ");
          first = false;
          newline(level + 1);
          write_string(key);
          put(": ");
          write(item, level + 1);
        }
        newline(level);
        put("}");
        return;
      }
    }
  }

  std::string take() && {
    budget_.charge_bytes(out_.size());
    return std::move(out_);
  }

 private:
  void reserve(uint64_t more) { budget_.check_size(static_cast<uint64_t>(out_.size()) + more, "a tojson result"); }
  void put(std::string_view piece) {
    reserve(piece.size());
    out_ += piece;
  }

  // Python's json.dumps: a newline and indent * level spaces (none for a
  // negative indent, which Python multiplies into an empty string).
  void newline(int64_t level) {
    if (!indent_) return;
    // Capped at the bound before multiplying (levels are few), so the product cannot overflow.
    const uint64_t spaces_per_level = std::min<uint64_t>(static_cast<uint64_t>(std::max<int64_t>(*indent_, 0)),
                                                         static_cast<uint64_t>(budget_.limits().max_output_bytes) + 1);
    const uint64_t spaces = spaces_per_level * static_cast<uint64_t>(level);
    reserve(1 + spaces);
    out_ += '\n';
    out_.append(static_cast<size_t>(spaces), ' ');
  }

  void write_string(const std::string& text) {
    put("\"");
    for (unsigned char c : text) {
      switch (c) {
        case '"': put("\\\""); break;
        case '\\': put("\\\\"); break;
        case '\n': put("\\n"); break;
        case '\r': put("\\r"); break;
        case '\t': put("\\t"); break;
        case '\b': put("\\b"); break;
        case '\f': put("\\f"); break;
        default:
          if (c < 0x20) {
            char buffer[8];
            std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
            put(buffer);
          } else {
            reserve(1);
            out_ += static_cast<char>(c);
          }
      }
    }
    put("\"");
  }

  std::optional<int64_t> indent_;
  RenderBudget& budget_;
  std::string out_;
};

}  // namespace

std::string to_json(const Value& value, std::optional<int64_t> indent, RenderBudget& budget) {
  JsonWriter writer(indent, budget);
  writer.write(value, 0);
  return std::move(writer).take();
}

namespace {

Value from_json_at(const nlohmann::ordered_json& json, int32_t source, int64_t depth, int64_t max_depth) {
  if ((json.is_array() || json.is_object()) && depth >= max_depth)
    throw TemplateError{str_cat("the template's inputs (messages, variables) nest deeper than ", max_depth, " levels")};
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::of_bool(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
    case nlohmann::ordered_json::value_t::number_unsigned: return Value::of_int(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_float: return Value::of_float(json.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::of_string(json.get<std::string>(), source);
    case nlohmann::ordered_json::value_t::array: {
      List items;
      for (const auto& item : json) items.push_back(from_json_at(item, source, depth + 1, max_depth));
      return Value::of_list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict items;
      for (const auto& [key, item] : json.items())
        items.emplace_back(key, from_json_at(item, source, depth + 1, max_depth));
      return Value::of_dict(std::move(items));
    }
    default: return Value();
  }
}

}  // namespace

Value from_json(const nlohmann::ordered_json& json, int32_t source, int64_t max_depth) {
  return from_json_at(json, source, 0, max_depth);
}

bool equal(const Value& a, const Value& b, RenderBudget& budget) {
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
      if (a.list == b.list) return true;
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i) {
        budget.charge_iterations(1);
        if (!equal((*a.list)[i], (*b.list)[i], budget)) return false;
      }
      return true;
    case Value::Kind::kDict:
      if (a.dict == b.dict) return true;
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [key, item] : *a.dict) {
        budget.charge_iterations(b.dict->size());  // find() walks the keys
        const Value* other = b.find(key);
        if (other == nullptr || !equal(item, *other, budget)) return false;
      }
      return true;
    default: return false;
  }
}

// ---- Strings as Python sees them: code points --------------------------------------

bool is_python_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// str.isspace: the ASCII ones, U+001C..U+001F, U+0085, U+00A0, U+1680,
// U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
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

size_t code_point_count(std::string_view text) {
  size_t count = 0;
  for (size_t i = 0; i < text.size(); i = next_code_point(text, i)) ++count;
  return count;
}

size_t code_point_offset(std::string_view text, size_t index) {
  size_t at = 0;
  for (size_t k = 0; k < index && at < text.size(); ++k) at = next_code_point(text, at);
  return at;
}

List characters(const Value& s, RenderBudget& budget) {
  const size_t count = code_point_count(s.text);
  budget.check_list_items(count, "the characters of a string");
  budget.charge_bytes(count * sizeof(Value) + s.copy_bytes());
  List items;
  items.reserve(count);
  for (size_t i = 0; i < s.text.size();) {
    const size_t end = next_code_point(s.text, i);
    Value piece = Value::of_string(s.text.substr(i, end - i));
    if (!s.from_data.empty())
      piece.from_data.assign(s.from_data.begin() + static_cast<std::ptrdiff_t>(i),
                             s.from_data.begin() + static_cast<std::ptrdiff_t>(end));
    items.push_back(std::move(piece));
    i = end;
  }
  return items;
}

size_t find_text(std::string_view haystack, std::string_view needle, size_t from) {
  if (from > haystack.size()) return std::string_view::npos;
  if (needle.empty()) return from;
  // glibc's memmem is the two-way algorithm (linear time); std::string::find
  // compares at every position and is quadratic on "aaaa…b" needles.
  const void* found = memmem(haystack.data() + from, haystack.size() - from, needle.data(), needle.size());
  if (found == nullptr) return std::string_view::npos;
  return static_cast<size_t>(static_cast<const char*>(found) - haystack.data());
}

}  // namespace llmft::chat_template_internal
