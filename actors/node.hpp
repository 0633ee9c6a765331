#pragma once
// One Shoal node process: a CAF actor system with remoting on the host/port the cluster config
// names, the node manager published there, and the roles the config gives this node (router and
// its batchers, the Cap'n Proto gateway, shard workers on demand, /metrics).

#include <string>

namespace shoal::actors {

struct node_run_options {
  std::string config_path;
  std::string node_name;
  std::string model_override;  // replaces every model path in the config (e.g. $SHOAL_MODEL)
  int connect_timeout_s = 60;  // a worker node unreachable this long is logged as an error (its replica keeps
                               // trying to reach it: a node may start later). Default: 60
  std::string data_dir;        // answer cache and audit store (router node). Default: shoal-data/<node>
  std::string log_level;       // trace | debug | info | warn | error | off. Default: $SHOAL_LOG_LEVEL, else info
};

/// Runs until SIGINT or SIGTERM; returns the process exit status. Throws shoal::error for a bad
/// config or a port it cannot listen on, naming which.
int run_node(const node_run_options& opts);

}  // namespace shoal::actors
