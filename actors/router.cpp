#include "actors/router.hpp"
#include "telemetry/log.hpp"

#include <prometheus/counter.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "governance/alerts.hpp"
#include "governance/answer_cache.hpp"
#include "governance/audit_log.hpp"
#include "engine/common/error.hpp"
#include "engine/model/model_info.hpp"
#include "governance/pii.hpp"

namespace shoal::actors {

using governance::alert_engine;
using governance::alert_trip;
using governance::authenticator;
using governance::cache_key;
using governance::cache_key_fields;
using governance::cached_answer;
using governance::cached_answer_from_json;
using governance::model_fingerprint;
using governance::principal;
using governance::rate_limiter;
using governance::sha256_hex;
using governance::to_json_text;
using governance::utc_now_iso;

namespace {

using json = nlohmann::json;

struct replica_entry {
  replica_spec spec;
  batcher_actor batcher;
  replica_stats stats;
  std::int64_t credit = 0;  // smooth weighted round robin
};

struct router_state {
  router_options opts;
  std::unique_ptr<authenticator> auth;
  std::unique_ptr<rate_limiter> limiter;
  std::shared_ptr<const governance::masker> masker;
  std::unique_ptr<alert_engine> alerts;
  std::map<std::string, std::string> blocked;        // "tenant/key id" -> why
  std::map<std::string, std::string> model_versions;  // model name -> weights fingerprint
  prometheus::Family<prometheus::Counter>* blocks_metric = nullptr;
  prometheus::Family<prometheus::Counter>* audit_failures = nullptr;
  std::vector<replica_entry> replicas;
  std::map<std::string, std::unique_ptr<tokenizer>> tokenizers;  // by model name, loaded lazily
  std::uint64_t next_id = 0;
  static inline const char* name = "router";
};

using self_ptr = router_actor::stateful_pointer<router_state>;

using finish_listener = caf::typed_actor<caf::reacts_to<finished_atom, std::string, std::string, std::int32_t>>;

// Clients choose request ids, model names and prompts: bytes that are not UTF-8 must not stop a
// record from being written (nlohmann::json refuses to serialise them): they become U+FFFD.
std::string text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string principal_key(const principal& p) { return p.tenant + "/" + p.id; }

std::string ids_text(const std::vector<std::int32_t>& ids) {
  std::string out;
  for (auto id : ids) out += std::to_string(id) + ",";
  return out;
}

json sampling_json(const sampling_spec& s) {
  json j{{"temperature", s.temperature},
         {"top_k", s.top_k},
         {"top_p", s.top_p},
         {"min_p", s.min_p},
         {"repetition_penalty", s.repetition_penalty},
         {"presence_penalty", s.presence_penalty},
         {"frequency_penalty", s.frequency_penalty}};
  if (s.has_seed) j["seed"] = s.seed;
  return j;
}

/// Everything a request's tracker needs to finish it: who and what for the audit record, and
/// where its answer goes in the cache.
struct request_context {
  json record;                 // the audit record without outcome, end and output digest
  bool store_text = false;     // the domain keeps the masked text in the audit log
  std::string cache_key;       // "" = not cacheable
  std::string tenant, who, domain;
  bool encrypt = false;
  std::shared_ptr<const governance::masker> masker;
  auditor_actor auditor;
  cache_actor cache;
};

struct tracker_state {
  // Not an aggregate: CAF constructs a state from the actor pointer when it can, and C++20 would
  // happily aggregate-initialise `done` from that pointer (to true).
  tracker_state() = default;
  bool done = false;
  bool open = false;                 // the requester has had its submit_result
  std::vector<token_chunk> held;     // chunks that overtook the submit_result
  std::optional<generation_summary> held_summary;
  std::vector<std::int32_t> ids;     // the answer so far (audit digest, cache value)
  std::string text;
};

// Sits between a replica (or the cache) and the requester for one request: forwards every chunk,
// and when the request ends (or its replica's batcher dies first) writes the audit record, fills
// the cache, and forwards the summary only once the record is durable; then tells the router, so
// limits are released once. Chunks come from the batcher while the accept travels back through the
// router, so the tracker holds them until the router says the requester has its answer
// (open_atom): a requester always sees accepted before its first token.
caf::behavior tracker(caf::stateful_actor<tracker_state>* self, sink_actor client, finish_listener router,
                      batcher_actor batcher, std::shared_ptr<request_context> ctx, std::string id) {
  if (batcher) self->monitor(batcher);
  auto finish = [=](generation_summary s) {
    self->send(router, finished_atom::value, ctx->tenant, ctx->who, s.completion_tokens);
    self->send(client, s);
    self->quit();
  };
  auto end = [=](const generation_summary& s) {
    if (self->state.done) return;
    self->state.done = true;
    auto& st = self->state;
    const bool ok = s.finish_reason == "length" || s.finish_reason == "stop" || s.finish_reason == "eos";
    std::string masked_out = st.text;
    bool output_has_pii = false;
    if (ctx->masker) {
      auto m = ctx->masker->mask(st.text);
      output_has_pii = !m.findings.empty();
      masked_out = std::move(m.text);
    }
    // An answer that itself carries personal data is not kept: the cache must hold nothing a
    // masked log would not.
    if (ok && !s.cached && !ctx->cache_key.empty() && ctx->cache && !output_has_pii) {
      cached_answer answer{st.ids, st.text, s.finish_reason, s.prompt_tokens, s.completion_tokens};
      self->send(ctx->cache, store_atom::value, ctx->tenant, ctx->cache_key, ctx->domain, ctx->encrypt,
                 to_json_text(answer));
    }
    if (!ctx->auditor) return finish(s);
    json rec = ctx->record;
    rec["when"]["end"] = utc_now_iso();
    std::string status = s.cached ? "cached" : ok ? "ok" : s.finish_reason == "cancelled" ? "cancelled" : "error";
    rec["outcome"] = json{{"status", status},
                          {"finish_reason", s.finish_reason},
                          {"error_code", s.error_code},
                          {"prompt_tokens", s.prompt_tokens},
                          {"completion_tokens", s.completion_tokens},
                          {"replica", s.replica}};
    rec["digests"]["output_sha256"] = sha256_hex(masked_out);
    if (ctx->store_text) rec["text"]["output"] = masked_out;
    self->request(ctx->auditor, std::chrono::seconds(30), audit_atom::value, text(rec))
        .then([=](std::uint64_t) { finish(s); },
              [=](caf::error& e) {
                // The client must not believe a request was recorded when it was not.
                generation_summary failed = s;
                failed.finish_reason = "error";
                failed.error_code = to_string(errc::unavailable);
                failed.error_message = "the audit record could not be written: " + self->system().render(e);
                finish(failed);
              });
  };
  self->set_down_handler([=](const caf::down_msg& dm) {
    generation_summary s;
    s.id = id;
    s.finish_reason = "error";
    s.error_code = to_string(errc::unavailable);
    s.error_message = "the replica serving the request stopped (" + self->system().render(dm.reason) + ")";
    s.completion_tokens = static_cast<std::int32_t>(self->state.ids.size());
    if (!self->state.open) {
      self->state.held_summary = s;
      return;
    }
    end(s);
  });
  auto forward = [=](token_chunk& c) {
    self->state.ids.insert(self->state.ids.end(), c.ids.begin(), c.ids.end());
    self->state.text += c.text;
    self->send(client, std::move(c));
  };
  return {
      [=](token_chunk& c) {
        if (self->state.open) {
          forward(c);
        } else {
          self->state.held.push_back(std::move(c));
        }
      },
      [=](generation_summary& s) {
        if (self->state.open) {
          end(s);
        } else {
          self->state.held_summary = std::move(s);
        }
      },
      [=](open_atom) {
        self->state.open = true;
        for (auto& c : self->state.held) forward(c);
        self->state.held.clear();
        if (self->state.held_summary) end(*self->state.held_summary);
      },
  };
}

submit_result refuse(const std::string& id, errc code, std::string message) {
  submit_result r;
  r.id = id;
  r.error_code = to_string(code);
  r.error_message = std::move(message);
  return r;
}

std::string default_model(const router_state& st) { return st.opts.config.models.front().name; }

// Smooth weighted round robin (nginx's): every eligible replica gains its weight, the richest wins
// and pays the total. Deterministic and spreads requests in proportion to weight.
replica_entry* pick(router_state& st, const std::string& model, const std::string& kind, std::string& why) {
  std::vector<replica_entry*> eligible;
  int healthy = 0, serving = 0;
  for (auto& r : st.replicas) {
    if (r.spec.model != model || r.spec.kind != kind) continue;
    ++serving;
    if (!r.stats.healthy) continue;
    ++healthy;
    if (r.stats.kv_usage > st.opts.config.router.kv_threshold) continue;
    if (r.stats.waiting >= r.stats.max_waiting) continue;
    eligible.push_back(&r);
  }
  if (eligible.empty()) {
    if (serving == 0) why = "no replica serves model '" + model + "' for " + kind + " requests";
    else if (healthy == 0) why = "no healthy replica of model '" + model + "' is available";
    else why = "all replicas of model '" + model + "' are at capacity (KV cache above " +
               std::to_string(static_cast<int>(st.opts.config.router.kv_threshold * 100)) + "% or queue full)";
    return nullptr;
  }
  std::int64_t total = 0;
  replica_entry* best = nullptr;
  for (auto* r : eligible) {
    r->credit += r->spec.weight;
    total += r->spec.weight;
    if (!best || r->credit > best->credit) best = r;
  }
  best->credit -= total;
  return best;
}

// The audit record's common part for a request or operation.
json base_record(const router_state& st, const std::string& kind, const std::string& op, const principal* who,
                 const std::string& request_id, const std::string& model, const std::string& client,
                 const std::string& method) {
  json rec;
  rec["kind"] = kind;
  rec["request_id"] = request_id;
  if (who) {
    rec["who"] = json{{"tenant", who->tenant}, {"principal", who->id}, {"role", who->role}, {"domain", to_string(who->domain)}};
  } else {
    rec["who"] = json{{"tenant", ""}, {"principal", ""}, {"role", ""}, {"domain", ""}};
  }
  rec["what"] = json{{"operation", op}, {"model", model}};
  if (auto it = st.model_versions.find(model); it != st.model_versions.end()) rec["what"]["weights"] = it->second;
  rec["when"] = json{{"start", utc_now_iso()}};
  rec["where"] = json{{"node", st.opts.node_name}, {"client", client}};
  rec["how"] = json{{"api_method", method}};
  return rec;
}

// Writes a record without waiting (refusals: the caller's answer must not wait on the disk).
void audit_async(self_ptr self, json rec, const std::string& status, const std::string& code,
                 const std::string& message) {
  auto& st = self->state;
  if (!st.opts.auditor) return;
  rec["when"]["end"] = rec["when"]["start"];
  rec["outcome"] = json{{"status", status}, {"error_code", code}, {"message", message}};
  self->request(st.opts.auditor, std::chrono::seconds(30), audit_atom::value, text(rec))
      .then([](std::uint64_t) {},
            [=](caf::error& e) {
              if (self->state.audit_failures) self->state.audit_failures->Add({}).Increment();
              log::error("router: audit write failed: {}", self->system().render(e));
            });
}

// A tripped rule: the principal is blocked from now on, persistently, and the block is audited.
void block(self_ptr self, const principal& who, const alert_trip& trip) {
  auto& st = self->state;
  const auto key = principal_key(who);
  if (st.blocked.count(key)) return;
  st.blocked[key] = "rule '" + trip.rule + "': " + trip.detail;
  if (st.blocks_metric) st.blocks_metric->Add({{"rule", trip.rule}, {"tenant", who.tenant}}).Increment();
  log::warn("router: blocked principal {} ({})", key, st.blocked[key]);
  if (!st.opts.auditor) return;
  json info{{"tenant", who.tenant}, {"rule", trip.rule}, {"detail", trip.detail},
            {"since", utc_now_iso()}};
  auto rec = base_record(st, "alert", "block", &who, "", "", "", "");
  rec["when"]["end"] = rec["when"]["start"];
  rec["alert"] = json{{"rule", trip.rule}, {"detail", trip.detail}};
  rec["outcome"] = json{{"status", "blocked"}};
  self->request(st.opts.auditor, std::chrono::seconds(30), block_atom::value, key, text(info), text(rec))
      .then([](std::uint64_t) {},
            [=](caf::error& e) {
              if (self->state.audit_failures) self->state.audit_failures->Add({}).Increment();
              log::error("router: persisting the block failed: {}", self->system().render(e));
            });
}

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
governance::mask_result mask_chat(const governance::masker& m, const std::string& prompt,
                                  std::vector<std::int32_t>& ranges) {
  governance::mask_result out;
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

admin_result admin_refusal(errc code, std::string message) {
  admin_result r;
  r.error_code = to_string(code);
  r.error_message = std::move(message);
  return r;
}

router_actor::behavior_type router(self_ptr self, router_options opts) {
  auto& st0 = self->state;
  st0.opts = std::move(opts);
  st0.auth = std::make_unique<authenticator>(st0.opts.config.auth);
  st0.limiter = std::make_unique<rate_limiter>(st0.opts.config.auth);
  st0.masker = std::make_shared<const governance::masker>(st0.opts.config.governance.pii);
  st0.alerts = std::make_unique<alert_engine>(st0.opts.config.governance.alerts);
  st0.blocked = st0.opts.blocked;
  for (const auto& m : st0.opts.config.models) st0.model_versions[m.name] = model_fingerprint(m.path);
  if (st0.opts.registry) {
    st0.blocks_metric = &prometheus::BuildCounter()
                             .Name("shoal:principals_blocked_total")
                             .Help("Principals blocked by an anomaly rule")
                             .Register(*st0.opts.registry);
    st0.audit_failures = &prometheus::BuildCounter()
                              .Name("shoal:audit_write_failures_total")
                              .Help("Audit records that could not be written")
                              .Register(*st0.opts.registry);
  }
  for (const auto& spec : st0.opts.config.replicas) {
    replica_entry e;
    e.spec = spec;
    e.stats.name = spec.name;
    e.stats.model = spec.model;
    e.stats.kind = spec.kind;
    e.stats.detail = "not started";
    st0.replicas.push_back(e);
  }
  // The deployment itself is an administrative action: what this router serves, with which
  // weights, and which keys it accepts (their ids, never their hashes).
  if (st0.opts.auditor) {
    auto rec = base_record(st0, "admin", "deploy", nullptr, "", "", "", "node.start");
    json models = json::array(), replicas = json::array(), keys = json::array();
    for (const auto& m : st0.opts.config.models) models.push_back({{"name", m.name}, {"weights", st0.model_versions[m.name]}});
    for (const auto& r : st0.opts.config.replicas) {
      replicas.push_back({{"name", r.name}, {"model", r.model}, {"kind", r.kind}, {"nodes", r.tensor_parallel}});
    }
    for (const auto& t : st0.opts.config.auth.tenants) {
      for (const auto& k : t.keys) keys.push_back({{"tenant", t.name}, {"id", k.id}, {"role", k.role}});
    }
    rec["deploy"] = json{{"cluster", st0.opts.config.name}, {"models", models}, {"replicas", replicas}, {"keys", keys},
                         {"blocked", st0.blocked.size()}};
    audit_async(self, rec, "ok", "", "");
  }
  self->set_down_handler([=](const caf::down_msg& dm) {
    for (auto& r : self->state.replicas) {
      if (r.batcher && r.batcher.address() == dm.source) {
        r.stats.healthy = false;
        r.stats.detail = "batcher is down";
      }
    }
  });
  // Routes an admitted request to a replica (or refuses it); the tracker finishes it.
  auto route = [=](generate_request req, std::shared_ptr<request_context> ctx,
                   caf::typed_response_promise<submit_result> rp) mutable {
    auto& st = self->state;
    std::string why;
    auto* r = pick(st, req.model, req.kind, why);
    if (!r) {
      st.limiter->release(ctx->tenant);
      const bool none_healthy = why.find("healthy") != std::string::npos || why.find("no replica") != std::string::npos;
      const auto code = none_healthy ? errc::unavailable : errc::overloaded;
      audit_async(self, ctx->record, "error", to_string(code), why);
      rp.deliver(refuse(req.id, code, why));
      return;
    }
    // Count it against the replica now, so a burst does not all land on one replica before
    // its next stats report.
    ++r->stats.waiting;
    const std::string replica_name = r->spec.name;
    // A refusal from the batcher changes nothing there, so no stats report will correct the
    // count above: undo it here, or a run of invalid requests would make the replica look full.
    auto uncount = [=] {
      for (auto& e : self->state.replicas) {
        if (e.spec.name == replica_name && e.stats.waiting > 0) --e.stats.waiting;
      }
    };
    auto t = self->spawn(tracker, req.sink, finish_listener{self}, r->batcher, ctx, req.id);
    req.sink = caf::actor_cast<sink_actor>(t);
    const std::string tenant = ctx->tenant;
    self->request(r->batcher, caf::infinite, generate_atom::value, std::move(req))
        .then(
            [=](const submit_result& res) mutable {
              if (!res.accepted) {
                uncount();
                self->state.limiter->release(tenant);
                caf::anon_send_exit(t, caf::exit_reason::user_shutdown);
                audit_async(self, ctx->record, "error", res.error_code, res.error_message);
              }
              rp.deliver(res);
              if (res.accepted) caf::anon_send(t, open_atom::value);
            },
            [=](caf::error& e) mutable {
              uncount();
              self->state.limiter->release(tenant);
              caf::anon_send_exit(t, caf::exit_reason::user_shutdown);
              const auto msg = "replica did not answer: " + self->system().render(e);
              audit_async(self, ctx->record, "error", to_string(errc::unavailable), msg);
              rp.deliver(refuse("", errc::unavailable, msg));
            });
  };
  return {
      [=](generate_atom, generate_request req) mutable -> caf::result<submit_result> {
        auto& st = self->state;
        if (req.id.empty()) req.id = "req-" + std::to_string(++st.next_id) + "-" + std::to_string(self->id());
        if (req.model.empty() && !st.opts.config.models.empty()) req.model = default_model(st);
        // Who is asking: one implementation for every front door. The key goes no further.
        const bool had_key = !req.api_key.empty();
        auto who = st.auth->authenticate(req.api_key);
        req.api_key.clear();
        auto rec = base_record(st, "request", req.kind, who ? &*who : nullptr, req.id, req.model, req.client_address,
                               req.api_method);
        rec["how"]["sampling"] = sampling_json(req.sampling);
        rec["how"]["max_tokens"] = req.max_tokens;
        rec["how"]["priority"] = req.priority;
        rec["how"]["stop_strings"] = req.stop.size();
        auto refused = [&](errc code, const std::string& message, const char* status = "error") {
          audit_async(self, rec, status, to_string(code), message);
          return refuse(req.id, code, message);
        };
        if (!who) return refused(errc::unauthenticated, had_key ? "invalid API key" : "an API key is required");
        const auto key = principal_key(*who);
        if (auto b = st.blocked.find(key); b != st.blocked.end()) {
          return refused(errc::forbidden, "principal '" + key + "' is blocked (" + b->second + ")", "blocked");
        }
        req.tenant = who->tenant;
        req.principal = who->id;
        req.domain = to_string(who->domain);
        // A request may lower its priority, never raise it above its key's role.
        req.priority = std::min(req.priority, who->priority);
        if (!st.opts.config.find_model(req.model)) return refused(errc::not_found, "unknown model '" + req.model + "'");
        const auto& policy = st.opts.config.auth.policy(who->domain);
        const auto* tenant = st.opts.config.auth.find_tenant(who->tenant);
        if (!valid_ranges(req.special_ranges, req.prompt.size())) {
          return refused(errc::invalid_argument, "special_ranges must be sorted [begin, end) byte pairs inside the prompt");
        }
        // Special-token strings in a completion prompt are text unless the tenant is trusted with
        // them; the template text of a chat (special_ranges) keeps its tokens either way.
        if (req.special_ranges.empty() && !(tenant && tenant->special_tokens)) req.parse_special = false;
        auto allowed = [&](const std::vector<std::string>& list) {
          return list.empty() || std::find(list.begin(), list.end(), req.model) != list.end();
        };
        if (!allowed(policy.models) || (tenant && !allowed(tenant->models))) {
          return refused(errc::forbidden, "tenant '" + who->tenant + "' (domain " + to_string(who->domain) +
                                              ") may not use model '" + req.model + "'");
        }
        if (req.kind != "generate" && req.kind != "score" && req.kind != "embed") {
          return refused(errc::invalid_argument, "unknown request kind '" + req.kind + "'");
        }
        if (!req.sink) return refused(errc::invalid_argument, "the request has no sink for its tokens");
        if (auto trip = st.alerts->operation(who->tenant, key, req.kind)) {
          block(self, *who, *trip);
          return refused(errc::forbidden, "principal '" + key + "' is blocked (rule '" + trip->rule + "': " +
                                              trip->detail + ")", "blocked");
        }
        // Tokens against the tenant's per-minute budget: the prompt (ids, or ~4 bytes a token) plus
        // what it may generate.
        const std::int64_t tokens = (req.prompt_ids.empty() ? static_cast<std::int64_t>(req.prompt.size() / 4 + 1)
                                                            : static_cast<std::int64_t>(req.prompt_ids.size())) +
                                    std::max(0, req.max_tokens);
        if (auto why = st.limiter->admit(who->tenant, tokens); !why.empty()) {
          const bool global = why.find("admission limit") != std::string::npos;
          return refused(global ? errc::overloaded : errc::rate_limited, why);
        }
        // Personal data is masked before anything is stored or logged; the model sees the masked
        // prompt where the domain's policy says so.
        const bool chat_seen_masked = policy.model_sees_masked && !req.special_ranges.empty();
        auto masked = chat_seen_masked ? mask_chat(*st.masker, req.prompt, req.special_ranges) : st.masker->mask(req.prompt);
        if (chat_seen_masked && req.special_ranges.empty()) req.parse_special = false;
        const bool prompt_has_pii = !masked.findings.empty();
        if (policy.model_sees_masked) req.prompt = masked.text;
        const std::string input = req.prompt_ids.empty() ? masked.text : "ids:" + ids_text(req.prompt_ids);
        rec["digests"] = json{{"input_sha256", sha256_hex(input)}};
        if (policy.store_masked_text) rec["text"] = json{{"input", input}};
        if (prompt_has_pii) rec["pii"] = masked.counts;
        auto ctx = std::make_shared<request_context>();
        ctx->record = rec;
        ctx->store_text = policy.store_masked_text;
        ctx->tenant = who->tenant;
        ctx->who = key;
        ctx->domain = to_string(who->domain);
        ctx->encrypt = policy.encrypt_cache;
        ctx->masker = st.masker;
        ctx->auditor = st.opts.auditor;
        ctx->cache = st.opts.cache;
        // The answer cache: deterministic generations only, and only where the cache key (made
        // of the masked prompt) fully determines what the model sees.
        const bool deterministic = req.sampling.temperature <= 0.0f || req.sampling.has_seed;
        if (st.opts.cache && policy.cache && deterministic && req.kind == "generate" && !req.no_cache &&
            (!prompt_has_pii || policy.model_sees_masked)) {
          cache_key_fields f;
          f.tenant = who->tenant;
          f.domain = to_string(who->domain);
          f.model = req.model;
          f.model_version = st.model_versions[req.model];
          f.kind = req.kind;
          // Where the template's tokens may be changes the ids as much as the prompt does.
          if (!req.special_ranges.empty()) f.kind += "|template-ranges:" + ids_text(req.special_ranges);
          f.masked_prompt = masked.text;
          f.prompt_ids = req.prompt_ids;
          f.add_special = req.add_special;
          f.parse_special = req.parse_special;
          f.max_tokens = req.max_tokens;
          f.ignore_eos = req.ignore_eos;
          f.stop = req.stop;
          f.stop_ids = req.stop_ids;
          f.sampling = sampling_json(req.sampling).dump() + (req.sampling.has_seed ? "" : "|noseed");
          ctx->cache_key = cache_key(f);
        }
        auto rp = self->make_response_promise<submit_result>();
        if (ctx->cache_key.empty()) {
          route(std::move(req), ctx, rp);
          return rp;
        }
        const std::string probe = masked.text;
        self->request(st.opts.cache, std::chrono::seconds(5), lookup_atom::value, ctx->tenant, ctx->cache_key, ctx->domain)
            .then(
                [=](const std::string& hit) mutable {
                  auto a = hit.empty() ? std::nullopt : cached_answer_from_json(hit);
                  if (!a) {
                    if (auto trip = self->state.alerts->miss_probe(ctx->tenant, ctx->who, probe)) {
                      block(self, *who, *trip);
                    }
                    route(std::move(req), ctx, rp);
                    return;
                  }
                  // A hit streams back through the same sink protocol, marked as cached.
                  auto t = self->spawn(tracker, req.sink, finish_listener{self}, batcher_actor{}, ctx, req.id);
                  submit_result res;
                  res.accepted = true;
                  res.id = req.id;
                  res.replica = "cache";
                  res.prompt_tokens = a->prompt_tokens;
                  rp.deliver(res);
                  caf::anon_send(t, open_atom::value);
                  token_chunk c;
                  c.id = req.id;
                  c.ids = std::move(a->ids);
                  c.text = std::move(a->text);
                  c.cached = true;
                  generation_summary s;
                  s.id = req.id;
                  s.finish_reason = a->finish_reason.empty() ? "length" : a->finish_reason;
                  s.prompt_tokens = res.prompt_tokens;
                  s.completion_tokens = a->completion_tokens;
                  s.replica = "cache";
                  s.cached = true;
                  if (!c.ids.empty() || !c.text.empty()) caf::anon_send(t, std::move(c));
                  caf::anon_send(t, std::move(s));
                },
                [=](caf::error&) mutable { route(std::move(req), ctx, rp); });
        return rp;
      },
      [=](cancel_atom, const std::string& id) {
        // Requests are few per replica; every batcher ignores ids it does not hold.
        for (auto& r : self->state.replicas) {
          if (r.batcher) self->send(r.batcher, cancel_atom::value, id);
        }
      },
      [=](status_atom) -> cluster_status {
        cluster_status s;
        for (auto& r : self->state.replicas) {
          s.replicas.push_back(r.stats);
          if (r.stats.healthy && r.stats.kv_usage < 1.0) s.ready = true;
        }
        for (auto& m : self->state.opts.config.models) s.models.push_back(m.name);
        s.detail = s.ready ? "ready" : "no healthy replica with KV capacity";
        return s;
      },
      [=](tokenize_atom, const tokenize_request& t) -> caf::result<std::vector<std::int32_t>> {
        auto& st = self->state;
        const std::string name = t.model.empty() ? default_model(st) : t.model;
        const auto* m = st.opts.config.find_model(name);
        if (!m) return caf::make_error(caf::sec::invalid_argument, "unknown model '" + name + "'");
        try {
          auto& tok = st.tokenizers[name];
          if (!tok) tok = load_model_tokenizer(m->path);
          return tok->encode(t.text, encode_options{t.add_special, t.parse_special});
        } catch (const std::exception& e) {
          return caf::make_error(caf::sec::runtime_error, std::string(e.what()));
        }
      },
      [=](stats_atom, const replica_stats& s) {
        for (auto& r : self->state.replicas) {
          if (r.spec.name == s.name) r.stats = s;
        }
      },
      [=](finished_atom, const std::string& tenant, const std::string& who, std::int32_t tokens) {
        auto& st = self->state;
        st.limiter->release(tenant);
        if (auto trip = st.alerts->output_tokens(tenant, who, tokens)) {
          principal p;
          p.tenant = tenant;
          p.id = who.substr(tenant.size() + 1);
          if (auto* t = st.opts.config.auth.find_tenant(tenant)) p.domain = t->domain;
          block(self, p, *trip);
        }
      },
      [=](admin_atom, admin_request req) -> caf::result<admin_result> {
        auto& st = self->state;
        const bool had_key = !req.api_key.empty();
        auto who = st.auth->authenticate(req.api_key);
        req.api_key.clear();
        auto rec = base_record(st, "admin", req.op, who ? &*who : nullptr, "", "", req.client_address, req.api_method);
        json filter{{"tenant", req.tenant}, {"principal", req.principal}, {"operation", req.operation},
                    {"since", req.since}, {"until", req.until}, {"limit", req.limit}};
        rec["how"]["filter"] = filter;
        auto refused = [&](errc code, const std::string& message, const char* status = "error") {
          audit_async(self, rec, status, to_string(code), message);
          return admin_refusal(code, message);
        };
        if (!who) return refused(errc::unauthenticated, had_key ? "invalid API key" : "an API key is required");
        const auto key = principal_key(*who);
        if (auto b = st.blocked.find(key); b != st.blocked.end()) {
          return refused(errc::forbidden, "principal '" + key + "' is blocked (" + b->second + ")", "blocked");
        }
        const bool admin = who->role == "admin";
        const std::set<std::string> ops{"query", "export", "blocks", "unblock", "purge_cache"};
        if (!ops.count(req.op)) {
          return refused(errc::invalid_argument, "unknown admin operation '" + req.op +
                                                     "' (query, export, blocks, unblock, purge_cache)");
        }
        if (!admin && (req.op == "blocks" || req.op == "unblock")) {
          return refused(errc::forbidden, "'" + req.op + "' needs an admin key");
        }
        // Non-admins see and purge only their own tenant.
        if (!admin) {
          if (!req.tenant.empty() && req.tenant != who->tenant) {
            return refused(errc::forbidden, "tenant '" + who->tenant + "' may not " + req.op + " tenant '" + req.tenant + "'");
          }
          req.tenant = who->tenant;
          filter["tenant"] = req.tenant;
        }
        if (auto trip = st.alerts->operation(who->tenant, key, req.op)) {
          block(self, *who, *trip);
          return refused(errc::forbidden, "principal '" + key + "' is blocked (rule '" + trip->rule + "': " +
                                              trip->detail + ")", "blocked");
        }
        auto rp = self->make_response_promise<admin_result>();
        auto done = [=](std::vector<std::string> lines, json extra) mutable {
          auto r = rec;
          r["when"]["end"] = utc_now_iso();
          r["outcome"] = json{{"status", "ok"}};
          if (extra.is_object()) r["outcome"].update(extra);
          auto deliver = [=](std::uint64_t) mutable {
            admin_result res;
            res.ok = true;
            res.lines = std::move(lines);
            rp.deliver(std::move(res));
          };
          if (!self->state.opts.auditor) return deliver(0);
          self->request(self->state.opts.auditor, std::chrono::seconds(30), audit_atom::value, text(r))
              .then(deliver, [=](caf::error& e) mutable {
                rp.deliver(admin_refusal(errc::unavailable, "the audit record could not be written: " +
                                                                self->system().render(e)));
              });
        };
        auto fail = [=](caf::error& e) mutable {
          rp.deliver(admin_refusal(errc::unavailable, self->system().render(e)));
        };
        if (req.op == "purge_cache") {
          if (!st.opts.cache) {
            done({}, json{{"removed", 0}});
            return rp;
          }
          self->request(st.opts.cache, std::chrono::seconds(60), purge_atom::value, req.tenant)
              .then([=](std::int64_t n) mutable { done({text(json{{"removed", n}})}, json{{"removed", n}}); }, fail);
          return rp;
        }
        if (!st.opts.auditor) return admin_refusal(errc::unavailable, "this cluster keeps no audit log");
        if (req.op == "query" || req.op == "export") {
          self->request(st.opts.auditor, std::chrono::seconds(60), query_atom::value, text(filter))
              .then([=](std::vector<std::string>& lines) mutable {
                const auto n = lines.size();
                done(std::move(lines), json{{"records", n}});
              }, fail);
        } else if (req.op == "blocks") {
          self->request(st.opts.auditor, std::chrono::seconds(60), blocks_atom::value)
              .then([=](std::vector<std::string>& lines) mutable { done(std::move(lines), json::object()); }, fail);
        } else {  // unblock
          const std::string target = req.principal;
          if (!st.blocked.erase(target)) return refused(errc::not_found, "principal '" + target + "' is not blocked");
          auto r = rec;
          r["when"]["end"] = utc_now_iso();
          r["target"] = target;
          r["outcome"] = json{{"status", "ok"}};
          self->request(st.opts.auditor, std::chrono::seconds(30), unblock_atom::value, target, text(r))
              .then([=](std::uint64_t) mutable {
                admin_result res;
                res.ok = true;
                res.lines = {text(json{{"unblocked", target}})};
                rp.deliver(std::move(res));
              }, fail);
        }
        return rp;
      },
      [=](authn_atom, door_caller c) -> auth_result {
        // A front door asks before it does anything else with a request: a key that is given is
        // valid, or the request ends here, with its audit record.
        auto& st = self->state;
        const bool had_key = !c.api_key.empty();
        auto who = st.auth->authenticate(c.api_key);
        c.api_key.clear();
        auth_result r;
        auto refused = [&](errc code, const std::string& message, const char* status = "error") {
          auto rec = base_record(st, "request", c.operation, who ? &*who : nullptr, "", "", c.client_address,
                                 c.api_method);
          audit_async(self, rec, status, to_string(code), message);
          r.error_code = to_string(code);
          r.error_message = message;
          return r;
        };
        if (!who) return refused(errc::unauthenticated, had_key ? "invalid API key" : "an API key is required");
        const auto key = principal_key(*who);
        if (auto b = st.blocked.find(key); b != st.blocked.end()) {
          return refused(errc::forbidden, "principal '" + key + "' is blocked (" + b->second + ")", "blocked");
        }
        r.ok = true;
        r.tenant = who->tenant;
        r.principal = who->id;
        return r;
      },
      [=](refused_atom, door_refusal d) {
        // A request a door refused itself: one record, like those the router refuses. What the
        // client wrote (a model name, text quoted in a message) is masked first.
        auto& st = self->state;
        auto who = st.auth->authenticate(d.caller.api_key);
        d.caller.api_key.clear();
        auto rec = base_record(st, "request", d.caller.operation, who ? &*who : nullptr, "", st.masker->mask(d.model).text,
                               d.caller.client_address, d.caller.api_method);
        rec["how"]["refused_by"] = "door";
        audit_async(self, rec, "error", d.error_code, st.masker->mask(d.error_message).text);
      },
      [=](ready_atom, const std::string& name, const batcher_actor& b) {
        for (auto& r : self->state.replicas) {
          if (r.spec.name == name) {
            r.batcher = b;
            self->monitor(b);
          }
        }
      },
  };
}

}  // namespace

router_actor spawn_router(caf::actor_system& sys, router_options opts) { return sys.spawn(router, std::move(opts)); }

}  // namespace shoal::actors
