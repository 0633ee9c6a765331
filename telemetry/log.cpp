#include "telemetry/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>

#include <cstdlib>

#include "engine/common/error.hpp"

namespace shoal::telemetry {

void init_logging(const std::string& node, const std::string& level) {
  const auto lvl = spdlog::level::from_str(level);
  // from_str answers `off` for any name it does not know: only "off" itself may mean off.
  if (lvl == spdlog::level::off && level != "off") {
    throw error(errc::invalid_argument,
                "unknown log level '" + level + "' (trace, debug, info, warn, error, off)");
  }
  auto logger = spdlog::stderr_logger_mt("shoal");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %-5l [node " + node + "] %v");
  logger->set_level(lvl);
  // Errors reach the file at once even when the process is killed right after.
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
}

std::string default_log_level() {
  const char* env = std::getenv("SHOAL_LOG_LEVEL");
  return env && *env ? env : "info";
}

}  // namespace shoal::telemetry
