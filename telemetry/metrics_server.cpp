#include "telemetry/metrics_server.hpp"
#include "telemetry/log.hpp"

#include <kj/async-io.h>
#include <kj/compat/http.h>

#include <atomic>
#include <future>
#include <string>
#include <string_view>
#include <thread>

#include "telemetry/metrics.hpp"
#include "engine/common/error.hpp"

namespace shoal::telemetry {

namespace {

// What a failure says, fit for the node log: kj's own words only (the text before its first "; ",
// after which kj lists variables, request bytes among them, or a line break and a trace), cut
// short. The metrics port reads no request bodies, so that leaves nothing a client wrote; this
// library sits below the PII masker (governance/), which the doors' logs go through as well.
std::string kj_words(std::string_view t, std::size_t max = 160) {
  t = t.substr(0, t.find('\n'));
  t = t.substr(0, t.find("; "));
  if (t.size() <= max) return std::string(t);
  std::size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(t[cut]) & 0xC0) == 0x80) --cut;
  return std::string(t.substr(0, cut)) + "... (" + std::to_string(t.size()) + " bytes)";
}

class metrics_service final : public kj::HttpService {
 public:
  metrics_service(const kj::HttpHeaderTable& table, std::shared_ptr<prometheus::Registry> registry,
                  std::function<void()> before_scrape)
      : table_(table), registry_(std::move(registry)), before_scrape_(std::move(before_scrape)) {}

  kj::Promise<void> request(kj::HttpMethod method, kj::StringPtr url, const kj::HttpHeaders& headers,
                            kj::AsyncInputStream&, Response& response) override {
    std::string p(url.cStr());
    p = p.substr(0, p.find('?'));
    // kj reads "-5" as 2^64 - 5 and a 25-digit length as the largest 64-bit one: not lengths.
    KJ_IF_MAYBE (length, headers.get(kj::HttpHeaderId::CONTENT_LENGTH)) {
      bool digits = length->size() > 0 && length->size() <= 19;
      for (char c : *length) digits = digits && c >= '0' && c <= '9';
      if (!digits) {
        return reply(response, 400, "Bad Request",
                     "malformed HTTP request: the Content-Length header must be one decimal number of bytes\n");
      }
    }
    if (method != kj::HttpMethod::GET)
      return reply(response, 405, "Method Not Allowed", "only GET is served\n");
    if (p == "/metrics") {
      std::string body;
      try {
        if (before_scrape_) before_scrape_();
        body = render_metrics(*registry_);
      } catch (const std::exception& e) {
        return reply(response, 500, "Internal Server Error",
                     std::string("cannot render the metrics: ") + e.what() + "\n");
      }
      return reply(response, 200, "OK", body, "text/plain; version=0.0.4; charset=utf-8");
    }
    if (p == "/livez") return reply(response, 200, "OK", "ok\n");
    return reply(response, 404, "Not Found",
                 "not found: " + p + " (this server answers /metrics and /livez)\n");
  }

 private:
  kj::Promise<void> reply(Response& response, unsigned status, kj::StringPtr status_text,
                          const std::string& body,
                          const char* content_type = "text/plain; charset=utf-8") {
    kj::HttpHeaders headers(table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, content_type);
    // A kj::String keeps its bytes in place when moved into attach(), unlike a short std::string.
    auto bytes = kj::heapString(body.data(), body.size());
    auto stream = response.send(status, status_text, headers, bytes.size());
    auto write = stream->write(bytes.begin(), bytes.size());
    return write.attach(kj::mv(stream), kj::mv(bytes));
  }

  const kj::HttpHeaderTable& table_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::function<void()> before_scrape_;
};

// What kj-http could not hand to the service: a request head it cannot parse, or a Content-Length
// it cannot read. Both are the client's mistakes: a plain 400 that names the problem, never a 500
// with kj's source location (kj's default), and nothing the client sent in a log.
class metrics_errors final : public kj::HttpServerErrorHandler {
 public:
  explicit metrics_errors(const kj::HttpHeaderTable& table) : table_(table) {}

  kj::Promise<void> handleClientProtocolError(kj::HttpHeaders::ProtocolError e,
                                              kj::HttpService::Response& response) override {
    return reply(response, std::string("malformed HTTP request: ") + e.description.cStr() + "\n");
  }

