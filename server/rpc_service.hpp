#pragma once
// The Cap'n Proto front door: the `Shoal` bootstrap interface of schemas/shoal.capnp, one per
// client connection, over Cap'n Proto two-party RPC with the door's read limits. It reaches the
// cluster only through front_door: generations are pulled with next() and pushed to the client's
// TokenSink one call at a time (the sink's stream flow control paces the pulls), complete()
// collects them, and tokenize, models, health and admin ask the router. A caller's key is checked
// (front_door::authenticate) before anything else in generate, chat and complete, and what this
// door refuses itself is audited (front_door::refused).

#include <kj/async-io.h>

#include "server/front_door.hpp"

namespace shoal::server {

class rpc_door {
 public:
  virtual ~rpc_door() noexcept(false) = default;  // kj members of implementations may throw
  /// Serves connections from `listener` (at most door.options().max_connections at once; one more
  /// is told "overloaded" in a Cap'n Proto Abort message and closed) until the promise is dropped.
  virtual kj::Promise<void> listen(kj::ConnectionReceiver& listener) = 0;
};

/// An RPC server over `door` (which must outlive it); limits come from door.options().
kj::Own<rpc_door> make_rpc_door(front_door& door, kj::Timer& timer);

}  // namespace shoal::server
