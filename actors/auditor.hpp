#pragma once
// Auditor actor: the append-only, hash-chained audit store (actors/audit_log.hpp) behind a mailbox,
// on its own thread. A record is acknowledged only after RocksDB wrote it with a synced WAL, so an
// acknowledged record survives kill -9; the router forwards a request's summary to its client only
// after that acknowledgement. Records travel as JSON text (see audit_log.hpp for the fields); the
// auditor adds seq, prev_hash, recorded and hash. Principal blocks live in the same database and
// survive restarts.

#include <caf/all.hpp>

#include <string>
#include <vector>

#include "actors/messages.hpp"

namespace shoal::actors {

using auditor_actor = caf::typed_actor<
    // record JSON -> its sequence number, once durable
    caf::replies_to<audit_atom, std::string>::with<std::uint64_t>,
    // filter JSON {tenant, principal, operation, kind, since, until, limit} -> matching records
    caf::replies_to<query_atom, std::string>::with<std::vector<std::string>>,
    // principal, block info JSON, audit record JSON -> seq of the audit record (block persisted first)
    caf::replies_to<block_atom, std::string, std::string, std::string>::with<std::uint64_t>,
    // principal, audit record JSON -> seq of the audit record
    caf::replies_to<unblock_atom, std::string, std::string>::with<std::uint64_t>,
    // -> every persisted block as JSON {principal, ...info}
    caf::replies_to<blocks_atom>::with<std::vector<std::string>>>;

/// Opens (creating) the audit store at `path` (throws shoal::error when it cannot) and spawns the
/// actor.
auditor_actor spawn_auditor(caf::actor_system& sys, const std::string& path);

}  // namespace shoal::actors
