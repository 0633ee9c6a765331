#pragma once
// Principals, tenants and data domains: who may call, into which domain their data falls, and what
// they may use. One implementation for both front doors (Cap'n Proto and HTTP): an API key maps to
// a principal, keys are configured as SHA-256 hashes, never in clear. Plain C++ (no actors).

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/error.hpp"

namespace YAML {
class Node;
}

namespace shoal::governance {

/// Data domains, from least to most restricted.
enum class data_domain : std::uint8_t { public_, business, sensitive };
const char* to_string(data_domain d);
std::optional<data_domain> parse_domain(std::string_view s);

struct principal {
  std::string tenant = "anonymous";
  std::string id = "anonymous";   // the key's id (who, for the audit log)
  std::string role = "user";      // user | service | admin
  data_domain domain = data_domain::public_;
  std::int32_t priority = 0;      // from the role; requests may lower it, not raise it
  bool authenticated = false;
};

struct tenant_limits {
  std::int32_t requests_per_minute = 0;  // 0: unlimited. Default: 0
  std::int64_t tokens_per_minute = 0;    // prompt + max_tokens per minute; 0: unlimited
  std::int32_t max_concurrent = 0;       // 0: unlimited
};

struct key_spec {
  std::string id;
  std::string role = "user";
  std::string sha256;  // lowercase hex of SHA-256(key)
};

struct tenant_spec {
  std::string name;
  data_domain domain = data_domain::public_;
  std::vector<std::string> models;  // allowed models; empty: every model the domain allows
  tenant_limits limits;
  std::vector<key_spec> keys;
  /// Special-token strings in this tenant's completion prompts become control tokens (trusted
  /// callers that build prompts themselves). Chat message contents stay text regardless.
  /// Default: false
  bool special_tokens = false;
};

struct domain_policy {
  data_domain domain = data_domain::public_;
  std::vector<std::string> models;  // models this domain may use; empty: all
  bool cache = true;                // answer cache allowed. Default: true (sensitive: false)
  bool encrypt_cache = false;       // values encrypted at rest. Default: false (sensitive: true)
  bool model_sees_masked = false;   // the model gets the PII-masked prompt. Default: false
  bool store_masked_text = false;   // the audit log keeps the masked text, not only its digest
};

struct auth_config {
  bool required = false;  // false: requests without a key run as tenant "anonymous", domain public
  std::vector<tenant_spec> tenants;
  std::map<data_domain, domain_policy> domains;
  std::int32_t global_max_inflight = 0;  // cluster-wide admission limit; 0: unlimited

  /// Reads the `auth`, `tenants` and `domains` sections; throws shoal::error naming `file`.
  static auth_config from_yaml(const YAML::Node& root, const std::string& file);
  const tenant_spec* find_tenant(const std::string& name) const;
  const domain_policy& policy(data_domain d) const;
};

/// Lowercase hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);

class authenticator {
 public:
  explicit authenticator(auth_config cfg);
  /// The principal for an API key ("" = none given). Empty result: the key is unknown, or a key is
  /// required and none was given.
  std::optional<principal> authenticate(std::string_view api_key) const;
  const auth_config& config() const { return cfg_; }

 private:
  auth_config cfg_;
  std::map<std::string, principal> by_hash_;
};

/// Per-tenant requests-per-minute, tokens-per-minute and concurrency limits over sliding one-minute
/// windows, plus the global in-flight limit. Thread-safe.
class rate_limiter {
 public:
  explicit rate_limiter(const auth_config& cfg);
  /// Admits a request of `tokens` (prompt + max_tokens), or says why not: overloaded (the
  /// cluster-wide limit) or rate_limited (the tenant's own limits).
  std::optional<refusal> admit(const std::string& tenant, std::int64_t tokens,
                               std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());
  /// A request admitted for `tenant` finished (frees its concurrency slot).
  void release(const std::string& tenant);
  std::int32_t in_flight() const;

 private:
  struct window {
    std::deque<std::pair<std::chrono::steady_clock::time_point, std::int64_t>> events;
    std::int64_t tokens = 0;
    std::int32_t concurrent = 0;
  };
  std::map<std::string, tenant_limits> limits_;
  std::int32_t global_max_;
  mutable std::mutex mutex_;
  std::map<std::string, window> windows_;
  std::int32_t in_flight_ = 0;
};

}  // namespace shoal::governance
