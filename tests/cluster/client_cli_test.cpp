// `shoal client generate|chat|bench` against a real one-node cluster (a `shoal node` process).

#include <boost/test/unit_test.hpp>

#include <chrono>

#include <nlohmann/json.hpp>

#include "tests/support/local_cluster.hpp"
#include "tests/support/shared.hpp"

using shoal::test::local_cluster;
using shoal::test::needs_shared;
using shoal::test::read_json;
using shoal::test::run_shoal;
using shoal::test::shared_path;

namespace {

const char* kStories = "models/stories260K/hf";

std::unique_ptr<local_cluster> one_node() {
  auto c = std::make_unique<local_cluster>(
      shared_path(kStories),
      std::vector<shoal::test::node_def>{{"n0", {"router", "gateway", "worker"}, 1}},
      std::vector<shoal::test::replica_def>{{"r0", {"n0"}}});
  c->wait_ready();
  return c;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(client_cli)

BOOST_AUTO_TEST_CASE(generate_chat_and_bench,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  auto cluster = one_node();
  const std::string at = "127.0.0.1:" + std::to_string(cluster->rpc_port());
  auto g = read_json(shared_path("golden/once_upon_a_time.json"));
  const std::vector<std::string> greedy48 = {
      "--prompt",    g["prompt"].get<std::string>(), "--max-tokens", "48", "--temperature", "0",
      "--ignore-eos"};

  // --json: the golden tokens and text, with usage and timings.
  std::vector<std::string> args = {"client", "generate", "--connect", at, "--json"};
  args.insert(args.end(), greedy48.begin(), greedy48.end());
  auto r = run_shoal(args, 60);
  BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
  auto j = nlohmann::json::parse(r.out);
  BOOST_CHECK(j["generated_ids"] == g["generated_ids"]);
  BOOST_CHECK_EQUAL(j["generated_text"].get<std::string>(), g["generated_text"].get<std::string>());
  BOOST_CHECK_EQUAL(j["finish_reason"].get<std::string>(), "length");
  BOOST_CHECK_EQUAL(j["usage"]["completion_tokens"].get<int>(), 48);
  BOOST_CHECK_EQUAL(j["usage"]["prompt_tokens"].get<int>(),
                    static_cast<int>(g["prompt_ids"].size()));
  BOOST_CHECK_GT(j["timings"]["client_total_seconds"].get<double>(), 0.0);
  BOOST_CHECK(!j["request_id"].get<std::string>().empty());

  // Streaming (the default): the prompt, then the text as it comes.
  args = {"client", "generate", "--connect", at};
  args.insert(args.end(), greedy48.begin(), greedy48.end());
  r = run_shoal(args, 60);
  BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
  BOOST_CHECK_EQUAL(r.out,
                    g["prompt"].get<std::string>() + g["generated_text"].get<std::string>() + "\n");

  // Refusals are errors naming the problem, exit status 1.
  r = run_shoal({"client", "generate", "--connect", at, "--prompt", "hi", "--model", "nope"}, 60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK_MESSAGE(r.err.find("unknown model 'nope'") != std::string::npos, r.err);
  r = run_shoal({"client", "generate", "--connect", at, "--prompt", "hi", "--temperature", "-1"},
                60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK_MESSAGE(r.err.find("temperature") != std::string::npos, r.err);
  r = run_shoal({"client", "chat", "--connect", at, "--message", "hi"}, 60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK_MESSAGE(r.err.find("no chat template") != std::string::npos, r.err);

  // bench: every request completes with exactly --gen-tokens tokens.
  r = run_shoal({"client", "bench", "--connect", at, "--concurrency", "2", "--requests", "6",
                 "--prompt-tokens", "16", "--gen-tokens", "24", "--json"},
                120);
  BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
  j = nlohmann::json::parse(r.out);
  BOOST_CHECK_EQUAL(j["completed"].get<int>(), 6);
  BOOST_CHECK_EQUAL(j["failed"].get<int>(), 0);
  BOOST_CHECK_EQUAL(j["output_tokens"].get<int>(), 6 * 24);
  BOOST_CHECK_GT(j["output_tokens_per_second"].get<double>(), 0.0);
  BOOST_CHECK_GT(j["ttft_seconds"]["p50"].get<double>(), 0.0);
  BOOST_CHECK_GE(j["itl_seconds"]["p99"].get<double>(), j["itl_seconds"]["p50"].get<double>());
  BOOST_CHECK_GE(j["e2e_seconds"]["p99"].get<double>(), j["e2e_seconds"]["p50"].get<double>());
  r = run_shoal(
      {"client", "bench", "--connect", at, "--prompt-tokens", "500", "--gen-tokens", "64"}, 60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK_MESSAGE(r.err.find("context") != std::string::npos, r.err);
}

BOOST_AUTO_TEST_CASE(no_gateway_is_a_clear_error) {
  const int port = shoal::test::free_port();
  auto r = run_shoal(
      {"client", "generate", "--connect", "127.0.0.1:" + std::to_string(port), "--prompt", "hi"},
      60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK_MESSAGE(r.err.find("cannot connect to the Shoal gateway at 127.0.0.1:" +
                                 std::to_string(port)) != std::string::npos,
                      r.err);
  r = run_shoal({"client", "generate", "--connect", "nocolon", "--prompt", "hi"}, 60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK_MESSAGE(r.err.find("HOST:PORT") != std::string::npos, r.err);
}

// Pointed at a port that is not the RPC gateway (the HTTP API, the metrics endpoint, the node's
// actor port), the client says so within its call timeout and prints nothing of an answer.
BOOST_AUTO_TEST_CASE(a_port_that_is_not_the_rpc_gateway_is_named,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  auto cluster = one_node();
  const std::vector<std::pair<std::string, int>> ports = {{"the HTTP API", cluster->http_port()},
                                                          {"the metrics endpoint", cluster->metrics_port("n0")},
                                                          {"the actor port", cluster->actor_port("n0")}};
  for (const auto& [what, port] : ports) {
    BOOST_TEST_CONTEXT(what << " (" << port << ")") {
      const auto t0 = std::chrono::steady_clock::now();
      auto r = run_shoal({"client", "generate", "--connect", "127.0.0.1:" + std::to_string(port), "--prompt",
                          "Once upon a time", "--max-tokens", "4"},
                         120);
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      BOOST_TEST(r.status == 1, r.out << r.err);
      BOOST_TEST(r.err.find("not a Shoal RPC gateway") != std::string::npos, r.err);
      BOOST_TEST(r.err.find("127.0.0.1:" + std::to_string(port)) != std::string::npos, r.err);
      BOOST_TEST(r.out.empty(), "printed before the connection worked: " << r.out);
      // The client's call timeout is 30 s by default.
      BOOST_TEST(took < 32.0, "took " << took << " s");
    }
  }
  // The gateway itself still answers, and a generation prints the prompt then the text.
  auto ok = run_shoal({"client", "generate", "--connect", "127.0.0.1:" + std::to_string(cluster->rpc_port()),
                       "--prompt", "Once upon a time", "--max-tokens", "4"},
                      60);
  BOOST_TEST(ok.status == 0, ok.err);
  BOOST_TEST(ok.out.rfind("Once upon a time", 0) == 0u, ok.out);
}

BOOST_AUTO_TEST_SUITE_END()
