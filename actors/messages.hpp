#pragma once
// Message types and atoms shared by Shoal's actors, across nodes. Every node registers them with
// register_message_types() before starting its actor system (CAF 0.17 needs each custom type
// announced by name on both ends of a connection).
//
// The router's mailbox is a supported API for internal services: send it
//   (generate_atom, generate_request)  -> submit_result, then token_chunk* and one generation_summary
//                                         arrive at request.sink; an id already in flight is
//                                         refused (invalid_argument)
//   (cancel_atom, std::string id)      -> the request ends with finish_reason "cancelled" (before it
//                                         reached a replica: its submit_result is refused, cancelled)
//   (status_atom)                      -> cluster_status
//   (tokenize_atom, tokenize_request)  -> std::vector<int32_t>
//   (authn_atom, door_caller)          -> auth_result (a refusal is audited)
//   (refused_atom, door_refusal)       -> audits a request a front door refused
// Refusals name an errc (submit_result::error_code, generation_summary::error_code); answers that
// fail are caf::errors carrying an errc (actors/errors.hpp: read_error() gives the code back).
// See actors/router.hpp.

#include <caf/all.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/sampling/sampler.hpp"

namespace shoal::actors {

// CAF 0.17 atoms: at most 10 characters.
using generate_atom = caf::atom_constant<caf::atom("generate")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
using status_atom = caf::atom_constant<caf::atom("status")>;
using tokenize_atom = caf::atom_constant<caf::atom("tokenize")>;
using step_atom = caf::atom_constant<caf::atom("step")>;
using setup_atom = caf::atom_constant<caf::atom("setup")>;
using connect_atom = caf::atom_constant<caf::atom("connect")>;
using spawn_atom = caf::atom_constant<caf::atom("spawnshard")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using ready_atom = caf::atom_constant<caf::atom("ready")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using finished_atom = caf::atom_constant<caf::atom("finished")>;
using open_atom = caf::atom_constant<caf::atom("open")>;
// Governance: answer cache, audit store, administrative operations.
using lookup_atom = caf::atom_constant<caf::atom("lookup")>;
using store_atom = caf::atom_constant<caf::atom("store")>;
using purge_atom = caf::atom_constant<caf::atom("purge")>;
using audit_atom = caf::atom_constant<caf::atom("audit")>;
using query_atom = caf::atom_constant<caf::atom("query")>;
using block_atom = caf::atom_constant<caf::atom("block")>;
using unblock_atom = caf::atom_constant<caf::atom("unblock")>;
using blocks_atom = caf::atom_constant<caf::atom("blocks")>;
using admin_atom = caf::atom_constant<caf::atom("admin")>;
using nccl_id_atom = caf::atom_constant<caf::atom("ncclid")>;
using nccl_join_atom = caf::atom_constant<caf::atom("nccljoin")>;
using restart_atom = caf::atom_constant<caf::atom("restart")>;
// Front doors: check a caller's key before anything else; audit what a door refuses itself.
using authn_atom = caf::atom_constant<caf::atom("authn")>;
using refused_atom = caf::atom_constant<caf::atom("refused")>;

}  // namespace shoal::actors

namespace shoal {

/// engine/sampling's parameters as they travel (found by argument-dependent lookup, so it lives in
/// the type's namespace). The seed goes as a flag and a value, read back into the optional.
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, sampling_params& x) {
  bool has_seed = x.seed.has_value();
  std::uint64_t seed = x.seed.value_or(0);
  auto load = caf::meta::load_callback([&]() -> caf::error {
    if (has_seed) x.seed = seed;
    else x.seed.reset();
    return caf::none;
  });
  return f(caf::meta::type_name("sampling_params"), x.temperature, x.top_k, x.top_p, x.min_p,
           x.repetition_penalty, x.presence_penalty, x.frequency_penalty, has_seed, seed, load);
}

}  // namespace shoal

