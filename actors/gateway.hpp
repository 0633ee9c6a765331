#pragma once
// The front doors: a kj event loop on its own thread serving the Cap'n Proto `Shoal` bootstrap
// interface (schemas/shoal.capnp) and, when configured, the OpenAI-compatible HTTP API
// (actors/http_gateway.hpp) on the same loop, bridging each call to the router's mailbox. Only this
// component and the client library include the generated schema headers.

#include <caf/all.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "actors/router.hpp"

namespace shoal::actors {

struct gateway_options {
  std::string host = "127.0.0.1";
  std::int32_t port = 0;                        // 0: any free port (see gateway_server::port())
  std::uint64_t max_message_words = 8 << 20;    // Cap'n Proto traversal limit, in 8-byte words. Default: 64 MiB
  std::int32_t max_nesting = 64;                // Cap'n Proto nesting limit. Default: 64
  std::int32_t max_prompt_bytes = 1 << 20;      // Default: 1 MiB
  /// Served models, name -> path (the cluster config's `models`, first = default). The gateway
  /// reads their tokenizers only to render chat templates for `chat`; empty disables `chat` and
  /// leaves unknown-model checks to the router.
  std::vector<std::pair<std::string, std::string>> models;
  std::int32_t query_timeout_ms = 5000;         // router answers to tokenize/status/submit. Default: 5000
  bool http = false;                            // serve the OpenAI-compatible HTTP API. Default: false
  std::int32_t http_port = 0;                   // its port; 0: any free port (see http_port())
  std::int64_t max_body_bytes = 4 << 20;        // HTTP request bodies above this answer 413. Default: 4 MiB
  std::int32_t max_n = 16;                      // most choices (`n`) one HTTP request may ask for. Default: 16
};

class gateway_server {
 public:
  virtual ~gateway_server() = default;
  /// The port it listens on.
  virtual std::int32_t port() const = 0;
  /// The port of the HTTP API (0 when it is not served).
  virtual std::int32_t http_port() const = 0;
  /// Stops accepting, cancels in-flight generations, joins the event loop thread.
  virtual void stop() = 0;
};

/// Starts serving on a new thread; throws shoal::error (errc::unavailable) when it cannot listen.
std::unique_ptr<gateway_server> start_gateway(caf::actor_system& sys, router_actor router, gateway_options opts);

}  // namespace shoal::actors
