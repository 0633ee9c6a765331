#pragma once
// Cache actor: the answer cache (actors/answer_cache.hpp) behind a mailbox, on its own thread
// (RocksDB calls block). The router asks it before routing a deterministic request and fills it
// when one finishes. Answers travel as JSON text: {ids, text, finish_reason, prompt_tokens,
// completion_tokens}; "" is a miss. Metrics: shoal:cache_{hits,misses,evictions}_total{domain},
// shoal:cache_bytes, shoal:cache_entries.

#include <caf/all.hpp>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "governance/settings.hpp"
#include "actors/messages.hpp"

namespace shoal::actors {

using governance::cache_spec;

using cache_actor = caf::typed_actor<
    // tenant, key, domain -> answer JSON or "" (miss)
    caf::replies_to<lookup_atom, std::string, std::string, std::string>::with<std::string>,
    // tenant, key, domain, encrypt, answer JSON
    caf::reacts_to<store_atom, std::string, std::string, std::string, bool, std::string>,
    // tenant -> entries removed
    caf::replies_to<purge_atom, std::string>::with<std::int64_t>>;

/// Opens the store at `path` (throws shoal::error when it cannot) and spawns the actor.
cache_actor spawn_cache(caf::actor_system& sys, const std::string& path, const cache_spec& spec,
                        std::shared_ptr<prometheus::Registry> registry);

}  // namespace shoal::actors
