#pragma once
// A listener with a bound on open connections, for both doors: a client that opens connections
// and sends nothing (or one byte a second) must not exhaust the node's file descriptors. A
// connection over the limit is handed to `refuse` for a last word, then closed.

#include <kj/async-io.h>

#include <cstdint>
#include <functional>
#include <string>

namespace shoal::server {

/// Ends our side of a refused connection after its last word was written: shuts down writing, then
/// reads what the client still sends until it closes, so the close is not a reset that loses the
/// answer on its way.
kj::Promise<void> close_after_answer(kj::AsyncIoStream& stream);

class bounded_listener final : public kj::TaskSet::ErrorHandler {
 public:
  /// Serves one connection; the promise resolves (or fails) when the connection is over.
  using serve_fn = std::function<kj::Promise<void>(kj::Own<kj::AsyncIoStream>)>;
  /// Says why a connection is refused; the connection is closed once the promise settles.
  using refuse_fn = std::function<kj::Promise<void>(kj::AsyncIoStream&)>;

  /// `door` names the door in log lines (http, rpc).
  bounded_listener(const char* door, std::int32_t max_connections, kj::Timer& timer, serve_fn serve,
                   refuse_fn refuse);

  /// Accepts until the promise is dropped (which drops every connection it serves).
  kj::Promise<void> listen(kj::ConnectionReceiver& listener);

  std::int32_t open() const { return open_; }

 private:
  void taskFailed(kj::Exception&& e) override;

  const char* door_;
  std::int32_t max_;
  kj::Timer& timer_;
  serve_fn serve_;
  refuse_fn refuse_;
  std::int32_t open_ = 0;
  kj::TaskSet tasks_;  // last: its tasks refer to the members above
};

}  // namespace shoal::server
