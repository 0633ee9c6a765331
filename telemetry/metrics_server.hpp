#pragma once
// GET /metrics over kj-http (the Cap'n Proto event loop library), rendering a prometheus-cpp
// registry with its TextSerializer. Not civetweb: a binary that links cuBLAS overflows civetweb's
// thread stacks (DEVELOPERS.md).

#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <string>

namespace shoal::telemetry {

class metrics_server {
 public:
  virtual ~metrics_server() = default;
  virtual std::int32_t port() const = 0;
  virtual void stop() = 0;
};

/// Serves `registry` at http://host:port/metrics (also answers GET /livez with 200) on its own
/// thread. `before_scrape` (may be empty) runs before each rendering, to refresh gauges.
/// Throws shoal::error (errc::unavailable) when it cannot listen.
std::unique_ptr<metrics_server> start_metrics_server(const std::string& host, std::int32_t port,
                                                     std::shared_ptr<prometheus::Registry> registry,
                                                     std::function<void()> before_scrape = {});

}  // namespace shoal::telemetry
