// `shoal up` supervises its cluster: a worker node killed with SIGKILL is started again while the
// other replica keeps serving, its replica serves again once its shard is loaded, and Ctrl-C stops
// every node within a bounded time, leaving neither a running node nor a zombie.

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "tests/support/local_cluster.hpp"
#include "tests/support/shared.hpp"

using shoal::test::free_port;
using shoal::test::needs_shared;
using shoal::test::shared_path;

namespace {

const char* kStories = "models/stories260K/hf";
using clock_type = std::chrono::steady_clock;

std::string file_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// `shoal up` in its own process group (as a terminal runs it, so Ctrl-C reaches it and its nodes),
// its output and its nodes' logs in one file. Whatever happens, the group is gone afterwards.
class up_process {
 public:
  up_process(const std::vector<std::string>& args, const std::string& log) : log_(log) {
    std::vector<std::string> argv_s = {shoal::test::shoal_bin(), "up"};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    const int rc = ::posix_spawn(&pid_, argv[0], &fa, &attr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) throw std::runtime_error("cannot start shoal up");
  }
  ~up_process() {
    if (pid_ > 0) {
      ::kill(-pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }
  std::string log() const { return file_text(log_); }
  /// True while it runs; otherwise reaps it and keeps its wait status.
  bool running() {
    if (pid_ <= 0) return false;
    if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    return true;
  }
  int status() const { return status_; }

  /// True when it exits within `timeout`.
  bool exits_within(std::chrono::seconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    while (running()) {
      if (clock_type::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return true;
  }

  /// Waits until its log contains `text` (true), it exits, or `timeout` passes.
  bool wait_for_log(const std::string& text, std::chrono::seconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    while (clock_type::now() < deadline) {
      if (log().find(text) != std::string::npos) return true;
      if (!running()) return log().find(text) != std::string::npos;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int status_ = 0;
};

// The processes whose command line mentions `config` (the nodes of this test's cluster, and
// `shoal up` itself), by pid: the node's name (its --name), or "up".
std::map<pid_t, std::string> cluster_processes(const std::string& config) {
  std::map<pid_t, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = file_text(e.path().string() + "/cmdline");
    std::vector<std::string> args;
    for (std::size_t b = 0, z; b < cmdline.size(); b = z + 1) {
      z = cmdline.find('\0', b);
      if (z == std::string::npos) z = cmdline.size();
      args.push_back(cmdline.substr(b, z - b));
    }
    if (std::find(args.begin(), args.end(), config) == args.end()) continue;
    auto it = std::find(args.begin(), args.end(), "--name");
    out[static_cast<pid_t>(std::stol(name))] = it != args.end() && it + 1 != args.end() ? *(it + 1) : "up";
  }
  return out;
}

// The pid of node `node` of the cluster, waiting for it to run (-1 when it does not within 30 s).
pid_t node_pid(const std::string& config, const std::string& node) {
  for (int i = 0; i < 300; ++i) {
    for (const auto& [pid, name] : cluster_processes(config)) {
      if (name == node) return pid;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return -1;
}

// What is left of process `pid`: "" when nothing (or the pid now belongs to another program), else
// "running" or "zombie".
std::string leftover(pid_t pid, const std::string& config) {
  const std::string proc = "/proc/" + std::to_string(pid);
  if (!std::filesystem::exists(proc)) return "";
  const std::string stat = file_text(proc + "/stat");
  const auto close = stat.rfind(')');
  if (close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z') return "zombie";
  return cluster_processes(config).count(pid) ? "running" : "";
}

std::vector<std::int32_t> greedy_ids(shoal::client::client& c, std::string* replica) {
  shoal::client::generate_params p;
  p.prompt_ids = {1, 403};
  p.sampling.temperature = 0;
  p.max_tokens = 16;
  p.ignore_eos = true;
  std::vector<std::int32_t> ids;
  auto s = c.generate(p, [&](const shoal::client::chunk& ch) {
    ids.insert(ids.end(), ch.ids.begin(), ch.ids.end());
    return true;
  });
  if (replica) *replica = s.replica;
  return ids;
}

// Health says every replica is healthy (true), or `timeout` passed.
bool all_healthy(int rpc_port, std::chrono::seconds timeout, std::string& detail) {
  const auto deadline = clock_type::now() + timeout;
  while (clock_type::now() < deadline) {
    try {
      shoal::client::client c("127.0.0.1", rpc_port);
      auto h = c.health();
      bool all = !h.replicas.empty();
      detail.clear();
      for (auto& r : h.replicas) {
        all = all && r.healthy;
        detail += r.name + ": " + r.detail + "; ";
      }
      if (all) return true;
    } catch (const std::exception& e) {
      detail = e.what();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(up)

BOOST_AUTO_TEST_CASE(restarts_a_killed_worker_and_stops_everything_on_ctrl_c,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  shoal::test::temp_dir d;
  const int rpc = free_port();
  std::string y = "cluster: supervised\nmodels:\n  - name: m\n    path: " + shared_path(kStories) + "\nnodes:\n";
  y += "  - name: front\n    host: 127.0.0.1\n    port: " + std::to_string(free_port()) +
       "\n    rpc_port: " + std::to_string(rpc) + "\n    roles: [router, gateway]\n";
  for (const char* w : {"wa", "wb"}) {
    y += std::string("  - name: ") + w + "\n    host: 127.0.0.1\n    port: " + std::to_string(free_port()) +
         "\n    roles: [worker]\n";
  }
  y += "replicas:\n  - name: ra\n    tensor_parallel: [wa]\n  - name: rb\n    tensor_parallel: [wb]\n";
  y += "cache:\n  enabled: false\n";
  d.write("c.yaml", y);
  const std::string config = d / "c.yaml";

  up_process up({"--config", config, "--data-dir", d / "data", "--timeout", "120"}, d / "up.log");
  BOOST_REQUIRE_MESSAGE(up.wait_for_log("is ready", std::chrono::seconds(150)), "not ready:\n" << up.log());
  std::string detail;
  BOOST_REQUIRE_MESSAGE(all_healthy(rpc, std::chrono::seconds(60), detail), detail);
  std::map<pid_t, std::string> seen = cluster_processes(config);  // every node process, for the end
  const pid_t wb = node_pid(config, "wb");
  BOOST_REQUIRE_GT(wb, 0);
  shoal::client::client c("127.0.0.1", rpc);
  const auto reference = greedy_ids(c, nullptr);

  // A worker node crashes.
  BOOST_REQUIRE(::kill(wb, SIGKILL) == 0);
  BOOST_REQUIRE_MESSAGE(up.wait_for_log("node 'wb' was killed by signal 9", std::chrono::seconds(30)), up.log());
  // The other replica keeps serving meanwhile, and shoal up keeps running.
  for (int i = 0; i < 4; ++i) {
    try {
      BOOST_TEST(greedy_ids(c, nullptr) == reference, boost::test_tools::per_element());
    } catch (const shoal::error& e) {
      BOOST_ERROR("request " << i << " after the worker died failed: " << e.what());
    }
  }
  BOOST_REQUIRE_MESSAGE(!up.exits_within(std::chrono::seconds(5)), "shoal up exited after a worker died:\n" << up.log());

  // wb comes back, and its replica serves again.
  BOOST_REQUIRE_MESSAGE(all_healthy(rpc, std::chrono::seconds(90), detail),
                        "not every replica is healthy after the restart: " << detail << "\n" << up.log());
  const pid_t wb2 = node_pid(config, "wb");
  BOOST_TEST((wb2 > 0 && wb2 != wb), "wb was not started again");
  for (const auto& p : cluster_processes(config)) seen.insert(p);
  BOOST_TEST(up.running());
  std::set<std::string> replicas;
  for (int i = 0; i < 4; ++i) {
    std::string replica;
    BOOST_TEST(greedy_ids(c, &replica) == reference, boost::test_tools::per_element());
    replicas.insert(replica);
  }
  BOOST_TEST(replicas.count("rb") == 1u, "the restarted replica took no request");

  // Ctrl-C (SIGINT to the terminal's process group): everything stops, within a bounded time.
  const auto t0 = clock_type::now();
  BOOST_REQUIRE(::kill(-up.pid(), SIGINT) == 0);
  up.exits_within(std::chrono::seconds(60));
  BOOST_REQUIRE_MESSAGE(!up.running(), "shoal up still running 60 s after Ctrl-C");
  std::istringstream lines(up.log());
  for (std::string l; std::getline(lines, l);) {
    if (l.rfind("shoal up:", 0) == 0) BOOST_TEST_MESSAGE(l);
  }
  BOOST_TEST_MESSAGE("shoal up stopped in " << std::chrono::duration<double>(clock_type::now() - t0).count() << " s");
  BOOST_TEST((WIFEXITED(up.status()) && WEXITSTATUS(up.status()) == 0), "wait status " << up.status());
  for (const auto& [pid, node] : seen) {
    if (node == "up") continue;
    const auto left = leftover(pid, config);
    BOOST_TEST(left.empty(), "node '" << node << "' (pid " << pid << ") is " << left << " after shoal up exited");
  }
  BOOST_TEST(cluster_processes(config).empty(), "processes of the cluster still run after shoal up exited");
}

// A node that dies at once (its actor port is taken) is given up on at its --max-restarts-th death
// in a row, as README and --help say: started that many times, then the cluster stops with exit 1.
BOOST_AUTO_TEST_CASE(gives_up_on_a_node_after_max_restarts_deaths, *boost::unit_test::precondition(needs_shared{kStories})) {
  shoal::test::temp_dir d;
  const int taken = free_port();
  const int holder = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(taken));
  BOOST_REQUIRE(::bind(holder, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(holder, 1) == 0);
  std::string y = "cluster: doomed\nmodels:\n  - name: m\n    path: " + shared_path(kStories) + "\nnodes:\n";
  y += "  - name: solo\n    host: 127.0.0.1\n    port: " + std::to_string(taken) + "\n    rpc_port: " +
       std::to_string(free_port()) + "\n    roles: [router, gateway, worker]\n";
  y += "replicas:\n  - name: r0\n    tensor_parallel: [solo]\ncache:\n  enabled: false\n";
  d.write("c.yaml", y);
  up_process up({"--config", d / "c.yaml", "--data-dir", d / "data", "--max-restarts", "2", "--stable", "60"}, d / "up.log");
  const bool exited = up.exits_within(std::chrono::seconds(60));
  ::close(holder);
  BOOST_REQUIRE_MESSAGE(exited, "shoal up still running 60 s after its node kept dying:\n" << up.log());
  const auto log = up.log();
  std::size_t starts = 0;
  for (std::size_t at = 0; (at = log.find("node 'solo' started", at)) != std::string::npos; ++at) ++starts;
  BOOST_TEST(starts == 2u, "node 'solo' was started " << starts << " times with --max-restarts 2:\n" << log);
  BOOST_TEST(log.find("failed 2 times in a row") != std::string::npos, log);
  BOOST_TEST((WIFEXITED(up.status()) && WEXITSTATUS(up.status()) == 1), "wait status " << up.status());
}

// `shoal up` killed with SIGKILL cannot stop its nodes itself: each node gets SIGTERM from the
// kernel when its parent dies, and is gone within seconds.
BOOST_AUTO_TEST_CASE(nodes_stop_when_up_is_killed, *boost::unit_test::precondition(needs_shared{kStories})) {
  shoal::test::temp_dir d;
  std::string y = "cluster: orphans\nmodels:\n  - name: m\n    path: " + shared_path(kStories) + "\nnodes:\n";
  y += "  - name: front\n    host: 127.0.0.1\n    port: " + std::to_string(free_port()) + "\n    rpc_port: " +
       std::to_string(free_port()) + "\n    roles: [router, gateway]\n";
  y += "  - name: wa\n    host: 127.0.0.1\n    port: " + std::to_string(free_port()) + "\n    roles: [worker]\n";
  y += "replicas:\n  - name: ra\n    tensor_parallel: [wa]\ncache:\n  enabled: false\n";
  d.write("c.yaml", y);
  const std::string config = d / "c.yaml";
  up_process up({"--config", config, "--data-dir", d / "data"}, d / "up.log");
  BOOST_REQUIRE_MESSAGE(up.wait_for_log("is ready", std::chrono::seconds(150)), "not ready:\n" << up.log());
  std::map<pid_t, std::string> nodes;
  for (const auto& [pid, name] : cluster_processes(config)) {
    if (name != "up") nodes[pid] = name;
  }
  BOOST_REQUIRE_EQUAL(nodes.size(), 2u);
  BOOST_REQUIRE(::kill(up.pid(), SIGKILL) == 0);  // shoal up alone, not its process group
  BOOST_REQUIRE(up.exits_within(std::chrono::seconds(10)));
  const auto deadline = clock_type::now() + std::chrono::seconds(15);
  std::map<pid_t, std::string> left = nodes;
  while (!left.empty() && clock_type::now() < deadline) {
    for (auto it = left.begin(); it != left.end();) {
      // A zombie has stopped: what reaps it (init, a subreaper) is not shoal up's business.
      const auto state = leftover(it->first, config);
      it = state != "running" ? left.erase(it) : std::next(it);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (const auto& [pid, node] : left) {
    BOOST_ERROR("node '" << node << "' (pid " << pid << ") still runs 15 s after shoal up was SIGKILLed");
    ::kill(pid, SIGKILL);
  }
}

BOOST_AUTO_TEST_SUITE_END()
