// shoal up: start every node of a local cluster as its own process on this machine, wait until the
// gateway reports ready, print where to connect, and supervise: a node that dies is started again
// (with backoff) while the others keep serving. It exits on Ctrl-C, or when a node keeps dying
// right after its start; either way it stops every node it started, within a bounded time, and
// reaps them all. Should `shoal up` itself be killed outright, the kernel sends each node SIGTERM
// (PR_SET_PDEATHSIG), so no node outlives it.

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
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

using clock_type = std::chrono::steady_clock;

struct up_args {
  std::string data_dir = "shoal-data";
  std::string config;
  std::string model;
  int timeout_s = 120;     // readiness. Default: 120
  bool once = false;       // exit after the cluster is ready (tests, scripts)
  int max_restarts = 5;    // a node that dies this many times in a row, each time within
                           // stable_s of its start, is given up on (restarted max_restarts - 1
                           // times). Default: 5
  int stable_s = 30;       // a node up this long has started fine: its failure count resets. Default: 30
  int stop_timeout_s = 10; // after SIGTERM, nodes still running this long get SIGKILL. Default: 10
};

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

bool is_local(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

std::string seconds_text(clock_type::duration d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", std::chrono::duration<double>(d).count());
  return buf;
}

// One node process and what supervising it needs.
struct child {
  std::string node;
  std::vector<std::string> args;
  pid_t pid = -1;                    // -1: not running (waiting for its restart, or stopped)
  clock_type::time_point started;
  int failures = 0;                  // deaths in a row, each soon after its start
  clock_type::time_point restart_at; // when pid == -1: when to start it again
};

// Starts `c`'s process; false when it cannot even be spawned. The node gets SIGTERM when `shoal
// up` dies, however it dies (posix_spawn cannot ask for that, hence fork and exec). Only
// async-signal-safe calls run between them. The signal follows the thread that forked, so this
// runs on the main thread only, which lives as long as `shoal up`.
bool start(child& c) {
  std::vector<char*> argv;
  for (auto& s : c.args) argv.push_back(s.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid == 0) {
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) ::_exit(127);
    if (::getppid() != parent) ::_exit(127);  // `shoal up` died before the line above: no signal would come
    ::execve(argv[0], argv.data(), environ);
    ::_exit(127);
  }
  c.pid = pid;
  c.started = clock_type::now();
  std::cerr << "shoal up: node '" << c.node << "' started (pid " << pid << ")\n";
  return true;
}

