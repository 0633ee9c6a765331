#pragma once
// The one error carrier between actors: a shoal::errc travels as a caf::error of category "shoal"
// whose context is the message, unchanged from the shard worker through the batcher and the router
// to both doors. These helpers are the only place where an errc becomes a caf::error or back, and
// where CAF's own errors (a request that timed out, a receiver or node that is gone) get their errc.
// No code anywhere picks an errc by reading a message's text.

#include <caf/all.hpp>

#include <exception>
#include <string>

#include "engine/common/error.hpp"

namespace shoal::actors {

/// The category of Shoal's errors in a caf::error.
constexpr caf::atom_value error_category = caf::atom("shoal");

/// `code` and `message` as a caf::error (code + 1 on the wire: CAF reads code 0 as "no error").
caf::error make_error(errc code, std::string message);
caf::error make_error(const refusal& r);
/// A caught exception as a caf::error: a shoal::error keeps its code, anything else is internal.
caf::error make_error(const std::exception& e);

/// What a caf::error means to a client: the errc it carries and a sentence. CAF's own errors:
/// request_timeout, request_receiver_down, a lost remote link and an actor's exit are unavailable,
/// naming `peer` ("the router", "rank 1"); sec::invalid_argument is invalid_argument; any other
/// is internal.
refusal read_error(const caf::error& e, const std::string& peer = "the peer");

/// The errc alone (see read_error).
errc code_of(const caf::error& e);

/// Lets actor_system::render() print Shoal's errors ("shoal: not_found: ..."). register_message_types
/// calls it, so every node and test system has it.
void add_error_category(caf::actor_system_config& cfg);

}  // namespace shoal::actors