  kj::Promise<void> handleApplicationError(kj::Exception e, kj::Maybe<kj::HttpService::Response&> response) override {
    // metrics_service answers its own failures; what reaches here is kj reading the request.
    if (e.getType() == kj::Exception::Type::DISCONNECTED) return kj::READY_NOW;
    KJ_IF_MAYBE (r, response) {
      return reply(*r, "malformed HTTP request: the Content-Length header must be one decimal number of bytes, sent "
                       "once, and the body must match its framing\n");
    }
    return kj::READY_NOW;
  }

 private:
  kj::Promise<void> reply(kj::HttpService::Response& response, const std::string& text) {
    kj::HttpHeaders headers(table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, "text/plain; charset=utf-8");
    auto bytes = kj::heapString(text.data(), text.size());
    auto stream = response.send(400, "Bad Request", headers, bytes.size());
    auto write = stream->write(bytes.begin(), bytes.size());
    return write.attach(kj::mv(stream), kj::mv(bytes));
  }

  const kj::HttpHeaderTable& table_;
};

class metrics_server_impl final : public metrics_server {
 public:
  metrics_server_impl(std::string host, std::int32_t port,
                      std::shared_ptr<prometheus::Registry> registry,
                      std::function<void()> before_scrape) {
    std::promise<kj::Own<kj::CrossThreadPromiseFulfiller<void>>> ready;
    auto started = ready.get_future();
    thread_ =
        std::thread([this, &ready, port, host = std::move(host), registry = std::move(registry),
                     before_scrape = std::move(before_scrape)]() mutable {
          run(host, port, std::move(registry), std::move(before_scrape), ready);
        });
    try {
      stop_ = started.get();
    } catch (...) {
      thread_.join();
      throw;
    }
  }

  ~metrics_server_impl() noexcept override { stop(); }

  std::int32_t port() const override { return port_; }

  void stop() override {
    if (!thread_.joinable()) return;
    stop_->fulfill();
    thread_.join();
    stop_ = nullptr;
  }

 private:
  void run(const std::string& host, std::int32_t port,
           std::shared_ptr<prometheus::Registry> registry, std::function<void()> before_scrape,
           std::promise<kj::Own<kj::CrossThreadPromiseFulfiller<void>>>& ready) {
    bool started = false;
    try {
      auto io = kj::setupAsyncIo();
      kj::Own<kj::ConnectionReceiver> listener;
      KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                     auto addr = io.provider->getNetwork()
                                     .parseAddress(host, static_cast<unsigned>(port))
                                     .wait(io.waitScope);
                     listener = addr->listen();
                   })) {
        ready.set_exception(std::make_exception_ptr(error(
            errc::unavailable, "the metrics endpoint cannot listen on " + host + ":" +
                                   std::to_string(port) + ": " + e->getDescription().cStr())));
        return;
      }
      port_ = static_cast<std::int32_t>(listener->getPort());
      kj::HttpHeaderTable table;
      metrics_service service(table, std::move(registry), std::move(before_scrape));
      metrics_errors errors(table);
      kj::HttpServerSettings settings;
      settings.errorHandler = errors;
      kj::HttpServer server(io.provider->getTimer(), table, service, settings);
      auto stop = kj::newPromiseAndCrossThreadFulfiller<void>();
      ready.set_value(kj::mv(stop.fulfiller));
      started = true;
      stop.promise.exclusiveJoin(server.listenHttp(*listener)).wait(io.waitScope);
    } catch (...) {
      if (!started) {
        ready.set_exception(std::current_exception());
        return;
      }
      try {
        throw;
      } catch (const kj::Exception& e) {
        log::error("metrics: event loop failed: {}", kj_words(e.getDescription().cStr()));
      } catch (const std::exception& e) {
        log::error("metrics: event loop failed: {}", kj_words(e.what()));
      } catch (...) {
        log::error("metrics: event loop failed (an exception of no known type)");
      }
    }
  }

  std::thread thread_;
  std::atomic<std::int32_t> port_{0};
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> stop_;
};

}  // namespace

std::unique_ptr<metrics_server> start_metrics_server(const std::string& host, std::int32_t port,
                                                     std::shared_ptr<prometheus::Registry> registry,
                                                     std::function<void()> before_scrape) {
  return std::make_unique<metrics_server_impl>(host, port, std::move(registry),
                                               std::move(before_scrape));
}

}  // namespace shoal::telemetry
