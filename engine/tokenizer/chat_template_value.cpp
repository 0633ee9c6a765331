#include "engine/tokenizer/chat_template_value.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace shoal::jinja {

void fail(errc code, std::string message) {
  throw failure{code, std::move(message)};
}

const value* value_dict::find(std::string_view key) const {
  for (const auto& [k, v] : entries)
    if (k == key) return &v;
  return nullptr;
}

void value_dict::set(std::string key, value v) {
  for (auto& [k, old] : entries) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  entries.emplace_back(std::move(key), std::move(v));
}

value value::undefined(std::string hint) {
  value v;
  v.ptr_ = std::make_shared<std::string>(std::move(hint));
  return v;
}

value value::none() {
  value v;
  v.kind_ = kind::none;
  return v;
}

value value::boolean(bool b) {
  value v;
  v.kind_ = kind::boolean;
  v.scalar_.i = b ? 1 : 0;
  return v;
}

value value::integer(std::int64_t i) {
  value v;
  v.kind_ = kind::integer;
  v.scalar_.i = i;
  return v;
}

value value::floating(double d) {
  value v;
  v.kind_ = kind::floating;
  v.scalar_.d = d;
  return v;
}

value value::string(std::string s) {
  value v;
  v.kind_ = kind::string;
  v.ptr_ = std::make_shared<std::string>(std::move(s));
  return v;
}

value value::list(value_list items) {
  value v;
  v.kind_ = kind::list;
  v.ptr_ = std::make_shared<value_list>(std::move(items));
  return v;
}

value value::tuple(value_list items) {
  value v = list(std::move(items));
  v.scalar_.i = 1;
  return v;
}

value value::dict(value_dict d) {
  value v;
  v.kind_ = kind::dict;
  v.ptr_ = std::make_shared<value_dict>(std::move(d));
  return v;
}

value value::make_namespace(value_dict attrs) {
  value v;
  v.kind_ = kind::ns;
  v.ptr_ = std::make_shared<value_dict>(std::move(attrs));
  return v;
}

value value::make_function(std::string name, std::function<value(const call_args&)> call) {
  value v;
  v.kind_ = kind::function;
  v.ptr_ = std::make_shared<function>(function{std::move(name), std::move(call)});
  return v;
}

std::string value::undefined_hint() const {
  if (ptr_ && !static_cast<const std::string*>(ptr_.get())->empty())
    return *static_cast<const std::string*>(ptr_.get());
  return "value is undefined";
}

// UTF-8 ---------------------------------------------------------------------------------------

namespace {

// Decodes the code point at s[i] and advances i. A malformed byte b becomes the lone surrogate
// U+DC00+b (Python's surrogateescape), so re-encoding gives back the same bytes.
char32_t decode_one(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const char32_t escaped = 0xDC00 + b0;
  int len = 0;
  char32_t cp = 0;
  if (b0 < 0x80) {
    ++i;
    return b0;
  } else if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    cp = b0 & 0x07;
  } else {
    ++i;
    return escaped;
  }
  if (i + len > s.size()) {
    ++i;
    return escaped;
  }
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) {
      ++i;
      return escaped;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  i += len;
  return cp;
}

}  // namespace

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) out.push_back(decode_one(s, i));
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    // A malformed byte was decoded to a lone surrogate (see decode_one); put the byte back.
    if (c >= 0xDC80 && c <= 0xDCFF)
      out.push_back(static_cast<char>(c - 0xDC00));
    else
      append_utf8(out, c);
  }
  return out;
}

std::size_t utf8_length(std::string_view s) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size();) {
    decode_one(s, i);
    ++n;
  }
  return n;
}

bool py_isspace(char32_t c) {
  if (c >= 0x09 && c <= 0x0D) return true;
  if (c >= 0x1C && c <= 0x20) return true;
  switch (c) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

std::size_t rstrip_length(std::string_view s) {
  std::size_t end = s.size();
  while (end > 0) {
    std::size_t start = end - 1;
    // Step back over continuation bytes to the lead byte of the last code point.
    while (start > 0 && end - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80)
      --start;
    std::size_t i = start;
    const char32_t c = decode_one(s, i);
    if (i != end || !py_isspace(c)) break;
    end = start;
  }
  return end;
}

std::size_t lstrip_length(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t next = i;
    if (!py_isspace(decode_one(s, next))) break;
    i = next;
  }
  return i;
}

// Python semantics ----------------------------------------------------------------------------

