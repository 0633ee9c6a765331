// Renders a parsed chat template. Scoping follows Jinja2: `if` blocks share their scope, each
// iteration of a `for` body gets a fresh scope (so `set` inside a loop never leaks out; that is
// why templates use namespace()), and macros see the scope they were defined in.

#include "engine/tokenizer/chat_template.hpp"

#include <memory>

#include "engine/tokenizer/chat_template_builtins.hpp"
#include "engine/tokenizer/chat_template_parse.hpp"

namespace shoal {

namespace jinja {
namespace {

// Guards against templates that would run away; real chat templates stay far below each.
constexpr std::int64_t max_loop_iterations = 1'000'000;
constexpr std::size_t max_output_bytes = std::size_t{256} << 20;
constexpr int max_macro_depth = 32;
// Statements and expressions being evaluated at once (each a few C++ frames): bounds the stack
// whatever mix of nested blocks, expressions and macro calls a template builds.
constexpr int max_eval_depth = 1000;

struct scope {
  std::vector<std::pair<std::string, value>> vars;
  std::shared_ptr<scope> parent;

  const value* find(const std::string& name) const {
    for (const scope* s = this; s; s = s->parent.get())
      for (const auto& [k, v] : s->vars)
        if (k == name) return &v;
    return nullptr;
  }
  void set(const std::string& name, value v) {
    for (auto& [k, old] : vars) {
      if (k == name) {
        old = std::move(v);
        return;
      }
    }
    vars.emplace_back(name, std::move(v));
  }
};
using scope_ptr = std::shared_ptr<scope>;

scope_ptr child_of(const scope_ptr& parent) {
  auto s = std::make_shared<scope>();
  s->parent = parent;
  return s;
}

class renderer {
 public:
  std::string render(const stmt_list& body, const scope_ptr& root) {
    std::string out;
    exec(body, root, out);
    return out;
  }

 private:
  enum class flow { normal, break_loop, continue_loop };

  flow exec(const stmt_list& body, const scope_ptr& sc, std::string& out) {
    for (const auto& s : body) {
      const flow f = exec_stmt(*s, sc, out);
      if (f != flow::normal) return f;
    }
    return flow::normal;
  }

  struct depth_guard {
    depth_guard(int& depth, int limit, const char* what) : depth_(depth) {
      if (++depth_ > limit) {
        --depth_;
        fail(errc::out_of_range, what);
      }
    }
    ~depth_guard() { --depth_; }
    int& depth_;
  };

  flow exec_stmt(const stmt& s, const scope_ptr& sc, std::string& out) {
    try {
      depth_guard guard(eval_depth_, max_eval_depth, "the template nests too deeply");
      return exec_stmt_impl(s, sc, out);
    } catch (const failure& f) {
      throw template_error(f.code, s.line, f.message);
    }
  }

  void emit(std::string& out, const std::string& text) {
    if (out.size() + text.size() > max_output_bytes)
      fail(errc::out_of_range,
           "the rendered prompt exceeds " + std::to_string(max_output_bytes >> 20) + " MiB");
    out += text;
  }

  flow exec_stmt_impl(const stmt& s, const scope_ptr& sc, std::string& out) {
    switch (s.kind) {
      case stmt_kind::text:
        emit(out, s.text);
        return flow::normal;
      case stmt_kind::output:
        emit(out, to_str(eval(*s.exprs[0], sc)));
        return flow::normal;
      case stmt_kind::if_stmt:
        for (std::size_t i = 0; i < s.exprs.size(); ++i)
          if (truthy(eval(*s.exprs[i], sc))) return exec(s.bodies[i], sc, out);
        if (s.bodies.size() > s.exprs.size()) return exec(s.bodies.back(), sc, out);
        return flow::normal;
      case stmt_kind::for_stmt:
        return exec_for(s, sc, out);
      case stmt_kind::set:
        assign(s, *sc, eval(*s.exprs[0], sc));
        return flow::normal;
      case stmt_kind::set_block:
      case stmt_kind::filter_block: {
        std::string captured;
        exec(s.bodies[0], child_of(sc), captured);
        value v = value::string(std::move(captured));
        if (s.filter) v = eval_filter(*s.filter, sc, &v);
        if (s.kind == stmt_kind::set_block)
          assign(s, *sc, std::move(v));
        else
          emit(out, to_str(v));
        return flow::normal;
      }
      case stmt_kind::macro:
        sc->set(s.targets[0], make_macro(s, sc));
        return flow::normal;
      case stmt_kind::break_stmt:
        return flow::break_loop;
      case stmt_kind::continue_stmt:
        return flow::continue_loop;
      case stmt_kind::scope: {
        auto inner = child_of(sc);
        for (std::size_t i = 0; i < s.exprs.size(); ++i)
          inner->set(s.targets[i], eval(*s.exprs[i], sc));
        return exec(s.bodies[0], inner, out);
      }
    }
    fail(errc::internal, "unknown statement");
  }

