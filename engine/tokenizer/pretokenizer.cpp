#include "engine/tokenizer/pretokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace shoal {

const char* const gpt2_pretokenize_regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

// tokenizers' `\s` is Unicode White_Space; PCRE2's UCP `\s` adds U+180E. Rewriting to the property
// keeps the meaning inside character classes too (`[^\s\p{L}]`). Escaped backslashes are skipped
// so `\\s` stays a literal backslash followed by `s`.
std::string rewrite_whitespace_classes(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 32);
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      char c = p[i + 1];
      if (c == 's') {
        out += "\\p{White_Space}";
      } else if (c == 'S') {
        out += "\\P{White_Space}";
      } else {
        out += p[i];
        out += c;
      }
      ++i;
    } else {
      out += p[i];
    }
  }
  return out;
}

pcre2_code* as_code(void* p) {
  return static_cast<pcre2_code*>(p);
}

struct match_data_deleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

using range = std::pair<std::size_t, std::size_t>;

// Splits one piece the way tokenizers' NormalizedString::split does: matches and gaps cover the
// piece, the behaviour decides which ranges become pieces, empty ranges vanish.
void split_piece(std::string_view piece, const pre_tokenize_step& step,
                 std::vector<std::string_view>& out, std::vector<range>& scratch) {
  scratch.clear();
  if (step.what == pre_tokenize_step::kind::split_regex) {
    step.regex->find_all(piece, scratch);
  } else {
    if (!step.literal.empty()) {
      for (std::size_t pos = piece.find(step.literal); pos != std::string_view::npos;
           pos = piece.find(step.literal, pos + step.literal.size())) {
        scratch.emplace_back(pos, pos + step.literal.size());
      }
    }
  }
  // (range, is_match) covering the whole piece.
  std::vector<std::pair<range, bool>> parts;
  parts.reserve(scratch.size() * 2 + 1);
  std::size_t prev = 0;
  for (auto [b, e] : scratch) {
    if (b != prev) parts.push_back({{prev, b}, false});
    parts.push_back({{b, e}, true});
    prev = e;
  }
  if (prev != piece.size()) parts.push_back({{prev, piece.size()}, false});
  if (step.invert) {
    for (auto& p : parts) p.second = !p.second;
  }

  std::vector<range> kept;
  kept.reserve(parts.size());
  switch (step.behavior) {
    case split_behavior::removed:
      for (auto& [r, m] : parts)
        if (!m) kept.push_back(r);
      break;
    case split_behavior::isolated:
      for (auto& [r, m] : parts) kept.push_back(r);
      break;
    case split_behavior::merged_with_previous: {
      bool previous_match = false;
      for (auto& [r, m] : parts) {
        if (m && !previous_match && !kept.empty()) {
          kept.back().second = r.second;
        } else {
          kept.push_back(r);
        }
        previous_match = m;
      }
      break;
    }
    case split_behavior::merged_with_next: {
      bool previous_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        auto& [r, m] = *it;
        if (m && !previous_match && !kept.empty()) {
          kept.back().first = r.first;
        } else {
          kept.push_back(r);
        }
        previous_match = m;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case split_behavior::contiguous: {
      bool previous_match = false;
      for (auto& [r, m] : parts) {
        if (m == previous_match && !kept.empty()) {
          kept.back().second = r.second;
        } else {
          kept.push_back(r);
        }
        previous_match = m;
      }
      break;
    }
  }
  for (auto [b, e] : kept) {
    if (e > b) out.push_back(piece.substr(b, e - b));
  }
}

split_behavior parse_behavior(const std::string& s) {
  if (s == "Isolated") return split_behavior::isolated;
  if (s == "Removed") return split_behavior::removed;
  if (s == "MergedWithPrevious") return split_behavior::merged_with_previous;
  if (s == "MergedWithNext") return split_behavior::merged_with_next;
  if (s == "Contiguous") return split_behavior::contiguous;
  throw error(errc::unsupported, "unsupported Split behavior '" + s + "'");
}

pre_tokenize_step regex_step(const std::string& pattern,
                             split_behavior behavior = split_behavior::isolated) {
  pre_tokenize_step s;
  s.what = pre_tokenize_step::kind::split_regex;
  s.regex = std::make_shared<const pcre_regex>(pattern);
  s.behavior = behavior;
  return s;
}

// Digits: every numeric character (Rust's char::is_numeric, i.e. \p{N}) is a match;
// individual_digits isolates each, otherwise a run stays together.
pre_tokenize_step digits_step(bool individual) {
  return regex_step("\\p{N}", individual ? split_behavior::isolated : split_behavior::contiguous);
}

void add_hf_step(const nlohmann::json& j, std::vector<pre_tokenize_step>& steps,
                 bool& saw_byte_level) {
  if (!j.is_object()) throw error(errc::corrupt_file, "pre_tokenizer entry is not an object");
  std::string type = j.value("type", "");
  if (saw_byte_level) {
    throw error(errc::unsupported,
                "pre_tokenizer step '" + type + "' after ByteLevel is not supported");
  }
  if (type == "Sequence") {
    for (const auto& sub : j.at("pretokenizers")) add_hf_step(sub, steps, saw_byte_level);
  } else if (type == "Split") {
    const auto& pat = j.at("pattern");
    pre_tokenize_step s;
    if (pat.contains("Regex")) {
      s = regex_step(pat.at("Regex").get<std::string>());
    } else if (pat.contains("String")) {
      s.what = pre_tokenize_step::kind::split_literal;
      s.literal = pat.at("String").get<std::string>();
    } else {
      throw error(errc::corrupt_file, "Split pattern has neither Regex nor String");
    }
    s.behavior = parse_behavior(j.at("behavior").get<std::string>());
    s.invert = j.value("invert", false);
    steps.push_back(std::move(s));
  } else if (type == "Digits") {
    steps.push_back(digits_step(j.value("individual_digits", false)));
  } else if (type == "ByteLevel") {
    if (j.value("add_prefix_space", false)) {
      pre_tokenize_step s;
      s.what = pre_tokenize_step::kind::byte_level_prefix_space;
      steps.push_back(std::move(s));
    }
    // use_regex defaults to true in tokenizers; older files omit it.
    bool use_regex =
        !j.contains("use_regex") || j.at("use_regex").is_null() || j.at("use_regex").get<bool>();
    if (use_regex) steps.push_back(regex_step(gpt2_pretokenize_regex));
    saw_byte_level = true;
  } else {
    throw error(errc::unsupported, "unsupported pre_tokenizer type '" + type + "'");
  }
}

}  // namespace

