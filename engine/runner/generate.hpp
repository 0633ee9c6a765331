#pragma once
// Single-sequence generation on one runner: prefill, decode loop, sampling, stop conditions and
// streaming-safe text. The CLI and benchmarks use it; the batcher schedules many sequences itself.

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/runner/model_runner.hpp"
#include "engine/sampling/sampler.hpp"

namespace shoal {

struct generation_options {
  sampling_params sampling;
  std::int32_t max_tokens = 128;          // Default: 128
  bool ignore_eos = false;                // keep going past EOS. Default: false
  std::vector<std::string> stop;          // stop strings; the text ends before the match
  std::vector<std::int32_t> stop_token_ids;
  std::int32_t prefill_chunk = 512;       // prompt tokens per forward call. Default: 512
};

enum class finish_reason { length, stop, eos };
const char* to_string(finish_reason r);

struct generation_result {
  std::vector<std::int32_t> prompt_ids;
  std::vector<std::int32_t> generated_ids;
  std::string text;            // decode(prompt + generated), cut at a stop string
  std::string generated_text;  // the part after the prompt's text
  finish_reason reason = finish_reason::length;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

/// Receives text as soon as it is complete UTF-8 and cannot be part of a stop string.
using text_callback = std::function<void(std::string_view)>;
/// Receives the logits computed at `position` (whose input token was `input_token`).
using logits_callback = std::function<void(std::int32_t position, std::int32_t input_token, std::span<const float> logits)>;

/// Generates after `prompt_ids` (which must be non-empty and fit the context). Throws shoal::error
/// for invalid options or a prompt longer than the context, naming the limit.
generation_result generate(model_runner& runner, std::span<const std::int32_t> prompt_ids,
                           const generation_options& opts, const text_callback& on_text = {},
                           const logits_callback& on_logits = {});

/// Holds back streamed text that might be the start of a stop string; finds complete matches.
class stop_matcher {
 public:
  explicit stop_matcher(std::vector<std::string> stops);
  /// Appends text; returns what is safe to emit now. Sets `stopped` when a stop string completed
  /// (the returned text then ends right before it).
  std::string push(std::string_view text, bool& stopped);
  /// Everything still held back (no stop string completed).
  std::string flush();

 private:
  std::vector<std::string> stops_;
  std::string pending_;
};

}  // namespace shoal
