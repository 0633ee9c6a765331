#include "engine/tokenizer/chat_template_builtins.hpp"

#include <locale.h>
#include <wctype.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <unordered_set>

#include "engine/tokenizer/chat_template_parse.hpp"

namespace shoal::jinja {

namespace {

// Jinja2's sandbox caps range() at this many items (MAX_RANGE).
constexpr std::int64_t max_range = 100000;
// No string or list a chat template builds needs more; the cap stops `'x' * 10**12`.
constexpr std::size_t max_built_size = std::size_t{1} << 28;

// Arguments --------------------------------------------------------------------------------------

// Python's binding of call arguments to a builtin's parameters, by position or by name.
class args_reader {
 public:
  args_reader(const call_args& args, std::string what) : args_(args), what_(std::move(what)) {}

  const value* find(std::size_t index, std::string_view name) const {
    if (index < args_.positional.size()) return &args_.positional[index];
    for (const auto& [k, v] : args_.named)
      if (k == name) return &v;
    return nullptr;
  }
  value get(std::size_t index, std::string_view name, value fallback = value::none()) const {
    const value* v = find(index, name);
    return v ? *v : std::move(fallback);
  }
  value require(std::size_t index, std::string_view name) const {
    const value* v = find(index, name);
    if (!v)
      fail(errc::invalid_argument,
           what_ + " missing required argument '" + std::string(name) + "'");
    return *v;
  }
  std::int64_t get_int(std::size_t index, std::string_view name, std::int64_t fallback) const {
    const value* v = find(index, name);
    if (!v || v->is_none()) return fallback;
    if (!v->is_integral())
      fail(errc::invalid_argument, what_ + " argument '" + std::string(name) +
                                       "' must be an integer, not " + type_name(*v));
    return v->as_int();
  }
  bool get_bool(std::size_t index, std::string_view name, bool fallback) const {
    const value* v = find(index, name);
    return v ? truthy(*v) : fallback;
  }
  std::size_t positional_count() const { return args_.positional.size(); }
  const call_args& raw() const { return args_; }
  void at_most(std::size_t n) const {
    if (args_.positional.size() > n)
      fail(errc::invalid_argument, what_ + " takes at most " + std::to_string(n) +
                                       " positional argument(s), got " +
                                       std::to_string(args_.positional.size()));
  }

 private:
  const call_args& args_;
  std::string what_;
};

[[noreturn]] void fail_undefined(const value& v) {
  fail(errc::invalid_argument, v.undefined_hint());
}

// Jinja2's object_type_repr, for "'str object' has no attribute 'x'".
std::string object_desc(const value& v) {
  if (v.is_none()) return "None";
  if (v.type() == value::kind::ns) return "jinja2.utils.Namespace object";
  return type_name(v) + " object";
}

value missing_attribute(const value& obj, const std::string& name) {
  return value::undefined("'" + object_desc(obj) + "' has no attribute '" + name + "'");
}

value missing_element(const value& obj, const value& key) {
  if (key.is_string()) return missing_attribute(obj, key.as_string());
  return value::undefined("'" + object_desc(obj) + "' has no element " + repr(key));
}

std::string str_of(const value& v) {
  return to_str(v);
}

const std::string& require_string(const value& v, const std::string& what) {
  if (v.is_undefined()) fail_undefined(v);
  if (!v.is_string())
    fail(errc::invalid_argument, what + " requires a string, not '" + type_name(v) + "'");
  return v.as_string();
}

// Text ------------------------------------------------------------------------------------------

locale_t utf8_locale() {
  // Python's str.upper()/lower() follow Unicode; glibc's C.UTF-8 tables cover the simple case
  // mappings, which is every mapping a chat template is likely to meet.
  static const locale_t loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr));
  return loc;
}

char32_t to_upper(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  const locale_t loc = utf8_locale();
  return loc ? static_cast<char32_t>(towupper_l(static_cast<wint_t>(c), loc)) : c;
}

char32_t to_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  const locale_t loc = utf8_locale();
  return loc ? static_cast<char32_t>(towlower_l(static_cast<wint_t>(c), loc)) : c;
}

bool is_upper(char32_t c) {
  return to_lower(c) != c;
}
bool is_lower(char32_t c) {
  return to_upper(c) != c;
}
bool is_cased(char32_t c) {
  return is_upper(c) || is_lower(c);
}
bool is_alpha(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  const locale_t loc = utf8_locale();
  return loc && iswalpha_l(static_cast<wint_t>(c), loc);
}
bool is_digit(char32_t c) {
  return c >= '0' && c <= '9';
}

std::string upper(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : utf8_decode(s)) {
    if (c == U'\u00DF') {
      out += "SS";  // the one full case mapping common in real text
    } else {
      append_utf8(out, to_upper(c));
    }
  }
  return out;
}

std::string lower(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : utf8_decode(s)) append_utf8(out, to_lower(c));
  return out;
}

std::string capitalize(const std::string& s) {
  std::u32string u = utf8_decode(s);
  for (std::size_t i = 0; i < u.size(); ++i) u[i] = i == 0 ? to_upper(u[i]) : to_lower(u[i]);
  return utf8_encode(u);
}

// Python str.title(): a cased character after an uncased one starts a word.
std::string py_title(const std::string& s) {
  std::u32string u = utf8_decode(s);
  bool previous_cased = false;
  for (auto& c : u) {
    c = previous_cased ? to_lower(c) : to_upper(c);
    previous_cased = is_cased(c);
  }
  return utf8_encode(u);
}

// Jinja2's title filter: words start after runs of [-\s({\[<].
std::string jinja_title(const std::string& s) {
  std::u32string u = utf8_decode(s);
  bool word_start = true;
  for (auto& c : u) {
    const bool sep = py_isspace(c) || c == U'-' || c == U'(' || c == U'{' || c == U'[' || c == U'<';
    if (sep) {
      word_start = true;
    } else {
      c = word_start ? to_upper(c) : to_lower(c);
      word_start = false;
    }
  }
  return utf8_encode(u);
}

std::string strip(const std::string& s, const value& chars, bool left, bool right) {
  if (chars.is_none() || chars.is_undefined()) {
    std::size_t begin = left ? lstrip_length(s) : 0;
    std::size_t end = right ? rstrip_length(s) : s.size();
    if (end < begin) end = begin;
    return s.substr(begin, end - begin);
  }
  const std::u32string set = utf8_decode(require_string(chars, "strip()"));
  const std::u32string u = utf8_decode(s);
  std::size_t begin = 0;
  std::size_t end = u.size();
  if (left)
    while (begin < end && set.find(u[begin]) != std::u32string::npos) ++begin;
  if (right)
    while (end > begin && set.find(u[end - 1]) != std::u32string::npos) --end;
  return utf8_encode(u.substr(begin, end - begin));
}