bool truthy(const value& v) {
  switch (v.type()) {
    case value::kind::undefined:
    case value::kind::none:
      return false;
    case value::kind::boolean:
    case value::kind::integer:
      return v.as_int() != 0;
    case value::kind::floating:
      return v.as_double() != 0.0;
    case value::kind::string:
      return !v.as_string().empty();
    case value::kind::list:
      return !v.as_list().empty();
    case value::kind::dict:
      return !v.as_dict().entries.empty();
    case value::kind::ns:
    case value::kind::function:
      return true;
  }
  return false;
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  // Shortest round-trip digits (what Python's repr picks), then Python's layout: positional
  // for exponents in [-4, 16), scientific with a signed two-digit exponent otherwise.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  const auto e_pos = sci.find('e');
  std::string mantissa = sci.substr(0, e_pos);
  const int exponent = std::stoi(sci.substr(e_pos + 1));
  std::string digits;
  for (char c : mantissa)
    if (c != '.') digits.push_back(c);
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0.";
      out.append(static_cast<std::size_t>(-exponent - 1), '0');
      out += digits;
    } else {
      const auto int_len = static_cast<std::size_t>(exponent) + 1;
      if (digits.size() <= int_len) {
        out += digits;
        out.append(int_len - digits.size(), '0');
        out += ".0";
      } else {
        out += digits.substr(0, int_len);
        out += '.';
        out += digits.substr(int_len);
      }
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) {
      out += '.';
      out += digits.substr(1);
    }
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof exp_buf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp_buf;
  }
  return out;
}

namespace {

// Python's str.isprintable(), approximately: control characters and the common invisible or
// separator code points are escaped by repr(); everything else prints as itself.
bool py_isprintable(char32_t c) {
  if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) return false;
  if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F)) return false;
  if ((c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF) return false;
  if ((c >= 0xD800 && c <= 0xDFFF) || (c >= 0xE000 && c <= 0xF8FF)) return false;
  if (c == 0xFFFE || c == 0xFFFF || c > 0x10FFFF) return false;
  return true;
}

std::string repr_string(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : utf8_decode(s)) {
    if (c == static_cast<char32_t>(quote) || c == U'\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == U'\n') {
      out += "\\n";
    } else if (c == U'\r') {
      out += "\\r";
    } else if (c == U'\t') {
      out += "\\t";
    } else if (!py_isprintable(c)) {
      char buf[16];
      if (c < 0x100)
        std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      else if (c < 0x10000)
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      else
        std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
      out += buf;
    } else {
      append_utf8(out, c);
    }
  }
  out += quote;
  return out;
}

}  // namespace

std::string to_str(const value& v) {
  switch (v.type()) {
    case value::kind::undefined:
      return "";
    case value::kind::none:
      return "None";
    case value::kind::boolean:
      return v.as_bool() ? "True" : "False";
    case value::kind::integer:
      return std::to_string(v.as_int());
    case value::kind::floating:
      return float_repr(v.as_double());
    case value::kind::string:
      return v.as_string();
    default:
      return repr(v);
  }
}

std::string repr(const value& v) {
  switch (v.type()) {
    case value::kind::undefined:
      return "Undefined";
    case value::kind::string:
      return repr_string(v.as_string());
    case value::kind::list: {
      std::string out = v.is_tuple() ? "(" : "[";
      bool first = true;
      for (const auto& item : v.as_list()) {
        if (!first) out += ", ";
        first = false;
        out += repr(item);
      }
      if (v.is_tuple() && v.as_list().size() == 1) out += ",";
      return out + (v.is_tuple() ? ")" : "]");
    }
    case value::kind::dict:
    case value::kind::ns: {
      const auto& d = v.type() == value::kind::dict ? v.as_dict() : v.ns_attrs();
      std::string out = v.type() == value::kind::ns ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, item] : d.entries) {
        if (!first) out += ", ";
        first = false;
        out += repr_string(k) + ": " + repr(item);
      }
      return out + (v.type() == value::kind::ns ? "}>" : "}");
    }
    case value::kind::function:
      return "<function " + v.as_function().name + ">";
    default:
      return to_str(v);
  }
}

std::string type_name(const value& v) {
  switch (v.type()) {
    case value::kind::undefined:
      return "Undefined";
    case value::kind::none:
      return "NoneType";
    case value::kind::boolean:
      return "bool";
    case value::kind::integer:
      return "int";
    case value::kind::floating:
      return "float";
    case value::kind::string:
      return "str";
    case value::kind::list:
      return v.is_tuple() ? "tuple" : "list";
    case value::kind::dict:
      return "dict";
    case value::kind::ns:
      return "Namespace";
    case value::kind::function:
      return "function";
  }
  return "object";
}

bool equals(const value& a, const value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case value::kind::undefined:
    case value::kind::none:
      return true;
    case value::kind::string:
      return a.as_string() == b.as_string();
    case value::kind::list: {
      const auto& x = a.as_list();
      const auto& y = b.as_list();
      if (a.is_tuple() != b.is_tuple() || x.size() != y.size()) return false;
      for (std::size_t i = 0; i < x.size(); ++i)
        if (!equals(x[i], y[i])) return false;
      return true;
    }
    case value::kind::dict: {
      const auto& x = a.as_dict().entries;
      const auto& y = b.as_dict();
      if (x.size() != y.entries.size()) return false;
      for (const auto& [k, item] : x) {
        const value* other = y.find(k);
        if (!other || !equals(item, *other)) return false;
      }
      return true;
    }
    default:
      return a.identity() == b.identity();
  }
}

namespace {

template <typename T>
bool apply_order(const T& x, const T& y, std::string_view op) {
  if (op == "<") return x < y;
  if (op == "<=") return x <= y;
  if (op == ">") return x > y;
  return x >= y;
}

}  // namespace

