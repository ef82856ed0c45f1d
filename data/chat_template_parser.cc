// The chat-template lexer and parser (data/chat_template_internal.h): the
// lexer cuts the template into text and tags, applying Jinja's whitespace
// control and transformers' trim_blocks / lstrip_blocks; the parser is
// recursive descent with Jinja's operator precedence (jinja2/parser.py: or <
// and < not < compare < + - < ~ < * / // % < unary < filters/tests <
// postfix). It counts nesting as it recurses (blocks, brackets, calls, unary
// operators, chained conditionals) and stops at limits.max_nesting_depth, so
// no template can take the parser, the tree's destructor or the renderer
// deeper than that.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>

#include "core/error.h"
#include "data/chat_template_internal.h"

namespace llmft::chat_template_internal {

Position position_of(const std::string& source, size_t offset) {
  Position p;
  for (size_t i = 0; i < offset && i < source.size(); ++i) {
    if (source[i] == '\n') ++p.line, p.column = 1;
    else ++p.column;
  }
  return p;
}

namespace {

class Lexer {
 public:
  Lexer(const std::string& source, const std::string& origin) : source_(source), origin_(origin) {}

  const std::string& source() const { return source_; }

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
  Parser(std::vector<Chunk> chunks, const Lexer& lexer, int64_t max_depth)
      : chunks_(std::move(chunks)), lexer_(lexer), max_depth_(max_depth) {}

  std::vector<std::unique_ptr<Node>> parse_template() {
    std::vector<std::unique_ptr<Node>> body = parse_until({});
    return body;
  }

 private:
  [[noreturn]] void fail(size_t offset, const std::string& message) const { lexer_.fail(offset, message); }

  [[noreturn]] void fail_depth(size_t offset) const {
    fail(offset, str_cat("nested deeper than ", max_depth_,
                         " levels of blocks, brackets and operators (--template-limits depth=N raises it)"));
  }

  // One level of the parser's recursion for as long as it lives.
  class Nesting {
   public:
    Nesting(Parser& parser, size_t offset) : parser_(parser) {
      if (++parser_.depth_ > parser_.max_depth_) parser_.fail_depth(offset);
    }
    ~Nesting() { --parser_.depth_; }
    Nesting(const Nesting&) = delete;
    Nesting& operator=(const Nesting&) = delete;

   private:
    Parser& parser_;
  };

  // Operators and postfix chains ("a + b + c", "x.y.z", "s | trim | upper")
  // grow the tree in a loop rather than by recursion, so the tree's own depth
  // is bounded too: the renderer and the destructor recurse on it.
  void add_child(Expr& node, std::unique_ptr<Expr> child) {
    node.depth = std::max(node.depth, child->depth + 1);
    if (node.depth > max_depth_) fail_depth(node.offset);
    node.children.push_back(std::move(child));
  }
  void add_keyword(Expr& node, std::string key, std::unique_ptr<Expr> value) {
    node.depth = std::max(node.depth, value->depth + 1);
    if (node.depth > max_depth_) fail_depth(node.offset);
    node.keywords.emplace_back(std::move(key), std::move(value));
  }

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
    const Nesting nesting(*this, offset);
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
      // loop.previtem / loop.nextitem cost two copies per iteration; a body
      // that never spells them does without (a `loop` kept past its loop and
      // read there sees them undefined).
      const std::string_view body_text =
          std::string_view(lexer_.source()).substr(node->offset, chunks_[chunk_].offset - node->offset);
      node->reads_neighbour_items =
          body_text.find("previtem") != std::string_view::npos || body_text.find("nextitem") != std::string_view::npos;
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
    const Nesting nesting(*this, peek().offset);
    std::unique_ptr<Expr> value = parse_or_expression();
    while (peek().kind == Token::Kind::kName && peek().text == "if") {
      const size_t offset = next().offset;
      auto conditional = make(Expr::Kind::kConditional, offset);
      std::unique_ptr<Expr> condition = parse_or_expression();
      std::unique_ptr<Expr> otherwise;
      if (accept_name("else")) otherwise = parse_expression();
      add_child(*conditional, std::move(condition));
      add_child(*conditional, std::move(value));
      if (otherwise) add_child(*conditional, std::move(otherwise));
      value = std::move(conditional);
    }
    return value;
  }

