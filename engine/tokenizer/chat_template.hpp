#pragma once
// Renders Hugging Face chat templates (a faithful Jinja2 subset) with transformers' settings:
// trim_blocks, lstrip_blocks, and the variables `messages`, `add_generation_prompt`, `bos_token`,
// `eos_token` (plus `tools` when given). Unknown constructs throw shoal::error naming the feature.

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/tokenizer/tokenizer.hpp"

namespace shoal {

struct chat_template_vars {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  bool add_generation_prompt = false;
  std::string bos_token;
  std::string eos_token;
  /// Optional tool definitions (null when absent: templates test `tools is defined`/`tools`).
  nlohmann::ordered_json tools = nullptr;
};

/// Renders `source` (the template text) with `vars`. Throws shoal::error (errc::unsupported) for a
/// Jinja feature outside the subset, naming it and its line; errc::invalid_argument for a template
/// that calls raise_exception().
std::string render_chat_template(const std::string& source, const chat_template_vars& vars);

/// As above, with further template variables (e.g. pad_token, date_string, enable_thinking, as
/// transformers passes special tokens and apply_chat_template kwargs), each given as JSON; a key
/// here overrides the same key from `vars`.
std::string render_chat_template(const std::string& source, const chat_template_vars& vars,
                                 const nlohmann::ordered_json& extra_vars);

/// A chat rendered with where its contents went: the text, and the byte ranges of it that the
/// template wrote itself. Everything between those ranges came from the caller's strings (message
/// contents, tool-call names and arguments), which must be tokenized as text: encode with
/// encode_options::special_ranges = template_ranges.
struct located_chat {
  std::string text;                       // exactly render_chat_template's result
  std::vector<byte_range> template_ranges;  // sorted; empty when !located
  /// False when the template transforms contents (trims, splits, compares or filters them), so
  /// where they lie in `text` is unknown.
  bool located = false;
  std::vector<std::string> contents;  // the caller's strings, as given
};

/// Renders like render_chat_template and finds the contents: it renders once more with a unique
/// sentinel in place of each content string, puts the contents back where the sentinels came out,
/// and trusts the positions only when that gives exactly the normal rendering.
located_chat render_chat_template_located(const std::string& source, const chat_template_vars& vars);

}  // namespace shoal