  static void bind(const std::vector<std::string>& targets, bool unpack, const value& v,
                   scope& sc) {
    if (!unpack) {
      sc.set(targets[0], v);
      return;
    }
    const value_list items = iterate(v);
    if (items.size() != targets.size()) {
      fail(errc::invalid_argument,
           items.size() > targets.size()
               ? "too many values to unpack (expected " + std::to_string(targets.size()) + ")"
               : "not enough values to unpack (expected " + std::to_string(targets.size()) +
                     ", got " + std::to_string(items.size()) + ")");
    }
    for (std::size_t i = 0; i < targets.size(); ++i) sc.set(targets[i], items[i]);
  }

  static void assign(const stmt& s, scope& sc, value v) {
    if (s.attr.empty()) {
      bind(s.targets, s.unpack, v, sc);
      return;
    }
    const value* ns = sc.find(s.targets[0]);
    if (!ns || ns->type() != value::kind::ns)
      fail(errc::invalid_argument,
           "cannot assign attribute on non-namespace object '" + s.targets[0] + "'");
    ns->ns_attrs().set(s.attr, std::move(v));
  }

  void count_iteration() {
    if (++iterations_ > max_loop_iterations)
      fail(errc::out_of_range, "the template ran more than " + std::to_string(max_loop_iterations) +
                                   " loop iterations");
  }

