// Jinja2's parser (jinja2/parser.py, 3.1), function by function, so that operator precedence
// matches: filters and `is` tests bind tighter than arithmetic (`a + b | trim` trims only b;
// `not x is defined` is `not (x is defined)`), `**` is left-associative, and comparisons chain.

#include <algorithm>
#include <array>

#include "engine/tokenizer/chat_template_parse.hpp"

namespace shoal::jinja {

namespace {

using end_rules = std::vector<std::string_view>;

// Nesting beyond this is no chat template; the limit keeps a hostile one off the C++ stack.
constexpr int max_nesting = 256;
constexpr std::size_t max_block_nesting = 100;

class parser {
 public:
  explicit parser(std::vector<token> tokens) : tokens_(std::move(tokens)) {}

  stmt_list parse() {
    stmt_list body = subparse(nullptr);
    if (cur().type != token::kind::eof) syntax_error(cur().line, "unexpected " + describe(cur()));
    return body;
  }

 private:
  // Token stream -------------------------------------------------------------------------------

  const token& cur() const { return tokens_[pos_]; }
  const token& look() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
  void next() {
    if (pos_ + 1 < tokens_.size()) ++pos_;
  }
  bool is_op(std::string_view op) const {
    return cur().type == token::kind::op && cur().text == op;
  }
  bool is_name(std::string_view name) const {
    return cur().type == token::kind::name && cur().text == name;
  }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }

  static std::string describe(const token& t) {
    switch (t.type) {
      case token::kind::data:
        return "template data";
      case token::kind::block_begin:
        return "begin of statement block";
      case token::kind::block_end:
        return "end of statement block";
      case token::kind::variable_begin:
        return "begin of print statement";
      case token::kind::variable_end:
        return "end of print statement";
      case token::kind::eof:
        return "end of template";
      case token::kind::string:
        return "string";
      default:
        return "'" + t.text + "'";
    }
  }

  [[noreturn]] void syntax_error(int line, const std::string& message) const {
    throw template_error(errc::invalid_argument, line, message);
  }

  void expect_op(std::string_view op) {
    if (!skip_op(op))
      syntax_error(cur().line, "expected '" + std::string(op) + "', got " + describe(cur()));
  }
  void expect(token::kind type, const char* what) {
    if (cur().type != type)
      syntax_error(cur().line, std::string("expected ") + what + ", got " + describe(cur()));
    next();
  }
  std::string expect_name() {
    if (cur().type != token::kind::name)
      syntax_error(cur().line, "expected a name, got " + describe(cur()));
    std::string name = cur().text;
    next();
    return name;
  }

  // Statements --------------------------------------------------------------------------------

  stmt_list subparse(const end_rules* end_tokens) {
    stmt_list body;
    while (cur().type != token::kind::eof) {
      const token& t = cur();
      if (t.type == token::kind::data) {
        auto s = std::make_unique<stmt>();
        s->kind = stmt_kind::text;
        s->line = t.line;
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.type == token::kind::variable_begin) {
        auto s = std::make_unique<stmt>();
        s->kind = stmt_kind::output;
        s->line = t.line;
        next();
        s->exprs.push_back(parse_tuple(false, true, {}, false));
        expect(token::kind::variable_end, "end of print statement '}}'");
        body.push_back(std::move(s));
      } else if (t.type == token::kind::block_begin) {
        next();
        if (end_tokens && cur().type == token::kind::name &&
            std::find(end_tokens->begin(), end_tokens->end(), cur().text) != end_tokens->end())
          return body;
        body.push_back(parse_statement());
        expect(token::kind::block_end, "end of statement block '%}'");
      } else {
        syntax_error(t.line, "unexpected " + describe(t));
      }
    }
    return body;
  }

  // The body of a block tag up to one of end_tokens; drop_needle consumes that end tag's name.
  stmt_list parse_statements(const end_rules& end_tokens, bool drop_needle) {
    skip_op(":");
    expect(token::kind::block_end, "end of statement block '%}'");
    stmt_list body = subparse(&end_tokens);
    if (cur().type == token::kind::eof) {
      std::string wanted;
      for (auto e : end_tokens) wanted += (wanted.empty() ? "'" : " or '") + std::string(e) + "'";
      const auto& [tag, line] = tag_stack_.back();
      syntax_error(line, "unexpected end of template: looking for " + wanted + " to close the '" +
                             tag + "' tag");
    }
    if (drop_needle) next();
    return body;
  }

