#pragma once
// Internal to the chat-template renderer: the values a Jinja2 template computes with. They follow
// Python's semantics (str(), repr(), ==, <, truthiness, json.dumps) because transformers renders
// chat templates with Jinja2 on Python objects, and a prompt that differs by one byte tokenizes
// differently. Lists, dicts and strings are shared and immutable (transformers uses Jinja's
// ImmutableSandboxedEnvironment), so copying a value is a reference-count bump; only namespace
// objects change after creation.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"

namespace shoal::jinja {

class value;
using value_list = std::vector<value>;

/// A Python dict with string keys, in insertion order. Chat-template dicts are small (a message,
/// a tool schema), so lookups are linear.
struct value_dict {
  std::vector<std::pair<std::string, value>> entries;

  const value* find(std::string_view key) const;
  void set(std::string key, value v);
};

struct call_args {
  std::vector<value> positional;
  std::vector<std::pair<std::string, value>> named;
};

struct function {
  std::string name;
  std::function<value(const call_args&)> call;
};

/// Thrown by value operations and builtins; the evaluator catches it and rethrows shoal::error
/// with the template line, which only it knows.
struct failure {
  errc code;
  std::string message;
};

[[noreturn]] void fail(errc code, std::string message);

class value {
 public:
  enum class kind : std::uint8_t {
    undefined,
    none,
    boolean,
    integer,
    floating,
    string,
    list,
    dict,
    ns,  // a namespace(): the one mutable kind
    function,
  };

  value() = default;  // undefined, without a hint

  static value undefined(std::string hint);
  static value none();
  static value boolean(bool b);
  static value integer(std::int64_t i);
  static value floating(double d);
  static value string(std::string s);
  static value list(value_list items);
  /// A Python tuple: a list that prints as (a, b) and never equals a list.
  static value tuple(value_list items);
  static value dict(value_dict d);
  static value make_namespace(value_dict attrs);
  static value make_function(std::string name, std::function<value(const call_args&)> call);

  kind type() const { return kind_; }
  bool is_undefined() const { return kind_ == kind::undefined; }
  bool is_none() const { return kind_ == kind::none; }
  bool is_string() const { return kind_ == kind::string; }
  bool is_list() const { return kind_ == kind::list; }
  bool is_tuple() const { return kind_ == kind::list && scalar_.i != 0; }
  bool is_dict() const { return kind_ == kind::dict; }
  /// Python's numbers.Number: bool counts, as in Python.
  bool is_number() const {
    return kind_ == kind::boolean || kind_ == kind::integer || kind_ == kind::floating;
  }
  /// bool or int (Python's int, of which bool is a subclass).
  bool is_integral() const { return kind_ == kind::boolean || kind_ == kind::integer; }

  bool as_bool() const { return scalar_.i != 0; }
  std::int64_t as_int() const { return scalar_.i; }  // also for booleans (0/1)
  double as_double() const {
    return kind_ == kind::floating ? scalar_.d : static_cast<double>(scalar_.i);
  }
  const std::string& as_string() const { return *static_cast<const std::string*>(ptr_.get()); }
  const value_list& as_list() const { return *static_cast<const value_list*>(ptr_.get()); }
  const value_dict& as_dict() const { return *static_cast<const value_dict*>(ptr_.get()); }
  /// A namespace's attributes; mutable through a const value because namespaces are shared.
  value_dict& ns_attrs() const { return *static_cast<value_dict*>(ptr_.get()); }
  const function& as_function() const { return *static_cast<const function*>(ptr_.get()); }
  /// Why a value is undefined, in Jinja's words ("'x' is undefined").
  std::string undefined_hint() const;
  /// Identity, for namespaces and functions (Python `is`).
  const void* identity() const { return ptr_.get(); }

 private:
  kind kind_ = kind::undefined;
  union {
    std::int64_t i;
    double d;
  } scalar_{0};
  std::shared_ptr<void> ptr_;  // string, list, dict, namespace, function, or an undefined's hint
};

// Python semantics ---------------------------------------------------------------------------

bool truthy(const value& v);
/// Python str(): what `{{ v }}` prints.
std::string to_str(const value& v);
/// Python repr(), used inside printed lists and dicts.
std::string repr(const value& v);
/// Python's type name, for error messages ("str", "int", "NoneType", ...).
std::string type_name(const value& v);
/// Python float repr(): shortest round-trip digits, "1.0", "1e+16", "1e-05".
std::string float_repr(double d);
/// Python ==.
bool equals(const value& a, const value& b);
/// Python ordering for op in {"<", "<=", ">", ">="}; fails (TypeError) across kinds.
bool compare(const value& a, const value& b, std::string_view op);

struct json_options {
  bool ensure_ascii = false;
  int indent = -1;  // -1: on one line (Python indent=None)
  std::string indent_str;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
/// Python json.dumps, as transformers' tojson filter calls it.
std::string to_json(const value& v, const json_options& options);

value from_json(const nlohmann::ordered_json& j);

// UTF-8 as Python sees str: sequences of code points ----------------------------------------

std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
void append_utf8(std::string& out, char32_t c);
std::size_t utf8_length(std::string_view s);
/// Python str.isspace() for one code point (also what re's \s matches).
bool py_isspace(char32_t c);
/// Length of s without its trailing Python whitespace.
std::size_t rstrip_length(std::string_view s);
/// Length of s's leading Python whitespace.
std::size_t lstrip_length(std::string_view s);

}  // namespace shoal::jinja
