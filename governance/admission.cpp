#include "governance/admission.hpp"

#include <algorithm>
#include <set>

namespace shoal::governance {

std::string principal_key(const principal& p) { return p.tenant + "/" + p.id; }

namespace {

// Whether `ranges` are sorted, non-empty [begin, end) pairs inside a prompt of `size` bytes.
bool valid_ranges(const std::vector<std::int32_t>& ranges, std::size_t size) {
  if (ranges.size() % 2 != 0) return false;
  std::int64_t last = 0;
  for (std::size_t i = 0; i < ranges.size(); i += 2) {
    if (ranges[i] < last || ranges[i + 1] <= ranges[i] || static_cast<std::size_t>(ranges[i + 1]) > size) return false;
    last = ranges[i + 1];
  }
  return true;
}

// Masks a chat's prompt piece by piece (template text and contents apart), moving `ranges` along
// with the text they mark, so the model can be given the masked prompt with its template tokens
// intact. A value that only the whole text shows (split across a piece boundary) is masked the
// plain way instead, and `ranges` cleared: then no special token is parsed at all.
mask_result mask_chat(const masker& m, const std::string& prompt, std::vector<std::int32_t>& ranges) {
  mask_result out;
  std::vector<std::int32_t> moved;
  std::size_t pos = 0;
  auto piece = [&](std::size_t end, bool from_template) {
    if (end <= pos) return;
    auto r = m.mask(std::string_view(prompt).substr(pos, end - pos));
    if (from_template) {
      moved.push_back(static_cast<std::int32_t>(out.text.size()));
      moved.push_back(static_cast<std::int32_t>(out.text.size() + r.text.size()));
    }
    for (auto& f : r.findings) {
      f.begin += pos;
      f.end += pos;
      out.findings.push_back(std::move(f));
    }
    for (const auto& [name, n] : r.counts) out.counts[name] += n;
    out.text += r.text;
    pos = end;
  };
  for (std::size_t i = 0; i + 1 < ranges.size(); i += 2) {
    piece(static_cast<std::size_t>(ranges[i]), false);
    piece(static_cast<std::size_t>(ranges[i + 1]), true);
  }
  piece(prompt.size(), false);
  if (m.contains_pii(out.text)) {
    ranges.clear();
    return m.mask(prompt);
  }
  ranges = std::move(moved);
  return out;
}

}  // namespace

admission_policy::admission_policy(admission_options opts)
    : opts_(std::move(opts)),
      auth_(opts_.auth),
      limiter_(opts_.auth),
      alerts_(opts_.alerts),
      masker_(std::make_shared<const masker>(opts_.pii)),
      blocked_(opts_.blocked) {}

std::optional<block_event> admission_policy::trip(const principal& who, std::optional<alert_trip> t) {
  // A principal already blocked stays blocked for its first reason, recorded once.
  if (!t || blocked_.count(principal_key(who))) return std::nullopt;
  block_event b;
  b.who = who;
  b.key = principal_key(who);
  b.trip = std::move(*t);
  b.reason = "rule '" + b.trip.rule + "': " + b.trip.detail;
  blocked_.emplace(b.key, b.reason);
  return b;
}

// Who is asking, and whether they may ask at all.
void admission_policy::check_key(decision& d, const std::string& api_key) {
  d.who = auth_.authenticate(api_key);
  if (!d.who) {
    d.refused = refusal{errc::unauthenticated, api_key.empty() ? "an API key is required" : "invalid API key"};
    return;
  }
  const auto key = principal_key(*d.who);
  if (auto b = blocked_.find(key); b != blocked_.end()) {
    d.refused = refusal{errc::forbidden, "principal '" + key + "' is blocked (" + b->second + ")"};
    d.blocked = true;
  }
}

admission admission_policy::admit(const admission_request& r) {
  admission a;
  check_key(a, r.api_key);
  if (a.refused) return a;
  const auto& who = *a.who;
  const auto key = principal_key(who);
  // A request may lower its priority, never raise it above its key's role.
  a.priority = std::min(r.priority, who.priority);
  if (std::find(opts_.models.begin(), opts_.models.end(), r.model) == opts_.models.end()) {
    a.refused = refusal{errc::not_found, "unknown model '" + r.model + "'"};
    return a;
  }
  const auto& policy = opts_.auth.policy(who.domain);
  const auto* tenant = opts_.auth.find_tenant(who.tenant);
  if (!valid_ranges(r.special_ranges, r.prompt.size())) {
    a.refused = refusal{errc::invalid_argument, "special_ranges must be sorted [begin, end) byte pairs inside the prompt"};
    return a;
  }
  auto allowed = [&](const std::vector<std::string>& list) {
    return list.empty() || std::find(list.begin(), list.end(), r.model) != list.end();
  };
  if (!allowed(policy.models) || (tenant && !allowed(tenant->models))) {
    a.refused = refusal{errc::forbidden, "tenant '" + who.tenant + "' (domain " + to_string(who.domain) +
                                             ") may not use model '" + r.model + "'"};
    return a;
  }
  if (r.kind != "generate" && r.kind != "score" && r.kind != "embed") {
    a.refused = refusal{errc::invalid_argument, "unknown request kind '" + r.kind + "'"};
    return a;
  }
  if (!r.has_sink) {
    a.refused = refusal{errc::invalid_argument, "the request has no sink for its tokens"};
    return a;
  }
  if ((a.block = trip(who, alerts_.operation(who.tenant, key, r.kind)))) {
    a.refused = refusal{errc::forbidden, "principal '" + key + "' is blocked (" + a.block->reason + ")"};
    a.blocked = true;
    return a;
  }
  // Tokens against the tenant's per-minute budget: the prompt (ids, or ~4 bytes a token) plus what
  // it may generate.
  const std::int64_t tokens = (r.prompt_ids.empty() ? static_cast<std::int64_t>(r.prompt.size() / 4 + 1)
                                                    : static_cast<std::int64_t>(r.prompt_ids.size())) +
                              std::max(0, r.max_tokens);
  if ((a.refused = limiter_.admit(who.tenant, tokens))) return a;
  a.counted = true;
  // Special-token strings in a completion prompt are text unless the tenant is trusted with them;
  // the template text of a chat (special_ranges) keeps its tokens either way.
  a.special_ranges = r.special_ranges;
  a.parse_special = r.parse_special && (!r.special_ranges.empty() || (tenant && tenant->special_tokens));
  // Personal data is masked before anything is stored or logged; the model sees the masked prompt
  // where the domain's policy says so (a chat masked piece by piece, keeping its template tokens).
  const bool chat_seen_masked = policy.model_sees_masked && !r.special_ranges.empty();
  a.masked = chat_seen_masked ? mask_chat(*masker_, r.prompt, a.special_ranges) : masker_->mask(r.prompt);
  if (chat_seen_masked && a.special_ranges.empty()) a.parse_special = false;
  a.prompt_has_pii = !a.masked.findings.empty();
  a.model_sees_masked = policy.model_sees_masked;
  a.store_masked_text = policy.store_masked_text;
  a.encrypt_cache = policy.encrypt_cache;
  // Only deterministic generations, and only where the cache key (made of the masked prompt) fully
  // determines what the model sees.
  a.cacheable = opts_.cache && policy.cache && r.deterministic && r.kind == "generate" && !r.no_cache &&
                (!a.prompt_has_pii || policy.model_sees_masked);
  return a;
}

decision admission_policy::check_caller(const std::string& api_key) {
  decision d;
  check_key(d, api_key);
  return d;
}

admin_admission admission_policy::admit_admin(const std::string& api_key, const std::string& op,
                                               const std::string& tenant) {
  admin_admission a;
  a.tenant = tenant;
  check_key(a, api_key);
  if (a.refused) return a;
  const auto& who = *a.who;
  const bool admin = who.role == "admin";
  static const std::set<std::string> ops{"query", "export", "blocks", "unblock", "purge_cache"};
  if (!ops.count(op)) {
    a.refused = refusal{errc::invalid_argument, "unknown admin operation '" + op +
                                                    "' (query, export, blocks, unblock, purge_cache)"};
    return a;
  }
  if (!admin && (op == "blocks" || op == "unblock")) {
    a.refused = refusal{errc::forbidden, "'" + op + "' needs an admin key"};
    return a;
  }
  // Non-admins see and purge only their own tenant.
  if (!admin) {
    if (!tenant.empty() && tenant != who.tenant) {
      a.refused = refusal{errc::forbidden, "tenant '" + who.tenant + "' may not " + op + " tenant '" + tenant + "'"};
      return a;
    }
    a.tenant = who.tenant;
  }
  const auto key = principal_key(who);
  if ((a.block = trip(who, alerts_.operation(who.tenant, key, op)))) {
    a.refused = refusal{errc::forbidden, "principal '" + key + "' is blocked (" + a.block->reason + ")"};
    a.blocked = true;
  }
  return a;
}

std::optional<block_event> admission_policy::finished(const std::string& tenant, const std::string& who,
                                                      std::int64_t output_tokens) {
  limiter_.release(tenant);
  principal p;
  p.tenant = tenant;
  p.id = who.size() > tenant.size() ? who.substr(tenant.size() + 1) : who;
  if (const auto* t = opts_.auth.find_tenant(tenant)) p.domain = t->domain;
  return trip(p, alerts_.output_tokens(tenant, who, output_tokens));
}

void admission_policy::release(const std::string& tenant) { limiter_.release(tenant); }

std::optional<block_event> admission_policy::cache_miss(const principal& who, const std::string& masked_prompt) {
  return trip(who, alerts_.miss_probe(who.tenant, principal_key(who), masked_prompt));
}

bool admission_policy::unblock(const std::string& key) { return blocked_.erase(key) > 0; }

}  // namespace shoal::governance
