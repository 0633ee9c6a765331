#pragma once
// Internal to the chat-template renderer: Jinja2's lexer and parser, reproduced closely enough
// that templates tokenize, strip whitespace and group operators exactly as Jinja2 3.1 does with
// transformers' settings (trim_blocks, lstrip_blocks, the loopcontrols extension and the
// {% generation %} tag of its AssistantTracker).

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tokenizer/chat_template_value.hpp"

namespace shoal::jinja {

struct token {
  enum class kind {
    data,
    block_begin,
    block_end,
    variable_begin,
    variable_end,
    name,
    string,
    integer,
    floating,
    op,
    eof,
  };
  kind type = kind::eof;
  std::string text;  // data, name, operator, decoded string literal
  std::int64_t int_value = 0;
  double float_value = 0.0;
  int line = 1;
};

/// Splits a template into tokens; whitespace control, trim_blocks and lstrip_blocks are applied
/// here, to the data tokens, as Jinja2's lexer does. Throws shoal::error on malformed tags.
std::vector<token> tokenize(const std::string& source);

struct expr;
using expr_ptr = std::unique_ptr<expr>;

enum class expr_kind {
  literal,  // value
  name,     // name
  getattr,  // args[0].name
  getitem,  // args[0][args[1]]
  slice,    // args = {start, stop, step}, each may be null
  call,     // args[0](args[1..], kwargs)
  filter,   // args[0] | name(args[1..], kwargs); args[0] is null in a filter block
  test,     // args[0] is [not] name(args[1..], kwargs)
  not_op,   // not args[0]
  neg,      // -args[0]
  pos,      // +args[0]
  binary,   // args[0] name args[1], name in + - * / // % **
  compare,  // args[0] ops[0] args[1] ops[1] args[2] ...
  and_op,   // args[0] and args[1]
  or_op,    // args[0] or args[1]
  concat,   // args[0] ~ args[1] ~ ...
  cond,     // args[0] if args[1] else args[2] (args[2] may be null)
  list,     // [args...]
  tuple,    // (args...)
  dict,     // {args[0]: args[1], args[2]: args[3], ...}
};

struct expr {
  expr_kind kind = expr_kind::literal;
  int line = 1;
  value literal;
  std::string name;
  std::vector<expr_ptr> args;
  std::vector<std::pair<std::string, expr_ptr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;  // test: `is not`
  int depth = 1;         // height of this subtree; the parser bounds it
};

struct stmt;
using stmt_list = std::vector<std::unique_ptr<stmt>>;

enum class stmt_kind {
  text,       // text
  output,     // {{ exprs[0] }} or {% print exprs[0] %}
  if_stmt,    // exprs[i] guards bodies[i]; a further body is the else branch
  for_stmt,   // for targets in exprs[0] [if exprs[1]]: bodies[0], else bodies[1]
  set,        // targets = exprs[0]; or targets[0].attr = exprs[0] when attr is set
  set_block,  // targets = rendered bodies[0], through filter when set
  macro,      // macro targets[0](targets[1..] = defaults) bodies[0]
  break_stmt,
  continue_stmt,
  scope,         // {% generation %}, {% with targets = exprs %}: bodies[0] in a new scope
  filter_block,  // {% filter %}: rendered bodies[0] through filter
};

struct stmt {
  stmt_kind kind = stmt_kind::text;
  int line = 1;
  std::string text;
  std::vector<expr_ptr> exprs;
  std::vector<stmt_list> bodies;
  std::vector<std::string> targets;
  bool unpack = false;  // the target was a tuple (`for k, v in ...`)
  std::string attr;     // `set ns.attr = ...`
  expr_ptr filter;      // set_block / filter_block: a filter chain whose innermost subject is null
  std::vector<expr_ptr> defaults;  // macro parameters' defaults, null where none
};

/// Parses a template into statements. Throws shoal::error: errc::invalid_argument for a syntax
/// error, errc::unsupported for a Jinja tag outside the subset; both name the line.
stmt_list parse_template(const std::string& source);

/// Whether a filter or test of that name exists (the parser rejects unknown ones where Jinja2
/// rejects them at compile time).
bool has_filter(const std::string& name);
bool has_test(const std::string& name);

/// Builds the "chat template line N: ..." error that every parse and render failure carries.
error template_error(errc code, int line, const std::string& message);

}  // namespace shoal::jinja
