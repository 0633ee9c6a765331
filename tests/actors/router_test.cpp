// The router alone, in this process, against stand-ins for its peers (a replica's batcher, the
// audit store, the answer cache) that answer as a test tells them and note what they were sent:
// what a batcher hears when a submit times out, a cancel that comes before a request reaches a
// batcher, a request id that is already in flight, and administrative operations that fail.

#include <boost/test/unit_test.hpp>
#include <caf/all.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "actors/errors.hpp"
#include "actors/messages.hpp"
#include "actors/router.hpp"
#include "governance/auth.hpp"

namespace {

using namespace shoal::actors;
using namespace std::chrono_literals;
using json = nlohmann::json;
using shoal::errc;

const char* const kAlpha = "sk-alpha-0123456789";
const char* const kBeta = "sk-beta-0123456789";
const char* const kRoot = "sk-root-0123456789";

// What the stand-ins were sent, in arrival order, readable from the test thread.
class journal {
 public:
  void add(std::string e) {
    std::lock_guard lock(m_);
    events_.push_back(std::move(e));
    cv_.notify_all();
  }
  std::vector<std::string> events() const {
    std::lock_guard lock(m_);
    return events_;
  }
  /// The position of event `e`, waiting up to `limit` for it; -1 when it never came.
  int wait_for(const std::string& e, std::chrono::milliseconds limit) {
    std::unique_lock lock(m_);
    auto at = [&] { return std::find(events_.begin(), events_.end(), e); };
    if (!cv_.wait_for(lock, limit, [&] { return at() != events_.end(); })) return -1;
    return static_cast<int>(at() - events_.begin());
  }
  /// The audit records written so far.
  std::vector<json> records() const {
    std::vector<json> out;
    for (const auto& e : events()) {
      if (e.rfind("audit ", 0) == 0) out.push_back(json::parse(e.substr(6)));
    }
    return out;
  }