pcre_regex::pcre_regex(const std::string& pattern) : pattern_(pattern) {
  std::string rewritten = rewrite_whitespace_classes(pattern);
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw error(errc::unsupported, "cannot compile pre-tokenizer regex '" + pattern +
                                       "' at offset " + std::to_string(offset) + ": " +
                                       reinterpret_cast<const char*>(msg));
  }
  // JIT is an optimisation only: where it is unavailable pcre2_match interprets.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = code;
}

pcre_regex::~pcre_regex() {
  pcre2_code_free(as_code(code_));
}

void pcre_regex::find_all(std::string_view subject,
                          std::vector<std::pair<std::size_t, std::size_t>>& out) const {
  // Match data is per call so one compiled regex serves concurrent encodes.
  thread_local std::unique_ptr<pcre2_match_data, match_data_deleter> md(
      pcre2_match_data_create(8, nullptr));
  auto* code = as_code(code_);
  auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  std::size_t pos = 0;
  while (pos <= subject.size()) {
    // The subject was validated once (encode repairs invalid UTF-8), so skip PCRE2's per-call
    // check, which would rescan the whole subject on every match.
    int rc = pcre2_match(code, s, subject.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw error(errc::internal,
                  "regex '" + pattern_ + "' failed: " + reinterpret_cast<const char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    std::size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.emplace_back(b, e);
      pos = e;
    } else {
      // Empty match: step over one code point and search again.
      if (b >= subject.size()) break;
      std::size_t n = utf8::valid_sequence_length(subject, b);
      pos = b + (n == 0 ? 1 : n);
    }
  }
}

pre_tokenizer pre_tokenizer::from_hf_json(const nlohmann::json& j) {
  pre_tokenizer p;
  bool saw_byte_level = false;
  add_hf_step(j, p.steps_, saw_byte_level);
  if (!saw_byte_level) {
    throw error(errc::unsupported, "byte-level BPE needs a ByteLevel pre_tokenizer step");
  }
  return p;
}

pre_tokenizer pre_tokenizer::from_gguf_name(const std::string& name, bool& ignore_merges) {
  pre_tokenizer p;
  ignore_merges = false;
  auto& s = p.steps_;
  // Each list mirrors the pre_tokenizer section of the model family's tokenizer.json.
  if (name == "default" || name == "gpt-2" || name == "gpt2") {
    s.push_back(regex_step(gpt2_pretokenize_regex));
  } else if (name == "deepseek-coder") {
    s.push_back(regex_step("[\r\n]"));
    s.push_back(regex_step("\\s?\\p{L}+"));
    s.push_back(regex_step("\\s?\\p{P}+"));
    s.push_back(regex_step("[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"));
    s.push_back(digits_step(true));
  } else if (name == "deepseek-v3") {
    s.push_back(regex_step("\\p{N}{1,3}"));
    s.push_back(regex_step("[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+"));
    s.push_back(
        regex_step("[!\"#$%&'()*+,\\-./"
                   ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
                   " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"));
  } else if (name == "llama3" || name == "llama-bpe") {
    s.push_back(
        regex_step("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                   "?[^\\s\\p{L}\\p{N}]+[\r\n]*|"
                   "\\s*[\r\n]+|\\s+(?!\\S)|\\s+"));
    ignore_merges = true;  // Llama 3's tokenizer.json sets it
  } else if (name == "qwen2") {
    // Qwen2's tokenizer.json also NFC-normalizes; llama.cpp's GGUF path does not, and neither do
    // we.
    s.push_back(
        regex_step("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                   "?[^\\s\\p{L}\\p{N}]+[\r\n]*|"
                   "\\s*[\r\n]+|\\s+(?!\\S)|\\s+"));
  } else {
    throw error(errc::unsupported, "unsupported tokenizer.ggml.pre '" + name + "'");
  }
  return p;
}

void pre_tokenizer::run(std::string_view text, std::vector<std::string_view>& out,
                        std::deque<std::string>& storage) const {
  std::vector<std::string_view> cur;
  std::vector<std::string_view> next;
  std::vector<range> scratch;
  if (!text.empty()) cur.push_back(text);
  for (const auto& step : steps_) {
    next.clear();
    if (step.what == pre_tokenize_step::kind::byte_level_prefix_space) {
      for (auto piece : cur) {
        if (piece.front() == ' ') {
          next.push_back(piece);
        } else {
          storage.push_back(" " + std::string(piece));
          next.push_back(storage.back());
        }
      }
    } else {
      for (auto piece : cur) split_piece(piece, step, next, scratch);
    }
    std::swap(cur, next);
  }
  out.insert(out.end(), cur.begin(), cur.end());
}

}  // namespace shoal
