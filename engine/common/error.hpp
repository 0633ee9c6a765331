#pragma once
// Errors of the engine. Parsers throw shoal::error inside a file; the public loaders catch once and
// rethrow with the file named, so a caller sees one clear message (STYLE: exceptions only where the
// whole operation ends).

#include <stdexcept>
#include <string>

namespace shoal {

enum class errc {
  invalid_argument,  // a caller passed something that cannot work (flag, prompt, parameter)
  not_found,         // a path or a key that must exist does not
  corrupt_file,      // a file's bytes contradict its own format
  unsupported,       // valid input that this build does not implement (architecture, dtype, op)
  out_of_range,      // a length or index beyond a limit (context, vocab, file size)
  unavailable,       // a peer, node or replica that should answer does not (down, timed out)
  overloaded,        // a queue or capacity limit refused new work; retry later
  cancelled,         // the caller withdrew the request
  unauthenticated,   // no valid credentials (an unknown or missing API key)
  forbidden,         // the principal may not do this (domain policy, a blocking rule)
  rate_limited,      // the tenant is over a configured rate or concurrency limit
  internal,          // a bug: an invariant did not hold (keep last: code parsers iterate up to it)
};

const char* to_string(errc code);

/// An expected failure returned as a value (a refused request, a check that did not pass) to a
/// caller that decides what happens next; `error` below is the same pair, thrown.
struct refusal {
  errc code = errc::internal;
  std::string message;
};

/// The one exception type the engine throws; `what()` is a complete sentence for the user.
class error : public std::runtime_error {
 public:
  error(errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  errc code() const { return code_; }

 private:
  errc code_;
};

}  // namespace shoal