bool compare(const value& a, const value& b, std::string_view op) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return apply_order(a.as_int(), b.as_int(), op);
    return apply_order(a.as_double(), b.as_double(), op);
  }
  if (a.is_string() && b.is_string()) {
    // Byte order of UTF-8 is code-point order, which is how Python orders str.
    return apply_order(std::string_view(a.as_string()), std::string_view(b.as_string()), op);
  }
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    // Python compares sequences at their first differing item, else by length.
    const auto& x = a.as_list();
    const auto& y = b.as_list();
    for (std::size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (!equals(x[i], y[i])) return compare(x[i], y[i], op);
    return apply_order(x.size(), y.size(), op);
  }
  fail(errc::invalid_argument, "'" + std::string(op) + "' not supported between instances of '" +
                                   type_name(a) + "' and '" + type_name(b) + "'");
}

// JSON ----------------------------------------------------------------------------------------

namespace {

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (char32_t c : utf8_decode(s)) {
    switch (c) {
      case U'"':
        out += "\\\"";
        continue;
      case U'\\':
        out += "\\\\";
        continue;
      case U'\n':
        out += "\\n";
        continue;
      case U'\r':
        out += "\\r";
        continue;
      case U'\t':
        out += "\\t";
        continue;
      case U'\b':
        out += "\\b";
        continue;
      case U'\f':
        out += "\\f";
        continue;
      default:
        break;
    }
    char buf[16];
    if (c < 0x20 || (ensure_ascii && c > 0x7E)) {
      if (c >= 0x10000) {
        const char32_t v = c - 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 | (v >> 10)),
                      static_cast<unsigned>(0xDC00 | (v & 0x3FF)));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      }
      out += buf;
    } else {
      append_utf8(out, c);
    }
  }
  out += '"';
}

void json_value(std::string& out, const value& v, const json_options& o, int level) {
  auto newline = [&](int lvl) {
    out += '\n';
    for (int i = 0; i < lvl; ++i) out += o.indent_str;
  };
  switch (v.type()) {
    case value::kind::none:
      out += "null";
      return;
    case value::kind::boolean:
      out += v.as_bool() ? "true" : "false";
      return;
    case value::kind::integer:
      out += std::to_string(v.as_int());
      return;
    case value::kind::floating: {
      const double d = v.as_double();
      if (std::isnan(d))
        out += "NaN";
      else if (std::isinf(d))
        out += d > 0 ? "Infinity" : "-Infinity";
      else
        out += float_repr(d);
      return;
    }
    case value::kind::string:
      json_string(out, v.as_string(), o.ensure_ascii);
      return;
    case value::kind::list: {
      const auto& items = v.as_list();
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (std::size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += o.item_separator;
        if (o.indent >= 0) newline(level + 1);
        json_value(out, items[i], o, level + 1);
      }
      if (o.indent >= 0) newline(level);
      out += ']';
      return;
    }
    case value::kind::dict: {
      std::vector<const std::pair<std::string, value>*> entries;
      for (const auto& e : v.as_dict().entries) entries.push_back(&e);
      if (entries.empty()) {
        out += "{}";
        return;
      }
      if (o.sort_keys)
        std::stable_sort(entries.begin(), entries.end(),
                         [](auto* x, auto* y) { return x->first < y->first; });
      out += '{';
      for (std::size_t i = 0; i < entries.size(); ++i) {
        if (i > 0) out += o.item_separator;
        if (o.indent >= 0) newline(level + 1);
        json_string(out, entries[i]->first, o.ensure_ascii);
        out += o.key_separator;
        json_value(out, entries[i]->second, o, level + 1);
      }
      if (o.indent >= 0) newline(level);
      out += '}';
      return;
    }
    default:
      fail(errc::invalid_argument, "Object of type " + type_name(v) + " is not JSON serializable");
  }
}

}  // namespace

std::string to_json(const value& v, const json_options& options) {
  std::string out;
  json_value(out, v, options, 0);
  return out;
}

value from_json(const nlohmann::ordered_json& j) {
  using t = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case t::null:
      return value::none();
    case t::boolean:
      return value::boolean(j.get<bool>());
    case t::number_integer:
      return value::integer(j.get<std::int64_t>());
    case t::number_unsigned: {
      const auto u = j.get<std::uint64_t>();
      if (u <= static_cast<std::uint64_t>(INT64_MAX))
        return value::integer(static_cast<std::int64_t>(u));
      return value::floating(static_cast<double>(u));
    }
    case t::number_float:
      return value::floating(j.get<double>());
    case t::string:
      return value::string(j.get<std::string>());
    case t::array: {
      value_list items;
      items.reserve(j.size());
      for (const auto& item : j) items.push_back(from_json(item));
      return value::list(std::move(items));
    }
    case t::object: {
      value_dict d;
      d.entries.reserve(j.size());
      for (const auto& [k, item] : j.items()) d.entries.emplace_back(k, from_json(item));
      return value::dict(std::move(d));
    }
    default:
      fail(errc::unsupported, "chat template variables cannot hold binary JSON values");
  }
}

}  // namespace shoal::jinja
