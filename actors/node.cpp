#include "actors/node.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <prometheus/gauge.h>
#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "actors/batcher.hpp"
#include "config/cluster_config.hpp"
#include "actors/gateway.hpp"
#include "actors/messages.hpp"
#include "telemetry/log.hpp"
#include "telemetry/metrics_server.hpp"
#include "actors/node_manager.hpp"
#include "actors/router.hpp"
#include "engine/common/error.hpp"

namespace shoal::actors {

using config::cluster_config;
using config::node_spec;
using config::replica_spec;
using governance::resolve_data_path;
using telemetry::metrics_server;
using telemetry::start_metrics_server;

namespace {

// A replica's batcher, with where each of its ranks runs. The batcher reaches the nodes itself
// (again after one restarts), so nothing here waits for a worker node.
batcher_actor launch_replica(caf::actor_system& sys, const cluster_config& cfg, const replica_spec& spec,
                             const std::string& self_name, node_manager_actor local_nm, router_actor router,
                             std::shared_ptr<prometheus::Registry> registry, int unreachable_after_s) {
  batcher_options bo;
  bo.replica = spec;
  bo.model = *cfg.find_model(spec.model);
  bo.router = router;
  bo.metrics = registry;
  bo.unreachable_after = std::chrono::seconds(unreachable_after_s);
  for (const auto& name : spec.tensor_parallel) {
    const auto& node = *cfg.find_node(name);
    rank_node rn;
    rn.name = node.name;
    rn.host = node.host;
    rn.port = static_cast<std::uint16_t>(node.port);
    rn.threads = node.threads;
    if (name == self_name) rn.local = local_nm;
    bo.ranks.push_back(std::move(rn));
  }
  auto b = spawn_batcher(sys, std::move(bo));
  caf::anon_send(router, ready_atom::value, spec.name, b);
  return b;
}

}  // namespace

int run_node(const node_run_options& o) {
  auto cfg = cluster_config::load(o.config_path);
  if (!o.model_override.empty()) {
    for (auto& m : cfg.models) m.path = o.model_override;
  }
  const node_spec* node = cfg.find_node(o.node_name);
  if (!node) throw error(errc::invalid_argument, o.config_path + ": no node named '" + o.node_name + "'");
  telemetry::init_logging(node->name, o.log_level.empty() ? telemetry::default_log_level() : o.log_level);

  // Signals go to sigwait() below, not to arbitrary threads: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  caf::actor_system_config caf_cfg;
  caf_cfg.load<caf::io::middleman>();
  // Work sharing (condition variables) instead of CAF's default work stealing, whose idle workers
  // poll with short sleeps: measured here, those wake-ups cost ~5% of a decode step on the cores
  // the shard worker computes on.
  caf_cfg.set("scheduler.policy", caf::atom("sharing"));
  register_message_types(caf_cfg);
  caf::actor_system sys{caf_cfg};
  auto registry = std::make_shared<prometheus::Registry>();
  auto& info = prometheus::BuildGauge().Name("shoal:node_info").Help("This node's name and roles").Register(*registry);
  std::string roles;
  for (auto& r : node->roles) roles += (roles.empty() ? "" : ",") + r;
  info.Add({{"node", node->name}, {"roles", roles}, {"cluster", cfg.name}}).Set(1);

  auto nm = spawn_node_manager(sys, node->name);
  auto published = sys.middleman().publish(nm, static_cast<std::uint16_t>(node->port), node->host.c_str(), true);
  if (!published) {
    caf::anon_send_exit(nm, caf::exit_reason::user_shutdown);
    throw error(errc::unavailable, "node '" + node->name + "' cannot listen on " + node->host + ":" +
                                       std::to_string(node->port) + ": " + sys.render(published.error()));
  }
  log::info("actors on {}:{}", node->host, *published);

  std::unique_ptr<metrics_server> metrics;
  router_actor router;
  std::unique_ptr<gateway_server> gateway;
  std::vector<batcher_actor> batchers;
  cache_actor cache;
  auditor_actor auditor;
  // The actor system's destructor waits for every actor: stop them all explicitly, on the way out
  // and when setting up fails (the batchers are not linked to the router, so one crashing does not
  // take the router down).
  auto shutdown = [&] {
    if (gateway) gateway->stop();
    if (metrics) metrics->stop();
    for (auto& b : batchers) caf::anon_send_exit(b, caf::exit_reason::user_shutdown);
    if (router) caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
    if (cache) caf::anon_send_exit(cache, caf::exit_reason::user_shutdown);
    if (auditor) caf::anon_send_exit(auditor, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(nm, caf::exit_reason::user_shutdown);
  };
  try {
    if (node->metrics_port > 0) {
      metrics = start_metrics_server(node->host, node->metrics_port, registry);
      log::info("metrics on http://{}:{}/metrics", node->host, metrics->port());
    }

    if (node->has_role("router")) {
      router_options ro;
      ro.config = cfg;
      ro.node_name = node->name;
      ro.registry = registry;
      const std::string data_dir = o.data_dir.empty() ? "shoal-data/" + node->name : o.data_dir;
      std::filesystem::create_directories(data_dir);
      const auto& gov = cfg.governance;
      // The audit store first: nothing is served that could not be audited.
      const auto audit_path = resolve_data_path(data_dir, gov.audit.path);
      auditor = spawn_auditor(sys, audit_path);
      ro.auditor = auditor;
      {
        caf::scoped_actor self{sys};
        self->request(auditor, std::chrono::seconds(30), blocks_atom::value)
            .receive(
                [&](const std::vector<std::string>& lines) {
                  for (const auto& l : lines) {
                    auto j = nlohmann::json::parse(l, nullptr, false);
                    if (j.is_object()) {
                      ro.blocked[j.value("principal", "")] =
                          "rule '" + j.value("rule", "") + "': " + j.value("detail", "") + " (since " + j.value("since", "") + ")";
                    }
                  }
                },
                [&](caf::error& e) { throw error(errc::unavailable, "audit store: " + sys.render(e)); });
      }
      log::info("audit store {} ({} blocked principals)", audit_path, ro.blocked.size());
      if (gov.cache.enabled) {
        const auto cache_path = resolve_data_path(data_dir, gov.cache.path);
        cache = spawn_cache(sys, cache_path, gov.cache, registry);
        ro.cache = cache;
        log::info("answer cache {}", cache_path);
      }
      router = spawn_router(sys, std::move(ro));
      for (const auto& spec : cfg.replicas) {
        batchers.push_back(launch_replica(sys, cfg, spec, node->name, nm, router, registry, o.connect_timeout_s));
      }
      if (node->has_role("gateway")) {
        gateway_options go;
        go.host = node->host;
        go.port = node->rpc_port;
        for (const auto& m : cfg.models) go.models.emplace_back(m.name, m.path);
        go.http = node->http_port > 0;
        go.http_port = node->http_port;
        go.body_timeout_ms = node->http_body_timeout_ms;
        go.max_connections = node->max_connections;
        // Longer than the router's own worst case for accepting a request (a cache lookup of up to
        // 5 s, then up to submit_timeout_s for a batcher): a door that gave up first would answer
        // 503 for a request that then runs.
        go.submit_timeout_ms = static_cast<std::int32_t>(
            std::min<std::int64_t>((5 + std::int64_t{cfg.router.submit_timeout_s} + 10) * 1000, INT32_MAX));
        go.registry = registry;
        go.pii = cfg.governance.pii;
        gateway = start_gateway(sys, router, go);
        log::info("Cap'n Proto RPC on {}:{}", node->host, gateway->port());
        if (go.http) log::info("OpenAI-compatible HTTP on http://{}:{}/v1", node->host, gateway->http_port());
      }
    }
  } catch (...) {
    shutdown();
    throw;
  }

  int sig = 0;
  sigwait(&signals, &sig);
  log::info("stopping (signal {})", sig);
  shutdown();
  return 0;
}

}  // namespace shoal::actors
