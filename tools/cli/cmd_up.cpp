// shoal up: start every node of a local cluster as its own process on this machine, wait until the
// gateway reports ready, print where to connect, and stop them all on Ctrl-C (or when one dies).

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include "config/cluster_config.hpp"
#include "engine/common/error.hpp"
#include "tools/cli/commands.hpp"
#include "tools/client/shoal_client.hpp"

extern char** environ;

namespace shoal::cli {

namespace {

struct up_args {
  std::string data_dir = "shoal-data";
  std::string config;
  std::string model;
  int timeout_s = 120;
  bool once = false;  // exit after the cluster is ready (tests, scripts)
};

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

bool is_local(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

struct child {
  std::string node;
  pid_t pid = -1;
};

void stop_all(std::vector<child>& kids) {
  for (auto& c : kids) {
    if (c.pid > 0) ::kill(c.pid, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (auto& c : kids) {
    while (c.pid > 0) {
      int status = 0;
      pid_t r = ::waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid || r < 0) {
        c.pid = -1;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(c.pid, SIGKILL);
        ::waitpid(c.pid, &status, 0);
        c.pid = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

// A child that exited: its node name and how.
std::string reap(std::vector<child>& kids) {
  for (auto& c : kids) {
    if (c.pid <= 0) continue;
    int status = 0;
    if (::waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.pid = -1;
      if (WIFEXITED(status)) return "node '" + c.node + "' exited with status " + std::to_string(WEXITSTATUS(status));
      return "node '" + c.node + "' was killed by signal " + std::to_string(WTERMSIG(status));
    }
  }
  return {};
}

int run_up(const up_args& a) {
  auto cfg = config::cluster_config::load(a.config);
  for (const auto& n : cfg.nodes) {
    if (!is_local(n.host)) {
      throw error(errc::unavailable, a.config + ": node '" + n.name + "' is on " + n.host +
                                         ", which is not this machine: shoal up starts local clusters only (start it "
                                         "there with `shoal node --config ... --name " + n.name + "`)");
    }
  }
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::vector<child> kids;
  // Workers first, the router node last, so it finds them quickly.
  std::vector<const config::node_spec*> order;
  for (const auto& n : cfg.nodes) if (!n.has_role("router")) order.push_back(&n);
  order.push_back(&cfg.router_node());
  for (const auto* n : order) {
    std::vector<std::string> args = {self, "node", "--config", a.config, "--name", n->name,
                                     "--data-dir", a.data_dir + "/" + n->name};
    if (!a.model.empty()) {
      args.push_back("--model");
      args.push_back(a.model);
    }
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    if (::posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
      stop_all(kids);
      throw error(errc::unavailable, "cannot start node '" + n->name + "'");
    }
    kids.push_back({n->name, pid});
  }

  const auto& front = cfg.router_node();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(a.timeout_s);
  std::string last_detail = "gateway not answering yet";
  bool ready = false;
  while (!ready) {
    if (g_stop) {
      stop_all(kids);
      return 130;
    }
    if (auto gone = reap(kids); !gone.empty()) {
      std::cerr << "shoal up: " << gone << "; stopping the cluster\n";
      stop_all(kids);
      return 1;
    }
    try {
      client::client c(front.host, front.rpc_port);
      auto h = c.health();
      ready = h.ready;
      last_detail = h.detail;
      // A replica whose node is not reachable yet keeps trying (the node may still be starting):
      // only the deadline below ends the wait, naming what is not ready.
      for (const auto& r : h.replicas) {
        if (!r.healthy) last_detail = "replica " + r.name + ": " + r.detail;
      }
    } catch (const std::exception& e) {
      last_detail = e.what();
    }
    if (!ready) {
      if (std::chrono::steady_clock::now() > deadline) {
        std::cerr << "shoal up: not ready after " << a.timeout_s << " s: " << last_detail << "\n";
        stop_all(kids);
        return 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  std::cout << "shoal up: cluster '" << cfg.name << "' is ready (" << cfg.nodes.size() << " node"
            << (cfg.nodes.size() > 1 ? "s" : "") << ")\n";
  std::cout << "  Cap'n Proto RPC   " << front.host << ":" << front.rpc_port
            << "   (shoal client generate --connect " << front.host << ":" << front.rpc_port << " --prompt ...)\n";
  if (front.http_port) {
    std::cout << "  OpenAI HTTP API   http://" << front.host << ":" << front.http_port
              << "/v1   (/livez, /readyz)\n";
  }
  for (const auto& n : cfg.nodes) {
    if (n.metrics_port) std::cout << "  metrics           http://" << n.host << ":" << n.metrics_port << "/metrics  (" << n.name << ")\n";
  }
  std::cout << (a.once ? "" : "Press Ctrl-C to stop.\n") << std::flush;
  if (a.once) {
    stop_all(kids);
    return 0;
  }
  while (!g_stop) {
    if (auto gone = reap(kids); !gone.empty()) {
      std::cerr << "shoal up: " << gone << "; stopping the cluster\n";
      stop_all(kids);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::cout << "shoal up: stopping\n";
  stop_all(kids);
  return 0;
}

}  // namespace

runner_fn add_up(CLI::App& app) {
  auto a = std::make_shared<up_args>();
  app.add_option("--config", a->config, "Cluster YAML (cluster-configs/*.yaml)")->required();
  app.add_option("--model", a->model, "Serve this model path instead of the config's");
  app.add_option("--data-dir", a->data_dir, "Each node keeps its state under DIR/<node> (default shoal-data)");
  app.add_option("--timeout", a->timeout_s, "Seconds to wait for readiness (default 120)");
  app.add_flag("--once", a->once, "Stop the cluster again as soon as it is ready (for scripts)");
  return [a] { return run_up(*a); };
}

}  // namespace shoal::cli
