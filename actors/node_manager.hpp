#pragma once
// Node manager: the actor every node publishes on its port. Batchers on other nodes ask it to spawn
// shard workers here; `shoal up` and tests ask it who it is. A shard worker lives as long as the
// actor that asked for it: when that batcher (or its whole node) is gone, the worker is stopped.

#include <caf/all.hpp>

#include "actors/messages.hpp"
#include "actors/shard_worker.hpp"

namespace shoal::actors {

using node_manager_actor = caf::typed_actor<
    caf::replies_to<spawn_atom>::with<shard_worker_actor>,
    caf::replies_to<status_atom>::with<std::string>>;  // the node's name

node_manager_actor spawn_node_manager(caf::actor_system& sys, std::string node_name);

}  // namespace shoal::actors
