#pragma once
// The OpenAI-compatible HTTP API (kj-http), served on the gateway's event loop next to the Cap'n
// Proto API: POST /v1/completions, POST /v1/chat/completions (SSE with `stream: true`),
// GET /v1/models, GET /livez, GET /readyz. Request bodies are parsed by server/openai_request.hpp.
// Keys are checked by the router (front_door::authenticate), before anything else is done with a
// request that carries one; the router's refusals become OpenAI-shaped errors (README "HTTP API"
// lists the mapping), and so do this door's own (framing, limits, timeouts), each audited once.

#include <kj/async-io.h>

#include <string>

#include "server/front_door.hpp"

namespace shoal::server {

class http_gateway {
 public:
  virtual ~http_gateway() noexcept(false) = default;  // kj members of implementations may throw
  /// Serves connections from `listener` (at most door.options().max_connections at once) until the
  /// promise is cancelled.
  virtual kj::Promise<void> listen(kj::ConnectionReceiver& listener) = 0;
};

/// "host:port" of the other end of a connection ("" when unknown); for audit records.
std::string peer_address(kj::AsyncIoStream& s);

/// An HTTP server over `door` (which must outlive it); limits come from door.options().
kj::Own<http_gateway> make_http_gateway(front_door& door, kj::Timer& timer);

}  // namespace shoal::server