  std::unique_ptr<stmt> parse_statement() {
    const token& t = cur();
    if (t.type != token::kind::name) syntax_error(t.line, "tag name expected, got " + describe(t));
    const std::string tag = t.text;
    const int line = t.line;
    if (tag_stack_.size() >= max_block_nesting) syntax_error(line, "blocks nested too deeply");
    tag_stack_.emplace_back(tag, line);
    std::unique_ptr<stmt> s;
    if (tag == "for") {
      s = parse_for();
    } else if (tag == "if") {
      s = parse_if();
    } else if (tag == "set") {
      s = parse_set();
    } else if (tag == "macro") {
      s = parse_macro();
    } else if (tag == "print") {
      next();
      s = std::make_unique<stmt>();
      s->kind = stmt_kind::output;
      s->exprs.push_back(parse_tuple(false, true, {}, false));
    } else if (tag == "with") {
      s = parse_with();
    } else if (tag == "filter") {
      next();
      s = std::make_unique<stmt>();
      s->kind = stmt_kind::filter_block;
      s->filter = parse_filter(nullptr, true);
      s->bodies.push_back(parse_statements({"endfilter"}, true));
    } else if (tag == "generation") {
      // transformers' AssistantTracker: the body renders as is (it only marks assistant tokens).
      next();
      s = std::make_unique<stmt>();
      s->kind = stmt_kind::scope;
      s->bodies.push_back(parse_statements({"endgeneration"}, true));
    } else if (tag == "break" || tag == "continue") {
      // transformers enables jinja2.ext.loopcontrols.
      if (loop_depth_ == 0) syntax_error(line, "'" + tag + "' outside of a for loop");
      next();
      s = std::make_unique<stmt>();
      s->kind = tag == "break" ? stmt_kind::break_stmt : stmt_kind::continue_stmt;
    } else if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif") {
      std::string message = "unexpected '" + tag + "' tag";
      if (tag_stack_.size() > 1)
        message += " inside the '" + tag_stack_[tag_stack_.size() - 2].first +
                   "' block opened on line " +
                   std::to_string(tag_stack_[tag_stack_.size() - 2].second);
      syntax_error(line, message);
    } else {
      throw template_error(errc::unsupported, line,
                           "the Jinja tag '" + tag + "' is not supported by this renderer");
    }
    s->line = line;
    tag_stack_.pop_back();
    return s;
  }

