#pragma once
// Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, and a seeded RNG.
// Temperature 0 is greedy: argmax, the first index winning ties.

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace shoal {

struct sampling_params {
  float temperature = 1.0f;         // 0: greedy. Default: 1
  std::int32_t top_k = 0;           // 0: off. Default: 0
  float top_p = 1.0f;               // 1: off. Default: 1
  float min_p = 0.0f;               // 0: off. Default: 0
  float repetition_penalty = 1.0f;  // over prompt + output (HF/vLLM). Default: 1 (off)
  float presence_penalty = 0.0f;    // over output tokens (OpenAI/vLLM). Default: 0
  float frequency_penalty = 0.0f;   // over output tokens (OpenAI/vLLM). Default: 0
  std::optional<std::uint64_t> seed;  // Default: none (nondeterministic)

  /// Empty when valid, else a message naming the bad field.
  std::string validate() const;
  bool greedy() const { return temperature == 0.0f; }
};

class sampler {
 public:
  /// `n_valid` limits choices to ids the tokenizer can decode (rows past it are padding).
  sampler(const sampling_params& params, std::int64_t n_valid);

  /// Records a token already in the context (prompt or output) for the penalties.
  void observe(std::int32_t id, bool is_output);
  /// Picks the next token from `logits` (modified in place).
  std::int32_t sample(std::span<float> logits);

 private:
  sampling_params p_;
  std::int64_t n_valid_;
  std::mt19937_64 rng_;
  std::unordered_map<std::int32_t, std::int32_t> output_counts_;
  std::unordered_map<std::int32_t, bool> seen_;  // prompt or output
  std::vector<std::pair<float, std::int32_t>> candidates_;
};

}  // namespace shoal
