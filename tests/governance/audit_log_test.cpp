// The audit store against a real RocksDB: the chain, tampering of each kind (caught at the first bad
// seq), signed checkpoints against truncation, kill -9 durability, and the `shoal audit` CLI.

#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <rocksdb/db.h>

#include "governance/audit_log.hpp"
#include "governance/auth.hpp"
#include "engine/common/error.hpp"
#include "tests/support/process.hpp"
#include "tests/support/shared.hpp"
#include "tests/support/temp_dir.hpp"

using shoal::governance::audit_checkpoint;
using shoal::governance::audit_filter;
using shoal::governance::audit_log;
using shoal::test::run_shoal;
using shoal::test::temp_dir;
using nlohmann::json;

namespace {

const std::string kZeros(64, '0');

// The crash test's child: this executable re-run with SHOAL_AUDIT_CRASH_CHILD=<db>. It appends
// until killed and writes each acknowledged seq to stdout, before Boost.Test ever starts.
const int crash_child_hook = [] {
  const char* db = std::getenv("SHOAL_AUDIT_CRASH_CHILD");
  if (db == nullptr) return 0;
  try {
    auto log = audit_log::open(db);
    for (int i = 0; i < 1000000; ++i) {
      auto stored = log->append({{"kind", "request"},
                                 {"who", {{"tenant", "acme"}, {"principal", "svc"}}},
                                 {"what", {{"operation", "generate"}}},
                                 {"i", i}});
      std::string line = std::to_string(stored["seq"].get<std::uint64_t>()) + "\n";
      if (::write(1, line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(3);
    }
  } catch (const std::exception& e) {
    std::string msg = std::string("crash child: ") + e.what() + "\n";
    (void)!::write(2, msg.data(), msg.size());
    _exit(2);
  }
  _exit(0);
}();

std::string key_of(std::uint64_t seq) {
  std::string k = "r/";
  for (int shift = 56; shift >= 0; shift -= 8) k.push_back(static_cast<char>((seq >> shift) & 0xff));
  return k;
}

json request(const std::string& tenant, int i) {
  return {{"kind", "request"},
          {"who", {{"tenant", tenant}, {"principal", tenant + "-key"}, {"role", "user"}}},
          {"what", {{"operation", i % 3 == 0 ? "chat" : "generate"}, {"model", "stories260K"}}},
          {"how", {{"method", "Generate"}, {"sampling", {{"temperature", 0.7}, {"top_p", 0.9}}}}},
          {"outcome", {{"status", "ok"}}},
          {"digests", {{"input_sha256", shoal::governance::sha256_hex("in" + std::to_string(i))}}},
          {"note", "prompt #" + std::to_string(i) + " \xe4\xbd\xa0\xe5\xa5\xbd"}};
}

// A log of n requests (tenants alternate acme, globex); returns what append() stored.
std::vector<json> fill(const std::string& path, int n) {
  auto log = audit_log::open(path);
  std::vector<json> out;
  for (int i = 1; i <= n; ++i) out.push_back(log->append(request(i % 2 ? "acme" : "globex", i)));
  return out;
}

std::vector<json> all_records(const audit_log& log, audit_filter f = {}) {
  std::vector<json> out;
  log.query(f, [&](const json& r) { out.push_back(r); });
  return out;
}

// Raw access to the database, as an attacker with file access has it.
struct raw_db {
  explicit raw_db(const std::string& path) {
    rocksdb::DB* p = nullptr;
    auto s = rocksdb::DB::Open(rocksdb::Options(), path, &p);
    BOOST_REQUIRE_MESSAGE(s.ok(), s.ToString());
    db.reset(p);
  }
  std::string get(std::uint64_t seq) {
    std::string v;
    auto s = db->Get(rocksdb::ReadOptions(), key_of(seq), &v);
    BOOST_REQUIRE_MESSAGE(s.ok(), s.ToString());
    return v;
  }
  void put(std::uint64_t seq, const std::string& v) { BOOST_REQUIRE(db->Put(rocksdb::WriteOptions(), key_of(seq), v).ok()); }
  void del(std::uint64_t seq) { BOOST_REQUIRE(db->Delete(rocksdb::WriteOptions(), key_of(seq)).ok()); }
  std::unique_ptr<rocksdb::DB> db;
};

shoal::governance::audit_verify_result verify_now(const std::string& path, const audit_checkpoint* cp = nullptr,
                                               const std::string& trusted = "") {
  return audit_log::open(path, true)->verify(cp, trusted);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(audit_log_suite)

BOOST_AUTO_TEST_CASE(chain_survives_reopen_and_continues) {
  temp_dir d;
  const std::string path = d / "audit";
  auto stored = fill(path, 40);
  // The chain, recomputed here from the documented rule.
  std::string prev = kZeros;
  for (std::size_t i = 0; i < stored.size(); ++i) {
    json r = stored[i];
    BOOST_CHECK_EQUAL(r["seq"].get<std::uint64_t>(), i + 1);
    BOOST_CHECK_EQUAL(r["prev_hash"].get<std::string>(), prev);
    const std::string hash = r["hash"].get<std::string>();
    r.erase("hash");
    BOOST_CHECK_EQUAL(hash, shoal::governance::sha256_hex(prev + r.dump()));
    BOOST_CHECK_EQUAL(r["recorded"].get<std::string>().size(), std::string("2026-11-29T12:00:00.123Z").size());
    prev = hash;
  }
  {
    auto log = audit_log::open(path);
    BOOST_CHECK_EQUAL(log->last_seq(), 40u);
    BOOST_CHECK_EQUAL(log->last_hash(), prev);
    auto v = log->verify();
    BOOST_CHECK(v.ok);
    BOOST_CHECK_EQUAL(v.records, 40u);
    BOOST_CHECK_EQUAL(v.head_seq, 40u);
    BOOST_CHECK_EQUAL(v.head_hash, prev);
    // Values come back as stored, in order.
    auto back = all_records(*log);
    BOOST_REQUIRE_EQUAL(back.size(), stored.size());
    for (std::size_t i = 0; i < back.size(); ++i) BOOST_CHECK(back[i] == stored[i]);
    auto next = log->append(request("acme", 41));
    BOOST_CHECK_EQUAL(next["seq"].get<std::uint64_t>(), 41u);
    BOOST_CHECK_EQUAL(next["prev_hash"].get<std::string>(), prev);
    BOOST_CHECK_THROW(log->append(json::array({1, 2})), shoal::error);
  }
  auto log = audit_log::open(path, true);
  BOOST_CHECK_EQUAL(log->last_seq(), 41u);
  BOOST_CHECK(log->verify().ok);
  BOOST_CHECK_THROW(log->append(request("acme", 42)), shoal::error);  // read-only
}

BOOST_AUTO_TEST_CASE(query_filters) {
  temp_dir d;
  auto stored = fill(d / "audit", 30);
  auto log = audit_log::open(d / "audit", true);
  audit_filter f;
  f.tenant = "acme";
  auto acme = all_records(*log, f);
  BOOST_CHECK_EQUAL(acme.size(), 15u);
  for (auto& r : acme) BOOST_CHECK_EQUAL(r["who"]["tenant"].get<std::string>(), "acme");
  f.operation = "chat";  // i % 3 == 0 and odd: 3, 9, 15, 21, 27
  auto chat = all_records(*log, f);
  BOOST_REQUIRE_EQUAL(chat.size(), 5u);
  BOOST_CHECK_EQUAL(chat[0]["seq"].get<int>(), 3);
  BOOST_CHECK_EQUAL(chat[4]["seq"].get<int>(), 27);
  f = {};
  f.principal = "globex-key";
  f.limit = 4;
  auto some = all_records(*log, f);
  BOOST_REQUIRE_EQUAL(some.size(), 4u);
  BOOST_CHECK_EQUAL(some[3]["seq"].get<int>(), 8);
  f = {};
  f.kind = "admin";
  BOOST_CHECK(all_records(*log, f).empty());

  // Time bounds, against the stored "recorded" values compared here as plain strings.
  const std::string from = stored[4]["recorded"].get<std::string>();
  const std::string to = stored[11]["recorded"].get<std::string>();
  std::size_t expected = 0;
  for (auto& r : stored) expected += r["recorded"].get<std::string>() >= from && r["recorded"].get<std::string>() <= to;
  f = {};
  f.since = from;
  f.until = to;
  auto window = all_records(*log, f);
  BOOST_CHECK_EQUAL(window.size(), expected);
  BOOST_CHECK_GE(window.size(), 8u);
  f = {};
  f.since = "2999-01-01";
  BOOST_CHECK(all_records(*log, f).empty());
  f = {};
  f.until = "2000-01-01T00:00:00Z";
  BOOST_CHECK(all_records(*log, f).empty());
  f = {};
  f.until = "2999";
  BOOST_CHECK_EQUAL(all_records(*log, f).size(), 30u);
  f.since = "yesterday";
  BOOST_CHECK_THROW(all_records(*log, f), shoal::error);
}

BOOST_AUTO_TEST_CASE(blocks_persist_and_change_with_their_record) {
  temp_dir d;
  const std::string path = d / "audit";
  {
    auto log = audit_log::open(path);
    log->append(request("acme", 1));
    log->append_and_set_block({{"kind", "block"}, {"who", {{"tenant", "acme"}, {"principal", "acme-key"}}},
                               {"what", {{"operation", "block"}, {"rule", "exports_per_minute"}}}},
                              "acme-key", {{"rule", "exports_per_minute"}, {"since", "2026-11-29T12:00:00Z"}});
    log->set_block("other", {{"rule", "manual"}});
  }
  {
    auto log = audit_log::open(path);
    auto b = log->blocks();
    BOOST_REQUIRE_EQUAL(b.size(), 2u);
    BOOST_CHECK_EQUAL(b["acme-key"]["rule"].get<std::string>(), "exports_per_minute");
    auto rec = log->append_and_clear_block({{"kind", "admin"}, {"what", {{"operation", "unblock"}}}}, "acme-key");
    BOOST_CHECK_EQUAL(rec["seq"].get<int>(), 3);
    log->clear_block("other");
  }
  auto log = audit_log::open(path, true);
  BOOST_CHECK(log->blocks().empty());
  auto v = log->verify();
  BOOST_CHECK(v.ok);
  BOOST_CHECK_EQUAL(v.records, 3u);  // blocks live outside the chain
}

BOOST_AUTO_TEST_CASE(a_flipped_byte_anywhere_in_a_record_is_caught_at_its_seq) {
  temp_dir d;
  const std::string path = d / "audit";
  fill(path, 10);
  raw_db raw(path);  // held open: the read-only opens below run beside a writer, as beside a node
  const std::string original = raw.get(5);
  for (std::size_t pos = 0; pos < original.size(); ++pos) {
    std::string bad = original;
    bad[pos] = static_cast<char>(bad[pos] ^ 0x01);
    raw.put(5, bad);
    auto v = verify_now(path);
    BOOST_CHECK_MESSAGE(!v.ok && v.first_bad_seq == 5,
                        "byte " << pos << ": ok=" << v.ok << " first_bad_seq=" << v.first_bad_seq << " " << v.problem);
  }
  // A clean edit of a value (valid JSON, canonical) is caught by the hash.
  std::string edited = original;
  auto at = edited.find("globex");
  BOOST_REQUIRE(at == std::string::npos);  // record 5 is acme's
  at = edited.find("acme");
  BOOST_REQUIRE(at != std::string::npos);
  edited.replace(at, 4, "acmf");
  raw.put(5, edited);
  auto v = verify_now(path);
  BOOST_CHECK(!v.ok);
  BOOST_CHECK_EQUAL(v.first_bad_seq, 5u);
  BOOST_CHECK_MESSAGE(v.problem.find("hash") != std::string::npos, v.problem);
  raw.put(5, original);
  BOOST_CHECK(verify_now(path).ok);
}

BOOST_AUTO_TEST_CASE(deleted_and_reordered_records_are_caught_at_the_first_bad_seq) {
  temp_dir d;
  const std::string path = d / "audit";
  fill(path, 10);
  {
    raw_db raw(path);
    const std::string four = raw.get(4);
    raw.del(4);
    auto v = verify_now(path);
    BOOST_CHECK(!v.ok);
    BOOST_CHECK_EQUAL(v.first_bad_seq, 4u);
    BOOST_CHECK_EQUAL(v.records, 3u);
    BOOST_CHECK_MESSAGE(v.problem.find("missing") != std::string::npos, v.problem);
    raw.put(4, four);

    const std::string one = raw.get(1);
    raw.del(1);
    v = verify_now(path);
    BOOST_CHECK(!v.ok);
    BOOST_CHECK_EQUAL(v.first_bad_seq, 1u);
    raw.put(1, one);

    const std::string three = raw.get(3), seven = raw.get(7);
    raw.put(3, seven);
    raw.put(7, three);
    v = verify_now(path);
    BOOST_CHECK(!v.ok);
    BOOST_CHECK_EQUAL(v.first_bad_seq, 3u);
    BOOST_CHECK_MESSAGE(v.problem.find("reordered") != std::string::npos, v.problem);
    raw.put(3, three);
    raw.put(7, seven);
    BOOST_CHECK(verify_now(path).ok);
  }
  // Renumbering a moved record does not help: its prev_hash and hash no longer fit.
  {
    raw_db raw(path);
    json seven = json::parse(raw.get(7));
    seven["seq"] = 3;
    raw.put(3, seven.dump());
    auto v = verify_now(path);
    BOOST_CHECK(!v.ok);
    BOOST_CHECK_EQUAL(v.first_bad_seq, 3u);
  }
}

BOOST_AUTO_TEST_CASE(truncation_is_caught_only_against_an_earlier_checkpoint) {
  temp_dir d;
  const std::string path = d / "audit";
  fill(path, 10);
  audit_checkpoint cp;
  {
    auto log = audit_log::open(path, true);
    cp = shoal::governance::make_checkpoint(*log, d / "key");
  }
  struct stat st {};
  BOOST_REQUIRE_EQUAL(::stat((d / "key").c_str(), &st), 0);
  BOOST_CHECK_EQUAL(st.st_mode & 0777u, 0600u);
  BOOST_CHECK_EQUAL(cp.seq, 10u);
  BOOST_CHECK(verify_now(path, &cp).ok);
  // Through JSON and back.
  auto cp2 = shoal::governance::checkpoint_from_json(json::parse(shoal::governance::to_json(cp).dump()));
  BOOST_CHECK(verify_now(path, &cp2, shoal::governance::checkpoint_public_key(d / "key")).ok);

  {
    raw_db raw(path);
    for (std::uint64_t s = 8; s <= 10; ++s) raw.del(s);
  }
  auto v = verify_now(path);
  BOOST_CHECK(v.ok);  // a shorter chain is still a chain
  BOOST_CHECK_EQUAL(v.records, 7u);
  v = verify_now(path, &cp);
  BOOST_CHECK(!v.ok);
  BOOST_CHECK_EQUAL(v.first_bad_seq, 8u);
  BOOST_CHECK_MESSAGE(v.problem.find("truncated") != std::string::npos, v.problem);

  // Writing new history over the truncated tail: the chain is valid, the checkpoint's seq is not it.
  {
    auto log = audit_log::open(path);
    BOOST_CHECK_EQUAL(log->last_seq(), 7u);
    for (int i = 0; i < 5; ++i) log->append(request("mallory", i));
  }
  BOOST_CHECK(verify_now(path).ok);
  v = verify_now(path, &cp);
  BOOST_CHECK(!v.ok);
  BOOST_CHECK_EQUAL(v.first_bad_seq, 10u);
  BOOST_CHECK_MESSAGE(v.problem.find("rewritten") != std::string::npos, v.problem);
}

BOOST_AUTO_TEST_CASE(forged_checkpoints_are_rejected) {
  temp_dir d;
  const std::string path = d / "audit";
  fill(path, 6);
  auto log = audit_log::open(path, true);
  auto cp = shoal::governance::make_checkpoint(*log, d / "key");
  BOOST_REQUIRE(log->verify(&cp).ok);

  auto forged = cp;
  forged.seq = 3;  // claim an earlier head (to cover a truncation) without re-signing
  auto records = all_records(*log);
  forged.hash = records[2]["hash"].get<std::string>();
  auto v = log->verify(&forged);
  BOOST_CHECK(!v.ok);
  BOOST_CHECK_EQUAL(v.first_bad_seq, 0u);
  BOOST_CHECK_MESSAGE(v.problem.find("signature") != std::string::npos, v.problem);

  forged = cp;
  forged.signature[10] = forged.signature[10] == '0' ? '1' : '0';
  BOOST_CHECK(!log->verify(&forged).ok);
  forged = cp;
  forged.created = "2020-01-01T00:00:00.000Z";
  BOOST_CHECK(!log->verify(&forged).ok);

  // Signed by someone else's key: self-consistent, so only a pinned key rejects it.
  auto other = shoal::governance::make_checkpoint(*log, d / "other-key");
  BOOST_CHECK(log->verify(&other).ok);
  v = log->verify(&other, shoal::governance::checkpoint_public_key(d / "key"));
  BOOST_CHECK(!v.ok);
  BOOST_CHECK_MESSAGE(v.problem.find("trusted") != std::string::npos, v.problem);
  BOOST_CHECK(log->verify(&cp, shoal::governance::checkpoint_public_key(d / "key")).ok);
}

BOOST_AUTO_TEST_CASE(acknowledged_records_survive_kill_9) {
  temp_dir d;
  const std::string path = d / "audit";
  int fds[2];
  BOOST_REQUIRE_EQUAL(::pipe(fds), 0);
  pid_t pid = ::fork();
  BOOST_REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    ::setenv("SHOAL_AUDIT_CRASH_CHILD", path.c_str(), 1);
    ::execl("/proc/self/exe", "audit_crash_child", static_cast<char*>(nullptr));
    _exit(127);
  }
  ::close(fds[1]);
  std::string buf;
  std::vector<std::uint64_t> acked;
  auto read_some = [&] {
    char chunk[4096];
    ssize_t n = ::read(fds[0], chunk, sizeof chunk);
    if (n <= 0) return false;
    buf.append(chunk, static_cast<std::size_t>(n));
    std::size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      acked.push_back(std::stoull(buf.substr(0, nl)));
      buf.erase(0, nl + 1);
    }
    return true;
  };
  while (acked.size() < 300 && read_some()) {
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  while (read_some()) {  // acknowledgements written before the kill
  }
  ::close(fds[0]);
  BOOST_REQUIRE_MESSAGE(acked.size() >= 300, "the child acknowledged only " << acked.size() << " records");
  BOOST_CHECK_MESSAGE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the child ended before the kill");
  for (std::size_t i = 0; i < acked.size(); ++i) BOOST_REQUIRE_EQUAL(acked[i], i + 1);

  auto log = audit_log::open(path);
  BOOST_CHECK_GE(log->last_seq(), acked.back());
  auto v = log->verify();
  BOOST_CHECK_MESSAGE(v.ok, "seq " << v.first_bad_seq << ": " << v.problem);
  std::set<std::uint64_t> present;
  log->query({}, [&](const json& r) { present.insert(r["seq"].get<std::uint64_t>()); });
  for (auto s : acked) BOOST_CHECK_MESSAGE(present.count(s) == 1, "acknowledged seq " << s << " is gone");
  // The chain goes on after the crash.
  const auto before = log->last_seq();
  BOOST_CHECK_EQUAL(log->append(request("acme", 0))["seq"].get<std::uint64_t>(), before + 1);
  BOOST_CHECK(log->verify().ok);
}

BOOST_AUTO_TEST_CASE(cli_verify_query_checkpoint_export_unblock) {
  temp_dir d;
  const std::string db = d / "audit";
  fill(db, 6);
  std::string head;
  {
    auto log = audit_log::open(db);
    log->append_and_set_block({{"kind", "block"}, {"who", {{"tenant", "acme"}, {"principal", "acme-key"}}},
                               {"what", {{"operation", "block"}}}},
                              "acme-key", {{"rule", "exports_per_minute"}});
    head = log->last_hash();
  }

  auto r = run_shoal({"audit", "verify", "--db", db}, 60);
  BOOST_CHECK_EQUAL(r.status, 0);
  BOOST_CHECK_EQUAL(r.out, "ok: 7 records, head seq 7 hash " + head + "\n");

  r = run_shoal({"audit", "query", "--db", db, "--tenant", "acme", "--operation", "generate"}, 60);
  BOOST_REQUIRE_EQUAL(r.status, 0);
  std::vector<int> seqs;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    auto j = json::parse(line);
    BOOST_CHECK_EQUAL(j["who"]["tenant"].get<std::string>(), "acme");
    seqs.push_back(j["seq"].get<int>());
  }
  BOOST_CHECK(seqs == (std::vector<int>{1, 5}));  // acme: 1, 3, 5; 3 is a chat
  r = run_shoal({"audit", "query", "--db", db, "--limit", "2"}, 60);
  BOOST_CHECK_EQUAL(std::count(r.out.begin(), r.out.end(), '\n'), 2);
  r = run_shoal({"audit", "query", "--db", db, "--since", "last tuesday"}, 60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK_MESSAGE(r.err.find("ISO-8601") != std::string::npos, r.err);

  r = run_shoal({"audit", "checkpoint", "--db", db, "--key", d / "key", "--out", d / "cp.json"}, 60);
  BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
  auto cp = shoal::test::read_json(d / "cp.json");
  BOOST_CHECK_EQUAL(cp["seq"].get<int>(), 7);
  BOOST_CHECK_EQUAL(cp["hash"].get<std::string>(), head);
  r = run_shoal({"audit", "verify", "--db", db, "--checkpoint", d / "cp.json", "--key", d / "key"}, 60);
  BOOST_CHECK_MESSAGE(r.status == 0, r.out << r.err);

  r = run_shoal({"audit", "blocks", "--db", db}, 60);
  BOOST_CHECK_EQUAL(r.status, 0);
  BOOST_CHECK(json::parse(r.out)["principal"] == "acme-key");

  // export writes the records and audits itself.
  r = run_shoal({"audit", "export", "--db", db, "--out", d / "acme.jsonl", "--tenant", "acme", "--by", "alice"}, 60);
  BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
  const std::string exported = shoal::test::read_file(d / "acme.jsonl");
  BOOST_CHECK_EQUAL(std::count(exported.begin(), exported.end(), '\n'), 4);  // 1, 3, 5 and the block (7)
  {
    auto log = audit_log::open(db, true);
    BOOST_REQUIRE_EQUAL(log->last_seq(), 8u);
    auto last = all_records(*log).back();
    BOOST_CHECK_EQUAL(last["kind"].get<std::string>(), "admin");
    BOOST_CHECK_EQUAL(last["what"]["operation"].get<std::string>(), "export");
    BOOST_CHECK_EQUAL(last["who"]["principal"].get<std::string>(), "alice");
    BOOST_CHECK_EQUAL(last["what"]["count"].get<int>(), 4);
    BOOST_CHECK_EQUAL(last["what"]["filters"]["tenant"].get<std::string>(), "acme");
    BOOST_CHECK_EQUAL(last["what"]["output"]["sha256"].get<std::string>(), shoal::governance::sha256_hex(exported));
    BOOST_CHECK(log->verify().ok);
  }
  // The checkpoint of seq 7 still holds: the chain grew past it.
  r = run_shoal({"audit", "verify", "--db", db, "--checkpoint", d / "cp.json"}, 60);
  BOOST_CHECK_EQUAL(r.status, 0);

  // unblock: audited, and the block is gone.
  r = run_shoal({"audit", "unblock", "--db", db, "--principal", "acme-key", "--by", "root"}, 60);
  BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
  r = run_shoal({"audit", "blocks", "--db", db}, 60);
  BOOST_CHECK_EQUAL(r.status, 0);
  BOOST_CHECK_EQUAL(r.out, "");
  r = run_shoal({"audit", "query", "--db", db, "--operation", "unblock"}, 60);
  auto unblock = json::parse(r.out);
  BOOST_CHECK_EQUAL(unblock["seq"].get<int>(), 9);
  BOOST_CHECK_EQUAL(unblock["who"]["principal"].get<std::string>(), "root");
  BOOST_CHECK_EQUAL(unblock["what"]["target"].get<std::string>(), "acme-key");
  r = run_shoal({"audit", "unblock", "--db", db, "--principal", "acme-key", "--by", "root"}, 60);
  BOOST_CHECK_EQUAL(r.status, 1);
  r = run_shoal({"audit", "export", "--db", d / "no-such-db", "--out", d / "x.jsonl"}, 60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK(!std::filesystem::exists(d / "no-such-db"));

  // While a writer (a node) holds the database: reads work and see acknowledged records; export
  // refuses, saying what to do.
  {
    auto log = audit_log::open(db);
    log->append(request("acme", 100));
    r = run_shoal({"audit", "verify", "--db", db}, 60);
    BOOST_CHECK_EQUAL(r.status, 0);
    BOOST_CHECK_MESSAGE(r.out.find("ok: 10 records") == 0, r.out << r.err);
    r = run_shoal({"audit", "export", "--db", db, "--out", d / "x.jsonl"}, 60);
    BOOST_CHECK_EQUAL(r.status, 1);
    BOOST_CHECK_MESSAGE(r.err.find("stop the node") != std::string::npos, r.err);
  }

  // Tampering: verify names the first bad seq and exits 1.
  {
    raw_db raw(db);
    raw.del(3);
  }
  r = run_shoal({"audit", "verify", "--db", db}, 60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK_MESSAGE(r.out.find("FAILED at seq 3: ") == 0, r.out);

  // A forged checkpoint file.
  cp["seq"] = 2;
  d.write("forged.json", cp.dump());
  r = run_shoal({"audit", "verify", "--db", db, "--checkpoint", d / "forged.json"}, 60);
  BOOST_CHECK_EQUAL(r.status, 1);
  BOOST_CHECK_MESSAGE(r.out.find("FAILED: ") == 0 && r.out.find("signature") != std::string::npos, r.out);
}

BOOST_AUTO_TEST_SUITE_END()
