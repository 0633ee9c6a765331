#include "config/cluster_config.hpp"

#include "config/yaml_util.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "engine/common/error.hpp"

namespace shoal::config {

using yaml::get;

bool node_spec::has_role(const std::string& r) const { return std::find(roles.begin(), roles.end(), r) != roles.end(); }

cluster_config cluster_config::load(const std::string& path) {
  namespace fs = std::filesystem;
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw error(errc::not_found, path + ": cannot open");
  } catch (const YAML::Exception& e) {
    throw error(errc::invalid_argument, path + ": invalid YAML: " + e.what());
  }
  cluster_config c;
  c.file = path;
  const fs::path base = fs::absolute(path).parent_path();
  auto fail = [&](const std::string& what) { throw error(errc::invalid_argument, path + ": " + what); };
  if (!root.IsMap()) fail("expected a mapping at the top level");
  c.name = get<std::string>(root, "cluster", "shoal", path);
  if (!root["nodes"] || !root["nodes"].IsSequence() || root["nodes"].size() == 0) fail("'nodes' must list at least one node");
  std::set<std::string> names;
  std::set<std::pair<std::string, std::int32_t>> ports;
  for (const auto& n : root["nodes"]) {
    node_spec s;
    s.name = get<std::string>(n, "name", "", path);
    const std::string where = path + " node '" + s.name + "'";
    if (s.name.empty()) fail("a node has no name");
    if (!names.insert(s.name).second) fail("node '" + s.name + "' is listed twice");
    s.host = get<std::string>(n, "host", "127.0.0.1", where);
    s.port = get<std::int32_t>(n, "port", 0, where);
    s.rpc_port = get<std::int32_t>(n, "rpc_port", 0, where);
    s.http_port = get<std::int32_t>(n, "http_port", 0, where);
    s.metrics_port = get<std::int32_t>(n, "metrics_port", 0, where);
    s.threads = get<std::int32_t>(n, "threads", 1, where);
    s.http_body_timeout_ms = get<std::int32_t>(n, "http_body_timeout_ms", 30000, where);
    s.max_connections = get<std::int32_t>(n, "max_connections", 256, where);
    if (n["roles"]) {
      if (!n["roles"].IsSequence()) fail("node '" + s.name + "': 'roles' must be a list");
      for (const auto& r : n["roles"]) s.roles.push_back(r.as<std::string>());
    }
    for (const auto& r : s.roles) {
      if (r != "router" && r != "gateway" && r != "worker") fail("node '" + s.name + "' has unknown role '" + r + "'");
    }
    for (std::int32_t p : {s.port, s.rpc_port, s.http_port, s.metrics_port}) {
      if (p < 0 || p > 65535) fail("node '" + s.name + "' has port " + std::to_string(p) + " out of range");
      if (p != 0 && !ports.insert({s.host, p}).second) fail("port " + std::to_string(p) + " on " + s.host + " is used twice");
    }
    if (s.port == 0) fail("node '" + s.name + "' needs a 'port' for actor messages");
    if (s.has_role("gateway") && s.rpc_port == 0) fail("gateway node '" + s.name + "' needs an 'rpc_port'");
    if (s.threads < 1) fail("node '" + s.name + "': threads must be at least 1");
    if (s.http_body_timeout_ms < 1) fail("node '" + s.name + "': http_body_timeout_ms must be at least 1");
    if (s.max_connections < 1) fail("node '" + s.name + "': max_connections must be at least 1");
    c.nodes.push_back(s);
  }
  const auto routers = std::count_if(c.nodes.begin(), c.nodes.end(), [](auto& n) { return n.has_role("router"); });
  if (routers != 1) fail("exactly one node must have the 'router' role (found " + std::to_string(routers) + ")");
  for (auto& n : c.nodes) {
    if (n.has_role("gateway") && !n.has_role("router")) fail("the gateway must run on the router's node ('" + n.name + "')");
  }
  if (!root["models"] || !root["models"].IsSequence() || root["models"].size() == 0) fail("'models' must list at least one model");
  for (const auto& m : root["models"]) {
    model_spec s;
    s.name = get<std::string>(m, "name", "", path);
    s.path = get<std::string>(m, "path", "", path);
    if (s.name.empty() || s.path.empty()) fail("every model needs a 'name' and a 'path'");
    if (fs::path(s.path).is_relative()) s.path = (base / s.path).lexically_normal().string();
    if (c.find_model(s.name)) fail("model '" + s.name + "' is listed twice");
    c.models.push_back(s);
  }
  if (!root["replicas"] || !root["replicas"].IsSequence() || root["replicas"].size() == 0) fail("'replicas' must list at least one replica");
  std::set<std::string> replica_names;
  for (const auto& r : root["replicas"]) {
    replica_spec s;
    s.name = get<std::string>(r, "name", "", path);
    const std::string where = path + " replica '" + s.name + "'";
    if (s.name.empty() || !replica_names.insert(s.name).second) fail("every replica needs a unique 'name'");
    s.model = get<std::string>(r, "model", c.models.front().name, where);
    if (!c.find_model(s.model)) fail("replica '" + s.name + "' serves unknown model '" + s.model + "'");
    s.kind = get<std::string>(r, "kind", "generate", where);
    s.weight = get<std::int32_t>(r, "weight", 1, where);
    s.kv_cache_tokens = get<std::int32_t>(r, "kv_cache_tokens", 4096, where);
    s.block_size = get<std::int32_t>(r, "block_size", 16, where);
    s.max_running = get<std::int32_t>(r, "max_running", 32, where);
    s.token_budget = get<std::int32_t>(r, "token_budget", 256, where);
    s.max_prefill_chunk = get<std::int32_t>(r, "max_prefill_chunk", 128, where);
    s.max_waiting = get<std::int32_t>(r, "max_waiting", 256, where);
    s.start_timeout_s = get<std::int32_t>(r, "start_timeout_s", 600, where);
    s.step_timeout_s = get<std::int32_t>(r, "step_timeout_s", 120, where);
    if (!r["tensor_parallel"] || !r["tensor_parallel"].IsSequence() || r["tensor_parallel"].size() == 0) {
      fail("replica '" + s.name + "' needs 'tensor_parallel': the worker nodes of its ranks");
    }
    for (const auto& n : r["tensor_parallel"]) {
      auto node = n.as<std::string>();
      const auto* spec = c.find_node(node);
      if (!spec) fail("replica '" + s.name + "' names unknown node '" + node + "'");
      if (!spec->has_role("worker")) fail("replica '" + s.name + "' uses node '" + node + "', which lacks the 'worker' role");
      s.tensor_parallel.push_back(node);
    }
    s.parallel = get<std::string>(r, "parallel", "tensor", where);
    if (s.parallel != "tensor" && s.parallel != "expert" && s.parallel != "tensor+expert") {
      fail("replica '" + s.name + "' has unknown 'parallel: " + s.parallel + "' (tensor, expert or tensor+expert)");
    }
    s.communicator = get<std::string>(r, "communicator", "tcp", where);
    if (s.communicator != "tcp" && s.communicator != "nccl") {
      fail("replica '" + s.name + "' has unknown 'communicator: " + s.communicator + "' (tcp or nccl)");
    }
    for (std::int32_t v : {s.weight, s.kv_cache_tokens, s.block_size, s.max_running, s.token_budget, s.max_prefill_chunk, s.max_waiting}) {
      if (v < 1) fail("replica '" + s.name + "': sizes and weights must be at least 1");
    }
    if (s.start_timeout_s < 1 || s.step_timeout_s < 1) {
      fail("replica '" + s.name + "': start_timeout_s and step_timeout_s must be at least 1 (seconds)");
    }
    if (s.kind != "generate" && s.kind != "score" && s.kind != "embed") fail("replica '" + s.name + "' has unknown kind '" + s.kind + "'");
    c.replicas.push_back(s);
  }
  c.auth = governance::auth_config::from_yaml(root, path);
  c.governance = governance::governance_spec::from_yaml(root, path);
  for (const auto& t : c.auth.tenants) {
    for (const auto& m : t.models) {
      if (!c.find_model(m)) fail("tenant '" + t.name + "' allows unknown model '" + m + "'");
    }
  }
  if (root["router"]) {
    c.router.kv_threshold = get<double>(root["router"], "kv_threshold", 0.85, path + " router");
    if (!(c.router.kv_threshold > 0 && c.router.kv_threshold <= 1)) fail("router.kv_threshold must be in (0, 1]");
    c.router.submit_timeout_s = get<std::int32_t>(root["router"], "submit_timeout_s", 30, path + " router");
    if (c.router.submit_timeout_s < 1) fail("router.submit_timeout_s must be at least 1 (seconds)");
  }
  return c;
}

const node_spec* cluster_config::find_node(const std::string& name) const {
  for (auto& n : nodes) if (n.name == name) return &n;
  return nullptr;
}

const model_spec* cluster_config::find_model(const std::string& name) const {
  for (auto& m : models) if (m.name == name) return &m;
  return nullptr;
}

const node_spec& cluster_config::router_node() const {
  for (auto& n : nodes) if (n.has_role("router")) return n;
  throw error(errc::internal, "no router node");
}

}  // namespace shoal::config
