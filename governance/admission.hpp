#pragma once
// The router's admission policy, as plain C++ (no actors): who is asking (API key -> principal),
// whether they are blocked, whether the model exists and their domain and tenant may use it, the
// request kind, the tenant's and the cluster's limits, the priority cap of the key's role, what
// the PII masking decides (which prompt the model sees, which text the audit log keeps) and
// whether the answer cache may serve the request. Anomaly rules that trip block the principal here
// at once; the caller persists the block. The router owns one policy and is its only user (not
// thread-safe, except the rate limiter inside).
//
// Checks run in this order, the first failure deciding the answer:
//   key -> blocked -> model known -> template ranges -> model allowed -> kind -> sink ->
//   operation rules -> limits

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/common/error.hpp"
#include "governance/alerts.hpp"
#include "governance/auth.hpp"
#include "governance/pii.hpp"

namespace shoal::governance {

/// "tenant/key id": how blocks, alerts and audit records name a principal.
std::string principal_key(const principal& p);

struct admission_options {
  auth_config auth;                            // keys, tenants, domain policies, limits
  std::vector<alert_rule> alerts;              // anomaly rules that block principals
  masker_options pii;                          // what counts as personal data
  std::vector<std::string> models;             // the served model names
  bool cache = false;                          // an answer cache exists. Default: false
  std::map<std::string, std::string> blocked;  // principal key -> why, as persisted
};

/// What the policy looks at in a generation request.
struct admission_request {
  std::string api_key;                   // "" = none given
  std::string model;                     // the served name (the caller resolves "" to the default)
  std::string kind = "generate";         // generate | score | embed
  std::int32_t priority = 0;
  std::string prompt;                    // text, used when prompt_ids is empty
  std::vector<std::int32_t> prompt_ids;
  std::int32_t max_tokens = 0;
  bool deterministic = false;            // greedy or seeded: the same request gives the same answer
  bool no_cache = false;                 // the caller opts out of the answer cache
  bool has_sink = true;                  // somewhere to stream the tokens to
  bool parse_special = true;             // the caller wants special-token strings in the prompt parsed
  /// A chat: sorted [begin, end) byte pairs of `prompt` that the chat template wrote. Special-token
  /// strings are tokens inside them only, whatever the tenant, so message contents stay text.
  std::vector<std::int32_t> special_ranges;
};

/// A rule tripped: the principal is blocked from now on, and the caller persists and audits it.
struct block_event {
  principal who;
  std::string key;     // principal_key(who)
  alert_trip trip;
  std::string reason;  // as kept in the block list: "rule 'x': detail"
};

/// The common part of every decision.
struct decision {
  std::optional<principal> who;        // the caller, once the key checked out (also on later refusals)
  std::optional<refusal> refused;      // set: refused, with the code and a message for the client
  bool blocked = false;                // the refusal is a block (audited with status "blocked")
  std::optional<block_event> block;    // a rule tripped on this request
};

struct admission : decision {
  std::int32_t priority = 0;           // the request's, capped by the key's role
  bool counted = false;                // holds a rate-limiter slot: release() it when the request ends
  mask_result masked;                  // the text prompt with personal data masked
  bool prompt_has_pii = false;
  bool model_sees_masked = false;      // the domain gives the model masked.text, not the prompt
  bool store_masked_text = false;      // the audit record keeps the masked input, not only its digest
  bool encrypt_cache = false;          // cached answers are sealed at rest
  bool cacheable = false;              // may be answered from, and fill, the answer cache
  /// Whether special-token strings of the prompt the model sees are parsed: in a completion prompt
  /// only for tenants trusted with them (`special_tokens`), in a chat inside `special_ranges` only.
  bool parse_special = false;
  std::vector<std::int32_t> special_ranges;  // the request's, moved along with the masking
};

struct admin_admission : decision {
  std::string tenant;                  // the tenant the operation applies to ("" = all; admins only)
};

class admission_policy {
 public:
  explicit admission_policy(admission_options opts);

  /// Decides on a generation request. When it is admitted, `counted` is set and the caller owes
  /// a release() (or finished()) for it.
  admission admit(const admission_request& r);

  /// Only the caller: a key that is given must be valid and its principal not blocked (what a
  /// front door asks before it does anything else with a request).
  decision check_caller(const std::string& api_key);
  /// The principal of `api_key`, if any (for records of requests refused before admission).
  std::optional<principal> identify(const std::string& api_key) const { return auth_.authenticate(api_key); }

  /// Decides on an administrative operation (query, export, blocks, unblock, purge_cache) for
  /// `tenant` ("" = the caller's own, or all for an admin): only admins see blocks and lift them,
  /// and others reach only their own tenant.
  admin_admission admit_admin(const std::string& api_key, const std::string& op, const std::string& tenant);

  /// A counted request ended having produced `output_tokens`: frees its slot; the output rules
  /// may block its principal (`who` is the principal key).
  std::optional<block_event> finished(const std::string& tenant, const std::string& who, std::int64_t output_tokens);
  /// A counted request ended before it ran (no replica took it): frees its slot.
  void release(const std::string& tenant);
  /// An answer-cache miss for `masked_prompt`: the probing rules may block the principal.
  std::optional<block_event> cache_miss(const principal& who, const std::string& masked_prompt);

  /// Lifts a block; false when `key` was not blocked.
  bool unblock(const std::string& key);
  const std::map<std::string, std::string>& blocked() const { return blocked_; }
  const std::vector<std::string>& models() const { return opts_.models; }
  std::shared_ptr<const masker> pii_masker() const { return masker_; }

 private:
  std::optional<block_event> trip(const principal& who, std::optional<alert_trip> t);
  void check_key(decision& d, const std::string& api_key);

  admission_options opts_;
  authenticator auth_;
  rate_limiter limiter_;
  alert_engine alerts_;
  std::shared_ptr<const masker> masker_;
  std::map<std::string, std::string> blocked_;  // principal key -> why
};

}  // namespace shoal::governance
