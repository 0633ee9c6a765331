#include "actors/router.hpp"

#include <prometheus/counter.h>

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "actors/admin_operation.hpp"
#include "actors/errors.hpp"
#include "actors/request_tracker.hpp"
#include "engine/common/error.hpp"
#include "engine/model/model_info.hpp"
#include "governance/admission.hpp"
#include "governance/answer_cache.hpp"
#include "governance/audit_log.hpp"
#include "telemetry/log.hpp"

namespace shoal::actors {

using governance::admission_policy;
using governance::block_event;
using governance::cache_key;
using governance::cache_key_fields;
using governance::cached_answer_from_json;
using governance::model_fingerprint;
using governance::principal;
using governance::record_text;
using governance::sha256_hex;
using governance::utc_now_iso;

namespace {

using json = nlohmann::json;

struct replica_entry {
  replica_spec spec;
  batcher_actor batcher;
  replica_stats stats;
  std::int64_t credit = 0;  // smooth weighted round robin
};

// A request from its admission until its tracker finishes (or it is refused on the way).
struct flight {
  bool routed = false;     // sent to a batcher (or answered from the cache): a cancel goes there
  bool cancelled = false;  // a cancel came before it was routed: it is refused when it would be
};

struct router_state {
  router_options opts;
  std::unique_ptr<admission_policy> policy;           // who may do what (governance/admission.hpp)
  std::map<std::string, std::string> model_versions;  // model name -> weights fingerprint
  prometheus::Family<prometheus::Counter>* blocks_metric = nullptr;
  prometheus::Family<prometheus::Counter>* audit_failures = nullptr;
  std::vector<replica_entry> replicas;
  std::map<std::string, std::unique_ptr<tokenizer>> tokenizers;  // by model name, loaded lazily
  std::uint64_t next_id = 0;
  // Requests in flight by id. A cancel is by id and reaches every batcher, and clients choose
  // their ids: an id stays unique while its request runs, or one caller could cancel another's.
  // Only the router's handlers touch it.
  std::map<std::string, flight> flights;
  static inline const char* name = "router";
};

using self_ptr = router_actor::stateful_pointer<router_state>;

std::string ids_text(const std::vector<std::int32_t>& ids) {
  std::string out;
  for (auto id : ids) out += std::to_string(id) + ",";
  return out;
}

json sampling_json(const sampling_params& s) {
  json j{{"temperature", s.temperature},
         {"top_k", s.top_k},
         {"top_p", s.top_p},
         {"min_p", s.min_p},
         {"repetition_penalty", s.repetition_penalty},
         {"presence_penalty", s.presence_penalty},
         {"frequency_penalty", s.frequency_penalty}};
  if (s.seed) j["seed"] = *s.seed;
  return j;
}

submit_result refuse(const std::string& id, const refusal& why) {
  submit_result r;
  r.id = id;
  r.error_code = to_string(why.code);
  r.error_message = why.message;
  return r;
}

std::string default_model(const router_state& st) { return st.opts.config.models.front().name; }

// Why no replica of a pool can take a request. While a replica may still come back (starting,
// restarting, or its stats not in yet) that is `unavailable`; when every replica of the pool
// failed for good, their error (a missing tokenizer is not_found), so the client learns what is
// actually wrong.
refusal no_healthy_replica(const router_state& st, const std::string& model, const std::string& kind) {
  refusal why{errc::unavailable, "no healthy replica of model '" + model + "' is available"};
  std::optional<refusal> final_error;
  for (const auto& r : st.replicas) {
    if (r.spec.model != model || r.spec.kind != kind) continue;
    if (!r.stats.error) return why;
    auto e = read_error(r.stats.error, "replica " + r.spec.name);
    if (e.code == errc::unavailable) return why;
    if (!final_error) final_error = refusal{e.code, why.message + ": replica " + r.spec.name + ": " + e.message};
  }
  return final_error ? *final_error : why;
}

// Smooth weighted round robin (nginx's): every eligible replica gains its weight, the richest wins
// and pays the total. Deterministic and spreads requests in proportion to weight.
replica_entry* pick(router_state& st, const std::string& model, const std::string& kind, refusal& why) {
  std::vector<replica_entry*> eligible;
  int healthy = 0, serving = 0;
  for (auto& r : st.replicas) {
    if (r.spec.model != model || r.spec.kind != kind) continue;
    ++serving;
    if (!r.stats.healthy || !r.batcher) continue;
    ++healthy;
    if (r.stats.kv_usage > st.opts.config.router.kv_threshold) continue;
    if (r.stats.waiting >= r.stats.max_waiting) continue;
    eligible.push_back(&r);
  }
  if (eligible.empty()) {
    if (serving == 0) {
      why = {errc::unavailable, "no replica serves model '" + model + "' for " + kind + " requests"};
    } else if (healthy == 0) {
      why = no_healthy_replica(st, model, kind);
    } else {
      why = {errc::overloaded, "all replicas of model '" + model + "' are at capacity (KV cache above " +
                                   std::to_string(static_cast<int>(st.opts.config.router.kv_threshold * 100)) +
                                   "% or queue full)"};
    }
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

// How much of a client-written name or id, and of a message, an audit record keeps: enough to
// read it, not a place to store text.
constexpr std::size_t field_bytes = 256;
constexpr std::size_t message_bytes = 1024;

// Client-written text as an audit record keeps it: masked with the policy's masker, then capped.
// base_record and audit_async pass every client-derived field through here.
std::string client_text(const router_state& st, std::string_view text, std::size_t max_bytes = field_bytes) {
  return governance::mask_capped(*st.policy->pii_masker(), text, max_bytes);
}

// The audit record's common part for a request or operation. `op`, `request_id` and `model` may
// be anything a client wrote.
json base_record(const router_state& st, const std::string& kind, const std::string& op, const principal* who,
                 const std::string& request_id, const std::string& model, const std::string& client,
                 const std::string& method) {
  json rec;
  rec["kind"] = kind;
  rec["request_id"] = client_text(st, request_id);
  if (who) {
    rec["who"] = json{{"tenant", who->tenant}, {"principal", who->id}, {"role", who->role}, {"domain", to_string(who->domain)}};
  } else {
    rec["who"] = json{{"tenant", ""}, {"principal", ""}, {"role", ""}, {"domain", ""}};
  }
  rec["what"] = json{{"operation", client_text(st, op)}, {"model", client_text(st, model)}};
  if (auto it = st.model_versions.find(model); it != st.model_versions.end()) rec["what"]["weights"] = it->second;
  rec["when"] = json{{"start", utc_now_iso()}};
  // The peer address is the door's observation, kept as seen (README: where = the client's
  // address); the method is the door's own name for the endpoint.
  rec["where"] = json{{"node", st.opts.node_name}, {"client", client.substr(0, field_bytes)}};
  rec["how"] = json{{"api_method", method.substr(0, field_bytes)}};
  return rec;
}

// Writes a record without waiting (refusals: the caller's answer must not wait on the disk). The
// message may quote the client (a model name, a request id, a tokenizer's complaint about the
// prompt): it is masked and capped like the fields.
void audit_async(self_ptr self, json rec, const std::string& status, const std::string& code,
                 const std::string& message) {
  auto& st = self->state;
  if (!st.opts.auditor) return;
  rec["when"]["end"] = rec["when"]["start"];
  rec["outcome"] = json{{"status", status},
                        {"error_code", client_text(st, code)},
                        {"message", client_text(st, message, message_bytes)}};
  self->request(st.opts.auditor, std::chrono::seconds(30), audit_atom::value, record_text(rec))
      .then([](std::uint64_t) {},
            [=](caf::error& e) {
              if (self->state.audit_failures) self->state.audit_failures->Add({}).Increment();
              log::error("router: audit write failed: {}", read_error(e, "the audit store").message);
            });
}

// A refusal the policy decided: audited, then answered.
void audit_refusal(self_ptr self, const json& rec, const governance::decision& d) {
  audit_async(self, rec, d.blocked ? "blocked" : "error", to_string(d.refused->code), d.refused->message);
}

// A tripped rule blocked a principal (the policy already refuses it): persist the block and audit it.
void persist_block(self_ptr self, const block_event& b) {
  auto& st = self->state;
  if (st.blocks_metric) st.blocks_metric->Add({{"rule", b.trip.rule}, {"tenant", b.who.tenant}}).Increment();
  log::warn("router: blocked principal {}: {}", b.key, b.reason);
  if (!st.opts.auditor) return;
  json info{{"tenant", b.who.tenant}, {"rule", b.trip.rule}, {"detail", b.trip.detail}, {"since", utc_now_iso()}};
  auto rec = base_record(st, "alert", "block", &b.who, "", "", "", "");
  rec["when"]["end"] = rec["when"]["start"];
  rec["alert"] = json{{"rule", b.trip.rule}, {"detail", b.trip.detail}};
  rec["outcome"] = json{{"status", "blocked"}};
  self->request(st.opts.auditor, std::chrono::seconds(30), block_atom::value, b.key, record_text(info), record_text(rec))
      .then([](std::uint64_t) {},
            [=](caf::error& e) {
              if (self->state.audit_failures) self->state.audit_failures->Add({}).Increment();
              log::error("router: persisting the block failed: {}", read_error(e, "the audit store").message);
            });
}

void init(self_ptr self) {
  auto& st = self->state;
  governance::admission_options ao;
  ao.auth = st.opts.config.auth;
  ao.alerts = st.opts.config.governance.alerts;
  ao.pii = st.opts.config.governance.pii;
  for (const auto& m : st.opts.config.models) ao.models.push_back(m.name);
  ao.cache = static_cast<bool>(st.opts.cache);
  ao.blocked = st.opts.blocked;
  st.policy = std::make_unique<admission_policy>(std::move(ao));
  for (const auto& m : st.opts.config.models) st.model_versions[m.name] = model_fingerprint(m.path);
  if (st.opts.registry) {
    st.blocks_metric = &prometheus::BuildCounter()
                            .Name("shoal:principals_blocked_total")
                            .Help("Principals blocked by an anomaly rule")
                            .Register(*st.opts.registry);
    st.audit_failures = &prometheus::BuildCounter()
                             .Name("shoal:audit_write_failures_total")
                             .Help("Audit records that could not be written")
                             .Register(*st.opts.registry);
  }
  for (const auto& spec : st.opts.config.replicas) {
    replica_entry e;
    e.spec = spec;
    e.stats.name = spec.name;
    e.stats.model = spec.model;
    e.stats.kind = spec.kind;
    e.stats.detail = "not started";
    st.replicas.push_back(e);
  }
  // The deployment itself is an administrative action: what this router serves, with which
  // weights, and which keys it accepts (their ids, never their hashes).
  if (st.opts.auditor) {
    auto rec = base_record(st, "admin", "deploy", nullptr, "", "", "", "node.start");
    json models = json::array(), replicas = json::array(), keys = json::array();
    for (const auto& m : st.opts.config.models) models.push_back({{"name", m.name}, {"weights", st.model_versions[m.name]}});
    for (const auto& r : st.opts.config.replicas) {
      replicas.push_back({{"name", r.name}, {"model", r.model}, {"kind", r.kind}, {"nodes", r.tensor_parallel}});
    }
    for (const auto& t : st.opts.config.auth.tenants) {
      for (const auto& k : t.keys) keys.push_back({{"tenant", t.name}, {"id", k.id}, {"role", k.role}});
    }
    rec["deploy"] = json{{"cluster", st.opts.config.name}, {"models", models}, {"replicas", replicas}, {"keys", keys},
                         {"blocked", st.policy->blocked().size()}};
    audit_async(self, rec, "ok", "", "");
  }
}

// The request left the router's hands without a tracker to finish it: its id is free again.
void land(self_ptr self, const std::string& id) { self->state.flights.erase(id); }

// Whether a cancel came for the request while it was being admitted or looked up in the cache
// (then it is refused here, audited as cancelled); otherwise it is routed from now on, and a
// cancel for it goes to the batchers.
bool cancelled_before_routing(self_ptr self, const std::string& id, const request_context& ctx,
                              caf::typed_response_promise<submit_result>& rp) {
  auto& st = self->state;
  auto it = st.flights.find(id);
  if (it == st.flights.end() || !it->second.cancelled) {
    if (it != st.flights.end()) it->second.routed = true;
    return false;
  }
  st.flights.erase(it);
  st.policy->release(ctx.tenant);
  const refusal why{errc::cancelled, "the request was cancelled before it reached a replica"};
  audit_async(self, ctx.record, "cancelled", to_string(why.code), why.message);
  rp.deliver(refuse(id, why));
  return true;
}

// Routes an admitted request to a replica (or refuses it); the tracker finishes it.
void route(self_ptr self, generate_request req, std::shared_ptr<request_context> ctx,
           caf::typed_response_promise<submit_result> rp) {
  auto& st = self->state;
  if (cancelled_before_routing(self, req.id, *ctx, rp)) return;
  refusal why;
  auto* r = pick(st, req.model, req.kind, why);
  if (!r) {
    land(self, req.id);
    st.policy->release(ctx->tenant);
    audit_async(self, ctx->record, "error", to_string(why.code), why.message);
    rp.deliver(refuse(req.id, why));
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
  auto t = spawn_request_tracker(self->system(), req.sink, finish_listener{self}, r->batcher, ctx, req.id);
  req.sink = caf::actor_cast<sink_actor>(t);
  const std::string tenant = ctx->tenant;
  const std::string id = req.id;
  const batcher_actor batcher = r->batcher;
  self->request(batcher, std::chrono::seconds(st.opts.config.router.submit_timeout_s), generate_atom::value,
                std::move(req))
      .then(
          [=](const submit_result& res) mutable {
            if (!res.accepted) {
              land(self, id);
              uncount();
              self->state.policy->release(tenant);
              caf::anon_send_exit(t, caf::exit_reason::user_shutdown);
              audit_async(self, ctx->record, "error", res.error_code, res.error_message);
            }
            rp.deliver(res);
            if (res.accepted) caf::anon_send(t, open_atom::value);
          },
          [=](caf::error& e) mutable {
            // The batcher may still take the request after this (it was only slow): tell it to
            // drop it, or it runs for nobody, holding KV blocks, and is counted nowhere. The
            // cancel follows the generate from this same sender, so it arrives after it.
            self->send(batcher, cancel_atom::value, id);
            land(self, id);
            uncount();
            self->state.policy->release(tenant);
            caf::anon_send_exit(t, caf::exit_reason::user_shutdown);
            const auto failed = read_error(e, "replica " + replica_name);
            const refusal why{errc::unavailable, "replica " + replica_name + " did not accept the request: " + failed.message};
            audit_async(self, ctx->record, "error", to_string(why.code), why.message);
            rp.deliver(refuse("", why));
          });
}

// A deterministic request whose answer may be cached: answer from the cache on a hit, route it
// on a miss (or when the cache does not answer).
void route_through_cache(self_ptr self, generate_request req, std::shared_ptr<request_context> ctx,
                         principal who, std::string probe, caf::typed_response_promise<submit_result> rp) {
  auto& st = self->state;
  self->request(st.opts.cache, std::chrono::seconds(5), lookup_atom::value, ctx->tenant, ctx->cache_key, ctx->domain)
      .then(
          [=](const std::string& hit) mutable {
            auto a = hit.empty() ? std::nullopt : cached_answer_from_json(hit);
            if (!a) {
              if (auto b = self->state.policy->cache_miss(who, probe)) persist_block(self, *b);
              route(self, std::move(req), ctx, rp);
              return;
            }
            if (cancelled_before_routing(self, req.id, *ctx, rp)) return;
            // A hit streams back through the same sink protocol, marked as cached.
            auto t = spawn_request_tracker(self->system(), req.sink, finish_listener{self}, batcher_actor{}, ctx, req.id);
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
          [=](caf::error&) mutable { route(self, std::move(req), ctx, rp); });
}

caf::result<submit_result> generate(self_ptr self, generate_request req) {
  auto& st = self->state;
  if (req.id.empty()) {
    // An id of the router's own never collides with one a client chose for a request in flight.
    do {
      req.id = "req-" + std::to_string(++st.next_id) + "-" + std::to_string(self->id());
    } while (st.flights.count(req.id));
  }
  if (req.model.empty() && !st.opts.config.models.empty()) req.model = default_model(st);
  governance::admission_request ar;
  ar.api_key = std::move(req.api_key);
  req.api_key.clear();  // the key goes no further
  ar.model = req.model;
  ar.kind = req.kind;
  ar.priority = req.priority;
  ar.prompt = req.prompt;
  ar.prompt_ids = req.prompt_ids;
  ar.max_tokens = req.max_tokens;
  ar.deterministic = req.sampling.temperature <= 0.0f || req.sampling.seed.has_value();
  ar.no_cache = req.no_cache;
  ar.has_sink = static_cast<bool>(req.sink);
  ar.parse_special = req.parse_special;
  ar.special_ranges = req.special_ranges;
  auto a = st.policy->admit(ar);
  auto rec = base_record(st, "request", req.kind, a.who ? &*a.who : nullptr, req.id, req.model, req.client_address,
                         req.api_method);
  rec["how"]["sampling"] = sampling_json(req.sampling);
  rec["how"]["max_tokens"] = req.max_tokens;
  rec["how"]["priority"] = req.priority;
  rec["how"]["stop_strings"] = req.stop.size();
  if (a.block) persist_block(self, *a.block);
  if (a.refused) {
    audit_refusal(self, rec, a);
    return refuse(req.id, *a.refused);
  }
  if (st.flights.count(req.id)) {
    st.policy->release(a.who->tenant);
    const refusal why{errc::invalid_argument, "request id '" + req.id + "' is already in flight"};
    audit_async(self, rec, "error", to_string(why.code), why.message);
    return refuse(req.id, why);
  }
  st.flights.emplace(req.id, flight{});
  const auto& who = *a.who;
  req.tenant = who.tenant;
  req.principal = who.id;
  req.domain = to_string(who.domain);
  req.priority = a.priority;
  req.parse_special = a.parse_special;
  req.special_ranges = a.special_ranges;
  if (a.model_sees_masked) req.prompt = a.masked.text;
  const std::string input = req.prompt_ids.empty() ? a.masked.text : "ids:" + ids_text(req.prompt_ids);
  rec["digests"] = json{{"input_sha256", sha256_hex(input)}};
  if (a.store_masked_text) rec["text"] = json{{"input", input}};
  if (a.prompt_has_pii) rec["pii"] = a.masked.counts;
  auto ctx = std::make_shared<request_context>();
  ctx->record = rec;
  ctx->store_text = a.store_masked_text;
  ctx->tenant = who.tenant;
  ctx->who = governance::principal_key(who);
  ctx->domain = to_string(who.domain);
  ctx->encrypt = a.encrypt_cache;
  ctx->masker = st.policy->pii_masker();
  ctx->auditor = st.opts.auditor;
  ctx->cache = st.opts.cache;
  if (a.cacheable) {
    cache_key_fields f;
    f.tenant = who.tenant;
    f.domain = to_string(who.domain);
    f.model = req.model;
    f.model_version = st.model_versions[req.model];
    f.kind = req.kind;
    // Where the template's tokens may be changes the ids as much as the prompt does.
    if (!req.special_ranges.empty()) f.kind += "|template-ranges:" + ids_text(req.special_ranges);
    f.masked_prompt = a.masked.text;
    f.prompt_ids = req.prompt_ids;
    f.add_special = req.add_special;
    f.parse_special = req.parse_special;
    f.max_tokens = req.max_tokens;
    f.ignore_eos = req.ignore_eos;
    f.stop = req.stop;
    f.stop_ids = req.stop_ids;
    f.sampling = sampling_json(req.sampling).dump() + (req.sampling.seed ? "" : "|noseed");
    ctx->cache_key = cache_key(f);
  }
  auto rp = self->make_response_promise<submit_result>();
  if (ctx->cache_key.empty()) {
    route(self, std::move(req), ctx, rp);
  } else {
    route_through_cache(self, std::move(req), ctx, who, a.masked.text, rp);
  }
  return rp;
}

caf::result<admin_result> admin(self_ptr self, admin_request req) {
  auto& st = self->state;
  auto d = st.policy->admit_admin(req.api_key, req.op, req.tenant);
  req.api_key.clear();
  auto rec = base_record(st, "admin", req.op, d.who ? &*d.who : nullptr, "", "", req.client_address, req.api_method);
  json filter{{"tenant", req.tenant}, {"principal", req.principal}, {"operation", req.operation},
              {"since", req.since}, {"until", req.until}, {"limit", req.limit}};
  // The record keeps the filter as written, masked; the query gets it as it is.
  rec["how"]["filter"] = json{{"tenant", client_text(st, req.tenant)},
                              {"principal", client_text(st, req.principal)},
                              {"operation", client_text(st, req.operation)},
                              {"since", client_text(st, req.since)},
                              {"until", client_text(st, req.until)},
                              {"limit", req.limit}};
  if (d.block) persist_block(self, *d.block);
  if (d.refused) {
    audit_refusal(self, rec, d);
    return admin_refusal(d.refused->code, d.refused->message);
  }
  req.tenant = d.tenant;
  filter["tenant"] = d.tenant;
  if (req.op == "unblock" && st.opts.auditor && !st.policy->blocked().count(req.principal)) {
    const refusal why{errc::not_found, "principal '" + req.principal + "' is not blocked"};
    audit_async(self, rec, "error", to_string(why.code), why.message);
    return admin_refusal(why.code, why.message);
  }
  admin_context ctx;
  ctx.record = std::move(rec);
  ctx.filter = std::move(filter);
  ctx.target = client_text(st, req.principal);
  ctx.masker = st.policy->pii_masker();
  ctx.auditor = st.opts.auditor;
  ctx.cache = st.opts.cache;
  auto op = spawn_admin_operation(self->system(), std::move(ctx));
  if (req.op != "unblock") return self->delegate(op, admin_atom::value, std::move(req));
  // The block is lifted here only once the operation says its unblock is durable: a write that
  // failed leaves the database blocking the principal (and the next start with it), so the
  // router must go on blocking it too.
  auto rp = self->make_response_promise<admin_result>();
  const std::string target = req.principal;
  self->request(op, std::chrono::seconds(120), admin_atom::value, std::move(req))
      .then(
          [=](admin_result& res) mutable {
            if (res.ok) self->state.policy->unblock(target);
            rp.deliver(std::move(res));
          },
          [=](caf::error& e) mutable {
            const auto why = read_error(e, "the admin operation");
            rp.deliver(admin_refusal(why.code, why.message));
          });
  return rp;
}

router_actor::behavior_type router(self_ptr self, router_options opts) {
  self->state.opts = std::move(opts);
  init(self);
  self->set_down_handler([=](const caf::down_msg& dm) {
    for (auto& r : self->state.replicas) {
      if (r.batcher && r.batcher.address() == dm.source) {
        r.stats.healthy = false;
        r.stats.detail = "batcher is down";
        r.stats.error = make_error(errc::unavailable, r.stats.detail);
      }
    }
  });
  return {
      [=](generate_atom, generate_request req) -> caf::result<submit_result> { return generate(self, std::move(req)); },
      [=](cancel_atom, const std::string& id) {
        // Not at a batcher yet (admitting, in the cache lookup): it is refused when it would be
        // routed.
        auto& flights = self->state.flights;
        if (auto it = flights.find(id); it != flights.end() && !it->second.routed) {
          it->second.cancelled = true;
          return;
        }
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
        if (!m) return make_error(errc::not_found, "unknown model '" + name + "'");
        try {
          auto& tok = st.tokenizers[name];
          if (!tok) tok = load_model_tokenizer(m->path);
          return tok->encode(t.text, encode_options{t.add_special, t.parse_special});
        } catch (const std::exception& e) {
          return make_error(e);  // a missing tokenizer file stays not_found
        }
      },
      [=](stats_atom, const replica_stats& s) {
        for (auto& r : self->state.replicas) {
          if (r.spec.name == s.name) r.stats = s;
        }
      },
      [=](finished_atom, const std::string& id, const std::string& tenant, const std::string& who,
          std::int32_t tokens) {
        self->state.flights.erase(id);
        if (auto b = self->state.policy->finished(tenant, who, tokens)) persist_block(self, *b);
      },
      [=](admin_atom, admin_request req) -> caf::result<admin_result> { return admin(self, std::move(req)); },
      [=](authn_atom, door_caller c) -> auth_result {
        // A front door asks before it does anything else with a request: a key that is given is
        // valid, or the request ends here, with its audit record.
        auto& st = self->state;
        auto d = st.policy->check_caller(c.api_key);
        c.api_key.clear();
        auth_result r;
        if (d.refused) {
          auto rec = base_record(st, "request", c.operation, d.who ? &*d.who : nullptr, "", "", c.client_address,
                                 c.api_method);
          audit_refusal(self, rec, d);
          r.error_code = to_string(d.refused->code);
          r.error_message = d.refused->message;
          return r;
        }
        r.ok = true;
        r.tenant = d.who->tenant;
        r.principal = d.who->id;
        return r;
      },
      [=](refused_atom, door_refusal d) {
        // A request a door refused itself: one record, like those the router refuses. What the
        // client wrote (a model name, text quoted in a message) is masked by base_record and
        // audit_async, as for every record.
        auto& st = self->state;
        auto who = st.policy->identify(d.caller.api_key);
        d.caller.api_key.clear();
        auto rec = base_record(st, "request", d.caller.operation, who ? &*who : nullptr, "", d.model,
                               d.caller.client_address, d.caller.api_method);
        rec["how"]["refused_by"] = "door";
        audit_async(self, rec, "error", d.error_code, d.error_message);
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
