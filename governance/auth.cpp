#include "governance/auth.hpp"

#include <sodium.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>

#include "config/yaml_util.hpp"
#include "engine/common/error.hpp"

namespace shoal::governance {

const char* to_string(data_domain d) {
  switch (d) {
    case data_domain::public_: return "public";
    case data_domain::business: return "business";
    case data_domain::sensitive: return "sensitive";
  }
  return "?";
}

std::optional<data_domain> parse_domain(std::string_view s) {
  if (s == "public") return data_domain::public_;
  if (s == "business") return data_domain::business;
  if (s == "sensitive") return data_domain::sensitive;
  return std::nullopt;
}

std::string sha256_hex(std::string_view data) {
  unsigned char out[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(out, reinterpret_cast<const unsigned char*>(data.data()), data.size());
  std::string hex(2 * sizeof out, '0');
  static const char* digits = "0123456789abcdef";
  for (std::size_t i = 0; i < sizeof out; ++i) {
    hex[2 * i] = digits[out[i] >> 4];
    hex[2 * i + 1] = digits[out[i] & 15];
  }
  return hex;
}

namespace {

std::int32_t role_priority(const std::string& role) {
  if (role == "admin") return 10;
  if (role == "service") return 5;
  return 0;
}

domain_policy default_policy(data_domain d) {
  domain_policy p;
  p.domain = d;
  if (d == data_domain::sensitive) {
    p.cache = false;
    p.encrypt_cache = true;
    p.model_sees_masked = true;
  }
  return p;
}

using config::yaml::get;
using config::yaml::get_list;

}  // namespace

auth_config auth_config::from_yaml(const YAML::Node& root, const std::string& file) {
  auth_config c;
  for (auto d : {data_domain::public_, data_domain::business, data_domain::sensitive}) c.domains[d] = default_policy(d);
  auto fail = [&](const std::string& what) { throw error(errc::invalid_argument, file + ": " + what); };
  if (root["auth"]) {
    c.required = get<bool>(root["auth"], "required", false, file + " auth");
    c.global_max_inflight = get<std::int32_t>(root["auth"], "global_max_inflight", 0, file + " auth");
  }
  if (root["domains"]) {
    if (!root["domains"].IsMap()) fail("'domains' must map domain names to policies");
    for (const auto& kv : root["domains"]) {
      const auto name = kv.first.as<std::string>();
      auto d = parse_domain(name);
      if (!d) fail("unknown domain '" + name + "' (public, business, sensitive)");
      auto p = default_policy(*d);
      const std::string where = file + " domain '" + name + "'";
      p.models = get_list(kv.second, "models", where);
      p.cache = get<bool>(kv.second, "cache", p.cache, where);
      p.encrypt_cache = get<bool>(kv.second, "encrypt_cache", p.encrypt_cache, where);
      p.model_sees_masked = get<bool>(kv.second, "model_sees_masked", p.model_sees_masked, where);
      p.store_masked_text = get<bool>(kv.second, "store_masked_text", p.store_masked_text, where);
      c.domains[*d] = p;
    }
  }
  if (root["tenants"]) {
    if (!root["tenants"].IsSequence()) fail("'tenants' must be a list");
    std::map<std::string, std::string> seen_keys;
    for (const auto& t : root["tenants"]) {
      tenant_spec s;
      s.name = get<std::string>(t, "name", "", file);
      if (s.name.empty()) fail("a tenant has no name");
      if (c.find_tenant(s.name)) fail("tenant '" + s.name + "' is listed twice");
      const std::string where = file + " tenant '" + s.name + "'";
      auto d = parse_domain(get<std::string>(t, "domain", "public", where));
      if (!d) fail("tenant '" + s.name + "' has an unknown domain");
      s.domain = *d;
      s.models = get_list(t, "models", where);
      s.special_tokens = get<bool>(t, "special_tokens", false, where);
      if (t["limits"]) {
        s.limits.requests_per_minute = get<std::int32_t>(t["limits"], "requests_per_minute", 0, where);
        s.limits.tokens_per_minute = get<std::int64_t>(t["limits"], "tokens_per_minute", 0, where);
        s.limits.max_concurrent = get<std::int32_t>(t["limits"], "max_concurrent", 0, where);
      }
      if (t["keys"]) {
        for (const auto& k : t["keys"]) {
          key_spec ks;
          ks.id = get<std::string>(k, "id", "", where);
          ks.role = get<std::string>(k, "role", "user", where);
          ks.sha256 = get<std::string>(k, "sha256", "", where);
          if (k["key"]) fail("tenant '" + s.name + "' key '" + ks.id + "' is written in clear: give its sha256 instead");
          std::transform(ks.sha256.begin(), ks.sha256.end(), ks.sha256.begin(), ::tolower);
          if (ks.id.empty() || ks.sha256.size() != 64 || ks.sha256.find_first_not_of("0123456789abcdef") != std::string::npos) {
            fail("tenant '" + s.name + "': every key needs an 'id' and a 64-hex-digit 'sha256'");
          }
          if (ks.role != "user" && ks.role != "service" && ks.role != "admin") {
            fail("tenant '" + s.name + "' key '" + ks.id + "' has unknown role '" + ks.role + "'");
          }
          if (!seen_keys.emplace(ks.sha256, s.name).second) fail("a key hash is listed twice (tenant '" + s.name + "')");
          s.keys.push_back(ks);
        }
      }
      c.tenants.push_back(s);
    }
  }
  return c;
}

const tenant_spec* auth_config::find_tenant(const std::string& name) const {
  for (auto& t : tenants) if (t.name == name) return &t;
  return nullptr;
}

const domain_policy& auth_config::policy(data_domain d) const {
  auto it = domains.find(d);
  if (it != domains.end()) return it->second;
  // A config built in code (tests, embedders) without a domains section gets the defaults.
  static const domain_policy defaults[] = {default_policy(data_domain::public_), default_policy(data_domain::business),
                                           default_policy(data_domain::sensitive)};
  return defaults[static_cast<int>(d)];
}

authenticator::authenticator(auth_config cfg) : cfg_(std::move(cfg)) {
  if (sodium_init() < 0) throw error(errc::internal, "libsodium failed to initialise");
  for (const auto& t : cfg_.tenants) {
    for (const auto& k : t.keys) {
      principal p;
      p.tenant = t.name;
      p.id = k.id;
      p.role = k.role;
      p.domain = t.domain;
      p.priority = role_priority(k.role);
      p.authenticated = true;
      by_hash_[k.sha256] = p;
    }
  }
}

std::optional<principal> authenticator::authenticate(std::string_view api_key) const {
  if (api_key.empty()) {
    if (cfg_.required) return std::nullopt;
    return principal{};
  }
  auto it = by_hash_.find(sha256_hex(api_key));
  if (it == by_hash_.end()) return std::nullopt;
  return it->second;
}

rate_limiter::rate_limiter(const auth_config& cfg) : global_max_(cfg.global_max_inflight) {
  for (const auto& t : cfg.tenants) limits_[t.name] = t.limits;
}

std::optional<refusal> rate_limiter::admit(const std::string& tenant, std::int64_t tokens,
                                           std::chrono::steady_clock::time_point now) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (global_max_ > 0 && in_flight_ >= global_max_) {
    return refusal{errc::overloaded,
                   "the cluster is at its admission limit (" + std::to_string(global_max_) + " requests in flight)"};
  }
  auto lim_it = limits_.find(tenant);
  auto& w = windows_[tenant];
  if (lim_it != limits_.end()) {
    const auto& lim = lim_it->second;
    while (!w.events.empty() && now - w.events.front().first >= std::chrono::minutes(1)) {
      w.tokens -= w.events.front().second;
      w.events.pop_front();
    }
    if (lim.max_concurrent > 0 && w.concurrent >= lim.max_concurrent) {
      return refusal{errc::rate_limited, "tenant '" + tenant + "' has " + std::to_string(w.concurrent) +
                                             " requests in flight (limit " + std::to_string(lim.max_concurrent) + ")"};
    }
    if (lim.requests_per_minute > 0 && static_cast<std::int32_t>(w.events.size()) >= lim.requests_per_minute) {
      return refusal{errc::rate_limited, "tenant '" + tenant + "' is over its limit of " +
                                             std::to_string(lim.requests_per_minute) + " requests per minute"};
    }
    if (lim.tokens_per_minute > 0 && w.tokens + tokens > lim.tokens_per_minute) {
      return refusal{errc::rate_limited, "tenant '" + tenant + "' is over its limit of " +
                                             std::to_string(lim.tokens_per_minute) + " tokens per minute"};
    }
  }
  // Only limited tenants keep a window of events (an unlimited one would grow without bound).
  if (lim_it != limits_.end()) {
    w.events.emplace_back(now, tokens);
    w.tokens += tokens;
  }
  ++w.concurrent;
  ++in_flight_;
  return std::nullopt;
}

void rate_limiter::release(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = windows_.find(tenant);
  if (it != windows_.end() && it->second.concurrent > 0) --it->second.concurrent;
  if (in_flight_ > 0) --in_flight_;
}

std::int32_t rate_limiter::in_flight() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return in_flight_;
}

}  // namespace shoal::governance
