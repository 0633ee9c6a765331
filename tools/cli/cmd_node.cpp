// shoal node: run one node of a cluster (what `shoal up` starts once per node).

#include "actors/node.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

runner_fn add_node(CLI::App& app) {
  auto o = std::make_shared<actors::node_run_options>();
  app.add_option("--config", o->config_path, "Cluster YAML (cluster-configs/*.yaml)")->required();
  app.add_option("--name", o->node_name, "This node's name in the config")->required();
  app.add_option("--model", o->model_override, "Serve this model path instead of the config's");
  app.add_option("--data-dir", o->data_dir,
                 "Where the router node keeps its answer cache and audit store (default shoal-data/<name>)");
  app.add_option("--connect-timeout", o->connect_timeout_s, "Seconds to wait for worker nodes (default 60)");
  app.add_option("--log-level", o->log_level,
                 "trace, debug, info, warn, error or off (default $SHOAL_LOG_LEVEL, else info)");
  return [o] { return actors::run_node(*o); };
}

}  // namespace shoal::cli
