#pragma once
// Data governance settings of a cluster (sections `cache`, `audit`, `alerts`, `pii` of the cluster
// YAML): where the answer cache and the audit store live, how long answers are kept, the key that
// encrypts the sensitive domain's cached values, the anomaly rules that block principals, and
// custom PII patterns. Plain C++ (yaml-cpp).

#include <cstdint>
#include <string>
#include <vector>

#include "governance/pii.hpp"

namespace YAML {
class Node;
}

namespace shoal::governance {

struct cache_spec {
  bool enabled = true;                      // Default: true (domains may still opt out)
  std::string path = "cache";               // relative to the node's data directory. Default: cache
  std::int64_t ttl_seconds = 3600;          // Default: 3600
  std::int64_t max_bytes = 256ll << 20;     // keys + values; oldest evicted first. Default: 256 MiB
  std::string key_file;                     // 32-byte key (raw or 64 hex digits) for encrypted domains
  std::string key_env;                      // or an environment variable holding 64 hex digits
};

struct audit_spec {
  std::string path = "audit";  // relative to the node's data directory. Default: audit
};

/// A per-principal sliding-window rule; when it trips the principal is blocked at the router.
struct alert_rule {
  std::string name;
  std::string kind;                     // operations | output_tokens | miss_probes
  std::string tenant;                   // "" = every tenant
  std::vector<std::string> operations;  // kind operations: which count (generate, score, embed, query, export)
  std::int64_t max = 0;                 // trips when the window's count goes above this
  std::int32_t window_seconds = 60;     // Default: 60
  double baseline_factor = 0;           // output_tokens: also trip above factor x the principal's baseline window
  std::int32_t prefix_chars = 32;       // miss_probes: prompts sharing this many leading bytes count together
};

struct governance_spec {
  cache_spec cache;
  audit_spec audit;
  std::vector<alert_rule> alerts;
  governance::masker_options pii;

  /// Reads the sections; throws shoal::error naming `file` and the problem.
  static governance_spec from_yaml(const YAML::Node& root, const std::string& file);
};

/// Resolves a governance path against the node's data directory (absolute paths stay).
std::string resolve_data_path(const std::string& data_dir, const std::string& path);

/// A cheap, stable identity of a model's weights: SHA-256 over config.json (or the GGUF header
/// bytes) and the name, size and modification time of every weight file. Changes when the weights
/// are replaced, without reading gigabytes.
std::string model_fingerprint(const std::string& model_path);

}  // namespace shoal::governance