value_list split(const std::string& s, const value& sep, std::int64_t maxsplit, bool from_right) {
  value_list parts;
  if (sep.is_none() || sep.is_undefined()) {
    // Runs of whitespace separate; leading and trailing whitespace yield nothing.
    const std::u32string u = utf8_decode(s);
    std::vector<std::u32string> found;
    if (!from_right) {
      std::size_t i = 0;
      while (true) {
        while (i < u.size() && py_isspace(u[i])) ++i;
        if (i == u.size()) break;
        if (maxsplit >= 0 && static_cast<std::int64_t>(found.size()) == maxsplit) {
          found.push_back(u.substr(i));
          break;
        }
        std::size_t j = i;
        while (j < u.size() && !py_isspace(u[j])) ++j;
        found.push_back(u.substr(i, j - i));
        i = j;
      }
    } else {
      std::size_t i = u.size();
      while (true) {
        while (i > 0 && py_isspace(u[i - 1])) --i;
        if (i == 0) break;
        if (maxsplit >= 0 && static_cast<std::int64_t>(found.size()) == maxsplit) {
          found.push_back(u.substr(0, i));
          break;
        }
        std::size_t j = i;
        while (j > 0 && !py_isspace(u[j - 1])) --j;
        found.push_back(u.substr(j, i - j));
        i = j;
      }
      std::reverse(found.begin(), found.end());
    }
    for (const auto& f : found) parts.push_back(value::string(utf8_encode(f)));
    return parts;
  }
  const std::string& sep_s = require_string(sep, "split()");
  if (sep_s.empty()) fail(errc::invalid_argument, "empty separator");
  std::vector<std::string> found;
  if (!from_right) {
    std::size_t start = 0;
    while (true) {
      const std::size_t at = s.find(sep_s, start);
      if (at == std::string::npos ||
          (maxsplit >= 0 && static_cast<std::int64_t>(found.size()) == maxsplit)) {
        found.push_back(s.substr(start));
        break;
      }
      found.push_back(s.substr(start, at - start));
      start = at + sep_s.size();
    }
  } else {
    std::size_t end = s.size();
    while (true) {
      const std::size_t at =
          end >= sep_s.size() ? s.rfind(sep_s, end - sep_s.size()) : std::string::npos;
      if (at == std::string::npos ||
          (maxsplit >= 0 && static_cast<std::int64_t>(found.size()) == maxsplit)) {
        found.push_back(s.substr(0, end));
        break;
      }
      found.push_back(s.substr(at + sep_s.size(), end - at - sep_s.size()));
      end = at;
    }
    std::reverse(found.begin(), found.end());
  }
  for (auto& f : found) parts.push_back(value::string(std::move(f)));
  return parts;
}

bool is_line_break(char32_t c) {
  return c == U'\n' || c == U'\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
         c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
}

std::vector<std::string> splitlines(const std::string& s, bool keepends) {
  const std::u32string u = utf8_decode(s);
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t i = 0; i < u.size(); ++i) {
    if (!is_line_break(u[i])) continue;
    std::size_t end = i;
    if (u[i] == U'\r' && i + 1 < u.size() && u[i + 1] == U'\n') ++i;
    lines.push_back(utf8_encode(u.substr(start, (keepends ? i + 1 : end) - start)));
    start = i + 1;
  }
  if (start < u.size()) lines.push_back(utf8_encode(u.substr(start)));
  return lines;
}

std::string replace(const std::string& s, const std::string& old_s, const std::string& new_s,
                    std::int64_t count) {
  std::string out;
  if (old_s.empty()) {
    // Python inserts the replacement before every character and at the end.
    const std::u32string u = utf8_decode(s);
    std::int64_t done = 0;
    for (char32_t c : u) {
      if (count < 0 || done < count) {
        out += new_s;
        ++done;
      }
      append_utf8(out, c);
    }
    if (count < 0 || done < count) out += new_s;
    return out;
  }
  std::size_t start = 0;
  std::int64_t done = 0;
  while (count < 0 || done < count) {
    const std::size_t at = s.find(old_s, start);
    if (at == std::string::npos) break;
    out.append(s, start, at - start);
    out += new_s;
    start = at + old_s.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string repeat(const std::string& s, std::int64_t n) {
  if (n <= 0 || s.empty()) return {};
  if (static_cast<std::uint64_t>(n) > max_built_size / s.size())
    fail(errc::out_of_range, "string repetition result is too large");
  std::string out;
  out.reserve(s.size() * static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) out += s;
  return out;
}

// Python float(str): surrounding whitespace, underscores between digits, inf and nan.
bool parse_py_float(const std::string& text, double& out) {
  std::string s = text.substr(lstrip_length(text));
  s.resize(rstrip_length(s));
  std::string cleaned;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_') {
      if (i == 0 || i + 1 == s.size() || !std::isdigit(static_cast<unsigned char>(s[i - 1])) ||
          !std::isdigit(static_cast<unsigned char>(s[i + 1])))
        return false;
      continue;
    }
    if (s[i] == 'x' || s[i] == 'X' || s[i] == '(') return false;  // strtod's hex and nan(...)
    cleaned.push_back(s[i]);
  }
  if (cleaned.empty()) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtod(cleaned.c_str(), &end);
  return end == cleaned.c_str() + cleaned.size();
}

// Python int(str, base).
bool parse_py_int(const std::string& text, int base, std::int64_t& out) {
  std::string s = text.substr(lstrip_length(text));
  s.resize(rstrip_length(s));
  std::size_t i = 0;
  bool negative = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
  if (base == 16 || base == 8 || base == 2 || base == 0) {
    if (i + 1 < s.size() && s[i] == '0') {
      const char p = static_cast<char>(s[i + 1] | 0x20);
      const int prefixed = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
      if (prefixed && (base == 0 || base == prefixed)) {
        base = prefixed;
        i += 2;
        if (i < s.size() && s[i] == '_') ++i;
      }
    }
    if (base == 0) base = 10;
  }
  if (base < 2 || base > 36) return false;
  std::string digits;
  for (; i < s.size(); ++i) {
    if (s[i] == '_' && !digits.empty() && i + 1 < s.size() && s[i + 1] != '_') continue;
    const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99;
    if (d >= base) return false;
    digits.push_back(c);
  }
  if (digits.empty()) return false;
  errno = 0;
  const long long v = std::strtoll(digits.c_str(), nullptr, base);
  if (errno == ERANGE) fail(errc::out_of_range, "integer " + text + " is too large");
  out = negative ? -v : v;
  return true;
}

double py_round(double x, std::int64_t digits) {
  if (!std::isfinite(x)) return x;
  if (digits == 0) return std::nearbyint(x);  // ties to even, as Python's round()
  if (digits > 300) return x;
  if (digits < -300) return std::copysign(0.0, x);
  if (digits < 0) {
    const double scale = std::pow(10.0, static_cast<double>(-digits));
    return std::nearbyint(x / scale) * scale;
  }
  // printf rounds the exact binary value correctly, which is what Python's round() does.
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(digits), x);
  return std::strtod(buf, nullptr);
}

// Sequences -------------------------------------------------------------------------------------

std::int64_t length_of(const value& v) {
  switch (v.type()) {
    case value::kind::undefined:
      return 0;
    case value::kind::string:
      return static_cast<std::int64_t>(utf8_length(v.as_string()));
    case value::kind::list:
      return static_cast<std::int64_t>(v.as_list().size());
    case value::kind::dict:
      return static_cast<std::int64_t>(v.as_dict().entries.size());
    case value::kind::ns:
      return static_cast<std::int64_t>(v.ns_attrs().entries.size());
    default:
      fail(errc::invalid_argument, "object of type '" + type_name(v) + "' has no len()");
  }
}

value pair(const std::string& k, const value& v) {
  return value::tuple({value::string(k), v});
}

value items_of(const value& v) {
  if (v.is_undefined()) return value::list({});
  if (!v.is_dict()) fail(errc::invalid_argument, "Can only get item pairs from a mapping.");
  value_list out;
  for (const auto& [k, item] : v.as_dict().entries) out.push_back(pair(k, item));
  return value::list(std::move(out));
}

