#include "actors/node_manager.hpp"

#include <algorithm>
#include <map>
#include <memory>
#include <vector>

namespace shoal::actors {

namespace {

// Shard workers by the actor that asked for them (a replica's batcher, usually on another node).
using worker_table = std::map<caf::actor_addr, std::vector<shard_worker_actor>>;

struct node_manager_state {
  std::string node;
  // Shared with the exit hook below, which runs after the state is gone. Only this actor touches it.
  std::shared_ptr<worker_table> workers = std::make_shared<worker_table>();
};

node_manager_actor::behavior_type node_manager(node_manager_actor::stateful_pointer<node_manager_state> self,
                                               std::string node_name) {
  self->state.node = std::move(node_name);
  // The workers stop with the node manager (node shutdown).
  self->attach_functor([table = self->state.workers] {
    for (auto& [owner, workers] : *table) {
      for (auto& w : workers) caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
    }
  });
  // A batcher that is gone (its node died, or it stopped) leaves workers nobody will ask for again,
  // each holding a model slice and a KV pool: stop them. A worker that stopped leaves the table.
  self->set_down_handler([=](const caf::down_msg& dm) {
    auto& table = *self->state.workers;
    if (auto it = table.find(dm.source); it != table.end()) {
      for (auto& w : it->second) self->send_exit(w, caf::exit_reason::user_shutdown);
      table.erase(it);
      return;
    }
    for (auto& [owner, workers] : table) {
      workers.erase(std::remove_if(workers.begin(), workers.end(),
                                   [&](const shard_worker_actor& w) { return w.address() == dm.source; }),
                    workers.end());
    }
  });
  return {
      [=](spawn_atom) -> shard_worker_actor {
        auto w = spawn_shard_worker(self->system());
        self->monitor(w);
        const auto owner = self->current_sender();
        auto& table = *self->state.workers;
        const auto key = caf::actor_cast<caf::actor_addr>(owner);
        if (owner && !table.count(key)) self->monitor(owner);
        table[key].push_back(w);
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
