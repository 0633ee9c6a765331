// Errors keep their code from where they happen to the client, through real `shoal node`
// processes: a shard worker that stops answering ends its requests with `unavailable` within the
// replica's step_timeout_s; a model whose tokenizer file is missing is `not_found` through the RPC
// door (generate, tokenize) and the HTTP door (404), never `internal` or 500.

#include <signal.h>

#include <boost/test/unit_test.hpp>
#include <chrono>
#include <filesystem>
#include <future>
#include <thread>

#include "tests/support/local_cluster.hpp"
#include "tests/support/shared.hpp"

using shoal::test::local_cluster;
using shoal::test::needs_shared;
using shoal::test::shared_path;

namespace {

const char* kStories = "models/stories260K/hf";

// SIGCONTs a stopped process when the test ends, however it ends (a stopped node would ignore the
// cluster's SIGTERM until the harness's SIGKILL).
struct resume_on_exit {
  pid_t pid;
  ~resume_on_exit() { ::kill(pid, SIGCONT); }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(error_carrier)

BOOST_AUTO_TEST_CASE(silent_worker_ends_requests_unavailable_within_step_timeout,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  constexpr int kStepTimeout = 3;
  shoal::test::replica_def rep{"tp2", {"wa", "wb"}, 4096, 32, 256, 256};
  rep.extra_yaml = "step_timeout_s: " + std::to_string(kStepTimeout);
  local_cluster cl(shared_path(kStories),
                   {{"front", {"router", "gateway"}, 1}, {"wa", {"worker"}, 1}, {"wb", {"worker"}, 1}}, {rep});
  cl.wait_ready(90);
  // Rank 1's process stops: its connections stay open, nothing answers, nothing dies.
  resume_on_exit resume{cl.pid("wb")};
  BOOST_REQUIRE(::kill(cl.pid("wb"), SIGSTOP) == 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto outcome = std::async(std::launch::async, [&] {
    shoal::client::client c("127.0.0.1", cl.rpc_port());
    shoal::client::generate_params p;
    p.prompt_ids = {1, 403};
    p.sampling.temperature = 0;
    p.max_tokens = 32;
    try {
      auto s = c.generate(p);
      return std::make_pair(shoal::errc::internal, "it finished: " + s.finish_reason);
    } catch (const shoal::error& e) {
      return std::make_pair(e.code(), std::string(e.what()));
    }
  });
  // Generous: the timeout, then the refusal's way back, on 2 busy cores under a sanitizer.
  const auto limit = std::chrono::seconds(kStepTimeout + 30);
  if (outcome.wait_for(limit) != std::future_status::ready) {
    ::kill(cl.pid("wb"), SIGCONT);  // lets the step, and so the request, finish
    outcome.wait();
    BOOST_FAIL("a request to a stopped worker did not end within " << limit.count() << " s");
  }
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  const auto [code, what] = outcome.get();
  BOOST_TEST_MESSAGE("after " << std::chrono::duration<double>(elapsed).count() << " s: " << shoal::to_string(code)
                              << ": " << what);
  BOOST_TEST((code == shoal::errc::unavailable), shoal::to_string(code) << ": " << what);
  BOOST_TEST(what.find("'wb'") != std::string::npos, "names the silent rank's node: " << what);
  BOOST_TEST(what.find("step_timeout_s") != std::string::npos, "says which timeout ran out: " << what);
  BOOST_TEST((elapsed >= std::chrono::seconds(kStepTimeout)), "ended before the step timeout: it was not the timeout");
}

BOOST_AUTO_TEST_CASE(missing_tokenizer_is_not_found_at_both_doors,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  // The model directory without its tokenizer.json.
  shoal::test::temp_dir models;
  const std::string dir = models / "no-tokenizer";
  std::filesystem::create_directories(dir);
  for (const auto& f : std::filesystem::directory_iterator(shared_path(kStories))) {
    if (f.path().filename() == "tokenizer.json") continue;
    std::filesystem::copy(f.path(), dir + "/" + f.path().filename().string());
  }
  local_cluster cl(dir, {{"main", {"router", "gateway", "worker"}, 1}}, {{"r0", {"main"}, 4096, 32, 256, 256}});
  cl.wait_live();
  // The replica reports why it cannot serve (its batcher could not load the tokenizer).
  std::string detail;
  for (int i = 0; i < 300 && detail.find("tokenizer") == std::string::npos; ++i) {
    try {
      shoal::client::client c("127.0.0.1", cl.rpc_port());
      for (auto& r : c.health().replicas) detail = r.detail;
    } catch (const std::exception& e) {
      detail = e.what();
    }
    if (detail.find("tokenizer") == std::string::npos) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  BOOST_TEST_MESSAGE("replica detail: " << detail);
  BOOST_REQUIRE_MESSAGE(detail.find("tokenizer") != std::string::npos, "replica detail: " << detail);

  shoal::client::client c("127.0.0.1", cl.rpc_port());
  auto expect_not_found = [](const std::function<void()>& call, const std::string& what) {
    try {
      call();
      BOOST_ERROR(what << " succeeded without a tokenizer");
    } catch (const shoal::error& e) {
      BOOST_TEST_MESSAGE(what << ": " << shoal::to_string(e.code()) << ": " << e.what());
      BOOST_TEST((e.code() == shoal::errc::not_found), what << ": " << shoal::to_string(e.code()) << ": " << e.what());
      BOOST_TEST(std::string(e.what()).find("tokenizer") != std::string::npos, what << " names the file: " << e.what());
    }
  };
  shoal::client::generate_params p;
  p.prompt = "Once upon a time";
  p.max_tokens = 4;
  expect_not_found([&] { c.generate(p); }, "rpc generate");
  expect_not_found([&] { c.tokenize("Once upon a time"); }, "rpc tokenize");

  auto r = shoal::test::http_request("127.0.0.1", cl.http_port(), "POST", "/v1/completions",
                                     R"({"model": "m", "prompt": "Once upon a time", "max_tokens": 4})");
  BOOST_TEST_MESSAGE("http completions: " << r.status << " " << r.body);
  BOOST_TEST(r.status == 404, r.status << " " << r.body);
  // The errc itself, not OpenAI's "model_not_found": the model exists, its tokenizer file does not.
  BOOST_TEST(r.body.find(R"("code":"not_found")") != std::string::npos, r.body);
  BOOST_TEST(r.body.find("tokenizer") != std::string::npos, r.body);
}

BOOST_AUTO_TEST_SUITE_END()
