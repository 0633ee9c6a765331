#pragma once
// The per-request tracker: sits between a replica's batcher (or the answer cache) and the requester
// for one request. It forwards every chunk; when the request ends (or its batcher dies first) it
// fills the answer cache, writes the audit record, forwards the summary only once that record is
// durable, and then tells the router, so the request's limits are released exactly once.

#include <caf/all.hpp>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "actors/auditor.hpp"
#include "actors/batcher.hpp"
#include "actors/cache.hpp"
#include "actors/messages.hpp"
#include "governance/pii.hpp"

namespace shoal::actors {

/// Learns that a tracked request ended: its id, tenant, principal ("tenant/key id") and completion
/// tokens.
using finish_listener =
    caf::typed_actor<caf::reacts_to<finished_atom, std::string, std::string, std::string, std::int32_t>>;

/// Everything a request's tracker needs to finish it: who and what for the audit record, and
/// where its answer goes in the cache.
struct request_context {
  nlohmann::json record;       // the audit record without outcome, end and output digest
  bool store_text = false;     // the domain keeps the masked text in the audit log
  std::string cache_key;       // "" = not cacheable
  std::string tenant, who, domain;
  bool encrypt = false;
  std::shared_ptr<const governance::masker> masker;
  auditor_actor auditor;       // null: no audit record
  cache_actor cache;           // null: no answer cache
};

/// A tracker for request `id`, streaming to `client`. Chunks that arrive before (open_atom) are
/// held: the accept travels back through the router while the batcher already streams, and a
/// requester must see accepted before its first token. `batcher` (may be null: a cached answer)
/// is monitored, so its death ends the request with `unavailable`.
caf::actor spawn_request_tracker(caf::actor_system& sys, sink_actor client, finish_listener router,
                                 batcher_actor batcher, std::shared_ptr<request_context> ctx, std::string id);

}  // namespace shoal::actors