  // Assignment targets: a name, or names separated by commas (a tuple, to unpack).
  void parse_targets(stmt& s, const end_rules& extra_end) {
    if (skip_op("(")) {
      s.unpack = true;
      while (!is_op(")")) {
        if (!s.targets.empty()) expect_op(",");
        if (is_op(")")) break;
        s.targets.push_back(expect_name());
      }
      expect_op(")");
      return;
    }
    while (true) {
      if (!s.targets.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      if (cur().type != token::kind::name || is_constant_name(cur().text))
        syntax_error(cur().line, "cannot assign to " + describe(cur()));
      s.targets.push_back(expect_name());
      if (is_op(",")) {
        s.unpack = true;
      } else {
        break;
      }
    }
    if (s.targets.empty()) syntax_error(cur().line, "expected an assignment target");
  }

  static bool is_constant_name(const std::string& n) {
    return n == "true" || n == "false" || n == "none" || n == "True" || n == "False" || n == "None";
  }

  std::unique_ptr<stmt> parse_for() {
    next();
    auto s = std::make_unique<stmt>();
    s->kind = stmt_kind::for_stmt;
    parse_targets(*s, {"in"});
    if (!skip_name("in")) syntax_error(cur().line, "expected 'in', got " + describe(cur()));
    s->exprs.push_back(parse_tuple(false, false, {"recursive"}, false));
    if (skip_name("if")) s->exprs.push_back(parse_expression(true));
    if (is_name("recursive"))
      throw template_error(errc::unsupported, cur().line, "recursive for loops are not supported");
    ++loop_depth_;
    s->bodies.push_back(parse_statements({"endfor", "else"}, false));
    --loop_depth_;
    const bool has_else = is_name("else");
    next();
    if (has_else) s->bodies.push_back(parse_statements({"endfor"}, true));
    return s;
  }

  std::unique_ptr<stmt> parse_if() {
    next();
    auto s = std::make_unique<stmt>();
    s->kind = stmt_kind::if_stmt;
    while (true) {
      s->exprs.push_back(parse_tuple(false, false, {}, false));
      s->bodies.push_back(parse_statements({"elif", "else", "endif"}, false));
      const std::string which = cur().text;
      next();
      if (which == "elif") continue;
      if (which == "else") s->bodies.push_back(parse_statements({"endif"}, true));
      break;
    }
    return s;
  }

  std::unique_ptr<stmt> parse_set() {
    next();
    auto s = std::make_unique<stmt>();
    if (cur().type == token::kind::name && look().type == token::kind::op && look().text == ".") {
      s->targets.push_back(expect_name());
      next();
      s->attr = expect_name();
    } else {
      parse_targets(*s, {});
    }
    if (skip_op("=")) {
      s->kind = stmt_kind::set;
      s->exprs.push_back(parse_tuple(false, true, {}, false));
      return s;
    }
    s->kind = stmt_kind::set_block;
    if (is_op("|")) s->filter = parse_filter(nullptr, false);
    s->bodies.push_back(parse_statements({"endset"}, true));
    return s;
  }

  std::unique_ptr<stmt> parse_macro() {
    next();
    auto s = std::make_unique<stmt>();
    s->kind = stmt_kind::macro;
    s->targets.push_back(expect_name());
    expect_op("(");
    while (!is_op(")")) {
      if (s->targets.size() > 1) expect_op(",");
      s->targets.push_back(expect_name());
      if (skip_op("=")) {
        s->defaults.push_back(parse_expression(true));
      } else {
        if (std::any_of(s->defaults.begin(), s->defaults.end(),
                        [](auto& d) { return d != nullptr; }))
          syntax_error(cur().line, "non-default argument follows default argument");
        s->defaults.push_back(nullptr);
      }
    }
    expect_op(")");
    const int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;  // a loop around the macro's definition is no loop for its body
    s->bodies.push_back(parse_statements({"endmacro"}, true));
    loop_depth_ = saved_loop_depth;
    return s;
  }

  std::unique_ptr<stmt> parse_with() {
    next();
    auto s = std::make_unique<stmt>();
    s->kind = stmt_kind::scope;
    while (cur().type != token::kind::block_end) {
      if (!s->targets.empty()) expect_op(",");
      s->targets.push_back(expect_name());
      expect_op("=");
      s->exprs.push_back(parse_expression(true));
    }
    s->bodies.push_back(parse_statements({"endwith"}, true));
    return s;
  }

  // Expressions -------------------------------------------------------------------------------

  struct nesting_guard {
    explicit nesting_guard(parser& p) : p_(p) {
      if (++p_.depth_ > max_nesting) p_.syntax_error(p_.cur().line, "expression nested too deeply");
    }
    ~nesting_guard() { --p_.depth_; }
    parser& p_;
  };

  // Records a finished node's height. Left-deep chains (`a + b + c ...`, `x.a.b ...`) are built
  // by loops, not recursion, so this is what keeps every later walk of the tree (evaluation,
  // destruction) off deep C++ recursion.
  expr_ptr done(expr_ptr e) {
    int d = 0;
    for (const auto& a : e->args)
      if (a) d = std::max(d, a->depth);
    for (const auto& [k, a] : e->kwargs)
      if (a) d = std::max(d, a->depth);
    e->depth = d + 1;
    if (e->depth > max_nesting) syntax_error(e->line, "expression nested too deeply");
    return e;
  }

  expr_ptr make(expr_kind kind, int line) {
    auto e = std::make_unique<expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  expr_ptr make2(expr_kind kind, int line, expr_ptr a, expr_ptr b) {
    auto e = make(kind, line);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return done(std::move(e));
  }

  bool is_tuple_end(const end_rules& extra_end) const {
    if (cur().type == token::kind::variable_end || cur().type == token::kind::block_end ||
        is_op(")"))
      return true;
    if (cur().type == token::kind::name)
      return std::find(extra_end.begin(), extra_end.end(), cur().text) != extra_end.end();
    return false;
  }

  expr_ptr parse_tuple(bool simplified, bool with_condexpr, const end_rules& extra_end,
                       bool explicit_parentheses) {
    const int line = cur().line;
    std::vector<expr_ptr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parentheses)
        syntax_error(cur().line, "expected an expression, got " + describe(cur()));
    }
    auto e = make(expr_kind::tuple, line);
    e->args = std::move(items);
    return done(std::move(e));
  }

