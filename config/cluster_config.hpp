#pragma once
// A cluster described in YAML (cluster-configs/*.yaml): its nodes and their roles and ports, the
// models it serves, and the replicas: which nodes' shard workers form each tensor-parallel group.
// Plain C++ (yaml-cpp); validated as a whole when loaded.

#include <cstdint>
#include <string>
#include <vector>

#include "governance/auth.hpp"
#include "governance/settings.hpp"

namespace shoal::config {

struct node_spec {
  std::string name;
  std::string host = "127.0.0.1";
  std::int32_t port = 0;          // CAF node port (actor messages)
  std::vector<std::string> roles; // router, gateway, worker
  std::int32_t rpc_port = 0;      // Cap'n Proto gateway (gateway role)
  std::int32_t http_port = 0;     // OpenAI-compatible HTTP gateway (gateway role; 0 = off)
  std::int32_t metrics_port = 0;  // Prometheus /metrics (0 = off)
  std::int32_t threads = 1;       // compute threads per shard worker on this node. Default: 1
  // Front doors (gateway role). How long an HTTP request body may take to arrive once its headers
  // are in (then 408). Default: 30000
  std::int32_t http_body_timeout_ms = 30000;
  // Open connections per door (RPC and HTTP each); more are refused (HTTP 503). Default: 256
  std::int32_t max_connections = 256;

  bool has_role(const std::string& r) const;
};

struct model_spec {
  std::string name;
  std::string path;  // absolute after loading (relative paths are taken from the config's folder)
};

struct replica_spec {
  std::string name;
  std::string model;
  std::string kind = "generate";      // request kind pool. Default: generate
  std::int32_t weight = 1;            // weighted round robin. Default: 1
  std::vector<std::string> tensor_parallel;  // worker node names, rank order
  std::string parallel = "tensor";           // how the ranks split the model: tensor (heads and MLP
                                             // columns) or expert (routed experts; DeepSeek). Default: tensor
  std::string communicator = "tcp";          // collectives between the ranks: tcp (ring over TCP,
                                             // CPU) or nccl (GPUs; needs libshoal_nccl.so). Default: tcp
  std::int32_t kv_cache_tokens = 4096;       // KV slots on each rank. Default: 4096
  std::int32_t block_size = 16;              // Default: 16
  std::int32_t max_running = 32;             // Default: 32
  std::int32_t token_budget = 256;           // tokens per step. Default: 256
  std::int32_t max_prefill_chunk = 128;      // Default: 128
  std::int32_t max_waiting = 256;            // queue length before "overloaded". Default: 256
  // Timeouts of the batcher's requests to the shard workers, which live in other processes and can
  // die or hang. Reaching every rank's node, spawning its worker, loading the slice and linking
  // the ranks must finish within start_timeout_s, else the start is tried again (large
  // checkpoints load for minutes). Default: 600
  std::int32_t start_timeout_s = 600;
  // A rank that does not answer a step within step_timeout_s counts as down: the step's requests
  // end with `unavailable` and the replica starts over. Default: 120
  std::int32_t step_timeout_s = 120;
};

struct router_spec {
  double kv_threshold = 0.85;  // skip replicas whose KV use is above this. Default: 0.85
  // How long the router waits for a replica's batcher to accept or refuse a request (it tokenizes
  // the prompt); past it the request is refused as `unavailable`. Default: 30
  std::int32_t submit_timeout_s = 30;
};

struct cluster_config {
  std::string name;
  std::string file;  // where it was loaded from
  std::vector<node_spec> nodes;
  std::vector<model_spec> models;
  std::vector<replica_spec> replicas;
  router_spec router;
  governance::auth_config auth;  // tenants, keys, domains, limits (sections auth, tenants, domains)
  governance::governance_spec governance;  // answer cache, audit store, alert rules, PII patterns

  /// Loads and validates; throws shoal::error naming the file and the problem.
  static cluster_config load(const std::string& path);
  const node_spec* find_node(const std::string& name) const;
  const model_spec* find_model(const std::string& name) const;
  /// The node with the router role (exactly one).
  const node_spec& router_node() const;
};

}  // namespace shoal::config