  std::unique_ptr<Expr> parse_or_expression() {
    std::unique_ptr<Expr> left = parse_and();
    while (peek().kind == Token::Kind::kName && peek().text == "or") {
      auto node = make(Expr::Kind::kOr, next().offset);
      add_child(*node, std::move(left));
      add_child(*node, parse_and());
      left = std::move(node);
    }
    return left;
  }

  std::unique_ptr<Expr> parse_and() {
    std::unique_ptr<Expr> left = parse_not();
    while (peek().kind == Token::Kind::kName && peek().text == "and") {
      auto node = make(Expr::Kind::kAnd, next().offset);
      add_child(*node, std::move(left));
      add_child(*node, parse_not());
      left = std::move(node);
    }
    return left;
  }

  std::unique_ptr<Expr> parse_not() {
    if (peek().kind == Token::Kind::kName && peek().text == "not") {
      const Nesting nesting(*this, peek().offset);
      auto node = make(Expr::Kind::kNot, next().offset);
      add_child(*node, parse_not());
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
      add_child(*node, std::move(left));
      add_child(*node, parse_math1());
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
      add_child(*node, std::move(left));
      add_child(*node, (this->*lower)());
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
      const Nesting nesting(*this, peek().offset);
      const Token op = next();
      std::unique_ptr<Expr> operand = parse_unary();
      if (op.text == "+") return operand;
      auto node = make(Expr::Kind::kNeg, op.offset);
      add_child(*node, std::move(operand));
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
        add_child(*node, std::move(subject));
        if (peek().kind == Token::Kind::kOperator && peek().text == "(") parse_arguments(*node);
        subject = parse_postfix(std::move(node));
      } else if (peek().kind == Token::Kind::kName && peek().text == "is") {
        next();
        auto node = make(Expr::Kind::kTest, peek().offset);
        node->negated = accept_name("not");
        const Token name = next();
        if (name.kind != Token::Kind::kName) fail(name.offset, "expected a test name after 'is'");
        node->name = name.text;
        add_child(*node, std::move(subject));
        if (peek().kind == Token::Kind::kOperator && peek().text == "(") {
          parse_arguments(*node);
        } else if (peek().kind == Token::Kind::kString || peek().kind == Token::Kind::kInt ||
                   (peek().kind == Token::Kind::kName && peek().text != "and" && peek().text != "or" &&
                    peek().text != "else" && peek().text != "if")) {
          add_child(*node, parse_primary());  // `x is sameas y`, `x is divisibleby 3`
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
        add_keyword(node, key, parse_expression());
      } else {
        if (!node.keywords.empty()) fail(peek().offset, "positional argument after a keyword argument");
        add_child(node, parse_expression());
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
        add_child(*node, std::move(subject));
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
        add_child(*node, std::move(subject));
        if (!is_slice && !present[0]) fail(offset, "empty subscript");
        for (int k = 0; k < 3; ++k) {
          node->has_slice_part[k] = present[k];
          if (present[k]) add_child(*node, std::move(parts[k]));
        }
        subject = std::move(node);
      } else if (token.text == "(") {
        auto node = make(Expr::Kind::kCall, token.offset);
        add_child(*node, std::move(subject));
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
        int64_t value = 0;
        const auto [end, error] = std::from_chars(token.text.data(), token.text.data() + token.text.size(), value);
        if (error != std::errc() || end != token.text.data() + token.text.size())
          fail(token.offset, str_cat("integer literal ", token.text, " is out of the 64-bit range"));
        node->literal = Value::of_int(value);
        return node;
      }
      case Token::Kind::kFloat: {
        auto node = make(Expr::Kind::kLiteral, token.offset);
        // strtod, not stod: inf past the double range, as Python, rather than an exception.
        node->literal = Value::of_float(std::strtod(token.text.c_str(), nullptr));
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
              add_child(*node, parse_expression());
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
              add_child(*node, parse_expression());
              expect(":");
              add_child(*node, parse_expression());
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
  int64_t max_depth_;
  int64_t depth_ = 0;  // statements and expressions being parsed, one inside the other
  size_t chunk_ = 0;
  const std::vector<Token>* tokens_ = nullptr;
  size_t position_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<Node>> parse_template(const std::string& source, const std::string& origin,
                                                  const ChatTemplateLimits& limits) {
  Lexer lexer(source, origin);
  Parser parser(lexer.run(), lexer, limits.max_nesting_depth);
  return parser.parse_template();
}

}  // namespace llmft::chat_template_internal