  expr_ptr parse_expression(bool with_condexpr) {
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  expr_ptr parse_condexpr() {
    const int line = cur().line;
    expr_ptr e1 = parse_or();
    while (skip_name("if")) {
      expr_ptr e2 = parse_or();
      expr_ptr e3 = skip_name("else") ? parse_condexpr() : nullptr;
      auto c = make(expr_kind::cond, line);
      c->args.push_back(std::move(e1));
      c->args.push_back(std::move(e2));
      c->args.push_back(std::move(e3));
      e1 = done(std::move(c));
    }
    return e1;
  }

  expr_ptr parse_or() {
    const int line = cur().line;
    expr_ptr left = parse_and();
    while (skip_name("or")) left = make2(expr_kind::or_op, line, std::move(left), parse_and());
    return left;
  }

  expr_ptr parse_and() {
    const int line = cur().line;
    expr_ptr left = parse_not();
    while (skip_name("and")) left = make2(expr_kind::and_op, line, std::move(left), parse_not());
    return left;
  }

  expr_ptr parse_not() {
    if (is_name("not")) {
      nesting_guard guard(*this);
      const int line = cur().line;
      next();
      auto e = make(expr_kind::not_op, line);
      e->args.push_back(parse_not());
      return done(std::move(e));
    }
    return parse_compare();
  }

  expr_ptr parse_compare() {
    const int line = cur().line;
    expr_ptr first = parse_math1();
    auto e = make(expr_kind::compare, line);
    e->args.push_back(std::move(first));
    while (true) {
      static constexpr std::array<std::string_view, 6> ops = {"==", "!=", "<", "<=", ">", ">="};
      if (cur().type == token::kind::op &&
          std::find(ops.begin(), ops.end(), cur().text) != ops.end()) {
        e->ops.push_back(cur().text);
        next();
      } else if (skip_name("in")) {
        e->ops.push_back("in");
      } else if (is_name("not") && look().type == token::kind::name && look().text == "in") {
        next();
        next();
        e->ops.push_back("not in");
      } else {
        break;
      }
      e->args.push_back(parse_math1());
    }
    if (e->ops.empty()) return std::move(e->args[0]);
    return done(std::move(e));
  }

  expr_ptr parse_binary_level(std::initializer_list<std::string_view> ops,
                              expr_ptr (parser::*operand)()) {
    const int line = cur().line;
    expr_ptr left = (this->*operand)();
    while (cur().type == token::kind::op &&
           std::find(ops.begin(), ops.end(), cur().text) != ops.end()) {
      std::string op = cur().text;
      next();
      left = make2(expr_kind::binary, line, std::move(left), (this->*operand)());
      left->name = std::move(op);
    }
    return left;
  }

  expr_ptr parse_math1() { return parse_binary_level({"+", "-"}, &parser::parse_concat); }

  expr_ptr parse_concat() {
    const int line = cur().line;
    expr_ptr first = parse_math2();
    if (!is_op("~")) return first;
    auto e = make(expr_kind::concat, line);
    e->args.push_back(std::move(first));
    while (skip_op("~")) e->args.push_back(parse_math2());
    return done(std::move(e));
  }

  expr_ptr parse_math2() { return parse_binary_level({"*", "/", "//", "%"}, &parser::parse_pow); }

  expr_ptr parse_pow() { return parse_binary_level({"**"}, &parser::parse_unary_filtered); }

  expr_ptr parse_unary_filtered() { return parse_unary(true); }

  expr_ptr parse_unary(bool with_filter) {
    nesting_guard guard(*this);
    const int line = cur().line;
    expr_ptr node;
    if (is_op("-") || is_op("+")) {
      const bool neg = is_op("-");
      next();
      node = make(neg ? expr_kind::neg : expr_kind::pos, line);
      node->args.push_back(parse_unary(false));
      node = done(std::move(node));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  expr_ptr parse_primary() {
    nesting_guard guard(*this);
    const token& t = cur();
    const int line = t.line;
    switch (t.type) {
      case token::kind::name: {
        auto e = make(expr_kind::literal, line);
        if (t.text == "true" || t.text == "True") {
          e->literal = value::boolean(true);
        } else if (t.text == "false" || t.text == "False") {
          e->literal = value::boolean(false);
        } else if (t.text == "none" || t.text == "None") {
          e->literal = value::none();
        } else {
          e->kind = expr_kind::name;
          e->name = t.text;
        }
        next();
        return e;
      }
      case token::kind::string: {
        // Adjacent string literals join, as in Python.
        std::string s;
        while (cur().type == token::kind::string) {
          s += cur().text;
          next();
        }
        auto e = make(expr_kind::literal, line);
        e->literal = value::string(std::move(s));
        return e;
      }
      case token::kind::integer:
      case token::kind::floating: {
        auto e = make(expr_kind::literal, line);
        e->literal = t.type == token::kind::integer ? value::integer(t.int_value)
                                                    : value::floating(t.float_value);
        next();
        return e;
      }
      case token::kind::op:
        if (t.text == "(") {
          next();
          expr_ptr e = parse_tuple(false, true, {}, true);
          expect_op(")");
          return e;
        }
        if (t.text == "[") return parse_list();
        if (t.text == "{") return parse_dict();
        break;
      default:
        break;
    }
    syntax_error(line, "unexpected " + describe(t));
  }

  expr_ptr parse_list() {
    auto e = make(expr_kind::list, cur().line);
    expect_op("[");
    while (!is_op("]")) {
      if (!e->args.empty()) expect_op(",");
      if (is_op("]")) break;
      e->args.push_back(parse_expression(true));
    }
    expect_op("]");
    return done(std::move(e));
  }

  expr_ptr parse_dict() {
    auto e = make(expr_kind::dict, cur().line);
    expect_op("{");
    while (!is_op("}")) {
      if (!e->args.empty()) expect_op(",");
      if (is_op("}")) break;
      e->args.push_back(parse_expression(true));
      expect_op(":");
      e->args.push_back(parse_expression(true));
    }
    expect_op("}");
    return done(std::move(e));
  }

  expr_ptr parse_postfix(expr_ptr node) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  expr_ptr parse_filter_expr(expr_ptr node) {
    while (true) {
      if (is_op("|")) {
        node = parse_filter(std::move(node), false);
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  expr_ptr parse_subscript(expr_ptr node) {
    nesting_guard guard(*this);
    const int line = cur().line;
    if (skip_op(".")) {
      const token& attr = cur();
      if (attr.type == token::kind::name) {
        auto e = make(expr_kind::getattr, line);
        e->args.push_back(std::move(node));
        e->name = attr.text;
        next();
        return done(std::move(e));
      }
      if (attr.type != token::kind::integer) syntax_error(attr.line, "expected name or number");
      auto key = make(expr_kind::literal, attr.line);
      key->literal = value::integer(attr.int_value);
      next();
      return make2(expr_kind::getitem, line, std::move(node), std::move(key));
    }
    expect_op("[");
    std::vector<expr_ptr> args;
    while (!is_op("]")) {
      if (!args.empty()) expect_op(",");
      args.push_back(parse_subscribed());
    }
    expect_op("]");
    if (args.size() == 1)
      return make2(expr_kind::getitem, line, std::move(node), std::move(args[0]));
    auto tuple = make(expr_kind::tuple, line);
    tuple->args = std::move(args);
    return make2(expr_kind::getitem, line, std::move(node), done(std::move(tuple)));
  }

  expr_ptr parse_subscribed() {
    const int line = cur().line;
    auto s = make(expr_kind::slice, line);
    if (skip_op(":")) {
      s->args.push_back(nullptr);
    } else {
      expr_ptr node = parse_expression(true);
      if (!is_op(":")) return node;
      next();
      s->args.push_back(std::move(node));
    }
    if (is_op(":")) {
      s->args.push_back(nullptr);
    } else if (!is_op("]") && !is_op(",")) {
      s->args.push_back(parse_expression(true));
    } else {
      s->args.push_back(nullptr);
    }
    if (skip_op(":") && !is_op("]") && !is_op(",")) {
      s->args.push_back(parse_expression(true));
    } else {
      s->args.push_back(nullptr);
    }
    return done(std::move(s));
  }

  void parse_call_args(expr& e) {
    const int line = cur().line;
    expect_op("(");
    bool require_comma = false;
    while (!is_op(")")) {
      if (require_comma) {
        expect_op(",");
        if (is_op(")")) break;  // a trailing comma
      }
      if (is_op("*") || is_op("**"))
        throw template_error(errc::unsupported, line,
                             "*args and **kwargs in calls are not supported");
      if (cur().type == token::kind::name && look().type == token::kind::op && look().text == "=") {
        std::string key = cur().text;
        next();
        next();
        e.kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.kwargs.empty()) syntax_error(line, "invalid syntax for function call expression");
        e.args.push_back(parse_expression(true));
      }
      require_comma = true;
    }
    expect_op(")");
  }

  expr_ptr parse_call(expr_ptr node) {
    nesting_guard guard(*this);
    auto e = make(expr_kind::call, cur().line);
    e->args.push_back(std::move(node));
    parse_call_args(*e);
    return done(std::move(e));
  }

  std::string parse_dotted_name() {
    std::string name = expect_name();
    while (skip_op(".")) name += "." + expect_name();
    return name;
  }

  expr_ptr parse_filter(expr_ptr node, bool start_inline) {
    while (is_op("|") || start_inline) {
      nesting_guard guard(*this);
      if (!start_inline) next();
      start_inline = false;
      auto e = make(expr_kind::filter, cur().line);
      e->name = parse_dotted_name();
      e->args.push_back(std::move(node));
      if (is_op("(")) parse_call_args(*e);
      node = done(std::move(e));
    }
    return node;
  }

  expr_ptr parse_test(expr_ptr node) {
    nesting_guard guard(*this);
    const int line = cur().line;
    next();  // `is`
    auto e = make(expr_kind::test, line);
    e->negated = skip_name("not");
    e->name = parse_dotted_name();
    e->args.push_back(std::move(node));
    if (is_op("(")) {
      parse_call_args(*e);
    } else {
      // Jinja2 takes one bare argument (`x is divisibleby 3`) unless what follows ends the test.
      const token& t = cur();
      const bool starts_arg = t.type == token::kind::name || t.type == token::kind::string ||
                              t.type == token::kind::integer || t.type == token::kind::floating ||
                              is_op("[") || is_op("{");
      if (starts_arg && !is_name("else") && !is_name("or") && !is_name("and")) {
        if (is_name("is")) syntax_error(t.line, "you cannot chain multiple tests with 'is'");
        e->args.push_back(parse_postfix(parse_primary()));
      }
    }
    return done(std::move(e));
  }

  std::vector<token> tokens_;
  std::size_t pos_ = 0;
  std::vector<std::pair<std::string, int>> tag_stack_;  // open block tags, for error messages
  int loop_depth_ = 0;
  int depth_ = 0;
};

// Jinja2 rejects an unknown filter or test when it compiles the template, except inside an
// `if` (test and branches) or an inline if-expression, where it waits until the call runs; a
// loop or macro body inside such a branch is checked again. The renderer mirrors that.
class name_checker {
 public:
  void check(const stmt_list& body, bool soft) {
    for (const auto& s : body) check(*s, soft);
  }

 private:
  void check(const stmt& s, bool soft) {
    switch (s.kind) {
      case stmt_kind::if_stmt:
        for (const auto& e : s.exprs) check(e.get(), true);
        for (const auto& b : s.bodies) check(b, true);
        return;
      case stmt_kind::for_stmt:
      case stmt_kind::macro:
      case stmt_kind::scope:
        for (const auto& e : s.exprs) check(e.get(), soft);
        for (const auto& d : s.defaults) check(d.get(), false);
        for (const auto& b : s.bodies) check(b, false);
        return;
      default:
        for (const auto& e : s.exprs) check(e.get(), soft);
        check(s.filter.get(), soft);
        for (const auto& b : s.bodies) check(b, soft);
    }
  }

  void check(const expr* e, bool soft) {
    if (!e) return;
    if (e->kind == expr_kind::cond) soft = true;
    if (!soft && e->kind == expr_kind::filter && !has_filter(e->name))
      throw template_error(errc::unsupported, e->line,
                           "the Jinja filter '" + e->name + "' is not supported by this renderer");
    if (!soft && e->kind == expr_kind::test && !has_test(e->name))
      throw template_error(errc::unsupported, e->line,
                           "the Jinja test '" + e->name + "' is not supported by this renderer");
    for (const auto& a : e->args) check(a.get(), soft);
    for (const auto& [k, a] : e->kwargs) check(a.get(), soft);
  }
};

}  // namespace

stmt_list parse_template(const std::string& source) {
  stmt_list body = parser(tokenize(source)).parse();
  name_checker().check(body, false);
  return body;
}

}  // namespace shoal::jinja
