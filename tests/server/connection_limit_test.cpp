// The per-door connection limit (server/connection_limit.hpp) on its own, on 127.0.0.1: what one
// connection's handler does wrong stays with that connection.

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // kj's ExceptionOr<T>, see actors/gateway.cpp

#include <boost/test/unit_test.hpp>

#include <kj/async-io.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "server/connection_limit.hpp"

using shoal::server::bounded_listener;

namespace {

// What a client connection read before the server closed it, or nullopt when nothing came within
// `ms` (the accept loop is gone, or the connection is held open).
std::optional<std::string> read_reply(kj::AsyncIoContext& io, kj::NetworkAddress& addr, int ms) {
  auto conn = addr.connect().wait(io.waitScope);
  auto read = conn->readAllText()
                  .then([](kj::String s) -> kj::Maybe<std::string> { return std::string(s.cStr()); })
                  .catch_([](kj::Exception&&) -> kj::Maybe<std::string> { return std::string(); });  // reset
  auto timeout = io.provider->getTimer().afterDelay(ms * kj::MILLISECONDS).then([]() -> kj::Maybe<std::string> {
    return nullptr;
  });
  auto got = read.exclusiveJoin(kj::mv(timeout)).wait(io.waitScope);
  KJ_IF_MAYBE (s, got) return *s;
  return std::nullopt;
}

// Runs the loop until `done` holds or `ms` pass; whether it holds.
template <class F>
bool settle(kj::AsyncIoContext& io, F&& done, int ms = 2000) {
  for (int i = 0; i < ms && !done(); ++i) io.provider->getTimer().afterDelay(kj::MILLISECONDS).wait(io.waitScope);
  return done();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(connection_limit)

// Issue: serve_ or refuse_ throwing before it returned a promise failed the accept loop itself,
// and with it both doors' accepting (the gateway waits on the two joined): one bad connection
// stopped the node from taking any more.
BOOST_AUTO_TEST_CASE(a_handler_that_throws_fails_only_its_connection) {
  auto io = kj::setupAsyncIo();
  auto addr = io.provider->getNetwork().parseAddress("127.0.0.1", 0).wait(io.waitScope);
  auto listener = addr->listen();
  auto port = listener->getPort();
  auto target = io.provider->getNetwork().parseAddress("127.0.0.1", port).wait(io.waitScope);

  int served = 0, refused = 0;
  bool throw_next_serve = true, throw_next_refuse = true;
  // Served connections are answered "served" and closed; a held one (below) stays open.
  kj::Own<kj::PromiseFulfiller<void>> release;
  bool hold_next = false;
  bounded_listener limit(
      "test", 1, io.provider->getTimer(),
      [&](kj::Own<kj::AsyncIoStream> s) -> kj::Promise<void> {
        ++served;
        if (throw_next_serve) {
          throw_next_serve = false;
          throw std::runtime_error("a handler bug, thrown before any promise");
        }
        if (hold_next) {
          hold_next = false;
          auto paf = kj::newPromiseAndFulfiller<void>();
          release = kj::mv(paf.fulfiller);
          return paf.promise.attach(kj::mv(s));
        }
        auto& out = *s;
        return out.write("served", 6).attach(kj::mv(s));
      },
      [&](kj::AsyncIoStream& s) -> kj::Promise<void> {
        ++refused;
        if (throw_next_refuse) {
          throw_next_refuse = false;
          throw std::runtime_error("a refusal bug, thrown before any promise");
        }
        return s.write("refused", 7);
      });
  std::optional<std::string> accept_failure;
  auto accepting = limit.listen(*listener).eagerlyEvaluate([&](kj::Exception&& e) {
    accept_failure = e.getDescription().cStr();
  });

  // serve throws: that connection is closed without a word; the next one is served.
  BOOST_TEST((read_reply(io, *target, 2000) == std::optional<std::string>("")));
  BOOST_TEST((read_reply(io, *target, 2000) == std::optional<std::string>("served")),
             "accept loop failed: " << accept_failure.value_or("(no)"));
  // Over the limit with refuse throwing: the same.
  hold_next = true;
  auto held = target->connect().wait(io.waitScope);
  BOOST_REQUIRE_MESSAGE(settle(io, [&] { return served == 3; }), "the connection to hold was not served");
  BOOST_TEST(limit.open() == 1);
  BOOST_TEST((read_reply(io, *target, 2000) == std::optional<std::string>("")));
  BOOST_TEST((read_reply(io, *target, 2000) == std::optional<std::string>("refused")),
             "accept loop failed: " << accept_failure.value_or("(no)"));
  release->fulfill();
  held = nullptr;
  BOOST_TEST(settle(io, [&] { return limit.open() == 0; }));
  BOOST_TEST((read_reply(io, *target, 2000) == std::optional<std::string>("served")),
             "accept loop failed: " << accept_failure.value_or("(no)"));
  BOOST_TEST(!accept_failure.has_value(), accept_failure.value_or(""));
  BOOST_TEST(refused == 2);
}

BOOST_AUTO_TEST_SUITE_END()
