#pragma once
// Router: admission and routing. Accepts requests from the gateway or any internal actor (its
// mailbox is a supported API: see actors/messages.hpp), authenticates the caller's API key,
// enforces the tenant's domain policy and rate limits, validates the request, and picks a replica by
// weighted round robin among the healthy replicas of the request's kind pool, skipping replicas
// whose KV-cache use is above the threshold or whose queue is full. When no replica can take the
// request it answers with an explicit error (overloaded / unavailable), never a silent drop.
// Cancels are by request id and reach every replica, so an id is unique while its request is in
// flight: the router refuses a generate whose id it is still tracking.
//
// Governance (issue 5): prompts are PII-masked before anything is persisted or logged (and before
// the model sees them where the domain says so); deterministic requests are answered from the
// cache actor when it holds the answer; every request and administrative operation gets an audit
// record, and a request's summary reaches its client only after that record is durable; anomaly
// rules block principals (persisted by the auditor, lifted only by an audited admin unblock).
//
// The router is the actor; what it decides lives elsewhere: who may do what in the admission
// policy (governance/admission.hpp, plain C++), a request's streaming, audit record and cache fill
// in its tracker (actors/request_tracker.hpp), administrative operations in their own actor
// (actors/admin_operation.hpp). Refusals carry an errc name chosen where the failure is known; a
// replica that failed for good passes its error on (a missing tokenizer is not_found).

#include <caf/all.hpp>

#include <map>
#include <memory>
#include <string>

#include "actors/auditor.hpp"
#include "actors/batcher.hpp"
#include "actors/cache.hpp"
#include "config/cluster_config.hpp"
#include "actors/messages.hpp"

namespace shoal::actors {

using config::cluster_config;

using router_actor = caf::typed_actor<
    caf::replies_to<generate_atom, generate_request>::with<submit_result>,
    caf::reacts_to<cancel_atom, std::string>,
    caf::replies_to<status_atom>::with<cluster_status>,
    caf::replies_to<tokenize_atom, tokenize_request>::with<std::vector<std::int32_t>>,
    caf::reacts_to<stats_atom, replica_stats>,               // from batchers
    caf::reacts_to<ready_atom, std::string, batcher_actor>,   // a replica's batcher exists
    // a tracked request ended: id, tenant, principal ("tenant/key id"), completion tokens
    caf::reacts_to<finished_atom, std::string, std::string, std::string, std::int32_t>,
    caf::replies_to<admin_atom, admin_request>::with<admin_result>,
    // front doors: the caller's key first; the requests they refuse themselves, for the audit
    caf::replies_to<authn_atom, door_caller>::with<auth_result>,
    caf::reacts_to<refused_atom, door_refusal>>;

struct router_options {
  cluster_config config;
  std::string node_name;                           // for audit records ("where")
  cache_actor cache;                               // null: no answer cache
  auditor_actor auditor;                           // null: no audit records (tests, embedders)
  std::map<std::string, std::string> blocked;      // principal -> reason, as persisted
  std::shared_ptr<prometheus::Registry> registry;  // null: no governance metrics
};

router_actor spawn_router(caf::actor_system& sys, router_options opts);

}  // namespace shoal::actors
