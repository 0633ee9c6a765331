#pragma once
// The gateway: the bridge between CAF and the front doors' kj event loop. It runs that loop on its
// own thread, serves the Cap'n Proto door (server/rpc_service.hpp) and, when configured, the
// OpenAI-compatible HTTP door (server/http_gateway.hpp) on it, and implements server::front_door
// for both: each request becomes a message to the router's mailbox, each answer comes back
// through an inbox the loop drains.

#include <caf/all.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "actors/router.hpp"
#include "governance/pii.hpp"
#include "server/front_door.hpp"

namespace shoal::actors {

/// The doors' limits (server::door_options: message sizes, prompt and body sizes, `n`, the body
/// timeout, connections per door) and where and how to serve.
struct gateway_options : server::door_options {
  std::string host = "127.0.0.1";
  std::int32_t port = 0;                        // 0: any free port (see gateway_server::port())
  /// Served models, name -> path (the cluster config's `models`, first = default). The gateway
  /// reads their tokenizers only to render chat templates for `chat`; empty disables `chat` and
  /// leaves unknown-model checks to the router.
  std::vector<std::pair<std::string, std::string>> models;
  /// How long the router may take to answer status, tokenize and a key check. Default: 5000
  std::int32_t query_timeout_ms = 5000;
  /// How long the router may take to accept or refuse a generation: its answer-cache lookup (5 s)
  /// plus `router.submit_timeout_s` (its wait for a batcher), with room to spare, so that the door
  /// never gives up on a request the router still hands on (it would run for nobody). The node
  /// sets it from the cluster config: (5 + submit_timeout_s + 10) s. Default: 45000
  std::int32_t submit_timeout_ms = 45000;
  /// How long an admin call may take: longer than the router's own bound on it (an audit query or
  /// export waits up to 60 s, then writes its audit record, 30 s; the router gives an unblock up to
  /// 120 s), so the door never answers before the router does. Default: 150000
  std::int32_t admin_timeout_ms = 150000;
  bool http = false;                            // serve the OpenAI-compatible HTTP API. Default: false
  std::int32_t http_port = 0;                   // its port; 0: any free port (see http_port())
  /// Where shoal:client_disconnects_total is counted (the node's registry). Default: null (not counted)
  std::shared_ptr<prometheus::Registry> registry;
  /// How anything a client sent is masked before it is logged (the cluster's `pii` section).
  /// Default: the built-in patterns
  governance::masker_options pii;
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