 private:
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::string> events_;
};

// A replica's batcher: accepts every request (after `accept_after`, when set), keeps it running
// until it is cancelled or the test sends finished_atom, and notes "generate ID" and "cancel ID".
struct batcher_stub_state {
  batcher_stub_state() = default;
  std::map<std::string, sink_actor> running;
  std::vector<std::pair<caf::typed_response_promise<submit_result>, submit_result>> held;
};

caf::behavior batcher_stub(caf::stateful_actor<batcher_stub_state>* self, std::shared_ptr<journal> j,
                           caf::timespan accept_after) {
  return {
      [=](generate_atom, generate_request& req) -> caf::result<submit_result> {
        j->add("generate " + req.id);
        submit_result res;
        res.accepted = true;
        res.id = req.id;
        res.replica = "r0";
        self->state.running[req.id] = req.sink;
        if (accept_after == caf::timespan{0}) return res;
        auto rp = self->make_response_promise<submit_result>();
        self->state.held.emplace_back(rp, res);
        self->delayed_send(self, accept_after, open_atom::value);
        return rp;
      },
      [=](open_atom) {
        for (auto& [rp, res] : self->state.held) rp.deliver(res);
        self->state.held.clear();
      },
      [=](cancel_atom, const std::string& id) {
        j->add("cancel " + id);
        auto it = self->state.running.find(id);
        if (it == self->state.running.end()) return;
        generation_summary s;
        s.id = id;
        s.finish_reason = "cancelled";
        s.replica = "r0";
        self->send(it->second, s);
        self->state.running.erase(it);
      },
      [=](finished_atom) {  // the test: every running request ends with one token
        for (auto& [id, sink] : self->state.running) {
          token_chunk c;
          c.id = id;
          c.ids = {7};
          c.text = "x";
          self->send(sink, c);
          generation_summary s;
          s.id = id;
          s.finish_reason = "length";
          s.completion_tokens = 1;
          s.replica = "r0";
          self->send(sink, s);
        }
        self->state.running.clear();
      },
  };
}

// The audit store: notes every record ("audit JSON") and lifted block ("unblock P"); a query fails
// the way a bad `since` does, and an unblock fails when `fail_unblock` says so.
caf::behavior auditor_stub(caf::event_based_actor*, std::shared_ptr<journal> j, bool fail_unblock) {
  auto seq = std::make_shared<std::uint64_t>(0);
  return {
      [=](audit_atom, const std::string& rec) -> std::uint64_t {
        j->add("audit " + rec);
        return ++*seq;
      },
      [=](query_atom, const std::string&) -> caf::result<std::vector<std::string>> {
        return make_error(errc::invalid_argument, "audit store: 'since' is not a date");
      },
      [=](block_atom, const std::string&, const std::string&, const std::string& rec) -> std::uint64_t {
        j->add("audit " + rec);
        return ++*seq;
      },
      [=](unblock_atom, const std::string& who, const std::string& rec) -> caf::result<std::uint64_t> {
        if (fail_unblock) return make_error(errc::unavailable, "audit store: the disk is full");
        j->add("unblock " + who);
        j->add("audit " + rec);
        return ++*seq;
      },
      [=](blocks_atom) -> std::vector<std::string> { return {}; },
  };
}

// The answer cache: every lookup is a miss, answered after `delay`.
struct cache_stub_state {
  cache_stub_state() = default;
  std::vector<caf::typed_response_promise<std::string>> held;
};

caf::behavior cache_stub(caf::stateful_actor<cache_stub_state>* self, caf::timespan delay) {
  return {
      [=](lookup_atom, const std::string&, const std::string&, const std::string&) -> caf::result<std::string> {
        auto rp = self->make_response_promise<std::string>();
        self->state.held.push_back(rp);
        self->delayed_send(self, delay, open_atom::value);
        return rp;
      },
      [=](open_atom) {
        for (auto& rp : self->state.held) rp.deliver(std::string());
        self->state.held.clear();
      },
      [=](store_atom, const std::string&, const std::string&, const std::string&, bool, const std::string&) {},
      [=](purge_atom, const std::string&) -> std::int64_t { return 0; },
  };
}

struct stubs {
  caf::timespan accept_after{0};  // the batcher's answer to a generate
  caf::timespan lookup_after{0};  // the cache's answer to a lookup; 0: no cache
  bool fail_unblock = false;
  std::map<std::string, std::string> blocked = {};  // principal -> why, as persisted
};

std::string key_hash(const char* key) { return shoal::governance::sha256_hex(key); }

// A router with one replica "r0" of model "m" (a batcher stub), the audit store stub and, when
// asked, a cache stub. Tenants alpha and beta (user keys) and ops (an admin key); a submit times
// out after 1 s.
class fixture {
 public:
  explicit fixture(const stubs& s) {
    register_message_types(cfg_);
    sys_ = std::make_unique<caf::actor_system>(cfg_);
    cluster_config c;
    c.name = "test";
    c.models.push_back(model_spec{"m", "/nonexistent/model"});
    replica_spec r;
    r.name = "r0";
    r.model = "m";
    r.tensor_parallel = {"n0"};
    c.replicas.push_back(r);
    c.router.submit_timeout_s = 1;
    c.auth.required = true;
    for (auto [tenant, id, key, role] : {std::tuple{"alpha", "a1", kAlpha, "user"}, std::tuple{"beta", "b1", kBeta, "user"},
                                         std::tuple{"ops", "root", kRoot, "admin"}}) {
      shoal::governance::tenant_spec t;
      t.name = tenant;
      t.keys.push_back({id, role, key_hash(key)});
      c.auth.tenants.push_back(t);
    }
    batcher_ = sys_->spawn(batcher_stub, seen, s.accept_after);
    auditor_ = sys_->spawn(auditor_stub, seen, s.fail_unblock);
    router_options ro;
    ro.config = c;
    ro.node_name = "n0";
    ro.auditor = caf::actor_cast<auditor_actor>(auditor_);
    if (s.lookup_after != caf::timespan{0}) {
      cache_ = sys_->spawn(cache_stub, s.lookup_after);
      ro.cache = caf::actor_cast<cache_actor>(cache_);
    }
    ro.blocked = s.blocked;
    router_ = spawn_router(*sys_, std::move(ro));
    caf::scoped_actor self{*sys_};
    self->send(router_, ready_atom::value, std::string("r0"), caf::actor_cast<batcher_actor>(batcher_));
    replica_stats st;
    st.name = "r0";
    st.model = "m";
    st.kind = "generate";
    st.healthy = true;
    st.max_waiting = 100;
    self->send(router_, stats_atom::value, st);
    // Answered after the two above: the router knows its replica from here on.
    self->request(router_, std::chrono::seconds(5), status_atom::value)
        .receive([](cluster_status&) {}, [&](caf::error& e) { BOOST_FAIL("router status: " << sys_->render(e)); });
  }

