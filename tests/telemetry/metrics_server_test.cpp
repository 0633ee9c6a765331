// The /metrics endpoint (kj-http): Prometheus text for a registry, /livez, 404 elsewhere.

#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <boost/test/unit_test.hpp>

#include <atomic>

#include "telemetry/metrics.hpp"
#include "telemetry/metrics_server.hpp"
#include "engine/common/error.hpp"
#include "tests/support/http.hpp"

using namespace shoal::telemetry;

BOOST_AUTO_TEST_SUITE(metrics_server_suite)

BOOST_AUTO_TEST_CASE(serves_metrics_livez_and_404) {
  auto registry = std::make_shared<prometheus::Registry>();
  serving_metrics m(*registry, "tiny", "r0");
  m.generation_tokens.Increment(7);
  m.finished_by("length").Increment();
  std::atomic<int> scrapes{0};
  auto server = start_metrics_server("127.0.0.1", 0, registry, [&] {
    ++scrapes;
    m.running.Set(3);  // gauges refreshed just before rendering
  });
  BOOST_REQUIRE_GT(server->port(), 0);

  auto r = shoal::test::http_get("127.0.0.1", server->port(), "/metrics");
  BOOST_CHECK_EQUAL(r.status, 200);
  BOOST_CHECK_MESSAGE(r.headers.find("text/plain; version=0.0.4") != std::string::npos, r.headers);
  BOOST_CHECK(r.body.find("# TYPE shoal:generation_tokens_total counter") != std::string::npos);
  BOOST_CHECK(r.body.find("shoal:generation_tokens_total{model_name=\"tiny\",replica=\"r0\"} 7") !=
              std::string::npos);
  BOOST_CHECK(r.body.find("shoal:num_requests_running{model_name=\"tiny\",replica=\"r0\"} 3") !=
              std::string::npos);
  BOOST_CHECK(r.body.find("finished_reason=\"length\"") != std::string::npos);
  BOOST_CHECK_EQUAL(scrapes.load(), 1);

  // A query string does not change the path.
  BOOST_CHECK_EQUAL(shoal::test::http_get("127.0.0.1", server->port(), "/metrics?x=1").status, 200);

  r = shoal::test::http_get("127.0.0.1", server->port(), "/livez");
  BOOST_CHECK_EQUAL(r.status, 200);
  BOOST_CHECK_EQUAL(r.body, "ok\n");

  r = shoal::test::http_get("127.0.0.1", server->port(), "/nope");
  BOOST_CHECK_EQUAL(r.status, 404);

  const auto port = server->port();
  server->stop();
  server->stop();  // idempotent
  BOOST_CHECK_EQUAL(shoal::test::http_get("127.0.0.1", port, "/livez").status, 0);
}

BOOST_AUTO_TEST_CASE(a_taken_port_is_a_clear_error) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto first = start_metrics_server("127.0.0.1", 0, registry);
  try {
    auto second = start_metrics_server("127.0.0.1", first->port(), registry);
    BOOST_ERROR("two servers listen on one port");
  } catch (const shoal::error& e) {
    BOOST_CHECK(e.code() == shoal::errc::unavailable);
    BOOST_CHECK_MESSAGE(
        std::string(e.what()).find(std::to_string(first->port())) != std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_SUITE_END()