// Jinja2's make_attrgetter: "a.b.0" looks up a, then b, then item 0.
value lookup_path(const value& item, const value& attribute, const value& fallback) {
  value cur = item;
  if (attribute.is_integral()) {
    cur = get_item(cur, attribute);
  } else {
    const std::string& path = require_string(attribute, "attribute");
    std::size_t start = 0;
    while (true) {
      const std::size_t dot = path.find('.', start);
      const std::string part = path.substr(start, dot == std::string::npos ? dot : dot - start);
      const bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) {
        return c >= '0' && c <= '9';
      });
      cur = get_item(cur, numeric ? value::integer(std::stoll(part)) : value::string(part));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
  }
  if (cur.is_undefined() && !fallback.is_undefined()) return fallback;
  return cur;
}

// The sort key of sort/unique/min/max/dictsort: strings compare case-insensitively by default.
value sort_key(const value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return value::string(lower(v.as_string()));
  return v;
}

value select_or_reject(const value& seq, const args_reader& a, bool lookup_attr, bool select) {
  const auto& pos = a.raw().positional;
  std::size_t off = 0;
  value attribute;
  if (lookup_attr) {
    attribute = a.require(0, "attribute");
    off = 1;
  }
  const bool has_test = pos.size() > off;
  std::string test_name = has_test ? require_string(pos[off], "select test name") : "";
  call_args test_args;
  if (has_test) {
    test_args.positional.assign(pos.begin() + static_cast<std::ptrdiff_t>(off + 1), pos.end());
    test_args.named = a.raw().named;
  }
  value_list out;
  for (const auto& item : iterate(seq)) {
    const value subject = lookup_attr ? lookup_path(item, attribute, value()) : item;
    const bool passed = has_test ? apply_test(test_name, subject, test_args) : truthy(subject);
    if (passed == select) out.push_back(item);
  }
  return value::list(std::move(out));
}

value map_filter(const value& seq, const call_args& args) {
  value_list out;
  const value_list items = iterate(seq);
  if (args.positional.empty()) {
    args_reader a(args, "map filter");
    const value* attribute = a.find(SIZE_MAX, "attribute");
    if (!attribute) fail(errc::invalid_argument, "map filter requires a filter name or attribute=");
    const value* fallback = a.find(SIZE_MAX, "default");
    for (const auto& item : items)
      out.push_back(lookup_path(item, *attribute, fallback ? *fallback : value()));
    return value::list(std::move(out));
  }
  const std::string name = require_string(args.positional[0], "map filter name");
  call_args rest;
  rest.positional.assign(args.positional.begin() + 1, args.positional.end());
  rest.named = args.named;
  for (const auto& item : items) out.push_back(apply_filter(name, item, rest));
  return value::list(std::move(out));
}

value tojson_filter(const value& v, const args_reader& a) {
  // transformers replaces Jinja's tojson with json.dumps(x, ensure_ascii=False, indent=None,
  // separators=None, sort_keys=False), which keeps non-ASCII text and spaces after , and :.
  json_options o;
  o.ensure_ascii = a.get_bool(0, "ensure_ascii", false);
  const value indent = a.get(1, "indent");
  if (indent.is_integral()) {
    o.indent =
        static_cast<int>(std::max<std::int64_t>(0, std::min<std::int64_t>(indent.as_int(), 64)));
    o.indent_str.assign(static_cast<std::size_t>(o.indent), ' ');
  } else if (indent.is_string()) {
    o.indent = 0;
    o.indent_str = indent.as_string();
  } else if (!indent.is_none()) {
    fail(errc::invalid_argument, "tojson indent must be an integer or a string");
  }
  if (o.indent >= 0) o.item_separator = ",";
  const value separators = a.get(2, "separators");
  if (separators.is_list() && separators.as_list().size() == 2) {
    o.item_separator = require_string(separators.as_list()[0], "tojson separators");
    o.key_separator = require_string(separators.as_list()[1], "tojson separators");
  } else if (!separators.is_none()) {
    fail(errc::invalid_argument, "tojson separators must be a pair of strings");
  }
  o.sort_keys = a.get_bool(3, "sort_keys", false);
  a.at_most(4);
  return value::string(to_json(v, o));
}

value indent_filter(const value& v, const args_reader& a) {
  const value width = a.get(0, "width", value::integer(4));
  const std::string pad =
      width.is_string() ? width.as_string() : repeat(" ", width.is_integral() ? width.as_int() : 4);
  const bool first = a.get_bool(1, "first", false);
  const bool blank = a.get_bool(2, "blank", false);
  const std::vector<std::string> lines = splitlines(str_of(v) + "\n", false);
  std::string out;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) {
      out += '\n';
      if (blank || !lines[i].empty()) out += pad;
    }
    out += lines[i];
  }
  if (first) out = pad + out;
  return value::string(std::move(out));
}

value int_filter(const value& v, const args_reader& a) {
  const value fallback = a.get(0, "default", value::integer(0));
  const std::int64_t base = a.get_int(1, "base", 10);
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_integral()) return value::integer(v.as_int());
  if (v.is_string()) {
    std::int64_t i = 0;
    if (parse_py_int(v.as_string(), static_cast<int>(base), i)) return value::integer(i);
    double d = 0;
    if (parse_py_float(v.as_string(), d) && std::isfinite(d))
      return value::integer(static_cast<std::int64_t>(d));
    return fallback;
  }
  if (v.type() == value::kind::floating) {
    if (!std::isfinite(v.as_double()))
      fail(errc::invalid_argument, "cannot convert float infinity or NaN to integer");
    return value::integer(static_cast<std::int64_t>(v.as_double()));
  }
  return fallback;
}

value float_filter(const value& v, const args_reader& a) {
  const value fallback = a.get(0, "default", value::floating(0.0));
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_number()) return value::floating(v.as_double());
  double d = 0;
  if (v.is_string() && parse_py_float(v.as_string(), d)) return value::floating(d);
  return fallback;
}

value min_max(const value& seq, const args_reader& a, bool want_max) {
  const bool case_sensitive = a.get_bool(0, "case_sensitive", false);
  const value attribute = a.get(1, "attribute");
  const value_list items = iterate(seq);
  if (items.empty()) return value::undefined("No aggregated item, sequence was empty.");
  std::size_t best = 0;
  value best_key;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const value key = sort_key(
        attribute.is_none() ? items[i] : lookup_path(items[i], attribute, value()), case_sensitive);
    if (i == 0 || compare(key, best_key, want_max ? ">" : "<")) {
      best = i;
      best_key = key;
    }
  }
  return items[best];
}

value sort_filter(const value& seq, const args_reader& a) {
  const bool reverse = a.get_bool(0, "reverse", false);
  const bool case_sensitive = a.get_bool(1, "case_sensitive", false);
  const value attribute = a.get(2, "attribute");
  value_list items = iterate(seq);
  std::vector<std::pair<value, value>> keyed;
  for (auto& item : items)
    keyed.emplace_back(sort_key(attribute.is_none() ? item : lookup_path(item, attribute, value()),
                                case_sensitive),
                       item);
  std::stable_sort(keyed.begin(), keyed.end(), [reverse](const auto& x, const auto& y) {
    return reverse ? compare(y.first, x.first, "<") : compare(x.first, y.first, "<");
  });
  value_list out;
  for (auto& [k, item] : keyed) out.push_back(item);
  return value::list(std::move(out));
}

