#pragma once
// Batcher: one per model replica. Owns the continuous-batching scheduler (engine/sched) and the KV
// block tables; drives the replica's shard workers one step at a time, streams each sampled token to
// its requester at once, and reports its load and health to the router.

#include <caf/all.hpp>

#include <memory>
#include <string>
#include <vector>

#include "config/cluster_config.hpp"
#include "actors/messages.hpp"
#include "actors/node_manager.hpp"

namespace prometheus {
class Registry;
}

namespace shoal::actors {

using config::model_spec;
using config::replica_spec;

using batcher_actor = caf::typed_actor<
    caf::replies_to<generate_atom, generate_request>::with<submit_result>,
    caf::reacts_to<cancel_atom, std::string>,
    caf::replies_to<status_atom>::with<replica_stats>,
    caf::reacts_to<tick_atom>>;  // internal: run the next step

struct batcher_options {
  replica_spec replica;
  model_spec model;
  /// One node manager per tensor-parallel rank (rank order), with the host its link binds to.
  std::vector<node_manager_actor> nodes;
  std::vector<std::string> node_hosts;
  std::vector<std::int32_t> node_threads;
  /// Receives (stats_atom, replica_stats) on every change. May be null.
  stats_listener router;
  std::shared_ptr<prometheus::Registry> metrics;  // may be null
};

batcher_actor spawn_batcher(caf::actor_system& sys, batcher_options opts);

}  // namespace shoal::actors