  ~fixture() {
    for (auto& a : {batcher_, auditor_, cache_}) {
      if (a) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    }
    caf::anon_send_exit(router_, caf::exit_reason::user_shutdown);
  }

  caf::actor_system& system() { return *sys_; }
  router_actor router() const { return router_; }
  caf::actor batcher() const { return batcher_; }

  /// A request of `key` with id `id`, streaming to `client`, not yet sent.
  generate_request request(caf::scoped_actor& client, const char* key, const std::string& id) {
    generate_request req;
    req.id = id;
    req.model = "m";
    req.prompt = "Once upon a time";
    req.max_tokens = 4;
    req.sampling.temperature = 0;  // deterministic: looked up in the cache when there is one
    req.api_key = key;
    req.client_address = "127.0.0.1:1";
    req.api_method = "test";
    req.sink = caf::actor_cast<sink_actor>(client);
    return req;
  }

  submit_result submit(caf::scoped_actor& client, const char* key, const std::string& id) {
    submit_result out;
    client->request(router_, std::chrono::seconds(10), generate_atom::value, request(client, key, id))
        .receive([&](submit_result& r) { out = std::move(r); },
                 [&](caf::error& e) { BOOST_FAIL("generate: " << sys_->render(e)); });
    return out;
  }

  admin_result admin(caf::scoped_actor& client, admin_request req) {
    admin_result out;
    client->request(router_, std::chrono::seconds(10), admin_atom::value, std::move(req))
        .receive([&](admin_result& r) { out = std::move(r); },
                 [&](caf::error& e) { BOOST_FAIL("admin: " << sys_->render(e)); });
    return out;
  }

  std::shared_ptr<journal> seen = std::make_shared<journal>();

