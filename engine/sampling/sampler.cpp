#include "engine/sampling/sampler.hpp"

#include <algorithm>
#include <cmath>

namespace shoal {

std::string sampling_params::validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f) return "temperature must be a finite number >= 0";
  if (top_k < 0) return "top_k must be >= 0 (0 disables it)";
  if (!std::isfinite(top_p) || top_p <= 0.0f || top_p > 1.0f) return "top_p must be in (0, 1]";
  if (!std::isfinite(min_p) || min_p < 0.0f || min_p > 1.0f) return "min_p must be in [0, 1]";
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.0f) return "repetition_penalty must be > 0";
  if (!std::isfinite(presence_penalty) || presence_penalty < -2.0f || presence_penalty > 2.0f)
    return "presence_penalty must be in [-2, 2]";
  if (!std::isfinite(frequency_penalty) || frequency_penalty < -2.0f || frequency_penalty > 2.0f)
    return "frequency_penalty must be in [-2, 2]";
  return {};
}

sampler::sampler(const sampling_params& params, std::int64_t n_valid)
    : p_(params), n_valid_(n_valid), rng_(params.seed ? *params.seed : std::random_device{}()) {}

void sampler::observe(std::int32_t id, bool is_output) {
  seen_[id] = true;
  if (is_output) ++output_counts_[id];
}

std::int32_t sampler::sample(std::span<float> logits) {
  const std::int64_t n = std::min<std::int64_t>(n_valid_, static_cast<std::int64_t>(logits.size()));
  if (p_.repetition_penalty != 1.0f) {
    for (auto& [id, _] : seen_) {
      if (id >= n) continue;
      float& l = logits[id];
      l = l > 0.0f ? l / p_.repetition_penalty : l * p_.repetition_penalty;
    }
  }
  if (p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) {
    for (auto& [id, count] : output_counts_) {
      if (id >= n) continue;
      logits[id] -= p_.frequency_penalty * static_cast<float>(count) + p_.presence_penalty;
    }
  }
  if (p_.greedy()) {
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < n; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return static_cast<std::int32_t>(best);
  }
  candidates_.clear();
  candidates_.reserve(n);
  for (std::int64_t i = 0; i < n; ++i) {
    if (std::isfinite(logits[i])) candidates_.emplace_back(logits[i] / p_.temperature, static_cast<std::int32_t>(i));
  }
  if (candidates_.empty()) return 0;
  // Sort by logit descending, lower id first on ties, so filtering is deterministic.
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  if (p_.top_k > 0 && static_cast<std::size_t>(p_.top_k) < candidates_.size()) {
    std::partial_sort(candidates_.begin(), candidates_.begin() + p_.top_k, candidates_.end(), by_logit);
    candidates_.resize(p_.top_k);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Softmax in place: candidates_[i].first becomes a probability.
  const float max_logit = candidates_.front().first;
  double sum = 0.0;
  for (auto& c : candidates_) {
    c.first = std::exp(c.first - max_logit);
    sum += c.first;
  }
  for (auto& c : candidates_) c.first = static_cast<float>(c.first / sum);
  std::size_t keep = candidates_.size();
  if (p_.top_p < 1.0f) {
    double cum = 0.0;
    for (std::size_t i = 0; i < candidates_.size(); ++i) {
      cum += candidates_[i].first;
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (p_.min_p > 0.0f) {
    const float floor = p_.min_p * candidates_.front().first;
    std::size_t k = 1;
    while (k < keep && candidates_[k].first >= floor) ++k;
    keep = k;
  }
  candidates_.resize(keep);
  double total = 0.0;
  for (auto& c : candidates_) total += c.first;
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (auto& c : candidates_) {
    r -= c.first;
    if (r < 0.0) return c.second;
  }
  return candidates_.back().second;
}

}  // namespace shoal
