#pragma once
// An administrative operation through the router, run by its own short-lived actor once the
// router's admission policy allowed it (governance/admission.hpp): read or export the audit log,
// list blocks, record an unblock (the router lifts the block once this succeeded), purge a
// tenant's cached answers. The operation's own audit record, a failed operation's too, is durable
// before its answer goes back.

#include <caf/all.hpp>

#include <nlohmann/json.hpp>

#include "actors/auditor.hpp"
#include "actors/cache.hpp"
#include "actors/messages.hpp"
#include "engine/common/error.hpp"
#include "governance/pii.hpp"

namespace shoal::actors {

using admin_operation_actor = caf::typed_actor<caf::replies_to<admin_atom, admin_request>::with<admin_result>>;

struct admin_context {
  nlohmann::json record;  // this operation's audit record, without its end and outcome
  nlohmann::json filter;  // the audit query (query, export)
  std::string target;     // unblock: the principal, masked for the record
  std::shared_ptr<const governance::masker> masker;  // for error messages quoting the client; may be null
  auditor_actor auditor;  // null: the cluster keeps no audit log
  cache_actor cache;      // null: no answer cache
};

/// Answers one (admin_atom, admin_request), then quits.
admin_operation_actor spawn_admin_operation(caf::actor_system& sys, admin_context ctx);

/// A refused or failed operation.
admin_result admin_refusal(errc code, std::string message);

}  // namespace shoal::actors
