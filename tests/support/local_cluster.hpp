#pragma once
// Starts a real multi-process Shoal cluster on 127.0.0.1 for a test: writes a cluster YAML with
// free ports, runs one `shoal node` process per node, waits until the gateway reports ready, and
// stops every process when it goes out of scope.

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/http.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tools/client/shoal_client.hpp"

extern char** environ;

namespace shoal::test {

/// A TCP port that was free a moment ago on 127.0.0.1, chosen at random below the kernel's
/// ephemeral range: a port the kernel handed out (bind to port 0) can be taken again for the
/// outgoing side of any connection before the node binds it, which made a node fail to start.
inline int free_port() {
  auto bindable = [](int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    socklen_t len = sizeof a;
    if (ok && port == 0) ok = ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
    ::close(fd);
    return ok ? static_cast<int>(ntohs(a.sin_port)) : -1;
  };
  int low = 32768;
  if (std::FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (std::fscanf(f, "%d", &low) != 1) low = 32768;
    std::fclose(f);
  }
  // Never the same port twice in one test process (two nodes of a cluster must not get one port).
  static std::set<int> given;
  if (low > 12000) {
    static std::mt19937 rng(std::random_device{}());
    std::uniform_int_distribution<int> pick(10000, low - 1);
    for (int i = 0; i < 200; ++i) {
      const int want = pick(rng);
      if (given.count(want)) continue;
      if (int p = bindable(want); p > 0) {
        given.insert(p);
        return p;
      }
    }
  }
  const int p = bindable(0);
  given.insert(p);
  return p;
}

struct node_def {
  std::string name;
  std::vector<std::string> roles;
  int threads = 1;
};

struct replica_def {
  std::string name;
  std::vector<std::string> tp;
  int kv_cache_tokens = 4096;
  int max_running = 32;
  int token_budget = 256;
  int max_waiting = 256;
  std::string parallel = "tensor";  // replica 'parallel': tensor or expert
  std::string extra_yaml = {};      // more keys of this replica, one "key: value" a line
};

class local_cluster {
 public:
  /// `extra_yaml` is appended to the config (auth, tenants, ...). With `start_workers` false only
  /// the router's node starts; start_node() starts the others. `node_yaml` adds keys to the named
  /// nodes, each line "    key: value\n".
  local_cluster(const std::string& model_path, std::vector<node_def> nodes, std::vector<replica_def> replicas,
                const std::string& extra_yaml = "", bool start_workers = true,
                std::map<std::string, std::string> node_yaml = {})
      : model_path_(model_path),
        nodes_(std::move(nodes)),
        replicas_(std::move(replicas)),
        extra_yaml_(extra_yaml),
        node_yaml_(std::move(node_yaml)) {
    write_config();
    start_in_order([&](const node_def& n) { return start_workers || is_router(n); });
  }