value dictsort_filter(const value& v, const args_reader& a) {
  const bool case_sensitive = a.get_bool(0, "case_sensitive", false);
  const std::string by = str_of(a.get(1, "by", value::string("key")));
  const bool reverse = a.get_bool(2, "reverse", false);
  if (!v.is_dict()) fail(errc::invalid_argument, "dictsort requires a mapping");
  if (by != "key" && by != "value")
    fail(errc::invalid_argument, "You can only sort by either 'key' or 'value'");
  std::vector<std::pair<std::string, value>> entries = v.as_dict().entries;
  std::stable_sort(entries.begin(), entries.end(), [&](const auto& x, const auto& y) {
    const value kx = sort_key(by == "key" ? value::string(x.first) : x.second, case_sensitive);
    const value ky = sort_key(by == "key" ? value::string(y.first) : y.second, case_sensitive);
    return reverse ? compare(ky, kx, "<") : compare(kx, ky, "<");
  });
  value_list out;
  for (const auto& [k, item] : entries) out.push_back(pair(k, item));
  return value::list(std::move(out));
}

value unique_filter(const value& seq, const args_reader& a) {
  const bool case_sensitive = a.get_bool(0, "case_sensitive", false);
  const value attribute = a.get(1, "attribute");
  value_list out;
  value_list seen;
  for (const auto& item : iterate(seq)) {
    const value key = sort_key(attribute.is_none() ? item : lookup_path(item, attribute, value()),
                               case_sensitive);
    if (std::none_of(seen.begin(), seen.end(), [&](const value& s) { return equals(s, key); })) {
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return value::list(std::move(out));
}

value first_or_last(const value& v, bool first) {
  if (v.is_undefined())
    return value::undefined(first ? "No first item, sequence was empty."
                                  : "No last item, sequence was empty.");
  const value_list items = iterate(v);
  if (items.empty())
    return value::undefined(first ? "No first item, sequence was empty."
                                  : "No last item, sequence was empty.");
  return first ? items.front() : items.back();
}

value reverse_filter(const value& v) {
  if (v.is_string()) {
    std::u32string u = utf8_decode(v.as_string());
    std::reverse(u.begin(), u.end());
    return value::string(utf8_encode(u));
  }
  value_list items = iterate(v);
  std::reverse(items.begin(), items.end());
  return value::list(std::move(items));
}

value sum_filter(const value& seq, const args_reader& a) {
  const value attribute = a.get(0, "attribute");
  value total = a.get(1, "start", value::integer(0));
  for (const auto& item : iterate(seq))
    total =
        binary_op("+", total, attribute.is_none() ? item : lookup_path(item, attribute, value()));
  return total;
}

value round_filter(const value& v, const args_reader& a) {
  const std::int64_t precision = a.get_int(0, "precision", 0);
  const std::string method = str_of(a.get(1, "method", value::string("common")));
  if (method != "common" && method != "ceil" && method != "floor")
    fail(errc::invalid_argument, "method must be common, ceil or floor");
  if (v.is_undefined()) fail_undefined(v);
  if (!v.is_number())
    fail(errc::invalid_argument, "round filter requires a number, not '" + type_name(v) + "'");
  if (method == "common") {
    if (v.is_integral() && precision >= 0) return value::integer(v.as_int());
    return value::floating(py_round(v.as_double(), precision));
  }
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = v.as_double() * scale;
  return value::floating((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

using filter_fn = value (*)(const value&, const args_reader&);

const std::vector<std::pair<std::string_view, filter_fn>>& filters() {
  static const std::vector<std::pair<std::string_view, filter_fn>> table = {
      {"abs",
       [](const value& v, const args_reader&) {
         if (v.is_undefined()) fail_undefined(v);
         if (v.is_integral()) return value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
         if (v.type() == value::kind::floating) return value::floating(std::fabs(v.as_double()));
         fail(errc::invalid_argument, "bad operand type for abs(): '" + type_name(v) + "'");
       }},
      {"attr",
       [](const value& v, const args_reader& a) {
         const std::string name = str_of(a.require(0, "name"));
         if (v.is_dict()) {
           static const std::unordered_set<std::string_view> methods = {"get", "items", "keys",
                                                                        "values"};
           return methods.count(name) ? get_attribute(v, name) : missing_attribute(v, name);
         }
         return get_attribute(v, name);
       }},
      {"capitalize",
       [](const value& v, const args_reader&) { return value::string(capitalize(str_of(v))); }},
      {"count", [](const value& v, const args_reader&) { return value::integer(length_of(v)); }},
      {"d",
       [](const value& v, const args_reader& a) {
         const bool boolean = a.get_bool(1, "boolean", false);
         if (v.is_undefined() || (boolean && !truthy(v)))
           return a.get(0, "default_value", value::string(""));
         return v;
       }},
      {"default",
       [](const value& v, const args_reader& a) {
         const bool boolean = a.get_bool(1, "boolean", false);
         if (v.is_undefined() || (boolean && !truthy(v)))
           return a.get(0, "default_value", value::string(""));
         return v;
       }},
      {"dictsort", dictsort_filter},
      {"e",
       [](const value& v, const args_reader&) { return value::string(html_escape(str_of(v))); }},
      {"escape",
       [](const value& v, const args_reader&) { return value::string(html_escape(str_of(v))); }},
      {"first", [](const value& v, const args_reader&) { return first_or_last(v, true); }},
      {"float", float_filter},
      {"indent", indent_filter},
      {"int", int_filter},
      {"items", [](const value& v, const args_reader&) { return items_of(v); }},
      {"join",
       [](const value& v, const args_reader& a) {
         const std::string sep = str_of(a.get(0, "d", value::string("")));
         const value attribute = a.get(1, "attribute");
         std::string out;
         bool first = true;
         for (const auto& item : iterate(v)) {
           if (!first) out += sep;
           first = false;
           out += str_of(attribute.is_none() ? item : lookup_path(item, attribute, value()));
         }
         return value::string(std::move(out));
       }},
      {"last", [](const value& v, const args_reader&) { return first_or_last(v, false); }},
      {"length", [](const value& v, const args_reader&) { return value::integer(length_of(v)); }},
      {"list", [](const value& v, const args_reader&) { return value::list(iterate(v)); }},
      {"lower", [](const value& v, const args_reader&) { return value::string(lower(str_of(v))); }},
      {"map", [](const value& v, const args_reader& a) { return map_filter(v, a.raw()); }},
      {"max", [](const value& v, const args_reader& a) { return min_max(v, a, true); }},
      {"min", [](const value& v, const args_reader& a) { return min_max(v, a, false); }},
      {"reject",
       [](const value& v, const args_reader& a) { return select_or_reject(v, a, false, false); }},
      {"rejectattr",
       [](const value& v, const args_reader& a) { return select_or_reject(v, a, true, false); }},
      {"replace",
       [](const value& v, const args_reader& a) {
         return value::string(replace(str_of(v), str_of(a.require(0, "old")),
                                      str_of(a.require(1, "new")), a.get_int(2, "count", -1)));
       }},
      {"reverse", [](const value& v, const args_reader&) { return reverse_filter(v); }},
      {"round", round_filter},
      {"safe", [](const value& v, const args_reader&) { return v; }},
      {"select",
       [](const value& v, const args_reader& a) { return select_or_reject(v, a, false, true); }},
      {"selectattr",
       [](const value& v, const args_reader& a) { return select_or_reject(v, a, true, true); }},
      {"sort", sort_filter},
      {"string", [](const value& v, const args_reader&) { return value::string(str_of(v)); }},
      {"sum", sum_filter},
      {"title",
       [](const value& v, const args_reader&) { return value::string(jinja_title(str_of(v))); }},
      {"tojson", tojson_filter},
      {"trim",
       [](const value& v, const args_reader& a) {
         return value::string(strip(str_of(v), a.get(0, "chars"), true, true));
       }},
      {"unique", unique_filter},
      {"upper", [](const value& v, const args_reader&) { return value::string(upper(str_of(v))); }},
  };
  return table;
}

// Tests -----------------------------------------------------------------------------------------

bool sequence_like(const value& v) {
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}

using test_fn = bool (*)(const value&, const args_reader&);

const std::vector<std::pair<std::string_view, test_fn>>& tests() {
  static const auto cmp = [](const value& v, const args_reader& a, std::string_view op) {
    const value other = a.require(0, "other");
    if (v.is_undefined()) fail_undefined(v);
    if (other.is_undefined()) fail_undefined(other);
    return compare(v, other, op);
  };
  static const std::vector<std::pair<std::string_view, test_fn>> table = {
      {"!=",
       [](const value& v, const args_reader& a) { return !equals(v, a.require(0, "other")); }},
      {"<", [](const value& v, const args_reader& a) { return cmp(v, a, "<"); }},
      {"<=", [](const value& v, const args_reader& a) { return cmp(v, a, "<="); }},
      {"==", [](const value& v, const args_reader& a) { return equals(v, a.require(0, "other")); }},
      {">", [](const value& v, const args_reader& a) { return cmp(v, a, ">"); }},
      {">=", [](const value& v, const args_reader& a) { return cmp(v, a, ">="); }},
      {"boolean",
       [](const value& v, const args_reader&) { return v.type() == value::kind::boolean; }},
      {"callable",
       [](const value& v, const args_reader&) { return v.type() == value::kind::function; }},
      {"defined", [](const value& v, const args_reader&) { return !v.is_undefined(); }},
      {"divisibleby",
       [](const value& v, const args_reader& a) {
         return equals(binary_op("%", v, a.require(0, "num")), value::integer(0));
       }},
      {"eq", [](const value& v, const args_reader& a) { return equals(v, a.require(0, "other")); }},
      {"equalto",
       [](const value& v, const args_reader& a) { return equals(v, a.require(0, "other")); }},
      {"escaped", [](const value&, const args_reader&) { return false; }},
      {"even",
       [](const value& v, const args_reader&) {
         return equals(binary_op("%", v, value::integer(2)), value::integer(0));
       }},
      {"false",
       [](const value& v, const args_reader&) {
         return v.type() == value::kind::boolean && !v.as_bool();
       }},
      {"filter", [](const value& v,
                    const args_reader&) { return v.is_string() && has_filter(v.as_string()); }},
      {"float",
       [](const value& v, const args_reader&) { return v.type() == value::kind::floating; }},
      {"ge", [](const value& v, const args_reader& a) { return cmp(v, a, ">="); }},
      {"greaterthan", [](const value& v, const args_reader& a) { return cmp(v, a, ">"); }},
      {"gt", [](const value& v, const args_reader& a) { return cmp(v, a, ">"); }},
      {"in", [](const value& v, const args_reader& a) { return contains(a.require(0, "seq"), v); }},
      {"integer",
       [](const value& v, const args_reader&) { return v.type() == value::kind::integer; }},
      {"iterable", [](const value& v, const args_reader&) { return sequence_like(v); }},
      {"le", [](const value& v, const args_reader& a) { return cmp(v, a, "<="); }},
      {"lessthan", [](const value& v, const args_reader& a) { return cmp(v, a, "<"); }},
      {"lower",
       [](const value& v, const args_reader&) {
         const std::u32string u = utf8_decode(str_of(v));
         return std::any_of(u.begin(), u.end(), is_cased) &&
                std::none_of(u.begin(), u.end(), is_upper);
       }},
      {"lt", [](const value& v, const args_reader& a) { return cmp(v, a, "<"); }},
      {"mapping", [](const value& v, const args_reader&) { return v.is_dict(); }},
      {"ne",
       [](const value& v, const args_reader& a) { return !equals(v, a.require(0, "other")); }},
      {"none", [](const value& v, const args_reader&) { return v.is_none(); }},
      {"number", [](const value& v, const args_reader&) { return v.is_number(); }},
      {"odd",
       [](const value& v, const args_reader&) {
         return equals(binary_op("%", v, value::integer(2)), value::integer(1));
       }},
      {"sameas",
       [](const value& v, const args_reader& a) {
         const value other = a.require(0, "other");
         if (v.type() != other.type()) return false;
         switch (v.type()) {
           case value::kind::none:
           case value::kind::undefined:
             return true;
           case value::kind::boolean:
           case value::kind::integer:
           case value::kind::floating:
             return equals(v, other);
           default:
             return v.identity() == other.identity();
         }
       }},
      {"sequence", [](const value& v, const args_reader&) { return sequence_like(v); }},
      {"string", [](const value& v, const args_reader&) { return v.is_string(); }},
      {"test",
       [](const value& v, const args_reader&) { return v.is_string() && has_test(v.as_string()); }},
      {"true", [](const value& v,
                  const args_reader&) { return v.type() == value::kind::boolean && v.as_bool(); }},
      {"undefined", [](const value& v, const args_reader&) { return v.is_undefined(); }},
      {"upper",
       [](const value& v, const args_reader&) {
         const std::u32string u = utf8_decode(str_of(v));
         return std::any_of(u.begin(), u.end(), is_cased) &&
                std::none_of(u.begin(), u.end(), is_lower);
       }},
  };
  return table;
}

template <typename Table>
auto lookup(const Table& table, std::string_view name) -> decltype(table.front().second) {
  for (const auto& [n, fn] : table)
    if (n == name) return fn;
  return nullptr;
}

// Methods ---------------------------------------------------------------------------------------

// Python's own methods of str, list and dict: one the subset lacks is "unsupported"; any other
// name is no method at all (Jinja2 then looks for a dict key, or yields undefined).
const std::unordered_set<std::string_view>& python_methods(value::kind kind) {
  static const std::unordered_set<std::string_view> str_methods = {
      "capitalize",   "casefold",    "center",    "count",      "encode",       "endswith",
      "expandtabs",   "find",        "format",    "format_map", "index",        "isalnum",
      "isalpha",      "isascii",     "isdecimal", "isdigit",    "isidentifier", "islower",
      "isnumeric",    "isprintable", "isspace",   "istitle",    "isupper",      "join",
      "ljust",        "lower",       "lstrip",    "maketrans",  "partition",    "removeprefix",
      "removesuffix", "replace",     "rfind",     "rindex",     "rjust",        "rpartition",
      "rsplit",       "rstrip",      "split",     "splitlines", "startswith",   "strip",
      "swapcase",     "title",       "translate", "upper",      "zfill"};
  static const std::unordered_set<std::string_view> list_methods = {
      "append", "clear", "copy",   "count",   "extend", "index",
      "insert", "pop",   "remove", "reverse", "sort"};
  static const std::unordered_set<std::string_view> dict_methods = {
      "clear", "copy",    "fromkeys",   "get",    "items", "keys",
      "pop",   "popitem", "setdefault", "update", "values"};
  static const std::unordered_set<std::string_view> none;
  switch (kind) {
    case value::kind::string:
      return str_methods;
    case value::kind::list:
      return list_methods;
    case value::kind::dict:
      return dict_methods;
    default:
      return none;
  }
}

// Methods that mutate: ImmutableSandboxedEnvironment refuses them.
bool is_mutating(value::kind kind, std::string_view name) {
  static const std::unordered_set<std::string_view> list_mut = {
      "append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};
  static const std::unordered_set<std::string_view> dict_mut = {"clear", "pop", "popitem",
                                                                "setdefault", "update"};
  if (kind == value::kind::list) return list_mut.count(name) > 0;
  if (kind == value::kind::dict) return dict_mut.count(name) > 0;
  return false;
}

std::int64_t code_point_index(const std::string& s, std::size_t byte_pos) {
  return static_cast<std::int64_t>(utf8_length(std::string_view(s).substr(0, byte_pos)));
}

bool affix_match(const std::string& s, const value& affix, bool prefix, const std::string& what) {
  auto one = [&](const value& a) {
    const std::string& x = require_string(a, what);
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0
                  : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_list() && !affix.is_tuple())
    fail(errc::invalid_argument, what + " first arg must be str or a tuple of str, not list");
  if (affix.is_tuple()) return std::any_of(affix.as_list().begin(), affix.as_list().end(), one);
  return one(affix);
}

// A str method; undefined when the subset lacks it (the caller then reports it unsupported).
value call_str_method(const std::string& s, const std::string& name, const call_args& args) {
  const args_reader a(args, "str." + name + "()");
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    a.at_most(1);
    return value::string(strip(s, a.get(0, "chars"), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    a.at_most(2);
    return value::list(split(s, a.get(0, "sep"), a.get_int(1, "maxsplit", -1), name == "rsplit"));
  }
  if (name == "splitlines") {
    value_list out;
    for (auto& line : splitlines(s, a.get_bool(0, "keepends", false)))
      out.push_back(value::string(line));
    return value::list(std::move(out));
  }
  if (name == "startswith" || name == "endswith") {
    a.at_most(1);
    return value::boolean(
        affix_match(s, a.require(0, "prefix"), name == "startswith", "str." + name + "()"));
  }
  if (name == "upper") return value::string(upper(s));
  if (name == "lower" || name == "casefold") return value::string(lower(s));
  if (name == "title") return value::string(py_title(s));
  if (name == "capitalize") return value::string(capitalize(s));
  if (name == "replace") {
    a.at_most(3);
    return value::string(replace(s, require_string(a.require(0, "old"), "str.replace()"),
                                 require_string(a.require(1, "new"), "str.replace()"),
                                 a.get_int(2, "count", -1)));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    a.at_most(1);
    const std::string& sub = require_string(a.require(0, "sub"), "str." + name + "()");
    if (name == "count") {
      if (sub.empty()) return value::integer(static_cast<std::int64_t>(utf8_length(s)) + 1);
      std::int64_t n = 0;
      for (std::size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size()))
        ++n;
      return value::integer(n);
    }
    const std::size_t at = name[0] == 'r' ? s.rfind(sub) : s.find(sub);
    if (at == std::string::npos) {
      if (name == "index" || name == "rindex") fail(errc::invalid_argument, "substring not found");
      return value::integer(-1);
    }
    return value::integer(code_point_index(s, at));
  }
  if (name == "join") {
    std::string out;
    bool first = true;
    for (const auto& item : iterate(a.require(0, "iterable"))) {
      if (!first) out += s;
      first = false;
      out += require_string(item, "str.join()");
    }
    return value::string(std::move(out));
  }
  if (name == "removeprefix" || name == "removesuffix") {
    const std::string& x = require_string(a.require(0, "affix"), "str." + name + "()");
    if (name == "removeprefix" && s.compare(0, x.size(), x) == 0)
      return value::string(s.substr(x.size()));
    if (name == "removesuffix" && x.size() <= s.size() && !x.empty() &&
        s.compare(s.size() - x.size(), x.size(), x) == 0)
      return value::string(s.substr(0, s.size() - x.size()));
    return value::string(s);
  }
  const std::u32string u = utf8_decode(s);
  auto all = [&](bool (*pred)(char32_t)) {
    return !u.empty() && std::all_of(u.begin(), u.end(), pred);
  };
  if (name == "isdigit" || name == "isdecimal" || name == "isnumeric")
    return value::boolean(all(is_digit));
  if (name == "isalpha") return value::boolean(all(is_alpha));
  if (name == "isalnum")
    return value::boolean(all([](char32_t c) { return is_alpha(c) || is_digit(c); }));
  if (name == "isspace") return value::boolean(all(py_isspace));
  if (name == "isascii")
    return value::boolean(std::all_of(u.begin(), u.end(), [](char32_t c) { return c < 0x80; }));
  if (name == "isupper" || name == "islower") {
    const bool want_upper = name == "isupper";
    return value::boolean(std::any_of(u.begin(), u.end(), is_cased) &&
                          std::none_of(u.begin(), u.end(), want_upper ? is_lower : is_upper));
  }
  return value();
}

value call_method(const value& obj, const std::string& name, const call_args& args) {
  const std::string what = type_name(obj) + "." + name + "()";
  if (is_mutating(obj.type(), name))
    fail(errc::invalid_argument,
         "access to attribute '" + name + "' of '" + type_name(obj) + "' object is unsafe");
  const args_reader a(args, what);
  switch (obj.type()) {
    case value::kind::string: {
      value r = call_str_method(obj.as_string(), name, args);
      if (!r.is_undefined()) return r;
      break;
    }
    case value::kind::dict:
      if (name == "get") {
        a.at_most(2);
        const value key = a.require(0, "key");
        const value* found = key.is_string() ? obj.as_dict().find(key.as_string()) : nullptr;
        return found ? *found : a.get(1, "default");
      }
      if (name == "items") return items_of(obj);
      if (name == "keys") return value::list(iterate(obj));
      if (name == "values") {
        value_list out;
        for (const auto& [k, v] : obj.as_dict().entries) out.push_back(v);
        return value::list(std::move(out));
      }
      if (name == "copy") return obj;
      break;
    case value::kind::list:
      if (name == "index" || name == "count") {
        const value x = a.require(0, "value");
        const auto& items = obj.as_list();
        std::int64_t n = 0;
        for (std::size_t i = 0; i < items.size(); ++i) {
          if (!equals(items[i], x)) continue;
          if (name == "index") return value::integer(static_cast<std::int64_t>(i));
          ++n;
        }
        if (name == "index") fail(errc::invalid_argument, repr(x) + " is not in list");
        return value::integer(n);
      }
      if (name == "copy") return obj;
      break;
    default:
      break;
  }
  fail(errc::unsupported,
       "the method " + what + " is not supported by this chat-template renderer");
}

bool is_method(const value& obj, const std::string& name) {
  return python_methods(obj.type()).count(name) > 0;
}

value bound_method(const value& obj, const std::string& name) {
  return value::make_function(type_name(obj) + "." + name, [obj, name](const call_args& args) {
    return call_method(obj, name, args);
  });
}

// Python's slice.indices() and the items it selects.
std::vector<std::size_t> slice_positions(std::int64_t len, const value& start_v,
                                         const value& stop_v, const value& step_v, bool& ok) {
  ok = true;
  auto as_index = [&ok](const value& v, std::int64_t& out) {
    if (v.is_none() || v.is_undefined()) return false;
    if (!v.is_integral()) {
      ok = false;
      return false;
    }
    out = v.as_int();
    return true;
  };
  std::int64_t step = 1;
  as_index(step_v, step);
  if (!ok) return {};
  if (step == 0) fail(errc::invalid_argument, "slice step cannot be zero");
  const std::int64_t lower = step < 0 ? -1 : 0;
  const std::int64_t upper = step < 0 ? len - 1 : len;
  auto clamp = [&](const value& v, std::int64_t fallback) {
    std::int64_t x = 0;
    if (!as_index(v, x)) return fallback;
    if (x < 0) {
      x += len;
      if (x < lower) x = lower;
    } else if (x > upper) {
      x = upper;
    }
    return x;
  };
  const std::int64_t start = clamp(start_v, step < 0 ? upper : lower);
  const std::int64_t stop = clamp(stop_v, step < 0 ? lower : upper);
  if (!ok) return {};
  std::vector<std::size_t> out;
  for (std::int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
    out.push_back(static_cast<std::size_t>(i));
  return out;
}

template <typename Op>
std::int64_t checked(Op op, std::int64_t x, std::int64_t y) {
  std::int64_t r = 0;
  if (op(x, y, &r)) fail(errc::out_of_range, "integer overflow in a chat template expression");
  return r;
}
constexpr auto add_op = [](std::int64_t x, std::int64_t y, std::int64_t* r) {
  return __builtin_add_overflow(x, y, r);
};
constexpr auto sub_op = [](std::int64_t x, std::int64_t y, std::int64_t* r) {
  return __builtin_sub_overflow(x, y, r);
};
constexpr auto mul_op = [](std::int64_t x, std::int64_t y, std::int64_t* r) {
  return __builtin_mul_overflow(x, y, r);
};

[[noreturn]] void bad_operands(const std::string& op, const value& a, const value& b) {
  fail(errc::invalid_argument, "unsupported operand type(s) for " + op + ": '" + type_name(a) +
                                   "' and '" + type_name(b) + "'");
}

std::string format_time(const std::string& fmt) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::string buf(256 + fmt.size() * 8, '\0');
  const std::size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &local);
  buf.resize(n);
  return buf;
}

}  // namespace

bool has_filter(const std::string& name) {
  return lookup(filters(), name) != nullptr;
}
bool has_test(const std::string& name) {
  return lookup(tests(), name) != nullptr;
}

value apply_filter(const std::string& name, const value& subject, const call_args& args) {
  const filter_fn fn = lookup(filters(), name);
  if (!fn)
    fail(errc::unsupported, "the Jinja filter '" + name + "' is not supported by this renderer");
  return fn(subject, args_reader(args, "filter '" + name + "'"));
}

bool apply_test(const std::string& name, const value& subject, const call_args& args) {
  const test_fn fn = lookup(tests(), name);
  if (!fn)
    fail(errc::unsupported, "the Jinja test '" + name + "' is not supported by this renderer");
  // Python rejects surplus arguments, which is how `x is string not in y` fails in Jinja2.
  static const std::unordered_set<std::string_view> one_arg = {
      "!=", "<",           "<=", "==", ">",  ">=",       "divisibleby", "eq", "equalto",
      "ge", "greaterthan", "gt", "in", "le", "lessthan", "lt",          "ne", "sameas"};
  const std::size_t allowed = one_arg.count(name) ? 1 : 0;
  if (args.positional.size() + args.named.size() > allowed)
    fail(errc::invalid_argument,
         "test '" + name + "' takes " + std::to_string(allowed) + " argument(s) but " +
             std::to_string(args.positional.size() + args.named.size()) + " were given");
  return fn(subject, args_reader(args, "test '" + name + "'"));
}

value get_attribute(const value& obj, const std::string& name) {
  switch (obj.type()) {
    case value::kind::undefined:
      fail_undefined(obj);
    case value::kind::dict: {
      if (is_method(obj, name)) return bound_method(obj, name);
      const value* found = obj.as_dict().find(name);
      return found ? *found : missing_attribute(obj, name);
    }
    case value::kind::ns: {
      const value* found = obj.ns_attrs().find(name);
      return found ? *found : missing_attribute(obj, name);
    }
    case value::kind::string:
    case value::kind::list:
      if (is_method(obj, name)) return bound_method(obj, name);
      return missing_attribute(obj, name);
    default:
      return missing_attribute(obj, name);
  }
}

value get_item(const value& obj, const value& key) {
  switch (obj.type()) {
    case value::kind::undefined:
      fail_undefined(obj);
    case value::kind::dict:
      if (key.is_string()) {
        if (const value* found = obj.as_dict().find(key.as_string())) return *found;
      }
      break;
    case value::kind::list:
    case value::kind::string:
      if (key.is_integral()) {
        const std::int64_t len = obj.is_list()
                                     ? static_cast<std::int64_t>(obj.as_list().size())
                                     : static_cast<std::int64_t>(utf8_length(obj.as_string()));
        std::int64_t i = key.as_int();
        if (i < 0) i += len;
        if (i < 0 || i >= len) return missing_element(obj, key);
        if (obj.is_list()) return obj.as_list()[static_cast<std::size_t>(i)];
        std::string out;
        append_utf8(out, utf8_decode(obj.as_string())[static_cast<std::size_t>(i)]);
        return value::string(std::move(out));
      }
      break;
    default:
      break;
  }
  if (key.is_string()) return get_attribute(obj, key.as_string());
  return missing_element(obj, key);
}

value get_slice(const value& obj, const value& start, const value& stop, const value& step) {
  if (obj.is_undefined()) fail_undefined(obj);
  if (!obj.is_list() && !obj.is_string())
    return value::undefined("'" + object_desc(obj) + "' cannot be sliced");
  bool ok = true;
  if (obj.is_list()) {
    const auto& items = obj.as_list();
    const auto positions =
        slice_positions(static_cast<std::int64_t>(items.size()), start, stop, step, ok);
    if (!ok) return value::undefined("slice indices must be integers or None");
    value_list out;
    out.reserve(positions.size());
    for (auto p : positions) out.push_back(items[p]);
    return value::list(std::move(out));
  }
  const std::u32string u = utf8_decode(obj.as_string());
  const auto positions =
      slice_positions(static_cast<std::int64_t>(u.size()), start, stop, step, ok);
  if (!ok) return value::undefined("slice indices must be integers or None");
  std::u32string out;
  out.reserve(positions.size());
  for (auto p : positions) out.push_back(u[p]);
  return value::string(utf8_encode(out));
}

value call_attribute(const value& obj, const std::string& name, const call_args& args) {
  if (obj.is_undefined()) fail_undefined(obj);
  if (is_method(obj, name)) return call_method(obj, name, args);
  const value target = get_attribute(obj, name);
  if (target.type() == value::kind::function) return target.as_function().call(args);
  fail(errc::invalid_argument, target.is_undefined()
                                   ? target.undefined_hint()
                                   : "'" + type_name(target) + "' object is not callable");
}

value binary_op(const std::string& op, const value& a, const value& b) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  const bool ints = a.is_integral() && b.is_integral();
  const bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) return value::integer(checked(add_op, a.as_int(), b.as_int()));
    if (nums) return value::floating(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      if (a.as_string().size() + b.as_string().size() > max_built_size)
        fail(errc::out_of_range, "string concatenation result is too large");
      return value::string(a.as_string() + b.as_string());
    }
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      value_list out = a.as_list();
      out.insert(out.end(), b.as_list().begin(), b.as_list().end());
      return a.is_tuple() ? value::tuple(std::move(out)) : value::list(std::move(out));
    }
    bad_operands(op, a, b);
  }
  if (op == "-") {
    if (ints) return value::integer(checked(sub_op, a.as_int(), b.as_int()));
    if (nums) return value::floating(a.as_double() - b.as_double());
    bad_operands(op, a, b);
  }
  if (op == "*") {
    if (ints) return value::integer(checked(mul_op, a.as_int(), b.as_int()));
    if (nums) return value::floating(a.as_double() * b.as_double());
    if (a.is_string() && b.is_integral()) return value::string(repeat(a.as_string(), b.as_int()));
    if (a.is_integral() && b.is_string()) return value::string(repeat(b.as_string(), a.as_int()));
    const value* list = a.is_list() ? &a : b.is_list() ? &b : nullptr;
    const value* count = a.is_list() ? &b : &a;
    if (list && count->is_integral()) {
      value_list out;
      const auto& items = list->as_list();
      if (count->as_int() > 0 && !items.empty() &&
          static_cast<std::uint64_t>(count->as_int()) > max_built_size / items.size())
        fail(errc::out_of_range, "list repetition result is too large");
      for (std::int64_t i = 0; i < count->as_int(); ++i)
        out.insert(out.end(), items.begin(), items.end());
      return list->is_tuple() ? value::tuple(std::move(out)) : value::list(std::move(out));
    }
    bad_operands(op, a, b);
  }
  if (op == "/" || op == "//" || op == "%") {
    if (a.is_string() && op == "%")
      fail(errc::unsupported,
           "printf-style formatting ('...' % value) is not supported by this renderer");
    if (!nums) bad_operands(op, a, b);
    if (b.as_double() == 0.0)
      fail(errc::invalid_argument, op == "%" ? "integer modulo by zero" : "division by zero");
    if (op == "/") return value::floating(a.as_double() / b.as_double());
    if (ints) {
      // Python floors toward negative infinity; C++ truncates toward zero.
      const std::int64_t x = a.as_int();
      const std::int64_t y = b.as_int();
      if (x == INT64_MIN && y == -1)
        fail(errc::out_of_range, "integer overflow in a chat template expression");
      std::int64_t q = x / y;
      std::int64_t m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      return value::integer(op == "//" ? q : m);
    }
    // CPython's float_divmod.
    const double x = a.as_double();
    const double y = b.as_double();
    double m = std::fmod(x, y);
    double div = (x - m) / y;
    if (m != 0.0) {
      if ((y < 0) != (m < 0)) {
        m += y;
        div -= 1.0;
      }
    } else {
      m = std::copysign(0.0, y);
    }
    if (op == "%") return value::floating(m);
    double floordiv = std::copysign(0.0, x / y);
    if (div != 0.0) {
      floordiv = std::floor(div);
      if (div - floordiv > 0.5) floordiv += 1.0;
    }
    return value::floating(floordiv);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      std::int64_t result = 1;
      std::int64_t base = a.as_int();
      for (std::int64_t e = b.as_int(); e > 0;) {
        if (e & 1) result = checked(mul_op, result, base);
        e >>= 1;
        if (e > 0) base = checked(mul_op, base, base);
      }
      return value::integer(result);
    }
    if (nums) {
      if (a.as_double() == 0.0 && b.as_double() < 0)
        fail(errc::invalid_argument, "0.0 cannot be raised to a negative power");
      const double x = a.as_double();
      const double y = b.as_double();
      if (x < 0 && std::isfinite(y) && y != std::floor(y))
        fail(errc::unsupported, "a negative number to a fractional power is complex");
      const double p = std::pow(x, y);
      if (std::isinf(p) && std::isfinite(x) && std::isfinite(y))
        fail(errc::out_of_range, "numerical result out of range");
      return value::floating(p);
    }
    bad_operands(op, a, b);
  }
  fail(errc::internal, "unknown operator " + op);
}