  flow exec_for(const stmt& s, const scope_ptr& sc, std::string& out) {
    value_list items = iterate(eval(*s.exprs[0], sc));
    if (s.exprs.size() > 1) {
      // `for x in xs if cond`: loop.index and loop.length count only the items kept.
      value_list kept;
      for (auto& item : items) {
        count_iteration();
        auto test_scope = child_of(sc);
        bind(s.targets, s.unpack, item, *test_scope);
        if (truthy(eval(*s.exprs[1], test_scope))) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      if (s.bodies.size() > 1) exec(s.bodies[1], child_of(sc), out);
      return flow::normal;
    }
    const auto n = static_cast<std::int64_t>(items.size());
    for (std::int64_t i = 0; i < n; ++i) {
      count_iteration();
      auto it = child_of(sc);
      bind(s.targets, s.unpack, items[static_cast<std::size_t>(i)], *it);
      it->set("loop", make_loop(items, i));
      if (exec(s.bodies[0], it, out) == flow::break_loop) break;
    }
    return flow::normal;
  }

  static value make_loop(const value_list& items, std::int64_t i) {
    const auto n = static_cast<std::int64_t>(items.size());
    const auto idx = static_cast<std::size_t>(i);
    value_dict d;
    d.entries.reserve(12);
    d.entries.emplace_back("index", value::integer(i + 1));
    d.entries.emplace_back("index0", value::integer(i));
    d.entries.emplace_back("revindex", value::integer(n - i));
    d.entries.emplace_back("revindex0", value::integer(n - i - 1));
    d.entries.emplace_back("first", value::boolean(i == 0));
    d.entries.emplace_back("last", value::boolean(i == n - 1));
    d.entries.emplace_back("length", value::integer(n));
    d.entries.emplace_back("depth", value::integer(1));
    d.entries.emplace_back("depth0", value::integer(0));
    d.entries.emplace_back("previtem",
                           i > 0 ? items[idx - 1] : value::undefined("there is no previous item"));
    d.entries.emplace_back("nextitem",
                           i + 1 < n ? items[idx + 1] : value::undefined("there is no next item"));
    d.entries.emplace_back(
        "cycle", value::make_function("loop.cycle", [i](const call_args& args) {
          if (args.positional.empty()) fail(errc::invalid_argument, "no items for cycling given");
          return args.positional[static_cast<std::size_t>(i) % args.positional.size()];
        }));
    return value::dict(std::move(d));
  }

  value make_macro(const stmt& m, const scope_ptr& sc) {
    // A weak reference: the macro lives in that scope, and a strong one would be a cycle.
    std::weak_ptr<scope> defined_in = sc;
    const stmt* macro = &m;
    return value::make_function(m.targets[0], [this, macro, defined_in](const call_args& args) {
      return call_macro(*macro, defined_in.lock(), args);
    });
  }

  value call_macro(const stmt& m, const scope_ptr& defined_in, const call_args& args) {
    const std::string& name = m.targets[0];
    if (!defined_in)
      fail(errc::invalid_argument, "macro '" + name + "' was called after its scope ended");
    depth_guard guard(macro_depth_, max_macro_depth, "macro calls nest too deeply (recursion?)");

    const std::size_t n_params = m.targets.size() - 1;
    if (args.positional.size() > n_params)
      fail(errc::invalid_argument,
           "macro '" + name + "' takes not more than " + std::to_string(n_params) + " argument(s)");
    for (const auto& [k, v] : args.named) {
      if (std::find(m.targets.begin() + 1, m.targets.end(), k) == m.targets.end())
        fail(errc::invalid_argument, "macro '" + name + "' takes no keyword argument '" + k + "'");
    }
    auto sc = child_of(defined_in);
    for (std::size_t i = 0; i < n_params; ++i) {
      const std::string& param = m.targets[i + 1];
      const value* given = i < args.positional.size() ? &args.positional[i] : nullptr;
      for (const auto& [k, v] : args.named)
        if (k == param) given = &v;
      if (given) {
        sc->set(param, *given);
      } else if (m.defaults[i]) {
        sc->set(param, eval(*m.defaults[i], sc));
      } else {
        sc->set(param, value::undefined("parameter '" + param + "' was not provided"));
      }
    }
    std::string out;
    exec(m.bodies[0], sc, out);
    return value::string(std::move(out));
  }

  // Expressions ---------------------------------------------------------------------------------

  value eval(const expr& e, const scope_ptr& sc) {
    try {
      depth_guard guard(eval_depth_, max_eval_depth, "the template nests too deeply");
      return eval_impl(e, sc);
    } catch (const failure& f) {
      throw template_error(f.code, e.line, f.message);
    }
  }

  call_args eval_args(const expr& e, std::size_t first, const scope_ptr& sc) {
    call_args args;
    for (std::size_t i = first; i < e.args.size(); ++i)
      args.positional.push_back(eval(*e.args[i], sc));
    for (const auto& [k, a] : e.kwargs) args.named.emplace_back(k, eval(*a, sc));
    return args;
  }

  value eval_filter(const expr& e, const scope_ptr& sc, const value* block_subject) {
    value subject;
    if (!e.args[0]) {
      if (!block_subject) fail(errc::internal, "filter without a subject");
      subject = *block_subject;
    } else if (e.args[0]->kind == expr_kind::filter) {
      subject = eval_filter(*e.args[0], sc, block_subject);
    } else {
      subject = eval(*e.args[0], sc);
    }
    return apply_filter(e.name, subject, eval_args(e, 1, sc));
  }

  value eval_call(const expr& e, const scope_ptr& sc) {
    const expr& callee = *e.args[0];
    if (callee.kind == expr_kind::getattr) {
      value obj = eval(*callee.args[0], sc);
      return call_attribute(obj, callee.name, eval_args(e, 1, sc));
    }
    const value fn = eval(callee, sc);
    if (fn.type() == value::kind::function) return fn.as_function().call(eval_args(e, 1, sc));
    if (fn.is_undefined() && callee.kind == expr_kind::name)
      fail(errc::unsupported,
           "the function '" + callee.name + "' is not available to chat templates here");
    if (fn.is_undefined()) fail(errc::invalid_argument, fn.undefined_hint());
    fail(errc::invalid_argument, "'" + type_name(fn) + "' object is not callable");
  }

  static bool compare_op(const std::string& op, const value& a, const value& b) {
    if (op == "==") return equals(a, b);
    if (op == "!=") return !equals(a, b);
    if (op == "in") return contains(b, a);
    if (op == "not in") return !contains(b, a);
    if (a.is_undefined()) fail(errc::invalid_argument, a.undefined_hint());
    if (b.is_undefined()) fail(errc::invalid_argument, b.undefined_hint());
    return compare(a, b, op);
  }

  value eval_impl(const expr& e, const scope_ptr& sc) {
    switch (e.kind) {
      case expr_kind::literal:
        return e.literal;
      case expr_kind::name: {
        const value* v = sc->find(e.name);
        return v ? *v : value::undefined("'" + e.name + "' is undefined");
      }
      case expr_kind::getattr:
        return get_attribute(eval(*e.args[0], sc), e.name);
      case expr_kind::getitem: {
        const value obj = eval(*e.args[0], sc);
        const expr& key = *e.args[1];
        if (key.kind == expr_kind::slice) {
          auto bound = [&](std::size_t i) {
            return key.args[i] ? eval(*key.args[i], sc) : value::none();
          };
          return get_slice(obj, bound(0), bound(1), bound(2));
        }
        return get_item(obj, eval(key, sc));
      }
      case expr_kind::slice:
        fail(errc::invalid_argument, "a slice is only valid inside []");
      case expr_kind::call:
        return eval_call(e, sc);
      case expr_kind::filter:
        return eval_filter(e, sc, nullptr);
      case expr_kind::test: {
        const value subject = eval(*e.args[0], sc);
        return value::boolean(apply_test(e.name, subject, eval_args(e, 1, sc)) != e.negated);
      }
      case expr_kind::not_op:
        return value::boolean(!truthy(eval(*e.args[0], sc)));
      case expr_kind::neg:
      case expr_kind::pos: {
        const value v = eval(*e.args[0], sc);
        const bool neg = e.kind == expr_kind::neg;
        if (v.is_undefined()) fail(errc::invalid_argument, v.undefined_hint());
        if (v.is_integral()) {
          if (neg && v.as_int() == INT64_MIN) fail(errc::out_of_range, "integer overflow");
          return value::integer(neg ? -v.as_int() : v.as_int());
        }
        if (v.type() == value::kind::floating)
          return value::floating(neg ? -v.as_double() : v.as_double());
        fail(errc::invalid_argument, std::string("bad operand type for unary ") +
                                         (neg ? "-" : "+") + ": '" + type_name(v) + "'");
      }
      case expr_kind::binary:
        return binary_op(e.name, eval(*e.args[0], sc), eval(*e.args[1], sc));
      case expr_kind::compare: {
        value left = eval(*e.args[0], sc);
        for (std::size_t i = 0; i < e.ops.size(); ++i) {
          value right = eval(*e.args[i + 1], sc);
          if (!compare_op(e.ops[i], left, right)) return value::boolean(false);
          left = std::move(right);
        }
        return value::boolean(true);
      }
      case expr_kind::and_op: {
        value left = eval(*e.args[0], sc);
        return truthy(left) ? eval(*e.args[1], sc) : left;
      }
      case expr_kind::or_op: {
        value left = eval(*e.args[0], sc);
        return truthy(left) ? left : eval(*e.args[1], sc);
      }
      case expr_kind::concat: {
        std::string s;
        for (const auto& a : e.args) s += to_str(eval(*a, sc));
        return value::string(std::move(s));
      }
      case expr_kind::cond:
        if (truthy(eval(*e.args[1], sc))) return eval(*e.args[0], sc);
        if (e.args[2]) return eval(*e.args[2], sc);
        return value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                                " evaluated to false and no else section was defined.");
      case expr_kind::list:
      case expr_kind::tuple: {
        value_list items;
        items.reserve(e.args.size());
        for (const auto& a : e.args) items.push_back(eval(*a, sc));
        return e.kind == expr_kind::tuple ? value::tuple(std::move(items))
                                          : value::list(std::move(items));
      }
      case expr_kind::dict: {
        value_dict d;
        for (std::size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const value key = eval(*e.args[i], sc);
          if (!key.is_string())
            fail(errc::unsupported, "dict literals with non-string keys are not supported");
          d.set(key.as_string(), eval(*e.args[i + 1], sc));
        }
        return value::dict(std::move(d));
      }
    }
    fail(errc::internal, "unknown expression");
  }

