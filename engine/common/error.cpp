#include "engine/common/error.hpp"

namespace shoal {

const char* to_string(errc code) {
  switch (code) {
    case errc::invalid_argument: return "invalid_argument";
    case errc::not_found: return "not_found";
    case errc::corrupt_file: return "corrupt_file";
    case errc::unsupported: return "unsupported";
    case errc::out_of_range: return "out_of_range";
    case errc::unavailable: return "unavailable";
    case errc::overloaded: return "overloaded";
    case errc::cancelled: return "cancelled";
    case errc::unauthenticated: return "unauthenticated";
    case errc::forbidden: return "forbidden";
    case errc::rate_limited: return "rate_limited";
    case errc::internal: return "internal";
  }
  return "unknown";
}

}  // namespace shoal
