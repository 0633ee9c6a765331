// Jinja2's lexer (jinja2/lexer.py, 3.1), rewritten without regular expressions but keeping its
// rules in the same order, because the order decides the whitespace a template leaves behind:
// `{%-`/`{{-`/`{#-` strip all whitespace before the tag; otherwise lstrip_blocks removes spaces
// before `{%` and `{#` (never `{{`) when only whitespace precedes them on their line; `-%}`,
// `-}}` and `-#}` strip all whitespace after; trim_blocks drops one newline after `%}` and `#}`
// (never `}}`); `+` on either side turns stripping off.

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "engine/tokenizer/chat_template_parse.hpp"

namespace shoal::jinja {

error template_error(errc code, int line, const std::string& message) {
  return error(code, "chat template line " + std::to_string(line) + ": " + message);
}

namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_name_char(char c) {
  return is_name_start(c) || is_digit(c);
}
bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

class lexer {
 public:
  explicit lexer(const std::string& source) {
    // Jinja2 treats \r\n, \r and \n alike and, without keep_trailing_newline, drops one newline
    // at the very end of the template.
    src_.reserve(source.size());
    for (std::size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
        src_.push_back('\n');
      } else {
        src_.push_back(source[i]);
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    for (std::size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') newlines_.push_back(i);
  }

  std::vector<token> run() {
    std::size_t pos = 0;
    const std::size_t n = src_.size();
    // True where the previous match ended a line: lstrip_blocks then strips whitespace that
    // starts the text, even though the text itself holds no newline.
    bool line_starting = true;
    while (pos < n) {
      const std::size_t tag = find_tag_start(pos);
      if (tag == std::string::npos) {
        emit_data(pos, src_.substr(pos));
        break;
      }
      const char kind = src_[tag + 1];
      std::size_t p = tag + 2;
      char sign = 0;
      if (p < n && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
      const std::size_t raw_end = kind == '%' ? match_raw_begin(p) : std::string::npos;

      std::string text = src_.substr(pos, tag - pos);
      strip_before_tag(text, sign, kind != '{', line_starting);
      emit_data(pos, std::move(text));

      if (raw_end != std::string::npos) {
        line_starting = src_[raw_end - 1] == '\n';
        pos = lex_raw(tag, raw_end, line_starting);
      } else if (kind == '#') {
        pos = lex_comment(tag, p);
      } else {
        pos = lex_tag(tag, p, kind == '%');
      }
      line_starting = src_[pos - 1] == '\n';
    }
    token eof;
    eof.type = token::kind::eof;
    eof.line = line_of(src_.size());
    tokens_.push_back(eof);
    return std::move(tokens_);
  }

 private:
  int line_of(std::size_t pos) const {
    return 1 + static_cast<int>(std::lower_bound(newlines_.begin(), newlines_.end(), pos) -
                                newlines_.begin());
  }

  [[noreturn]] void syntax_error(std::size_t pos, const std::string& message) const {
    throw template_error(errc::invalid_argument, line_of(pos), message);
  }

  bool starts_with(std::size_t pos, std::string_view s) const {
    return src_.compare(pos, s.size(), s) == 0;
  }

  std::size_t skip_whitespace(std::size_t pos) const {
    return pos + lstrip_length(std::string_view(src_).substr(pos));
  }

  std::size_t find_tag_start(std::size_t pos) const {
    for (std::size_t p = src_.find('{', pos); p != std::string::npos; p = src_.find('{', p + 1)) {
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#'))
        return p;
    }
    return std::string::npos;
  }

  // `{%[-+]?\s*raw\s*(-%}\s*|%})`: returns the end of the tag, or npos when it is no raw tag.
  // Unlike other block ends, this one never trims a newline.
  std::size_t match_raw_begin(std::size_t p) const {
    p = skip_whitespace(p);
    if (!starts_with(p, "raw")) return std::string::npos;
    p = skip_whitespace(p + 3);
    if (starts_with(p, "-%}")) return skip_whitespace(p + 3);
    if (starts_with(p, "%}")) return p + 2;
    return std::string::npos;
  }

  void strip_before_tag(std::string& text, char sign, bool lstrip_applies,
                        bool line_starting) const {
    if (sign == '-') {
      text.resize(rstrip_length(text));
    } else if (sign != '+' && lstrip_applies) {
      const auto nl = text.rfind('\n');
      const std::size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if (l_pos > 0 || line_starting) {
        const std::string_view rest = std::string_view(text).substr(l_pos);
        if (!rest.empty() && lstrip_length(rest) == rest.size()) text.resize(l_pos);
      }
    }
  }

  void emit_data(std::size_t pos, std::string text) {
    if (text.empty()) return;
    token t;
    t.type = token::kind::data;
    t.text = std::move(text);
    t.line = line_of(pos);
    tokens_.push_back(std::move(t));
  }

  void emit(token::kind type, std::size_t pos, std::string text = {}) {
    token t;
    t.type = type;
    t.text = std::move(text);
    t.line = line_of(pos);
    tokens_.push_back(std::move(t));
  }

  // The end of a block or comment tag at p (marker "%}" or "#}"), or npos.
  std::size_t match_block_end(std::size_t p, std::string_view marker) const {
    if (src_[p] == '+' && starts_with(p + 1, marker)) return p + 3;
    if (src_[p] == '-' && starts_with(p + 1, marker)) return skip_whitespace(p + 3);
    if (starts_with(p, marker)) {
      p += 2;
      if (p < src_.size() && src_[p] == '\n') ++p;  // trim_blocks
      return p;
    }
    return std::string::npos;
  }

  std::size_t lex_comment(std::size_t tag, std::size_t p) {
    for (; p < src_.size(); ++p) {
      const std::size_t end = match_block_end(p, "#}");
      if (end != std::string::npos) return end;
    }
    syntax_error(tag, "missing end of comment tag '#}'");
  }

  std::size_t lex_raw(std::size_t tag, std::size_t p, bool line_starting) {
    const std::size_t start = p;
    for (; p < src_.size(); ++p) {
      if (!starts_with(p, "{%")) continue;
      std::size_t q = p + 2;
      char sign = 0;
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) sign = src_[q++];
      q = skip_whitespace(q);
      if (!starts_with(q, "endraw")) continue;
      q = skip_whitespace(q + 6);
      const std::size_t end = match_block_end(q, "%}");
      if (end == std::string::npos) continue;
      std::string text = src_.substr(start, p - start);
      strip_before_tag(text, sign, true, line_starting);
      emit_data(start, std::move(text));
      return end;
    }
    syntax_error(tag, "missing end of raw directive");
  }

  // Tokens inside {% %} or {{ }}, up to the end tag; returns the position after it.
  std::size_t lex_tag(std::size_t tag, std::size_t p, bool block) {
    emit(block ? token::kind::block_begin : token::kind::variable_begin, tag);
    std::vector<char> balance;  // closing brackets expected; the tag cannot end inside brackets
    const std::size_t n = src_.size();
    while (p < n) {
      if (balance.empty()) {
        std::size_t end = std::string::npos;
        if (block) {
          end = match_block_end(p, "%}");
        } else if (starts_with(p, "-}}")) {
          end = skip_whitespace(p + 3);
        } else if (starts_with(p, "}}")) {
          end = p + 2;
        }
        if (end != std::string::npos) {
          emit(block ? token::kind::block_end : token::kind::variable_end, p);
          return end;
        }
      }
      const std::size_t ws_end = skip_whitespace(p);
      if (ws_end != p) {
        p = ws_end;
        continue;
      }
      if (std::size_t end = match_float(p); end != std::string::npos) {
        p = emit_number(p, end, true);
        continue;
      }
      if (std::size_t end = match_integer(p); end != std::string::npos) {
        p = emit_number(p, end, false);
        continue;
      }
      if (is_name_start(src_[p])) {
        std::size_t end = p;
        while (end < n && is_name_char(src_[end])) ++end;
        emit(token::kind::name, p, src_.substr(p, end - p));
        p = end;
        continue;
      }
      if (src_[p] == '\'' || src_[p] == '"') {
        if (std::size_t end = match_string(p); end != std::string::npos) {
          token t;
          t.type = token::kind::string;
          t.text = unescape(p + 1, end - 1);
          t.line = line_of(p);
          tokens_.push_back(std::move(t));
          p = end;
          continue;
        }
      }
      p = lex_operator(p, balance);
    }
    syntax_error(tag, block ? "unexpected end of template: tag '{%' is not closed by '%}'"
                            : "unexpected end of template: '{{' is not closed by '}}'");
  }

  std::size_t match_digits(std::size_t p) const {  // (\d+_)*\d+
    if (p >= src_.size() || !is_digit(src_[p])) return std::string::npos;
    while (p < src_.size()) {
      if (is_digit(src_[p])) {
        ++p;
      } else if (src_[p] == '_' && p + 1 < src_.size() && is_digit(src_[p + 1])) {
        ++p;
      } else {
        break;
      }
    }
    return p;
  }

  std::size_t match_exponent(std::size_t p) const {  // e[+-]?digits
    if (p >= src_.size() || (src_[p] != 'e' && src_[p] != 'E')) return std::string::npos;
    ++p;
    if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
    return match_digits(p);
  }

  std::size_t match_float(std::size_t p) const {
    if (p > 0 && src_[p - 1] == '.') return std::string::npos;  // (?<!\.): `x.0.1` is no float
    const std::size_t int_end = match_digits(p);
    if (int_end == std::string::npos) return std::string::npos;
    std::size_t frac_end = std::string::npos;
    if (int_end < src_.size() && src_[int_end] == '.') frac_end = match_digits(int_end + 1);
    if (frac_end != std::string::npos) {
      if (std::size_t e = match_exponent(frac_end); e != std::string::npos) return e;
    }
    if (std::size_t e = match_exponent(int_end); e != std::string::npos) return e;
    return frac_end;
  }

  std::size_t match_integer(std::size_t p) const {
    const std::size_t n = src_.size();
    if (p >= n || !is_digit(src_[p])) return std::string::npos;
    if (src_[p] == '0' && p + 1 < n) {
      const char base = static_cast<char>(src_[p + 1] | 0x20);
      auto valid = [base](char c) {
        if (base == 'b') return c == '0' || c == '1';
        if (base == 'o') return c >= '0' && c <= '7';
        return is_hex(c);
      };
      if (base == 'b' || base == 'o' || base == 'x') {
        std::size_t q = p + 2;
        while (q < n) {
          if (valid(src_[q])) {
            ++q;
          } else if (src_[q] == '_' && q + 1 < n && valid(src_[q + 1])) {
            q += 2;
          } else {
            break;
          }
        }
        if (q > p + 2) return q;
      }
    }
    if (src_[p] == '0') {  // 0(_?0)*
      std::size_t q = p + 1;
      while (q < n) {
        if (src_[q] == '0') {
          ++q;
        } else if (src_[q] == '_' && q + 1 < n && src_[q + 1] == '0') {
          q += 2;
        } else {
          break;
        }
      }
      return q;
    }
    return match_digits(p);
  }

  std::size_t emit_number(std::size_t p, std::size_t end, bool is_float) {
    std::string digits;
    for (std::size_t i = p; i < end; ++i)
      if (src_[i] != '_') digits.push_back(src_[i]);
    token t;
    t.line = line_of(p);
    t.text = digits;
    errno = 0;
    if (is_float) {
      t.type = token::kind::floating;
      t.float_value = std::strtod(digits.c_str(), nullptr);
    } else {
      t.type = token::kind::integer;
      int base = 10;
      std::size_t skip = 0;
      if (digits.size() > 1 && digits[0] == '0') {
        const char b = static_cast<char>(digits[1] | 0x20);
        base = b == 'b' ? 2 : b == 'o' ? 8 : b == 'x' ? 16 : 10;
        skip = base == 10 ? 0 : 2;
      }
      t.int_value = std::strtoll(digits.c_str() + skip, nullptr, base);
      if (errno == ERANGE) syntax_error(p, "integer literal " + digits + " is too large");
    }
    tokens_.push_back(std::move(t));
    return end;
  }

  std::size_t match_string(std::size_t p) const {
    const char quote = src_[p];
    for (std::size_t i = p + 1; i < src_.size(); ++i) {
      if (src_[i] == '\\') {
        ++i;
      } else if (src_[i] == quote) {
        return i + 1;
      }
    }
    return std::string::npos;
  }

  // Jinja2 decodes string literals with Python's "unicode-escape" codec: the usual escapes,
  // octal, \x, \u and \U; an unknown escape such as \d keeps its backslash.
  std::string unescape(std::size_t begin, std::size_t end) const {
    std::string out;
    out.reserve(end - begin);
    for (std::size_t i = begin; i < end; ++i) {
      const char c = src_[i];
      if (c != '\\' || i + 1 >= end) {
        out.push_back(c);
        continue;
      }
      const char e = src_[++i];
      switch (e) {
        case '\n':
          break;  // a line continuation
        case '\\':
        case '\'':
        case '"':
          out.push_back(e);
          break;
        case 'a':
          out.push_back('\a');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'x':
        case 'u':
        case 'U': {
          const std::size_t len = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          if (i + len >= end)
            syntax_error(i, std::string("truncated \\") + e + " escape in a string literal");
          char32_t cp = 0;
          for (std::size_t k = 1; k <= len; ++k) {
            const char h = src_[i + k];
            if (!is_hex(h))
              syntax_error(i, std::string("truncated \\") + e + " escape in a string literal");
            cp = cp * 16 + static_cast<char32_t>(is_digit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
          }
          if (cp > 0x10FFFF) syntax_error(i, "illegal Unicode character in a string literal");
          append_utf8(out, cp);
          i += len;
          break;
        }
        case 'N':
          throw template_error(errc::unsupported, line_of(i),
                               "the \\N{...} escape in string literals is not supported");
        default:
          if (e >= '0' && e <= '7') {
            char32_t cp = static_cast<char32_t>(e - '0');
            for (int k = 0; k < 2 && i + 1 < end && src_[i + 1] >= '0' && src_[i + 1] <= '7'; ++k)
              cp = cp * 8 + static_cast<char32_t>(src_[++i] - '0');
            append_utf8(out, cp);
          } else {
            out.push_back('\\');
            out.push_back(e);
          }
      }
    }
    return out;
  }

  std::size_t lex_operator(std::size_t p, std::vector<char>& balance) {
    static constexpr std::string_view two[] = {"**", "//", "==", "!=", ">=", "<="};
    for (auto op : two) {
      if (starts_with(p, op)) {
        emit(token::kind::op, p, std::string(op));
        return p + 2;
      }
    }
    const char c = src_[p];
    if (std::string_view("+-/*%~[](){}><=.:|,;").find(c) == std::string_view::npos) {
      std::string shown(1, c);
      if (static_cast<unsigned char>(c) >= 0x80) {
        std::size_t len = 1;
        while (p + len < src_.size() && (static_cast<unsigned char>(src_[p + len]) & 0xC0) == 0x80)
          ++len;
        shown = src_.substr(p, len);
      }
      syntax_error(p, "unexpected char '" + shown + "'");
    }
    if (c == '(') balance.push_back(')');
    if (c == '[') balance.push_back(']');
    if (c == '{') balance.push_back('}');
    if (c == ')' || c == ']' || c == '}') {
      if (balance.empty()) syntax_error(p, std::string("unexpected '") + c + "'");
      if (balance.back() != c)
        syntax_error(p, std::string("unexpected '") + c + "', expected '" + balance.back() + "'");
      balance.pop_back();
    }
    emit(token::kind::op, p, std::string(1, c));
    return p + 1;
  }

  std::string src_;
  std::vector<std::size_t> newlines_;
  std::vector<token> tokens_;
};

}  // namespace

std::vector<token> tokenize(const std::string& source) {
  return lexer(source).run();
}

}  // namespace shoal::jinja