  std::int64_t iterations_ = 0;
  int macro_depth_ = 0;
  int eval_depth_ = 0;
};

}  // namespace
}  // namespace jinja

std::string render_chat_template(const std::string& source, const chat_template_vars& vars) {
  return render_chat_template(source, vars, nlohmann::ordered_json::object());
}

std::string render_chat_template(const std::string& source, const chat_template_vars& vars,
                                 const nlohmann::ordered_json& extra_vars) {
  using namespace jinja;
  const stmt_list body = parse_template(source);
  try {
    // Jinja2 looks template globals up behind the render variables; template-level `set`s go
    // into the root scope above both.
    auto globals = std::make_shared<scope>();
    for (auto& [k, v] : builtin_globals().entries) globals->set(k, std::move(v));
    // transformers' render(messages=..., tools=..., documents=..., add_generation_prompt=...,
    // **special_tokens): tools and documents are always defined, None when absent.
    globals->set("messages", from_json(vars.messages));
    globals->set("add_generation_prompt", value::boolean(vars.add_generation_prompt));
    globals->set("bos_token", value::string(vars.bos_token));
    globals->set("eos_token", value::string(vars.eos_token));
    globals->set("tools", from_json(vars.tools));
    globals->set("documents", value::none());
    if (extra_vars.is_object())
      for (const auto& [k, v] : extra_vars.items()) globals->set(k, from_json(v));
    return renderer().render(body, child_of(globals));
  } catch (const failure& f) {
    throw error(f.code, "chat template: " + f.message);
  }
}

}  // namespace shoal