bool contains(const value& container, const value& item) {
  switch (container.type()) {
    case value::kind::undefined:
      return false;
    case value::kind::string:
      if (item.is_undefined()) fail_undefined(item);
      if (!item.is_string())
        fail(errc::invalid_argument,
             "'in <string>' requires string as left operand, not " + type_name(item));
      return container.as_string().find(item.as_string()) != std::string::npos;
    case value::kind::list:
      return std::any_of(container.as_list().begin(), container.as_list().end(),
                         [&](const value& v) { return equals(v, item); });
    case value::kind::dict:
      if ((item.is_list() && !item.is_tuple()) || item.is_dict())
        fail(errc::invalid_argument, "unhashable type: '" + type_name(item) + "'");
      return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
    default:
      fail(errc::invalid_argument,
           "argument of type '" + type_name(container) + "' is not iterable");
  }
}

value_list iterate(const value& v) {
  switch (v.type()) {
    case value::kind::undefined:
      return {};
    case value::kind::list:
      return v.as_list();
    case value::kind::dict: {
      value_list keys;
      for (const auto& [k, item] : v.as_dict().entries) keys.push_back(value::string(k));
      return keys;
    }
    case value::kind::string: {
      value_list chars;
      for (char32_t c : utf8_decode(v.as_string())) {
        std::string s;
        append_utf8(s, c);
        chars.push_back(value::string(std::move(s)));
      }
      return chars;
    }
    default:
      fail(errc::invalid_argument, "'" + type_name(v) + "' object is not iterable");
  }
}

