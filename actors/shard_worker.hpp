#pragma once
// Shard worker: owns one tensor-parallel slice of a replica's weights and of its paged KV cache
// (physical blocks; the batcher owns the block tables), and runs the forward pass for each step.
// Rank 0 also samples, keeping per-sequence sampler state. Runs detached: a step blocks its thread
// for the whole forward pass, including the all-reduces with the other ranks. Every failure answers
// with a caf::error carrying its errc (actors/errors.hpp): a missing model file is not_found, a
// broken link to another rank unavailable. It lives as long as the batcher that asked for it (the
// node manager stops it when that batcher is gone), or until that batcher stops it to start over.

#include <caf/all.hpp>

#include "actors/messages.hpp"

namespace shoal::actors {

using shard_worker_actor = caf::typed_actor<
    // Load the model slice and open the collective link; replies with the link's TCP port.
    caf::replies_to<setup_atom, shard_setup>::with<std::int32_t>,
    // Connect the ring: every rank's "host:port", in rank order.
    caf::replies_to<connect_atom, std::vector<std::string>>::with<bool>,
    // communicator nccl: rank 0 makes the NCCL unique id (256 hex digits) after its setup...
    caf::replies_to<nccl_id_atom>::with<std::string>,
    // ...and the batcher hands it to every rank, which joins the NCCL communicator with it.
    caf::replies_to<nccl_join_atom, std::string>::with<bool>,
    caf::replies_to<step_atom, step_request>::with<step_result>>;

shard_worker_actor spawn_shard_worker(caf::actor_system& sys);

}  // namespace shoal::actors
