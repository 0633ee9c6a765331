#include "actors/request_tracker.hpp"

#include <optional>
#include <vector>

#include "actors/errors.hpp"
#include "engine/common/error.hpp"
#include "governance/answer_cache.hpp"
#include "governance/audit_log.hpp"

namespace shoal::actors {

namespace {

using json = nlohmann::json;

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

caf::behavior tracker(caf::stateful_actor<tracker_state>* self, sink_actor client, finish_listener router,
                      batcher_actor batcher, std::shared_ptr<request_context> ctx, std::string id) {
  if (batcher) self->monitor(batcher);
  auto finish = [=](generation_summary s) {
    self->send(router, finished_atom::value, id, ctx->tenant, ctx->who, s.completion_tokens);
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
      governance::cached_answer answer{st.ids, st.text, s.finish_reason, s.prompt_tokens, s.completion_tokens};
      self->send(ctx->cache, store_atom::value, ctx->tenant, ctx->cache_key, ctx->domain, ctx->encrypt,
                 governance::to_json_text(answer));
    }
    if (!ctx->auditor) return finish(s);
    json rec = ctx->record;
    rec["when"]["end"] = governance::utc_now_iso();
    std::string status = s.cached ? "cached" : ok ? "ok" : s.finish_reason == "cancelled" ? "cancelled" : "error";
    rec["outcome"] = json{{"status", status},
                          {"finish_reason", s.finish_reason},
                          {"error_code", s.error_code},
                          {"prompt_tokens", s.prompt_tokens},
                          {"completion_tokens", s.completion_tokens},
                          {"replica", s.replica}};
    rec["digests"]["output_sha256"] = governance::sha256_hex(masked_out);
    if (ctx->store_text) rec["text"]["output"] = masked_out;
    self->request(ctx->auditor, std::chrono::seconds(30), audit_atom::value, governance::record_text(rec))
        .then([=](std::uint64_t) { finish(s); },
              [=](caf::error& e) {
                // The client must not believe a request was recorded when it was not.
                generation_summary failed = s;
                failed.finish_reason = "error";
                failed.error_code = to_string(errc::unavailable);
                failed.error_message =
                    "the audit record could not be written: " + read_error(e, "the audit store").message;
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

}  // namespace

caf::actor spawn_request_tracker(caf::actor_system& sys, sink_actor client, finish_listener router,
                                 batcher_actor batcher, std::shared_ptr<request_context> ctx, std::string id) {
  return sys.spawn(tracker, std::move(client), std::move(router), std::move(batcher), std::move(ctx), std::move(id));
}

}  // namespace shoal::actors
