#pragma once
// Router: admission and routing. Accepts requests from the gateway or any internal actor (its
// mailbox is a supported API: see actors/messages.hpp), authenticates the caller's API key,
// enforces the tenant's domain policy and rate limits, validates the request, and picks a replica by
// weighted round robin among the healthy replicas of the request's kind pool, skipping replicas
// whose KV-cache use is above the threshold or whose queue is full. When no replica can take the
// request it answers with an explicit error (overloaded / unavailable), never a silent drop.

#include <caf/all.hpp>

#include <memory>

#include "actors/batcher.hpp"
#include "actors/cluster_config.hpp"
#include "actors/messages.hpp"

namespace shoal::actors {

using router_actor = caf::typed_actor<
    caf::replies_to<generate_atom, generate_request>::with<submit_result>,
    caf::reacts_to<cancel_atom, std::string>,
    caf::replies_to<status_atom>::with<cluster_status>,
    caf::replies_to<tokenize_atom, tokenize_request>::with<std::vector<std::int32_t>>,
    caf::reacts_to<stats_atom, replica_stats>,               // from batchers
    caf::reacts_to<ready_atom, std::string, batcher_actor>,   // a replica's batcher exists
    caf::reacts_to<finished_atom, std::string>>;              // a tracked request ended (its tenant)

struct router_options {
  cluster_config config;
};

router_actor spawn_router(caf::actor_system& sys, router_options opts);

}  // namespace shoal::actors