  ~local_cluster() {
    for (auto& [name, pid] : pids_) {
      if (pid > 0) ::kill(pid, SIGTERM);
    }
    for (auto& [name, pid] : pids_) {
      if (pid <= 0) continue;
      int status = 0;
      for (int i = 0; i < 100 && ::waitpid(pid, &status, WNOHANG) == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
  }

  std::string config_path() const { return dir_ / "cluster.yaml"; }
  int rpc_port() const { return rpc_port_; }
  int http_port() const { return http_port_; }
  std::string log(const std::string& node) const { return dir_ / (node + ".log"); }

  /// Starts a node that the constructor left out.
  /// Starts a node (one held back, or again after kill_node: same config and data directory).
  void start_node(const std::string& name) { start(name); }
  int metrics_port(const std::string& node) const { return metrics_ports_.at(node); }
  /// The node's CAF port (actor messages).
  int actor_port(const std::string& node) const { return ports_.at(node); }
  pid_t pid(const std::string& node) const { return pids_.at(node); }

  /// Waits until health says ready and every replica is healthy (or throws with the last detail).
  void wait_ready(int timeout_s = 60) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    std::string detail = "no answer";
    for (;;) {
      try {
        client::client c("127.0.0.1", rpc_port_);
        auto h = c.health();
        bool all = !h.replicas.empty();
        for (auto& r : h.replicas) all = all && r.healthy;
        if (h.ready && all) return;
        detail = h.detail;
        for (auto& r : h.replicas) detail += "; " + r.name + ": " + r.detail;
      } catch (const std::exception& e) {
        detail = e.what();
      }
      restart_if_a_port_was_taken();
      if (std::chrono::steady_clock::now() > deadline) {
        throw std::runtime_error("cluster not ready: " + detail + "\n" + node_report());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }

  /// Waits until the gateway's HTTP door answers /livez (the router may still have no ready replica).
  void wait_live(int timeout_s = 60) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (http_get("127.0.0.1", http_port_, "/livez").status != 200) {
      restart_if_a_port_was_taken();
      if (std::chrono::steady_clock::now() > deadline) {
        throw std::runtime_error("gateway /livez never answered 200\n" + node_report());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  /// Where a node keeps its answer cache and audit store.
  std::string data_dir(const std::string& node) const { return dir_ / ("data-" + node); }
  std::string dir() const { return dir_.path(); }

  /// Stops one node the way an operator does (SIGTERM) and waits for it to exit.
  void stop_node(const std::string& node) {
    if (pids_.at(node) <= 0) return;  // already reaped (never kill(-1, ...): that signals every process)
    ::kill(pids_.at(node), SIGTERM);
    int status = 0;
    ::waitpid(pids_.at(node), &status, 0);
    pids_[node] = -1;
  }

  /// Stops every node (SIGTERM) and waits for each; what they log on the way out is in their logs.
  void stop_all() {
    for (auto& [name, pid] : pids_) stop_node(name);
  }

  /// Everything every node has written to its log so far (including logs of earlier starts moved
  /// aside after a port race).
  std::string all_logs() const {
    std::string out;
    for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
      if (e.path().filename().string().find(".log") == std::string::npos) continue;
      std::ifstream f(e.path(), std::ios::binary);
      std::stringstream text;
      text << f.rdbuf();
      out += text.str();
    }
    return out;
  }

  /// SIGKILLs one node's process (a crash, not a shutdown).
  void kill_node(const std::string& node) {
    if (pids_.at(node) <= 0) return;  // already reaped
    ::kill(pids_.at(node), SIGKILL);
    int status = 0;
    ::waitpid(pids_.at(node), &status, 0);
    pids_[node] = -1;
  }

 private:
  /// Picks every node's ports and writes the cluster YAML.
  void write_config() {
    std::string y = "cluster: test\nmodels:\n  - name: m\n    path: " + model_path_ + "\nnodes:\n";
    for (auto& n : nodes_) {
      ports_[n.name] = free_port();
      y += "  - name: " + n.name + "\n    host: 127.0.0.1\n    port: " + std::to_string(ports_[n.name]) + "\n    roles: [";
      for (std::size_t i = 0; i < n.roles.size(); ++i) y += (i ? ", " : "") + n.roles[i];
      y += "]\n    threads: " + std::to_string(n.threads) + "\n";
      if (auto it = node_yaml_.find(n.name); it != node_yaml_.end()) y += it->second;
      metrics_ports_[n.name] = free_port();
      y += "    metrics_port: " + std::to_string(metrics_ports_[n.name]) + "\n";
      for (auto& r : n.roles) {
        if (r == "gateway") {
          rpc_port_ = free_port();
          y += "    rpc_port: " + std::to_string(rpc_port_) + "\n";
          http_port_ = free_port();
          y += "    http_port: " + std::to_string(http_port_) + "\n";
        }
      }
    }
    y += "replicas:\n";
    for (auto& r : replicas_) {
      y += "  - name: " + r.name + "\n    model: m\n    tensor_parallel: [";
      for (std::size_t i = 0; i < r.tp.size(); ++i) y += (i ? ", " : "") + r.tp[i];
      y += "]\n    kv_cache_tokens: " + std::to_string(r.kv_cache_tokens) + "\n    max_running: " +
           std::to_string(r.max_running) + "\n    token_budget: " + std::to_string(r.token_budget) +
           "\n    max_waiting: " + std::to_string(r.max_waiting) + "\n    parallel: " + r.parallel + "\n";
      std::istringstream extra(r.extra_yaml);
      for (std::string line; std::getline(extra, line);) y += "    " + line + "\n";
    }
    y += extra_yaml_;
    // Tests measure the model unless they ask for the answer cache.
    if (extra_yaml_.find("cache:") == std::string::npos) y += "cache:\n  enabled: false\n";
    dir_.write("cluster.yaml", y);
  }

  static bool is_router(const node_def& n) {
    return std::find(n.roles.begin(), n.roles.end(), "router") != n.roles.end();
  }

  /// Starts the nodes `wanted` says: worker-only nodes first, routers last, like `shoal up`.
  template <class Wanted>
  void start_in_order(const Wanted& wanted) {
    for (const bool routers : {false, true}) {
      for (auto& n : nodes_) {
        if (is_router(n) == routers && wanted(n)) start(n.name);
      }
    }
  }

  /// Notes how every node that has exited since the last look ended (in ended_), and forgets its pid.
  void reap() {
    for (auto& [name, pid] : pids_) {
      int status = 0;
      if (pid > 0 && ::waitpid(pid, &status, WNOHANG) == pid) {
        ended_[name] = WIFEXITED(status)     ? "exited with status " + std::to_string(WEXITSTATUS(status))
                       : WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                             : "stopped";
        pid = -1;
      }
    }
  }

  std::string log_text(const std::string& node) const {
    std::ifstream f(log(node));
    std::stringstream text;
    text << f.rdbuf();
    return text.str();
  }

  /// A port is only checked free when it is picked; something else on the host can take it before
  /// the node binds it. A node that exited saying it cannot listen gets the whole cluster restarted
  /// on fresh ports (at most three times), so such a race does not fail the test.
  void restart_if_a_port_was_taken() {
    if (port_restarts_ >= 3) return;
    reap();
    bool taken = false;
    for (auto& [name, how] : ended_) taken = taken || log_text(name).find("cannot listen") != std::string::npos;
    if (!taken) return;
    ++port_restarts_;
    for (auto& [name, pid] : pids_) {
      if (pid > 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
      pid = -1;
      std::rename(log(name).c_str(), (log(name) + ".port-race-" + std::to_string(port_restarts_)).c_str());
    }
    std::fprintf(stderr, "local_cluster: a node could not listen on its port; restarting on fresh ports\n");
    write_config();
    ended_.clear();
    start_in_order([&](const node_def& n) { return pids_.count(n.name) > 0; });  // the ones started before
  }

  /// Each node's process state and the end of its log: what a failed wait needs to show.
  std::string node_report() {
    reap();
    std::string out;
    for (auto& [name, pid] : pids_) {
      const std::string state = pid > 0 ? "running (pid " + std::to_string(pid) + ")"
                                : ended_.count(name) ? ended_[name]
                                                     : "not running";
      out += "--- node " + name + ": " + state + "; last lines of " + log(name) + ":\n";
      std::istringstream text(log_text(name));
      std::vector<std::string> lines;
      for (std::string l; std::getline(text, l);) lines.push_back(l);
      for (std::size_t i = lines.size() > 20 ? lines.size() - 20 : 0; i < lines.size(); ++i) out += "  " + lines[i] + "\n";
    }
    return out;
  }

  void start(const std::string& name) {
    std::vector<std::string> args = {shoal_bin(), "node", "--config", config_path(), "--name", name,
                                     "--data-dir", data_dir(name)};
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    const std::string log = dir_ / (name + ".log");
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    const int rc = ::posix_spawn(&pid, args[0].c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("cannot start node '" + name + "' (" + args[0] + "): " + std::strerror(rc));
    pids_[name] = pid;
  }

  temp_dir dir_;
  std::string model_path_;
  std::vector<node_def> nodes_;
  std::vector<replica_def> replicas_;
  std::string extra_yaml_;
  std::map<std::string, std::string> node_yaml_;
  std::map<std::string, std::string> ended_;  // how a node reaped by the harness ended
  int port_restarts_ = 0;
  std::map<std::string, int> ports_;
  std::map<std::string, int> metrics_ports_;
  std::map<std::string, pid_t> pids_;
  int rpc_port_ = 0;
  int http_port_ = 0;
};

}  // namespace shoal::test