namespace shoal::actors {

/// Newly generated tokens of one request, sent as soon as they are sampled.
struct token_chunk {
  std::string id;                 // request id
  std::vector<std::int32_t> ids;  // the new token ids
  std::string text;               // their text: complete UTF-8, held back while it could start a stop string
  std::int32_t index = 0;         // position of ids[0] among the generated tokens
  bool cached = false;            // served from the answer cache, not computed
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, token_chunk& x) {
  return f(caf::meta::type_name("token_chunk"), x.id, x.ids, x.text, x.index, x.cached);
}

/// The last message of every accepted request.
struct generation_summary {
  std::string id;
  std::string finish_reason;   // length | stop | eos | cancelled | error
  std::string error_code;      // errc name when finish_reason == "error"
  std::string error_message;
  std::int32_t prompt_tokens = 0;
  std::int32_t completion_tokens = 0;
  double queue_seconds = 0;    // accepted -> first scheduled
  double ttft_seconds = 0;     // accepted -> first token
  double total_seconds = 0;    // accepted -> finished
  std::string replica;
  bool cached = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generation_summary& x) {
  return f(caf::meta::type_name("generation_summary"), x.id, x.finish_reason, x.error_code, x.error_message,
           x.prompt_tokens, x.completion_tokens, x.queue_seconds, x.ttft_seconds, x.total_seconds, x.replica,
           x.cached);
}

/// Where a request's tokens go: any actor handling these two messages (the gateway's per-request
/// bridge, or an internal service).
using sink_actor = caf::typed_actor<caf::reacts_to<token_chunk>, caf::reacts_to<generation_summary>>;

struct generate_request {
  std::string id;                    // unique while in flight; the router assigns one when empty
  std::string model;                 // served model name; "" = the cluster's default
  std::string kind = "generate";     // generate | score | embed: picks the replica pool
  std::string prompt;                // text, used when prompt_ids is empty
  std::vector<std::int32_t> prompt_ids;
  bool add_special = true;           // add BOS as the tokenizer says
  // Special-token strings in the prompt become tokens, where the caller's tenant allows it
  // (tenant `special_tokens`); otherwise, and always with false, they are text.
  bool parse_special = true;
  // A chat: [begin, end) byte pairs of `prompt` that the chat template wrote. Special-token strings
  // are tokens inside them only (whatever the tenant), so message contents stay text.
  std::vector<std::int32_t> special_ranges;
  sampling_params sampling;
  std::int32_t max_tokens = 128;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  std::vector<std::int32_t> stop_ids;
  std::int32_t priority = 0;         // higher is scheduled first (capped by the key's role)
  sink_actor sink;
  // Who and where: the router authenticates api_key (then clears it) and fills the rest.
  std::string api_key;               // "" = anonymous (allowed only when auth is not required)
  std::string client_address;        // the caller's address as the front door saw it
  std::string api_method;            // e.g. rpc.generate, http.chat.completions
  std::string tenant;                // set by the router
  std::string principal;             // set by the router
  std::string domain;                // set by the router: public | business | sensitive
  bool no_cache = false;             // neither answer from nor fill the answer cache
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_request& x) {
  return f(caf::meta::type_name("generate_request"), x.id, x.model, x.kind, x.prompt, x.prompt_ids,
           x.add_special, x.parse_special, x.special_ranges, x.sampling, x.max_tokens, x.ignore_eos, x.stop, x.stop_ids,
           x.priority, x.sink, x.api_key, x.client_address, x.api_method, x.tenant, x.principal, x.domain, x.no_cache);
}

/// The answer to a generate request: accepted (tokens will stream) or refused with a reason.
struct submit_result {
  bool accepted = false;
  std::string id;
  std::string error_code;     // invalid_argument | out_of_range | overloaded | unavailable | not_found ...
  std::string error_message;
  std::string replica;
  std::int32_t prompt_tokens = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, submit_result& x) {
  return f(caf::meta::type_name("submit_result"), x.accepted, x.id, x.error_code, x.error_message, x.replica,
           x.prompt_tokens);
}

struct tokenize_request {
  std::string model;
  std::string text;
  bool add_special = true;
  bool parse_special = true;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tokenize_request& x) {
  return f(caf::meta::type_name("tokenize_request"), x.model, x.text, x.add_special, x.parse_special);
}

/// What a replica reports to the router (periodically and on change).
struct replica_stats {
  std::string name;
  std::string model;
  std::string kind;          // the request kind pool it serves
  bool healthy = false;
  std::string detail;        // why it is not healthy
  caf::error error;          // the same as a code (actors/errors.hpp) while it cannot serve: unavailable
                             // while it (re)starts, another code when it failed for good (a missing
                             // tokenizer is not_found); none while healthy
  double kv_usage = 0;       // 0..1
  std::int32_t kv_blocks = 0;
  std::int32_t free_blocks = 0;
  std::int32_t waiting = 0;
  std::int32_t running = 0;
  std::int32_t max_waiting = 0;
  std::int32_t context_length = 0;
  std::int64_t preemptions = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, replica_stats& x) {
  return f(caf::meta::type_name("replica_stats"), x.name, x.model, x.kind, x.healthy, x.detail, x.error, x.kv_usage,
           x.kv_blocks, x.free_blocks, x.waiting, x.running, x.max_waiting, x.context_length, x.preemptions);
}

/// Whoever wants a replica's load and health reports (the router).
using stats_listener = caf::typed_actor<caf::reacts_to<stats_atom, replica_stats>>;

struct cluster_status {
  bool ready = false;
  std::string detail;
  std::vector<replica_stats> replicas;
  std::vector<std::string> models;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cluster_status& x) {
  return f(caf::meta::type_name("cluster_status"), x.ready, x.detail, x.replicas, x.models);
}

/// An administrative operation through the router (any front door): read the audit log, export it,
/// list or lift blocks, purge a tenant's cached answers. Every one is itself audited; non-admin keys
/// see only their own tenant's records.
struct admin_request {
  std::string api_key;
  std::string op;              // query | export | blocks | unblock | purge_cache
  std::string tenant;          // filter / target tenant ("" = the caller's own for non-admins)
  std::string principal;       // filter, or the principal to unblock
  std::string operation;       // filter: the audited operation (generate, export, ...)
  std::string since, until;    // filter: ISO-8601 UTC, inclusive
  std::uint64_t limit = 0;     // at most this many records (0: all)
  std::string client_address;  // as the front door saw it
  std::string api_method;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, admin_request& x) {
  return f(caf::meta::type_name("admin_request"), x.api_key, x.op, x.tenant, x.principal, x.operation, x.since,
           x.until, x.limit, x.client_address, x.api_method);
}

struct admin_result {
  bool ok = false;
  std::string error_code;
  std::string error_message;
  std::vector<std::string> lines;  // JSON lines (records, blocks) or one summary line
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, admin_result& x) {
  return f(caf::meta::type_name("admin_result"), x.ok, x.error_code, x.error_message, x.lines);
}

// ---- batcher <-> shard worker

struct shard_setup {
  std::string model_path;
  std::string replica;
  std::int32_t rank = 0;
  std::int32_t world = 1;
  std::int32_t block_size = 16;
  std::int32_t num_blocks = 0;
  std::int32_t threads = 1;
  std::string bind_host = "127.0.0.1";
  std::string parallel = "tensor";  // replica 'parallel': tensor, expert or tensor+expert
  std::string communicator = "tcp";  // tcp or nccl (replica 'communicator'); nccl ranks join with
                                     // the unique id that rank 0 makes (nccl_id_atom, nccl_join_atom)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, shard_setup& x) {
  return f(caf::meta::type_name("shard_setup"), x.model_path, x.replica, x.rank, x.world, x.block_size,
           x.num_blocks, x.threads, x.bind_host, x.parallel, x.communicator);
}

/// A sequence the workers have not seen before: rank 0 keeps its sampler state.
struct seq_setup {
  std::string id;
  std::vector<std::int32_t> prompt;
  sampling_params sampling;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, seq_setup& x) {
  return f(caf::meta::type_name("seq_setup"), x.id, x.prompt, x.sampling);
}

/// One sequence's work in a step: compute `tokens` at positions start.. with this block table.
struct step_item {
  std::string id;
  std::vector<std::int32_t> tokens;
  std::int32_t start = 0;
  std::vector<std::int32_t> blocks;
  bool sample = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_item& x) {
  return f(caf::meta::type_name("step_item"), x.id, x.tokens, x.start, x.blocks, x.sample);
}

/// A step as the workers see it: only what changed (new sequences, dropped ones, this step's tokens).
struct step_request {
  std::uint64_t step = 0;
  std::vector<seq_setup> added;
  std::vector<std::string> dropped;
  std::vector<step_item> items;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_request& x) {
  return f(caf::meta::type_name("step_request"), x.step, x.added, x.dropped, x.items);
}

/// A step that failed on a rank answers with a caf::error instead (actors/errors.hpp).
struct step_result {
  std::uint64_t step = 0;
  std::vector<std::int32_t> sampled;  // rank 0: one token per item with sample=true, in order
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_result& x) {
  return f(caf::meta::type_name("step_result"), x.step, x.sampled);
}

/// Who is calling, as a front door saw it, for the router to check before the door does anything
/// else with the request.
struct door_caller {
  std::string api_key;         // "" = none given
  std::string client_address;
  std::string api_method;      // e.g. http.completions, rpc.generate
  std::string operation;       // what is asked, for the audit: generate | models | health | http
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, door_caller& x) {
  return f(caf::meta::type_name("door_caller"), x.api_key, x.client_address, x.api_method, x.operation);
}

struct auth_result {
  bool ok = false;
  std::string error_code;  // unauthenticated | forbidden (a blocked principal)
  std::string error_message;
  std::string tenant;
  std::string principal;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, auth_result& x) {
  return f(caf::meta::type_name("auth_result"), x.ok, x.error_code, x.error_message, x.tenant, x.principal);
}

/// A request a front door refused itself (malformed, over a limit, an unknown model): the router
/// writes its audit record, as it does for the requests it refuses.
struct door_refusal {
  door_caller caller;
  std::string model;          // as the client named it ("" = none)
  std::string error_code;     // errc name
  std::string error_message;  // the router masks it (and the model) before it is stored
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, door_refusal& x) {
  return f(caf::meta::type_name("door_refusal"), x.caller, x.model, x.error_code, x.error_message);
}

/// Registers every type above, and Shoal's error category (actors/errors.hpp), with an actor
/// system config. Call on every node.
void register_message_types(caf::actor_system_config& cfg);

}  // namespace shoal::actors
