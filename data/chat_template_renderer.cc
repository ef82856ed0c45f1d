// The chat-template renderer (data/chat_template_internal.h): a tree-walking
// evaluator over Python-like values, within a RenderBudget. Every string it
// builds goes through MarkedText, which checks the size it would reach before
// growing; lists check their item count before they are made; copies of
// strings (a variable read, a loop variable, an item) are charged as bytes
// built; loop iterations and the items `in`, `==` and join step through are
// charged as iterations. A TemplateError from below becomes kBadInput at the
// innermost expression or statement being rendered.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <unordered_set>

#include "core/error.h"
#include "data/chat_template_internal.h"

namespace llmft::chat_template_internal {
namespace {

enum class LoopSignal { kNone, kBreak, kContinue };

// The variables of one scope, in the order they were set. Scopes hold a
// handful of names, so a flat vector beats a map, and a loop reuses one for
// all its iterations without allocating.
using Scope = std::vector<std::pair<std::string, Value>>;

class Renderer {
 public:
  Renderer(const std::string& source, const std::string& origin, RenderBudget& budget)
      : source_(source), origin_(origin), budget_(budget) {}

  [[noreturn]] void fail(size_t offset, const std::string& message) const {
    const Position p = position_of(source_, offset);
    throw_bad_input(origin_, ": line ", p.line, " column ", p.column, ": ", message);
  }

  std::vector<Scope> scopes;

  LoopSignal render(const std::vector<std::unique_ptr<Node>>& nodes, MarkedText& out) {
    for (const auto& node : nodes) {
      const LoopSignal signal = render(*node, out);
      if (signal != LoopSignal::kNone) return signal;
    }
    return LoopSignal::kNone;
  }

 private:
  const ChatTemplateLimits& limits() const { return budget_.limits(); }

  // A copy of a value that is kept (read from a variable, an item, a literal):
  // a string's bytes are copied, so they count as built.
  Value copy_of(const Value& value) {
    budget_.charge_bytes(value.copy_bytes());
    return value;
  }

  // A list of `items`, after checking their count; the Values are charged as built.
  Value new_list(List items, std::string_view what) {
    budget_.check_list_items(items.size(), what);
    budget_.charge_bytes(items.size() * sizeof(Value));
    return Value::of_list(std::move(items));
  }

  // Namespaces are the one mutable value; keeping them out of lists, dicts
  // and other namespaces means no value can contain itself.
  void check_not_namespace(const Value& value, size_t offset, std::string_view where) {
    if (value.kind == Value::Kind::kDict && value.is_namespace)
      fail(offset, str_cat("a namespace() cannot be stored in ", where));
  }

  LoopSignal render(const Node& node, MarkedText& out) {
    try {
      if (loop_depth_ > 0) budget_.charge_iterations(1);  // a long loop body is as much work as many iterations
      return render_node(node, out);
    } catch (const TemplateError& error) { fail(node.offset, error.message); }
  }

