#pragma once
// Batcher: one per model replica. Owns the continuous-batching scheduler (engine/sched) and the KV
// block tables; drives the replica's shard workers one step at a time, streams each sampled token to
// its requester at once, and reports its load and health to the router.
//
// It also keeps the replica alive: it reaches each rank's node itself (the node manager published on
// the node's port), spawns the shard workers, sets them up and links them. When a worker dies or a
// step outlives step_timeout_s, the requests in flight end with `unavailable`, the surviving
// workers are stopped, and the whole start is tried again with backoff until every rank's node
// answers (a node restarted by `shoal up` serves again once its shards load). A start that fails
// with anything but `unavailable` (a missing file, a split the model cannot take) is final: the
// replica stays unhealthy with that error, which the router passes to the requests it refuses.

#include <caf/all.hpp>

#include <chrono>
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
    caf::reacts_to<tick_atom>,                     // internal: run the next step
    caf::reacts_to<restart_atom, std::uint64_t>>;  // internal: start attempt n again after its backoff

/// Where one tensor-parallel rank's shard worker runs.
struct rank_node {
  std::string name;             // the node's name in the cluster config
  std::string host;             // its host; the rank's link binds there too
  std::uint16_t port = 0;       // its actor port, where its node manager is published
  std::int32_t threads = 1;     // compute threads of the shard worker there
  node_manager_actor local;     // set when the node is this process: nothing to connect to
};

struct batcher_options {
  replica_spec replica;  // sizes, and the timeouts start_timeout_s and step_timeout_s
  model_spec model;
  std::vector<rank_node> ranks;  // rank order
  /// A rank's node unreachable for this long is logged as an error (and said so in the replica's
  /// detail); the batcher keeps trying, since a node may start later. Default: 60 s
  caf::timespan unreachable_after = std::chrono::seconds(60);
  /// Receives (stats_atom, replica_stats) on every change. May be null.
  stats_listener router;
  std::shared_ptr<prometheus::Registry> metrics;  // may be null
};

batcher_actor spawn_batcher(caf::actor_system& sys, batcher_options opts);

}  // namespace shoal::actors
