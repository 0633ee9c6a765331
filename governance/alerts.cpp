#include "governance/alerts.hpp"

#include <algorithm>

namespace shoal::governance {

alert_engine::alert_engine(std::vector<alert_rule> rules) : rules_(std::move(rules)) {}

bool alert_engine::applies(const alert_rule& r, const std::string& tenant) const {
  return r.tenant.empty() || r.tenant == tenant;
}

std::int64_t alert_engine::add(window& w, const alert_rule& r, std::int64_t amount, clock::time_point now) {
  const auto span = std::chrono::seconds(r.window_seconds);
  while (!w.events.empty() && now - w.events.front().first >= span) {
    w.sum -= w.events.front().second;
    w.events.pop_front();
  }
  w.events.emplace_back(now, amount);
  w.sum += amount;
  return w.sum;
}

std::optional<alert_trip> alert_engine::operation(const std::string& tenant, const std::string& who,
                                                  const std::string& op, clock::time_point now) {
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    const auto& r = rules_[i];
    if (r.kind != "operations" || !applies(r, tenant)) continue;
    if (std::find(r.operations.begin(), r.operations.end(), op) == r.operations.end()) continue;
    const auto n = add(windows_[{i, who}], r, 1, now);
    if (r.max > 0 && n > r.max) {
      return alert_trip{r.name, std::to_string(n) + " " + op + " operations within " + std::to_string(r.window_seconds) +
                                    " s (limit " + std::to_string(r.max) + ")"};
    }
  }
  return std::nullopt;
}

std::optional<alert_trip> alert_engine::output_tokens(const std::string& tenant, const std::string& who,
                                                      std::int64_t tokens, clock::time_point now) {
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    const auto& r = rules_[i];
    if (r.kind != "output_tokens" || !applies(r, tenant)) continue;
    auto& w = windows_[{i, who}];
    // Baseline: whole past windows' totals, averaged exponentially (empty windows count as 0).
    const auto span = std::chrono::seconds(r.window_seconds);
    if (w.buckets == 0 && w.bucket_start == clock::time_point{}) w.bucket_start = now;
    while (now - w.bucket_start >= span) {
      w.baseline = w.buckets == 0 ? static_cast<double>(w.bucket_sum) : 0.8 * w.baseline + 0.2 * static_cast<double>(w.bucket_sum);
      ++w.buckets;
      w.bucket_sum = 0;
      w.bucket_start += span;
    }
    w.bucket_sum += tokens;
    const auto n = add(w, r, tokens, now);
    if (r.max > 0 && n > r.max) {
      return alert_trip{r.name, std::to_string(n) + " output tokens within " + std::to_string(r.window_seconds) +
                                    " s (limit " + std::to_string(r.max) + ")"};
    }
    if (r.baseline_factor > 0 && w.buckets >= 3 && w.baseline > 0 && static_cast<double>(n) > r.baseline_factor * w.baseline) {
      return alert_trip{r.name, std::to_string(n) + " output tokens within " + std::to_string(r.window_seconds) +
                                    " s, over " + std::to_string(r.baseline_factor) + "x the baseline of " +
                                    std::to_string(static_cast<std::int64_t>(w.baseline))};
    }
  }
  return std::nullopt;
}

std::optional<alert_trip> alert_engine::miss_probe(const std::string& tenant, const std::string& who,
                                                   const std::string& prompt, clock::time_point now) {
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    const auto& r = rules_[i];
    if (r.kind != "miss_probes" || !applies(r, tenant)) continue;
    const auto prefix = prompt.substr(0, static_cast<std::size_t>(r.prefix_chars));
    const auto n = add(windows_[{i, who + '\0' + prefix}], r, 1, now);
    if (r.max > 0 && n > r.max) {
      return alert_trip{r.name, std::to_string(n) + " cache misses sharing one " + std::to_string(r.prefix_chars) +
                                    "-byte prompt prefix within " + std::to_string(r.window_seconds) + " s (limit " +
                                    std::to_string(r.max) + ")"};
    }
  }
  return std::nullopt;
}

}  // namespace shoal::governance