  LoopSignal render_node(const Node& node, MarkedText& out) {
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
          set_variable(scopes.back(), node.targets[0], std::move(value));
        } else {
          const Value target = lookup(node.targets[0]);
          if (target.kind != Value::Kind::kDict || !target.is_namespace)
            fail(node.offset, str_cat("'", node.targets[0], "' is not a namespace(): cannot set an attribute on a ",
                                      kind_name(target)));
          check_not_namespace(value, node.offset, "a namespace()");
          // A namespace outlives loop iterations, so `set ns.x = [ns.x]` in a
          // loop is the one way a value can keep growing deeper.
          if (value.depth + 1 > limits().max_nesting_depth)
            fail(node.offset, str_cat("a value nested deeper than ", limits().max_nesting_depth,
                                      " levels (--template-limits depth=N raises it)"));
          set_item(*target.dict, node.targets[1], std::move(value));
        }
        return LoopSignal::kNone;
      }
      case Node::Kind::kSetBlock: {
        MarkedText captured(budget_, "a {% set %} block");
        render(node.body, captured);
        set_variable(scopes.back(), node.targets[0], std::move(captured).to_value());
        return LoopSignal::kNone;
      }
      case Node::Kind::kBody: return render(node.body, out);
      case Node::Kind::kBreak: return LoopSignal::kBreak;
      case Node::Kind::kContinue: return LoopSignal::kContinue;
    }
    return LoopSignal::kNone;
  }

  // Scopes and dicts are small vectors searched in order; a template that
  // makes them long pays for the search in its budget.
  void set_variable(Scope& scope, const std::string& name, Value value) {
    budget_.charge_iterations(scope.size() / 32);
    for (auto& [key, item] : scope)
      if (key == name) {
        item = std::move(value);
        return;
      }
    scope.emplace_back(name, std::move(value));
  }

  void set_item(Dict& dict, const std::string& key, Value value) {
    budget_.charge_iterations(dict.size());
    for (auto& [name, item] : dict)
      if (name == key) {
        item = std::move(value);
        return;
      }
    dict.emplace_back(key, std::move(value));
  }

  LoopSignal render_for(const Node& node, MarkedText& out) {
    const Value iterable = evaluate(*node.expr);
    // A list is iterated in place (lists are never mutated), not copied.
    std::shared_ptr<const List> items;
    if (iterable.kind == Value::Kind::kList) {
      items = iterable.list;
    } else if (iterable.kind == Value::Kind::kDict && !iterable.is_namespace) {
      List keys;
      for (const auto& [key, item] : *iterable.dict) keys.push_back(Value::of_string(key));
      items = new_list(std::move(keys), "the keys of a dict").list;
    } else if (iterable.is_string()) {
      try {
        items = std::make_shared<const List>(characters(iterable, budget_));
      } catch (const TemplateError& error) { fail(node.expr->offset, error.message); }
    } else if (iterable.kind == Value::Kind::kNone) {
      fail(node.expr->offset, "cannot iterate over none");
    } else if (iterable.kind != Value::Kind::kUndefined) {
      fail(node.expr->offset, str_cat("cannot iterate over a ", kind_name(iterable)));
    } else {
      items = std::make_shared<const List>();
    }

    // One scope serves every iteration: the loop variables, then `loop`; what
    // the body sets is dropped before the next iteration, as if each had a
    // scope of its own (Jinja's loop scoping). Nothing is allocated per
    // iteration but copies of the items.
    class LoopScope {
     public:
      LoopScope(Renderer& renderer, const Node& node, std::optional<Value> loop)
          : renderer_(renderer), node_(node), loop_(std::move(loop)) {
        Scope scope;
        for (const std::string& target : node.targets) scope.emplace_back(target, Value());
        if (loop_) scope.emplace_back("loop", *loop_);
        renderer_.scopes.push_back(std::move(scope));
        index_ = renderer_.scopes.size() - 1;
        size_ = renderer_.scopes[index_].size();
      }
      ~LoopScope() { renderer_.scopes.pop_back(); }
      LoopScope(const LoopScope&) = delete;
      LoopScope& operator=(const LoopScope&) = delete;

      // Sets the loop variables (one name, or a list item unpacked into several).
      void bind(const Value& item) {
        Scope& scope = renderer_.scopes[index_];
        if (scope.size() != size_ || (loop_ && scope.back().second.dict != loop_->dict)) {
          scope.erase(scope.begin() + static_cast<std::ptrdiff_t>(size_), scope.end());  // what the body set
          if (loop_) scope.back() = {"loop", *loop_};
        }
        const std::vector<std::string>& targets = node_.targets;
        if (targets.size() == 1) {
          renderer_.budget_.charge_bytes(item.copy_bytes());
          scope[0].second = item;
          return;
        }
        if (item.kind != Value::Kind::kList || item.list->size() != targets.size())
          renderer_.fail(node_.offset, str_cat("cannot unpack a ", kind_name(item), " into ", targets.size(),
                                               " loop variables"));
        for (size_t k = 0; k < targets.size(); ++k) scope[k].second = renderer_.copy_of((*item.list)[k]);
      }

     private:
      Renderer& renderer_;
      const Node& node_;
      std::optional<Value> loop_;
      size_t index_ = 0, size_ = 0;
    };

    // Counting steps inside loops bounds all work: what runs outside any loop
    // runs once, so it is bounded by the template's own size.
    struct InLoop {
      int& depth;
      explicit InLoop(int& d) : depth(++d) {}
      ~InLoop() { --depth; }
    };
    if (node.filter) {  // `for x in xs if cond`: the loop sees only the kept items
      const InLoop in_loop(loop_depth_);
      LoopScope filter_scope(*this, node, std::nullopt);
      List kept;
      for (const Value& item : *items) {
        budget_.charge_iterations(1);
        filter_scope.bind(item);
        if (truthy(evaluate(*node.filter))) kept.push_back(copy_of(item));
      }
      items = new_list(std::move(kept), "a filtered loop").list;
    }
    if (items->empty()) return render(node.else_body, out);
    const int64_t length = static_cast<int64_t>(items->size());
    // `loop` is one dict updated in place, as Jinja's LoopContext is one
    // object; previtem and nextitem are undefined where there is none.
    Value loop = Value::of_dict({{"index", Value::of_int(0)},
                                 {"index0", Value::of_int(0)},
                                 {"revindex", Value::of_int(0)},
                                 {"revindex0", Value::of_int(0)},
                                 {"first", Value::of_bool(false)},
                                 {"last", Value::of_bool(false)},
                                 {"length", Value::of_int(length)},
                                 {"previtem", Value()},
                                 {"nextitem", Value()}});
    LoopScope loop_scope(*this, node, loop);
    const InLoop in_loop(loop_depth_);
    Dict& fields = *loop.dict;
    for (int64_t i = 0; i < length; ++i) {
      budget_.charge_iterations(1);
      loop_scope.bind((*items)[static_cast<size_t>(i)]);
      fields[0].second.integer = i + 1;
      fields[1].second.integer = i;
      fields[2].second.integer = length - i;
      fields[3].second.integer = length - i - 1;
      fields[4].second.boolean = i == 0;
      fields[5].second.boolean = i == length - 1;
      if (node.reads_neighbour_items) {
        fields[7].second = i > 0 ? copy_of((*items)[static_cast<size_t>(i - 1)]) : Value();
        fields[8].second = i + 1 < length ? copy_of((*items)[static_cast<size_t>(i + 1)]) : Value();
      }
      const LoopSignal signal = render(node.body, out);
      if (signal == LoopSignal::kBreak) break;
    }
    return LoopSignal::kNone;
  }

  Value lookup(const std::string& name) {
    size_t searched = 0;  // from the innermost scope out
    for (auto scope = scopes.rbegin(); scope != scopes.rend(); ++scope)
      for (const auto& [key, value] : *scope) {
        if (key == name) {
          budget_.charge_iterations(searched / 32);
          return copy_of(value);
        }
        ++searched;
      }
    budget_.charge_iterations(searched / 32);
    return Value();
  }

  Value evaluate(const Expr& expr) {
    try {
      if (loop_depth_ > 0) budget_.charge_iterations(1);
      return evaluate_expr(expr);
    } catch (const TemplateError& error) { fail(expr.offset, error.message); }
  }

  Value evaluate_expr(const Expr& expr) {
    switch (expr.kind) {
      case Expr::Kind::kLiteral: return copy_of(expr.literal);
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
        if (operand.is_number()) {
          const int64_t value = operand.as_int();
          if (value == std::numeric_limits<int64_t>::min()) fail(expr.offset, "integer result out of the 64-bit range");
          return Value::of_int(-value);
        }
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
        for (const auto& child : expr.children) {
          items.push_back(evaluate(*child));
          check_not_namespace(items.back(), child->offset, "a list");
        }
        return new_list(std::move(items), "a list");
      }
      case Expr::Kind::kDict: {
        Dict items;
        for (size_t i = 0; i + 1 < expr.children.size(); i += 2) {
          const Value key = evaluate(*expr.children[i]);
          if (!key.is_string()) fail(expr.children[i]->offset, "dict keys must be strings");
          Value item = evaluate(*expr.children[i + 1]);
          check_not_namespace(item, expr.children[i + 1]->offset, "a dict");
          set_item(items, key.text, std::move(item));
        }
        budget_.charge_bytes(items.size() * sizeof(Dict::value_type));
        return Value::of_dict(std::move(items));
      }
    }
    fail(expr.offset, "unsupported expression");
  }

  static int64_t normalize_index(int64_t index, int64_t size) { return index < 0 ? index + size : index; }

  Value get_item(const Value& subject, const Value& key, size_t offset, bool attribute) {
    switch (subject.kind) {
      case Value::Kind::kUndefined:
        fail(offset, str_cat("undefined value has no ", attribute ? "attribute '" : "item '",
                             to_string_value(key, budget_).text, "'"));
      case Value::Kind::kDict:
        if (key.is_string())
          if (const Value* found = subject.find(key.text)) return copy_of(*found);
        return Value();
      case Value::Kind::kList:
      case Value::Kind::kString: {
        if (!key.is_number() || key.kind == Value::Kind::kFloat) {
          if (attribute) return Value();  // e.g. a method name read without a call
          fail(offset, str_cat("a ", kind_name(subject), " index must be an integer, found a ", kind_name(key)));
        }
        if (subject.kind == Value::Kind::kList) {
          const int64_t index = normalize_index(key.as_int(), static_cast<int64_t>(subject.list->size()));
          if (index < 0 || index >= static_cast<int64_t>(subject.list->size())) return Value();
          return copy_of((*subject.list)[static_cast<size_t>(index)]);
        }
        // Strings index by code point, found by walking the bytes (no list of characters).
        int64_t index = key.as_int();
        if (index < 0) index = normalize_index(index, static_cast<int64_t>(code_point_count(subject.text)));
        if (index < 0) return Value();
        const size_t begin = code_point_offset(subject.text, static_cast<size_t>(index));
        if (begin >= subject.text.size()) return Value();
        return substring(subject, begin, next_code_point(subject.text, begin), budget_);
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
    const int64_t size = static_cast<int64_t>(subject.is_string() ? code_point_count(subject.text)
                                                                  : subject.list->size());
    // Python's slice.indices().
    auto clamp = [&](std::optional<int64_t> bound, int64_t fallback) {
      if (!bound) return fallback;
      int64_t v = *bound < 0 ? *bound + size : *bound;
      if (step > 0) return std::clamp<int64_t>(v, 0, size);
      return std::clamp<int64_t>(v, -1, size - 1);
    };
    const int64_t start = clamp(bounds[0], step > 0 ? 0 : size - 1);
    const int64_t stop = clamp(bounds[1], step > 0 ? size : -1);
    // Visits the selected indices in order (the step can be any int64: no overflow).
    auto for_each_index = [&](auto&& visit) {
      for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
        visit(i);
        if (__builtin_add_overflow(i, step, &i)) break;
      }
    };
    if (subject.kind == Value::Kind::kList) {
      List sliced;
      for_each_index([&](int64_t i) { sliced.push_back(copy_of((*subject.list)[static_cast<size_t>(i)])); });
      return new_list(std::move(sliced), "a slice");
    }
    if (step == 1) {  // the common case, a substring: no table of offsets
      const size_t begin = code_point_offset(subject.text, static_cast<size_t>(start));
      const size_t end = std::max(begin, code_point_offset(subject.text, static_cast<size_t>(std::max(start, stop))));
      return substring(subject, begin, end, budget_);
    }
    std::vector<size_t> offsets;  // where each code point starts, and the end
    budget_.charge_bytes((static_cast<uint64_t>(size) + 1) * sizeof(size_t));
    offsets.reserve(static_cast<size_t>(size) + 1);
    for (size_t at = 0; at < subject.text.size(); at = next_code_point(subject.text, at)) offsets.push_back(at);
    offsets.push_back(subject.text.size());
    MarkedText out(budget_);
    for_each_index([&](int64_t i) {
      out.append_part(subject, offsets[static_cast<size_t>(i)], offsets[static_cast<size_t>(i) + 1]);
    });
    return std::move(out).to_value();
  }

  Value evaluate_binary(const Expr& expr) {
    const std::string& op = expr.name;
    const Value left = evaluate(*expr.children[0]);
    const Value right = evaluate(*expr.children[1]);
    if (op == "==") return Value::of_bool(equal(left, right, budget_));
    if (op == "!=") return Value::of_bool(!equal(left, right, budget_));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (right.is_string()) {
        if (!left.is_string())
          fail(expr.offset, str_cat("'in <string>' needs a string on the left, found a ", kind_name(left)));
        found = find_text(right.text, left.text) != std::string::npos;
      } else if (right.kind == Value::Kind::kList) {
        for (const Value& item : *right.list) {
          budget_.charge_iterations(1);
          if (equal(left, item, budget_)) {
            found = true;
            break;
          }
        }
      } else if (right.kind == Value::Kind::kDict) {
        budget_.charge_iterations(right.dict->size());
        found = left.is_string() && right.find(left.text) != nullptr;
      } else if (right.kind != Value::Kind::kUndefined) {
        fail(expr.offset, str_cat("'in' needs a string, list or dict on the right, found a ", kind_name(right)));
      }
      return Value::of_bool(op == "in" ? found : !found);
    }
    if (op == "~") {
      MarkedText out(budget_);
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
        MarkedText out(budget_);
        out.append(left);
        out.append(right);
        return std::move(out).to_value();
      }
      if (left.kind == Value::Kind::kList && right.kind == Value::Kind::kList) {
        budget_.check_list_items(left.list->size() + right.list->size(), "a list concatenation");
        List items;
        items.reserve(left.list->size() + right.list->size());
        for (const List* part : {left.list.get(), right.list.get()})
          for (const Value& item : *part) items.push_back(copy_of(item));
        return new_list(std::move(items), "a list concatenation");
      }
    }
    if (left.is_number() && right.is_number()) {
      const bool floats = left.kind == Value::Kind::kFloat || right.kind == Value::Kind::kFloat;
      const double a = left.as_double(), b = right.as_double();
      const int64_t x = left.as_int(), y = right.as_int();
      int64_t result = 0;
      auto checked = [&](bool overflow) {
        // Python's ints have no bound; a 64-bit one reports where it stops.
        if (overflow) fail(expr.offset, str_cat("integer result of '", op, "' out of the 64-bit range"));
        return Value::of_int(result);
      };
      if (op == "+") return floats ? Value::of_float(a + b) : checked(__builtin_add_overflow(x, y, &result));
      if (op == "-") return floats ? Value::of_float(a - b) : checked(__builtin_sub_overflow(x, y, &result));
      if (op == "*") return floats ? Value::of_float(a * b) : checked(__builtin_mul_overflow(x, y, &result));
      if (op == "**") {
        if (floats || y < 0) return Value::of_float(std::pow(a, b));
        const double power = std::pow(a, b);
        if (!(std::fabs(power) < 9223372036854775808.0)) return checked(true);
        return Value::of_int(static_cast<int64_t>(std::llround(power)));
      }
      if (b == 0) fail(expr.offset, "division by zero");
      if (op == "/") return Value::of_float(a / b);
      if (!floats && y == -1 && x == std::numeric_limits<int64_t>::min()) {
        if (op == "//") return checked(true);
        if (op == "%") return Value::of_int(0);
      }
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
      MarkedText out(budget_, "a repeated string");
      out.append_repeated(left, right.integer);  // its size checked before it grows
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

  // str.strip / lstrip / rstrip: Unicode whitespace, or the code points in
  // `chars`; walks the bytes once, never making a list of characters.
  Value strip(const Value& s, bool left, bool right, const std::optional<std::string>& chars) {
    std::unordered_set<std::string_view> strip_set;
    if (chars) {
      budget_.charge_bytes(chars->size() * sizeof(std::string_view));
      for (size_t i = 0; i < chars->size(); i = next_code_point(*chars, i))
        strip_set.insert(std::string_view(*chars).substr(i, next_code_point(*chars, i) - i));
    }
    auto strippable = [&](size_t begin) {
      const std::string_view piece = std::string_view(s.text).substr(begin, next_code_point(s.text, begin) - begin);
      return chars ? strip_set.contains(piece) : is_python_space(piece);
    };
    size_t begin = 0;
    if (left)
      while (begin < s.text.size() && strippable(begin)) begin = next_code_point(s.text, begin);
    size_t end = s.text.size();
    if (right) {  // the end of the last code point to keep, found walking forward as Python's characters are
      end = begin;
      for (size_t at = begin; at < s.text.size(); at = next_code_point(s.text, at))
        if (!strippable(at)) end = next_code_point(s.text, at);
    }
    return substring(s, begin, end, budget_);
  }

  Value replace_all(const Value& s, const Value& old_text, const Value& new_text, int64_t count) {
    if (old_text.text.empty()) return s;
    MarkedText out(budget_);
    size_t i = 0;
    int64_t done = 0;
    while (true) {
      const size_t found =
          (count < 0 || done < count) ? find_text(s.text, old_text.text, i) : std::string::npos;
      if (found == std::string::npos) {
        out.append_part(s, i, s.text.size());
        break;
      }
      out.append_part(s, i, found);
      out.append(new_text);
      i = found + old_text.text.size();
      ++done;
    }
    return std::move(out).to_value();
  }

  Value change_case(const Value& s, int mode) {  // 0 lower, 1 upper, 2 capitalize, 3 title
    Value out = copy_of(s);
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

  // str.split(): runs of whitespace separate, none kept at either end; after
  // `max_split` splits the rest is one part, its trailing whitespace stripped.
  List split_whitespace(const Value& subject, int64_t max_split) {
    List parts;
    auto space = [&](size_t at) {
      return is_python_space(std::string_view(subject.text).substr(at, next_code_point(subject.text, at) - at));
    };
    size_t i = 0;
    int64_t done = 0;
    while (true) {
      while (i < subject.text.size() && space(i)) i = next_code_point(subject.text, i);
      if (i >= subject.text.size()) break;
      budget_.check_list_items(parts.size() + 1, "a split");
      if (max_split >= 0 && done == max_split) {
        parts.push_back(strip(substring(subject, i, subject.text.size(), budget_), false, true, std::nullopt));
        break;
      }
      size_t j = i;
      while (j < subject.text.size() && !space(j)) j = next_code_point(subject.text, j);
      parts.push_back(substring(subject, i, j, budget_));
      ++done;
      i = j;
    }
    return parts;
  }

  List split_on(const Value& subject, const std::string& separator, int64_t max_split) {
    List parts;
    size_t i = 0;
    int64_t done = 0;
    while (true) {
      budget_.check_list_items(parts.size() + 1, "a split");
      const size_t found =
          (max_split < 0 || done < max_split) ? find_text(subject.text, separator, i) : std::string::npos;
      if (found == std::string::npos) {
        parts.push_back(substring(subject, i, subject.text.size(), budget_));
        break;
      }
      parts.push_back(substring(subject, i, found, budget_));
      i = found + separator.size();
      ++done;
    }
    return parts;
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
          const int64_t max_split = args.size() > 1 ? args[1].as_int() : -1;
          if (args.empty() || args[0].kind == Value::Kind::kNone)
            return new_list(split_whitespace(subject, max_split), "a split");
          const std::string separator = string_argument(expr, what, args[0]).text;
          if (separator.empty()) fail(expr.offset, "str.split(): empty separator");
          return new_list(split_on(subject, separator, max_split), "a split");
        }
      } else if (subject.kind == Value::Kind::kDict && !subject.is_namespace) {
        if (method == "items" || method == "keys" || method == "values") {
          expect_args(expr, what, args, 0, 0);
          List items;
          for (const auto& [key, item] : *subject.dict) {
            if (method == "keys") items.push_back(Value::of_string(key));
            else if (method == "values") items.push_back(copy_of(item));
            else items.push_back(Value::of_list({Value::of_string(key), copy_of(item)}));
          }
          return new_list(std::move(items), what);
        }
        if (method == "get") {
          expect_args(expr, what, args, 1, 2);
          if (args[0].is_string())
            if (const Value* found = subject.find(args[0].text)) return copy_of(*found);
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
                      ": the chat template raised an exception: ", to_string_value(args[0], budget_).text);
    }
    if (callee.name == "namespace") {
      Value ns = Value::of_dict();
      ns.is_namespace = true;
      for (const Value& arg : args) {
        if (arg.kind != Value::Kind::kDict) fail(expr.offset, "namespace() takes keyword arguments or a dict");
        for (const auto& [key, item] : *arg.dict) set_item(*ns.dict, key, copy_of(item));
      }
      for (const auto& [key, value] : expr.keywords) {
        Value item = evaluate(*value);
        check_not_namespace(item, value->offset, "a namespace()");
        set_item(*ns.dict, key, std::move(item));
      }
      for (const auto& [key, item] : *ns.dict) ns.depth = std::max(ns.depth, item.depth + 1);
      if (ns.depth > limits().max_nesting_depth)
        fail(expr.offset, str_cat("a value nested deeper than ", limits().max_nesting_depth,
                                  " levels (--template-limits depth=N raises it)"));
      return ns;
    }
    if (callee.name == "range") return evaluate_range(expr, callee, args);
    fail(callee.offset, str_cat("unsupported function '", callee.name, "()'"));
  }

  // range(stop) / range(start, stop[, step]) as Python's, counted before it is made.
  Value evaluate_range(const Expr& expr, const Expr& callee, const std::vector<Value>& args) {
    expect_args(expr, "range()", args, 1, 3);
    for (const Value& arg : args)
      if (arg.kind != Value::Kind::kInt) fail(expr.offset, "range() takes integers");
    const int64_t start = args.size() > 1 ? args[0].integer : 0;
    const int64_t stop = args.size() > 1 ? args[1].integer : args[0].integer;
    const int64_t step = args.size() > 2 ? args[2].integer : 1;
    if (step == 0) fail(expr.offset, "range() step cannot be zero");
    // Unsigned arithmetic: stop - start can pass the int64 range.
    uint64_t count = 0;
    if (step > 0 && start < stop)
      count = (static_cast<uint64_t>(stop) - static_cast<uint64_t>(start) - 1) / static_cast<uint64_t>(step) + 1;
    else if (step < 0 && start > stop)
      count = (static_cast<uint64_t>(start) - static_cast<uint64_t>(stop) - 1) / (0 - static_cast<uint64_t>(step)) + 1;
    try {
      budget_.check_list_items(count, "range()");
      budget_.charge_bytes(count * sizeof(Value));
    } catch (const TemplateError& error) { fail(callee.offset, error.message); }
    List items;
    items.reserve(count);
    int64_t value = start;
    for (uint64_t k = 0; k < count; ++k) {
      items.push_back(Value::of_int(value));
      if (k + 1 < count) value += step;  // stays between start and stop
    }
    return Value::of_list(std::move(items));
  }

  // The first or last code point of a string, walking forward as Python's characters are.
  Value end_character(const Value& s, bool last) {
    if (s.text.empty()) return Value();
    size_t begin = 0;
    if (last)
      for (size_t at = 0; at < s.text.size(); at = next_code_point(s.text, at)) begin = at;
    return substring(s, begin, next_code_point(s.text, begin), budget_);
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
      return strip(to_string_value(subject, budget_), true, true, chars);
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
      std::optional<int64_t> indent;
      std::optional<Value> indent_value = keyword(expr, "indent");
      if (!indent_value && !args.empty()) indent_value = args[0];
      if (indent_value && indent_value->kind == Value::Kind::kInt) indent = indent_value->integer;
      std::string json = to_json(subject, indent, budget_);
      const int32_t source = !subject.from_data.empty() ? subject.from_data.front()
                             : subject.kind == Value::Kind::kList || subject.kind == Value::Kind::kDict ? kFromOtherData
                                                                                                        : kFromTemplate;
      if (source != kFromTemplate) budget_.charge_bytes(json.size() * sizeof(int32_t));
      return Value::of_string(std::move(json), source);
    }
    if (name == "upper" || name == "lower" || name == "capitalize" || name == "title") {
      return change_case(to_string_value(subject, budget_), name == "lower"        ? 0
                                                            : name == "upper"      ? 1
                                                            : name == "capitalize" ? 2
                                                                                   : 3);
    }
    if (name == "string") return to_string_value(subject, budget_);
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
        return copy_of(name == "first" ? subject.list->front() : subject.list->back());
      }
      if (subject.is_string()) return end_character(subject, name == "last");
      fail(expr.offset, str_cat(what, ": expected a list or string, found a ", kind_name(subject)));
    }
    if (name == "join") {
      if (subject.kind != Value::Kind::kList)
        fail(expr.offset, str_cat(what, ": expected a list, found a ", kind_name(subject)));
      const Value separator = args.empty() ? Value::of_string("") : to_string_value(args[0], budget_);
      MarkedText out(budget_);
      for (size_t i = 0; i < subject.list->size(); ++i) {
        budget_.charge_iterations(1);
        if (i > 0) out.append(separator);
        append_str((*subject.list)[i], out);
      }
      return std::move(out).to_value();
    }
    if (name == "list") {
      if (subject.kind == Value::Kind::kList) return subject;
      if (subject.is_string()) return Value::of_list(characters(subject, budget_));
      fail(expr.offset, str_cat(what, ": cannot make a list of a ", kind_name(subject)));
    }
    if (name == "items") {
      if (subject.kind != Value::Kind::kDict)
        fail(expr.offset, str_cat(what, ": expected a dict, found a ", kind_name(subject)));
      List items;
      for (const auto& [key, item] : *subject.dict)
        items.push_back(Value::of_list({Value::of_string(key), copy_of(item)}));
      return new_list(std::move(items), what);
    }
    if (name == "replace") {
      expect_args(expr, what, args, 2, 3);
      return replace_all(to_string_value(subject, budget_), to_string_value(args[0], budget_),
                         to_string_value(args[1], budget_), args.size() > 2 ? args[2].as_int() : -1);
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
      return equal(subject, args[0], budget_);
    }
    if (name == "ne" || name == "!=") {
      if (args.size() != 1) fail(expr.offset, str_cat("test '", name, "' takes one argument"));
      return !equal(subject, args[0], budget_);
    }
    fail(expr.offset, str_cat("unsupported test 'is ", name, "'"));
  }

  const std::string& source_;
  const std::string& origin_;
  RenderBudget& budget_;
  int loop_depth_ = 0;  // for-loops being iterated, one inside the other
};

}  // namespace

MarkedText render_template(const std::vector<std::unique_ptr<Node>>& body, std::map<std::string, Value> globals,
                           const std::string& source, const std::string& origin, RenderBudget& budget) {
  Renderer renderer(source, origin, budget);
  renderer.scopes.emplace_back(std::make_move_iterator(globals.begin()), std::make_move_iterator(globals.end()));
  MarkedText out(budget, "the rendered conversation");
  renderer.render(body, out);
  return out;
}

}  // namespace llmft::chat_template_internal