 private:
  caf::actor_system_config cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  caf::actor batcher_, auditor_, cache_;
  router_actor router_;
};

// The summary `client` receives (its chunks skipped), or none within `limit`.
std::optional<generation_summary> summary_of(caf::scoped_actor& client, std::chrono::seconds limit) {
  std::optional<generation_summary> out;
  bool timed_out = false;
  while (!out && !timed_out) {
    client->receive([](token_chunk&) {}, [&](generation_summary& s) { out = std::move(s); },
                    caf::after(limit) >> [&] { timed_out = true; });
  }
  return out;
}

std::string describe(const submit_result& r) {
  return r.accepted ? std::string("accepted") : "refused " + r.error_code + " (" + r.error_message + ")";
}

// The audit records that `pred` picks, once there are `n` of them or 2 s passed (the router writes
// a refusal's record without waiting for it).
template <class Pred>
std::vector<json> records_where(const journal& j, Pred pred, std::size_t n) {
  std::vector<json> out;
  for (int i = 0; i < 100; ++i) {
    out.clear();
    for (auto& r : j.records()) {
      if (pred(r)) out.push_back(r);
    }
    if (out.size() >= n) break;
    std::this_thread::sleep_for(20ms);
  }
  return out;
}

// The audit records of admin operation `op`.
std::vector<json> admin_records(const journal& j, const std::string& op, std::size_t n) {
  return records_where(
      j, [&](const json& r) { return r.value("kind", "") == "admin" && r["what"].value("operation", "") == op; }, n);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(router)

BOOST_AUTO_TEST_CASE(a_submit_that_times_out_is_cancelled_at_its_batcher) {
  fixture f(stubs{.accept_after = std::chrono::milliseconds(1500)});
  caf::scoped_actor alpha{f.system()};
  const auto r = f.submit(alpha, kAlpha, "slow-1");
  BOOST_TEST(r.error_code == "unavailable", describe(r));
  // The batcher accepts it late, for nobody: the router must have told it to drop the request,
  // after the generate (one sender, one receiver: CAF keeps that order).
  const int generated = f.seen->wait_for("generate slow-1", 1000ms);
  const int cancelled = f.seen->wait_for("cancel slow-1", 3000ms);
  BOOST_TEST(generated >= 0);
  BOOST_TEST(cancelled > generated, "the batcher was never told to cancel the request whose submit timed out");
}

BOOST_AUTO_TEST_CASE(a_cancel_before_routing_refuses_the_request) {
  fixture f(stubs{.lookup_after = std::chrono::milliseconds(500)});
  caf::scoped_actor alpha{f.system()};
  // The cancel arrives while the router waits for the cache (same sender: after the generate).
  auto pending = alpha->request(f.router(), std::chrono::seconds(10), generate_atom::value,
                                f.request(alpha, kAlpha, "early-1"));
  alpha->send(f.router(), cancel_atom::value, std::string("early-1"));
  submit_result r;
  pending.receive([&](submit_result& res) { r = std::move(res); },
                  [&](caf::error& e) { BOOST_FAIL("generate: " << f.system().render(e)); });
  BOOST_TEST(r.error_code == "cancelled", describe(r));
  BOOST_TEST(f.seen->wait_for("generate early-1", 300ms) < 0, "the cancelled request still reached the batcher");
  // It is audited as cancelled, and a request after it runs normally.
  const auto recs = records_where(*f.seen, [](const json& rec) { return rec.value("request_id", "") == "early-1"; }, 1);
  BOOST_REQUIRE_EQUAL(recs.size(), 1u);
  BOOST_TEST(recs[0]["outcome"].value("status", "") == "cancelled");
  BOOST_TEST(f.submit(alpha, kAlpha, "early-2").accepted);
}

BOOST_AUTO_TEST_CASE(an_id_already_in_flight_is_refused) {
  fixture f(stubs{});
  caf::scoped_actor alpha{f.system()}, beta{f.system()};
  const auto first = f.submit(alpha, kAlpha, "shared-1");
  BOOST_REQUIRE_MESSAGE(first.accepted, describe(first));
  // Another tenant reuses the id while the first runs: refused, so its cancel (a dropped
  // connection cancels by id) can never reach alpha's request.
  const auto second = f.submit(beta, kBeta, "shared-1");
  BOOST_TEST(second.error_code == "invalid_argument", describe(second));
  BOOST_TEST(second.error_message.find("already in flight") != std::string::npos, second.error_message);
  // So is the same principal reusing it.
  BOOST_TEST(f.submit(alpha, kAlpha, "shared-1").error_code == "invalid_argument");
  // The first completes.
  caf::anon_send(f.batcher(), finished_atom::value);
  const auto s = summary_of(alpha, 5s);
  BOOST_REQUIRE(s.has_value());
  BOOST_TEST(s->finish_reason == "length");
  // Once it has finished, the id is free again.
  const auto again = f.submit(beta, kBeta, "shared-1");
  BOOST_TEST(again.accepted, describe(again));
}

BOOST_AUTO_TEST_CASE(an_unblock_the_audit_store_did_not_record_leaves_the_block) {
  fixture f(stubs{.fail_unblock = true, .blocked = {{"alpha/a1", "rule 'test': planted"}}});
  caf::scoped_actor alpha{f.system()}, root{f.system()};
  BOOST_TEST(f.submit(alpha, kAlpha, "before").error_code == "forbidden");
  admin_request u;
  u.api_key = kRoot;
  u.op = "unblock";
  u.principal = "alpha/a1";
  const auto res = f.admin(root, u);
  BOOST_TEST(!res.ok);
  BOOST_TEST(res.error_code == "unavailable", res.error_code << ": " << res.error_message);
  // The database still holds the block, so the router must too.
  const auto after = f.submit(alpha, kAlpha, "after");
  BOOST_TEST(after.error_code == "forbidden", "after a failed unblock: " << describe(after));
  // The failed operation is audited, with its code.
  const auto recs = admin_records(*f.seen, "unblock", 1);
  BOOST_REQUIRE_MESSAGE(recs.size() == 1u, recs.size() << " audit records of the failed unblock");
  BOOST_TEST(recs[0]["outcome"].value("status", "") == "error");
  BOOST_TEST(recs[0]["outcome"].value("error_code", "") == "unavailable");
}

BOOST_AUTO_TEST_CASE(an_unblock_lifts_the_block_once_recorded) {
  fixture f(stubs{.blocked = {{"alpha/a1", "rule 'test': planted"}}});
  caf::scoped_actor alpha{f.system()}, root{f.system()};
  BOOST_TEST(f.submit(alpha, kAlpha, "before").error_code == "forbidden");
  admin_request u;
  u.api_key = kRoot;
  u.op = "unblock";
  u.principal = "alpha/a1";
  const auto res = f.admin(root, u);
  BOOST_TEST(res.ok, res.error_code << ": " << res.error_message);
  BOOST_TEST(f.seen->wait_for("unblock alpha/a1", 0ms) >= 0);
  const auto after = f.submit(alpha, kAlpha, "after");
  BOOST_TEST(after.accepted, describe(after));
  // Not blocked any more: a second unblock is not_found, and audited as such.
  BOOST_TEST(f.admin(root, u).error_code == "not_found");
  const auto recs = admin_records(*f.seen, "unblock", 2);
  BOOST_REQUIRE_EQUAL(recs.size(), 2u);
  BOOST_TEST(recs[1]["outcome"].value("error_code", "") == "not_found");
}

// What a client wrote reaches an audit record masked and cut to a readable length, also where a
// refusal quotes it; a cut never splits a UTF-8 character.
BOOST_AUTO_TEST_CASE(client_text_is_masked_and_capped_in_audit_records) {
  fixture f(stubs{});
  caf::scoped_actor alpha{f.system()};
  std::string long_tail;
  for (int i = 0; i < 3000; ++i) long_tail += "\xc3\xa9";  // é: a cut in the middle would split one
  auto req = f.request(alpha, kAlpha, "id 13912345678 " + long_tail);
  req.model = "model alice.planted@example.com " + long_tail;
  submit_result r;
  alpha->request(f.router(), std::chrono::seconds(10), generate_atom::value, req)
      .receive([&](submit_result& res) { r = std::move(res); },
               [&](caf::error& e) { BOOST_FAIL("generate: " << f.system().render(e)); });
  BOOST_TEST(r.error_code == "not_found", describe(r));
  const auto recs = records_where(*f.seen, [](const json& rec) { return rec.value("kind", "") == "request"; }, 1);
  BOOST_REQUIRE_EQUAL(recs.size(), 1u);
  const std::string id = recs[0].value("request_id", ""), model = recs[0]["what"].value("model", "");
  const std::string message = recs[0]["outcome"].value("message", "");
  BOOST_TEST_MESSAGE("request_id " << id.size() << " bytes, model " << model.size() << " bytes, message "
                                   << message.size() << " bytes");
  const std::vector<std::pair<std::string, std::string>> fields = {
      {"request_id", id}, {"what.model", model}, {"outcome.message", message}};
  for (const auto& [name, text] : fields) {
    BOOST_TEST(text.find("13912345678") == std::string::npos, name << " keeps the phone number");
    BOOST_TEST(text.find("alice.planted@example.com") == std::string::npos, name << " keeps the email");
    BOOST_TEST(text.size() <= 1024u, name << " is " << text.size() << " bytes");
    BOOST_TEST(text.find("\xef\xbf\xbd") == std::string::npos, name << " was cut inside a character");
  }
  BOOST_TEST(id.rfind("id [PHONE] ", 0) == 0u, id.substr(0, 40));
  BOOST_TEST(model.rfind("model [EMAIL] ", 0) == 0u, model.substr(0, 40));
}

BOOST_AUTO_TEST_CASE(a_failed_admin_operation_is_audited) {
  fixture f(stubs{});
  caf::scoped_actor root{f.system()};
  admin_request q;
  q.api_key = kRoot;
  q.op = "query";
  q.since = "yesterday";
  const auto res = f.admin(root, q);
  BOOST_TEST(res.error_code == "invalid_argument", res.error_code << ": " << res.error_message);
  const auto recs = admin_records(*f.seen, "query", 1);
  BOOST_REQUIRE_MESSAGE(recs.size() == 1u, recs.size() << " audit records of the failed query");
  BOOST_TEST(recs[0]["outcome"].value("status", "") == "error");
  BOOST_TEST(recs[0]["outcome"].value("error_code", "") == "invalid_argument");
  BOOST_TEST(recs[0]["how"]["filter"].value("since", "") == "yesterday");
}

BOOST_AUTO_TEST_SUITE_END()