value_dict builtin_globals() {
  value_dict g;
  g.set("range", value::make_function("range", [](const call_args& args) {
          const args_reader a(args, "range()");
          a.at_most(3);
          if (args.positional.empty())
            fail(errc::invalid_argument, "range expected at least 1 argument");
          for (const auto& v : args.positional)
            if (!v.is_integral())
              fail(errc::invalid_argument,
                   "'" + type_name(v) + "' object cannot be interpreted as an integer");
          std::int64_t start = 0, stop = 0, step = 1;
          if (args.positional.size() == 1) {
            stop = args.positional[0].as_int();
          } else {
            start = args.positional[0].as_int();
            stop = args.positional[1].as_int();
            if (args.positional.size() == 3) step = args.positional[2].as_int();
          }
          if (step == 0) fail(errc::invalid_argument, "range() arg 3 must not be zero");
          const double count = std::ceil((static_cast<double>(stop) - static_cast<double>(start)) /
                                         static_cast<double>(step));
          if (count > static_cast<double>(max_range))
            fail(errc::out_of_range,
                 "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
          value_list out;
          for (std::int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            out.push_back(value::integer(i));
          return value::list(std::move(out));
        }));
  g.set("namespace", value::make_function("namespace", [](const call_args& args) {
          value_dict attrs;
          for (const auto& p : args.positional) {
            if (!p.is_dict())
              fail(errc::invalid_argument, "namespace() takes a mapping as positional argument");
            for (const auto& [k, v] : p.as_dict().entries) attrs.set(k, v);
          }
          for (const auto& [k, v] : args.named) attrs.set(k, v);
          return value::make_namespace(std::move(attrs));
        }));
  g.set("dict", value::make_function("dict", [](const call_args& args) {
          value_dict d;
          for (const auto& p : args.positional) {
            if (!p.is_dict())
              fail(errc::invalid_argument, "dict() takes a mapping as positional argument");
            for (const auto& [k, v] : p.as_dict().entries) d.set(k, v);
          }
          for (const auto& [k, v] : args.named) d.set(k, v);
          return value::dict(std::move(d));
        }));
  g.set("raise_exception",
        value::make_function("raise_exception", [](const call_args& args) -> value {
          // transformers raises jinja2.TemplateError(message); the message reaches the user as is.
          const value msg = args.positional.empty() ? value::string("") : args.positional[0];
          throw error(errc::invalid_argument, "chat template raised: " + to_str(msg));
        }));
  g.set(
      "strftime_now", value::make_function("strftime_now", [](const call_args& args) {
        const args_reader a(args, "strftime_now()");
        return value::string(format_time(require_string(a.require(0, "format"), "strftime_now()")));
      }));
  return g;
}

}  // namespace shoal::jinja
