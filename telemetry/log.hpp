#pragma once
// Node logs: one logger with levels for every component of a node (spdlog, to stderr). A line is
// `2026-12-07T21:10:15.123 info  [node front] message`. The level comes from `shoal node
// --log-level` (or $SHOAL_LOG_LEVEL): trace, debug, info (default), warn, error, off.
//
// What reaches a log is never a request's bytes in clear: callers log what happened and to whom
// (ids, sizes, codes), and anything derived from user input goes through governance::masker first.

#include <spdlog/spdlog.h>

#include <string>

namespace shoal::telemetry {

/// Sets up the process-wide logger for node `node` at `level`; throws shoal::error
/// (invalid_argument) for an unknown level name.
void init_logging(const std::string& node, const std::string& level);

/// The level named by $SHOAL_LOG_LEVEL, or "info".
std::string default_log_level();

}  // namespace shoal::telemetry

namespace shoal::log {

using spdlog::debug;
using spdlog::error;
using spdlog::info;
using spdlog::trace;
using spdlog::warn;

}  // namespace shoal::log
