// GCC 12 reports kj's ExceptionOr<T> (a Maybe<T> beside an exception) as maybe-uninitialized
// when T holds strings; a false positive in kj's headers, not in this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "server/connection_limit.hpp"

#include "telemetry/log.hpp"

namespace shoal::server {

bounded_listener::bounded_listener(const char* door, std::int32_t max_connections, kj::Timer& timer,
                                   serve_fn serve, refuse_fn refuse)
    : door_(door), max_(max_connections), timer_(timer), serve_(std::move(serve)), refuse_(std::move(refuse)),
      tasks_(*this) {}

kj::Promise<void> bounded_listener::listen(kj::ConnectionReceiver& listener) {
  return listener.accept()
      .then(
          [this](kj::Own<kj::AsyncIoStream>&& stream) -> kj::Promise<void> {
            // serve_ and refuse_ run under kj::evalNow: one that throws before it returns a
            // promise fails its own connection (a task of tasks_), not this accept loop, which
            // both doors' accepting hangs on.
            if (max_ > 0 && open_ >= max_) {
              log::debug("{}: refusing a connection: {} open, the limit", door_, open_);
              auto& s = *stream;
              // A refused client gets a moment to read the answer, no more.
              tasks_.add(kj::evalNow([&] { return refuse_(s); })
                             .exclusiveJoin(timer_.afterDelay(2 * kj::SECONDS))
                             .catch_([](kj::Exception&&) {})
                             .attach(kj::mv(stream)));
              return kj::READY_NOW;
            }
            ++open_;
            auto closed = kj::defer([this] { --open_; });
            tasks_.add(kj::evalNow([&] { return serve_(kj::mv(stream)); }).attach(kj::mv(closed)));
            return kj::READY_NOW;
          },
          [this](kj::Exception&& e) -> kj::Promise<void> {
            // Out of file descriptors and the like: say so, and try again shortly.
            log::warn("{}: accept failed ({}); retrying", door_, e.getDescription().cStr());
            return timer_.afterDelay(100 * kj::MILLISECONDS);
          })
      .then([this, &listener] { return listen(listener); });
}

void bounded_listener::taskFailed(kj::Exception&& e) {
  // serve_ handles its connection's failures; what reaches here says only that one ended badly.
  log::debug("{}: a connection ended {}", door_,
             e.getType() == kj::Exception::Type::DISCONNECTED ? "with the client disconnecting" : "in an error");
}

kj::Promise<void> close_after_answer(kj::AsyncIoStream& stream) {
  stream.shutdownWrite();
  auto sink = kj::heapArray<kj::byte>(4096);
  auto read = stream.tryRead(sink.begin(), 1, sink.size());
  return read.ignoreResult().attach(kj::mv(sink));
}

}  // namespace shoal::server
