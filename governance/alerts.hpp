#pragma once
// Anomaly rules (governance_spec::alerts) evaluated per principal over sliding windows: too many
// operations of some kinds, output volume above a fixed ceiling or far above the principal's own
// baseline, many cache-miss probes of one prompt prefix. A trip names the rule and what it saw; the
// router then blocks the principal. Plain C++; not thread-safe (the router's state).

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "governance/settings.hpp"

namespace shoal::governance {

struct alert_trip {
  std::string rule;
  std::string detail;
};

class alert_engine {
 public:
  using clock = std::chrono::steady_clock;
  explicit alert_engine(std::vector<alert_rule> rules);

  /// `who` identifies the principal ("tenant/key id"). Each call records the event and returns the
  /// first rule it trips, if any.
  std::optional<alert_trip> operation(const std::string& tenant, const std::string& who, const std::string& op,
                                      clock::time_point now = clock::now());
  std::optional<alert_trip> output_tokens(const std::string& tenant, const std::string& who, std::int64_t tokens,
                                          clock::time_point now = clock::now());
  std::optional<alert_trip> miss_probe(const std::string& tenant, const std::string& who, const std::string& prompt,
                                       clock::time_point now = clock::now());

 private:
  struct window {
    std::deque<std::pair<clock::time_point, std::int64_t>> events;
    std::int64_t sum = 0;
    // output_tokens baseline: totals of whole past windows, averaged exponentially
    clock::time_point bucket_start{};
    std::int64_t bucket_sum = 0;
    double baseline = 0;
    std::int32_t buckets = 0;
  };
  std::int64_t add(window& w, const alert_rule& r, std::int64_t amount, clock::time_point now);
  bool applies(const alert_rule& r, const std::string& tenant) const;

  std::vector<alert_rule> rules_;
  std::map<std::pair<std::size_t, std::string>, window> windows_;  // (rule index, who[, prefix])
};

}  // namespace shoal::governance
