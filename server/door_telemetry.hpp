#pragma once
// What the front doors report about their clients, and how: a client that goes away is routine
// (counted in shoal:client_disconnects_total{door, during}, logged at debug); anything that came from
// a client (a kj exception's description can quote the request's bytes) is masked with the
// cluster's PII masker and cut short before it reaches a log line.

#include <kj/exception.h>

#include <memory>
#include <string>
#include <string_view>

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include "governance/pii.hpp"

namespace shoal::server {

class door_telemetry {
 public:
  /// `registry` null: nothing is counted. `pii`: the masker's settings (the cluster's `pii` section).
  door_telemetry(std::shared_ptr<prometheus::Registry> registry, const governance::masker_options& pii);

  /// A client went away before its exchange was over. door: http | rpc; during: request (its
  /// request was not all there) | response (its answer was not all delivered).
  void client_gone(const char* door, const char* during, const std::string& peer);

  /// `text` masked and cut to `max` bytes: the only form in which client-derived text is logged.
  std::string for_log(std::string_view text, std::size_t max = 160) const;
  /// What a kj exception (or log line) says in kj's own words: the text before its first "; ",
  /// after which kj lists variables, request bytes among them (as text and as numbers), masked.
  std::string for_log(const kj::Exception& e) const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* disconnects_ = nullptr;
  governance::masker masker_;
};

/// While it lives, kj's own log lines (KJ_LOG, "unhandled exception" from its task sets) on the
/// constructing thread go to the node log at debug level, masked: kj quotes request bytes in some
/// of them. Construct on the event loop's thread; destroy on it, before the loop.
class kj_log_to_debug final : public kj::ExceptionCallback {
 public:
  explicit kj_log_to_debug(const door_telemetry& telemetry) : telemetry_(telemetry) {}

  void logMessage(kj::LogSeverity severity, const char* file, int line, int context_depth,
                  kj::String&& text) override;

 private:
  const door_telemetry& telemetry_;
};

}  // namespace shoal::server
