// Where a chat's contents land in its rendering (render_chat_template_located): a template only
// copies the strings it is given, so rendering with recognisable sentinels in their place shows
// where each one went. A template that does more than copy (trim, split, compare, upper-case) makes
// the sentinel rendering disagree with the real one, and the answer is "not located".

#include "engine/tokenizer/chat_template.hpp"

#include <cstdio>
#include <random>

namespace shoal {

namespace {

// A string that no caller text or template holds: control characters around a per-render random
// nonce and the content's index. STX/ETX, not the separators \x1c-\x1f: Python's (and so Jinja's)
// strip() counts those as whitespace, and would trim a sentinel that had nothing to trim.
class sentinels {
 public:
  sentinels() {
    std::random_device rd;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
    prefix_ = std::string("\x02") + buf + ":";
  }
  std::string make(std::size_t i) const { return prefix_ + std::to_string(i) + "\x03"; }
  const std::string& prefix() const { return prefix_; }

 private:
  std::string prefix_;
};

// Replaces `s` (a string the caller gave) by the next sentinel, remembering it.
void swap_in(nlohmann::ordered_json& s, const sentinels& marks, std::vector<std::string>& contents) {
  if (!s.is_string() || s.get_ref<const std::string&>().empty()) return;
  contents.push_back(s.get<std::string>());
  s = marks.make(contents.size() - 1);
}

}  // namespace

located_chat render_chat_template_located(const std::string& source, const chat_template_vars& vars) {
  located_chat out;
  out.text = render_chat_template(source, vars);
  const sentinels marks;
  chat_template_vars marked = vars;
  for (auto& m : marked.messages) {
    if (!m.is_object()) continue;
    if (auto c = m.find("content"); c != m.end()) swap_in(*c, marks, out.contents);
    if (auto calls = m.find("tool_calls"); calls != m.end() && calls->is_array()) {
      for (auto& call : *calls) {
        if (!call.is_object()) continue;
        auto f = call.find("function");
        if (f == call.end() || !f->is_object()) continue;
        if (auto name = f->find("name"); name != f->end()) swap_in(*name, marks, out.contents);
        if (auto args = f->find("arguments"); args != f->end()) swap_in(*args, marks, out.contents);
      }
    }
  }
  std::string with_marks;
  try {
    with_marks = render_chat_template(source, marked);
  } catch (const std::exception&) {
    // The template refused the sentinels (it inspects contents): nothing is located.
    return out;
  }
  // Put each content back where its sentinel came out; note the ranges between contents.
  std::string rebuilt;
  std::vector<byte_range> ranges;
  std::size_t pos = 0;
  for (;;) {
    const auto at = with_marks.find(marks.prefix(), pos);
    const std::size_t copy_end = at == std::string::npos ? with_marks.size() : at;
    if (copy_end > pos) {
      ranges.push_back({rebuilt.size(), rebuilt.size() + (copy_end - pos)});
      rebuilt.append(with_marks, pos, copy_end - pos);
    }
    if (at == std::string::npos) break;
    const auto index_begin = at + marks.prefix().size();
    const auto close = with_marks.find('\x03', index_begin);
    std::size_t index = out.contents.size();
    if (close != std::string::npos && close > index_begin) {
      try {
        index = std::stoul(with_marks.substr(index_begin, close - index_begin));
      } catch (const std::exception&) {
      }
    }
    if (index >= out.contents.size()) return out;  // a mangled sentinel: the template changed it
    rebuilt += out.contents[index];
    pos = close + 1;
  }
  if (rebuilt != out.text) return out;
  out.template_ranges = std::move(ranges);
  out.located = true;
  return out;
}

}  // namespace shoal
