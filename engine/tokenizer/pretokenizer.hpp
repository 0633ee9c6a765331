#pragma once
// Pre-tokenization for byte-level BPE: Hugging Face's Split / Digits / ByteLevel steps, each run on
// every piece the previous step produced (so lookaheads like `\s+(?!\S)` see piece boundaries).
// Regexes run on PCRE2 with UTF + UCP; `\s`/`\S` are rewritten to White_Space because PCRE2's UCP
// `\s` also matches U+180E, which Unicode (and tokenizers' Oniguruma) no longer count as space.

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace shoal {

/// A compiled PCRE2 pattern (thread-safe to share; each search makes its own match data).
class pcre_regex {
 public:
  /// Compiles `pattern` (Oniguruma/HF syntax, UTF-8). Throws shoal::error(unsupported) when PCRE2
  /// rejects it, naming the pattern and the offset.
  explicit pcre_regex(const std::string& pattern);
  ~pcre_regex();
  pcre_regex(const pcre_regex&) = delete;
  pcre_regex& operator=(const pcre_regex&) = delete;

  /// Non-overlapping matches in `subject` (valid UTF-8) as [begin, end) byte offsets, left to
  /// right; empty matches are dropped.
  void find_all(std::string_view subject,
                std::vector<std::pair<std::size_t, std::size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*, kept opaque so <pcre2.h> stays out of this header
};

/// What happens to the matched parts of a piece (tokenizers' SplitDelimiterBehavior).
enum class split_behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

struct pre_tokenize_step {
  enum class kind { split_regex, split_literal, byte_level_prefix_space } what = kind::split_regex;
  std::shared_ptr<const pcre_regex> regex;  // split_regex
  std::string literal;                      // split_literal
  split_behavior behavior = split_behavior::isolated;
  bool invert = false;
};

/// An ordered list of steps; the byte-to-unicode mapping of ByteLevel happens later, in the model.
class pre_tokenizer {
 public:
  /// From a tokenizer.json `pre_tokenizer` object (Sequence, Split, Digits, ByteLevel). Throws
  /// shoal::error(unsupported) for other types. Requires a ByteLevel step, last.
  static pre_tokenizer from_hf_json(const nlohmann::json& j);
  /// From GGUF `tokenizer.ggml.pre`: the same steps the matching tokenizer.json files use.
  /// Sets `ignore_merges` where the original tokenizer.json does. Throws for unknown names.
  static pre_tokenizer from_gguf_name(const std::string& name, bool& ignore_merges);

  /// Splits `text` (well-formed UTF-8: the regexes skip PCRE2's per-call check) into pieces.
  /// `storage` keeps any piece that had to be built (prefix spaces).
  void run(std::string_view text, std::vector<std::string_view>& out,
           std::deque<std::string>& storage) const;

  const std::vector<pre_tokenize_step>& steps() const { return steps_; }

 private:
  std::vector<pre_tokenize_step> steps_;
};

/// The GPT-2 regex ByteLevel applies when `use_regex` is true (or absent).
extern const char* const gpt2_pretokenize_regex;

}  // namespace shoal