// SIGTERM to every running node, SIGKILL to those still running after `grace`, and every one
// reaped: nothing outlives `shoal up`, no zombie is left behind.
void stop_all(std::vector<child>& kids, std::chrono::seconds grace) {
  for (auto& c : kids) {
    if (c.pid > 0) ::kill(c.pid, SIGTERM);
  }
  const auto deadline = clock_type::now() + grace;
  for (;;) {
    bool running = false;
    for (auto& c : kids) {
      if (c.pid <= 0) continue;
      int status = 0;
      const pid_t r = ::waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid || r < 0) c.pid = -1;
      else running = true;
    }
    if (!running) return;
    if (clock_type::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (auto& c : kids) {
    if (c.pid <= 0) continue;
    std::cerr << "shoal up: node '" << c.node << "' did not stop within " << grace.count() << " s; killing it\n";
    ::kill(c.pid, SIGKILL);
    int status = 0;
    ::waitpid(c.pid, &status, 0);
    c.pid = -1;
  }
}

std::string how_it_ended(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "ended";
}

// Reaps nodes that died and starts them again when their backoff is over. Returns a message when
// a node keeps dying right after its start (then the cluster is stopped), else "".
std::string supervise(std::vector<child>& kids, const up_args& a) {
  const auto now = clock_type::now();
  for (auto& c : kids) {
    if (c.pid <= 0) continue;
    int status = 0;
    if (::waitpid(c.pid, &status, WNOHANG) != c.pid) continue;
    c.pid = -1;
    // Ctrl-C in a terminal reaches the nodes too, and they may die before `shoal up` notices:
    // that is the stop, not a failure to restart.
    if (g_stop) continue;
    const auto lived = now - c.started;
    if (lived >= std::chrono::seconds(a.stable_s)) c.failures = 0;
    ++c.failures;
    if (c.failures >= a.max_restarts) {
      return "node '" + c.node + "' " + how_it_ended(status) + ": it failed " + std::to_string(c.failures) +
             " times in a row, each within " + std::to_string(a.stable_s) + " s of its start";
    }
    // 1 s, 2 s, 4 s ... up to 30 s: a node that fails at once does not spin, one that crashed after
    // serving a while comes back in a second.
    const auto backoff = std::min<clock_type::duration>(std::chrono::seconds(1) * (1 << std::min(c.failures - 1, 5)),
                                                        std::chrono::seconds(30));
    c.restart_at = now + backoff;
    std::cerr << "shoal up: node '" << c.node << "' " << how_it_ended(status) << " after " << seconds_text(lived)
              << "; restarting it in " << seconds_text(backoff) << " (" << c.failures << " of " << a.max_restarts
              << " quick deaths in a row before the cluster stops)\n";
  }
  if (g_stop) return {};  // Ctrl-C: nothing starts again
  for (auto& c : kids) {
    if (c.pid > 0 || now < c.restart_at) continue;
    if (!start(c)) {
      c.restart_at = now + std::chrono::seconds(1);
      if (++c.failures >= a.max_restarts) return "node '" + c.node + "' cannot be started";
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
  const std::chrono::seconds grace(a.stop_timeout_s);

  std::vector<child> kids;
  // Workers first, the router node last, so it finds them quickly.
  std::vector<const config::node_spec*> order;
  for (const auto& n : cfg.nodes) if (!n.has_role("router")) order.push_back(&n);
  order.push_back(&cfg.router_node());
  for (const auto* n : order) {
    child c;
    c.node = n->name;
    c.args = {self, "node", "--config", a.config, "--name", n->name, "--data-dir", a.data_dir + "/" + n->name};
    if (!a.model.empty()) {
      c.args.push_back("--model");
      c.args.push_back(a.model);
    }
    if (!start(c)) {
      stop_all(kids, grace);
      throw error(errc::unavailable, "cannot start node '" + n->name + "'");
    }
    kids.push_back(std::move(c));
  }

  const auto& front = cfg.router_node();
  const auto deadline = clock_type::now() + std::chrono::seconds(a.timeout_s);
  std::string last_detail = "gateway not answering yet";
  bool ready = false;
  while (!ready) {
    if (g_stop) {
      stop_all(kids, grace);
      return 130;
    }
    if (auto gave_up = supervise(kids, a); !gave_up.empty()) {
      std::cerr << "shoal up: " << gave_up << "; stopping the cluster\n";
      stop_all(kids, grace);
      return 1;
    }
    try {
      client::client c(front.host, front.rpc_port);
      auto h = c.health();
      ready = h.ready;
      last_detail = h.detail;
      for (const auto& r : h.replicas) {
        if (!r.healthy) last_detail = "replica " + r.name + ": " + r.detail;
      }
    } catch (const std::exception& e) {
      last_detail = e.what();
    }
    if (!ready) {
      if (clock_type::now() > deadline) {
        std::cerr << "shoal up: not ready after " << a.timeout_s << " s: " << last_detail << "\n";
        stop_all(kids, grace);
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
    stop_all(kids, grace);
    return 0;
  }
  while (!g_stop) {
    if (auto gave_up = supervise(kids, a); !gave_up.empty()) {
      std::cerr << "shoal up: " << gave_up << "; stopping the cluster\n";
      stop_all(kids, grace);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::cout << "shoal up: stopping\n" << std::flush;
  stop_all(kids, grace);
  return 0;
}

}  // namespace

runner_fn add_up(CLI::App& app) {
  auto a = std::make_shared<up_args>();
  app.add_option("--config", a->config, "Cluster YAML (cluster-configs/*.yaml)")->required();
  app.add_option("--model", a->model, "Serve this model path instead of the config's");
  app.add_option("--data-dir", a->data_dir, "Each node keeps its state under DIR/<node> (default shoal-data)");
  app.add_option("--timeout", a->timeout_s, "Seconds to wait for readiness (default 120)");
  app.add_option("--max-restarts", a->max_restarts,
                 "Give up (and stop the cluster) when a node dies this many times in a row, each within "
                 "--stable seconds of its start, i.e. restart it at most N-1 times (default 5)")
      ->check(CLI::PositiveNumber);
  app.add_option("--stable", a->stable_s, "Seconds a node must run to count as started (default 30)");
  app.add_option("--stop-timeout", a->stop_timeout_s,
                 "Seconds nodes get to stop after SIGTERM before SIGKILL (default 10)");
  app.add_flag("--once", a->once, "Stop the cluster again as soon as it is ready (for scripts)");
  return [a] { return run_up(*a); };
}

}  // namespace shoal::cli
