#include "actors/router.hpp"

#include <atomic>
#include <map>
#include <optional>

#include "engine/common/error.hpp"
#include "engine/model/model_info.hpp"

namespace shoal::actors {

namespace {

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
  std::vector<replica_entry> replicas;
  std::map<std::string, std::unique_ptr<tokenizer>> tokenizers;  // by model name, loaded lazily
  std::uint64_t next_id = 0;
  static inline const char* name = "router";
};

using self_ptr = router_actor::stateful_pointer<router_state>;

using finish_listener = caf::typed_actor<caf::reacts_to<finished_atom, std::string>>;

struct tracker_state {
  // Not an aggregate: CAF constructs a state from the actor pointer when it can, and C++20 would
  // happily aggregate-initialise `done` from that pointer (to true).
  tracker_state() = default;
  bool done = false;
  bool open = false;                 // the requester has had its submit_result
  std::vector<token_chunk> held;     // chunks that overtook the submit_result
  std::optional<generation_summary> held_summary;
};

// Sits between a replica and the requester for one request: forwards every chunk, and when the
// request ends (or its replica's batcher dies first) tells the router, so limits are released once.
// Chunks come from the batcher while the accept travels back through the router, so the tracker
// holds them until the router says the requester has its answer (open_atom): a requester always
// sees accepted before its first token.
caf::behavior tracker(caf::stateful_actor<tracker_state>* self, sink_actor client, finish_listener router,
                      batcher_actor batcher, std::string tenant, std::string id) {
  self->monitor(batcher);
  auto end = [=](const generation_summary& s) {
    if (self->state.done) return;
    self->state.done = true;
    self->send(router, finished_atom::value, tenant);
    self->send(client, s);
    self->quit();
  };
  self->set_down_handler([=](const caf::down_msg& dm) {
    generation_summary s;
    s.id = id;
    s.finish_reason = "error";
    s.error_code = to_string(errc::unavailable);
    s.error_message = "the replica serving the request stopped (" + self->system().render(dm.reason) + ")";
    if (!self->state.open) {
      self->state.held_summary = s;
      return;
    }
    end(s);
  });
  return {
      [=](token_chunk& c) {
        if (self->state.open) {
          self->send(client, std::move(c));
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
        for (auto& c : self->state.held) self->send(client, std::move(c));
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

router_actor::behavior_type router(self_ptr self, router_options opts) {
  self->state.opts = std::move(opts);
  self->state.auth = std::make_unique<authenticator>(self->state.opts.config.auth);
  self->state.limiter = std::make_unique<rate_limiter>(self->state.opts.config.auth);
  for (const auto& spec : self->state.opts.config.replicas) {
    replica_entry e;
    e.spec = spec;
    e.stats.name = spec.name;
    e.stats.model = spec.model;
    e.stats.kind = spec.kind;
    e.stats.detail = "not started";
    self->state.replicas.push_back(e);
  }
  self->set_down_handler([=](const caf::down_msg& dm) {
    for (auto& r : self->state.replicas) {
      if (r.batcher && r.batcher.address() == dm.source) {
        r.stats.healthy = false;
        r.stats.detail = "batcher is down";
      }
    }
  });
  return {
      [=](generate_atom, generate_request req) -> caf::result<submit_result> {
        auto& st = self->state;
        if (req.id.empty()) req.id = "req-" + std::to_string(++st.next_id) + "-" + std::to_string(self->id());
        // Who is asking: one implementation for every front door. The key goes no further.
        const bool had_key = !req.api_key.empty();
        auto who = st.auth->authenticate(req.api_key);
        req.api_key.clear();
        if (!who) {
          return refuse(req.id, errc::unauthenticated, had_key ? "invalid API key" : "an API key is required");
        }
        req.tenant = who->tenant;
        req.principal = who->id;
        req.domain = to_string(who->domain);
        // A request may lower its priority, never raise it above its key's role.
        req.priority = std::min(req.priority, who->priority);
        if (req.model.empty()) req.model = default_model(st);
        if (!st.opts.config.find_model(req.model)) {
          return refuse(req.id, errc::not_found, "unknown model '" + req.model + "'");
        }
        const auto& policy = st.opts.config.auth.policy(who->domain);
        const auto* tenant = st.opts.config.auth.find_tenant(who->tenant);
        auto allowed = [&](const std::vector<std::string>& list) {
          return list.empty() || std::find(list.begin(), list.end(), req.model) != list.end();
        };
        if (!allowed(policy.models) || (tenant && !allowed(tenant->models))) {
          return refuse(req.id, errc::forbidden, "tenant '" + who->tenant + "' (domain " + to_string(who->domain) +
                                                     ") may not use model '" + req.model + "'");
        }
        if (req.kind != "generate" && req.kind != "score" && req.kind != "embed") {
          return refuse(req.id, errc::invalid_argument, "unknown request kind '" + req.kind + "'");
        }
        if (!req.sink) return refuse(req.id, errc::invalid_argument, "the request has no sink for its tokens");
        // Tokens against the tenant's per-minute budget: the prompt (ids, or ~4 bytes a token) plus
        // what it may generate.
        const std::int64_t tokens = (req.prompt_ids.empty() ? static_cast<std::int64_t>(req.prompt.size() / 4 + 1)
                                                            : static_cast<std::int64_t>(req.prompt_ids.size())) +
                                    std::max(0, req.max_tokens);
        if (auto why = st.limiter->admit(who->tenant, tokens); !why.empty()) {
          const bool global = why.find("admission limit") != std::string::npos;
          return refuse(req.id, global ? errc::overloaded : errc::rate_limited, why);
        }
        std::string why;
        auto* r = pick(st, req.model, req.kind, why);
        if (!r) {
          st.limiter->release(who->tenant);
          const bool none_healthy = why.find("healthy") != std::string::npos || why.find("no replica") != std::string::npos;
          return refuse(req.id, none_healthy ? errc::unavailable : errc::overloaded, why);
        }
        // Count it against the replica now, so a burst does not all land on one replica before
        // its next stats report.
        ++r->stats.waiting;
        const std::string tenant_name = who->tenant;
        const std::string replica_name = r->spec.name;
        // A refusal from the batcher changes nothing there, so no stats report will correct the
        // count above: undo it here, or a run of invalid requests would make the replica look full.
        auto uncount = [=] {
          for (auto& e : self->state.replicas) {
            if (e.spec.name == replica_name && e.stats.waiting > 0) --e.stats.waiting;
          }
        };
        auto t = self->spawn(tracker, req.sink, finish_listener{self}, r->batcher, tenant_name, req.id);
        req.sink = caf::actor_cast<sink_actor>(t);
        auto rp = self->make_response_promise<submit_result>();
        self->request(r->batcher, caf::infinite, generate_atom::value, std::move(req))
            .then(
                [=](const submit_result& res) mutable {
                  if (!res.accepted) {
                    uncount();
                    self->state.limiter->release(tenant_name);
                    caf::anon_send_exit(t, caf::exit_reason::user_shutdown);
                  }
                  rp.deliver(res);
                  if (res.accepted) caf::anon_send(t, open_atom::value);
                },
                [=](caf::error& e) mutable {
                  uncount();
                  self->state.limiter->release(tenant_name);
                  caf::anon_send_exit(t, caf::exit_reason::user_shutdown);
                  rp.deliver(refuse("", errc::unavailable, "replica did not answer: " + self->system().render(e)));
                });
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
      [=](finished_atom, const std::string& tenant) { self->state.limiter->release(tenant); },
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
