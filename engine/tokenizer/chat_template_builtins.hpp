#pragma once
// Internal to the chat-template renderer: what Jinja2's environment and Python's objects give a
// template (attribute and item lookup, operators, filters, tests, str/list/dict methods, and the
// globals transformers defines). All of them throw `failure`; the evaluator adds the line.

#include <string>

#include "engine/tokenizer/chat_template_value.hpp"

namespace shoal::jinja {

/// `obj.name` as Jinja2's sandbox resolves it: a method first, then a dict key.
value get_attribute(const value& obj, const std::string& name);
/// `obj[key]`: an item first, then (for a string key) an attribute.
value get_item(const value& obj, const value& key);
/// `obj[start:stop:step]`; an absent bound is undefined.
value get_slice(const value& obj, const value& start, const value& stop, const value& step);
/// `obj.name(args)`, failing with errc::unsupported for a Python method outside the subset.
value call_attribute(const value& obj, const std::string& name, const call_args& args);

/// Arithmetic: + - * / // % **.
value binary_op(const std::string& op, const value& a, const value& b);
/// Python `item in container`.
bool contains(const value& container, const value& item);
/// Python iteration: a list's items, a dict's keys, a string's characters; undefined is empty.
value_list iterate(const value& v);

value apply_filter(const std::string& name, const value& subject, const call_args& args);
bool apply_test(const std::string& name, const value& subject, const call_args& args);

/// range, namespace, dict, and transformers' raise_exception and strftime_now.
value_dict builtin_globals();

}  // namespace shoal::jinja
