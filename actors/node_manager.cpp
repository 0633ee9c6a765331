#include "actors/node_manager.hpp"

namespace shoal::actors {

namespace {

struct node_manager_state {
  std::string node;
  std::vector<shard_worker_actor> workers;
};

node_manager_actor::behavior_type node_manager(node_manager_actor::stateful_pointer<node_manager_state> self,
                                               std::string node_name) {
  self->state.node = std::move(node_name);
  return {
      [=](spawn_atom) -> shard_worker_actor {
        auto w = spawn_shard_worker(self->system());
        // The workers die with the node manager (node shutdown).
        self->link_to(w);
        self->state.workers.push_back(w);
        return w;
      },
      [=](status_atom) -> std::string { return self->state.node; },
  };
}

}  // namespace

node_manager_actor spawn_node_manager(caf::actor_system& sys, std::string node_name) {
  return sys.spawn(node_manager, std::move(node_name));
}

}  // namespace shoal::actors
