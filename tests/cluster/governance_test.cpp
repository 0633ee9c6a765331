// Data governance with real node processes and real RocksDB: the answer cache and its isolation,
// planted personal data never stored in clear, audit records that survive kill -9, and an anomaly
// rule that blocks a principal across a restart.

#include <rocksdb/db.h>

#include <boost/test/unit_test.hpp>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "governance/audit_log.hpp"
#include "governance/auth.hpp"
#include "tests/support/http.hpp"
#include "tests/support/local_cluster.hpp"
#include "tests/support/planted_pii.hpp"
#include "tests/support/process.hpp"
#include "tests/support/shared.hpp"
#include "tests/support/temp_dir.hpp"

using shoal::test::local_cluster;
using shoal::test::needs_shared;
using shoal::test::shared_path;

namespace {

const char* kStories = "models/stories260K/hf";

const char* kAlpha = "sk-alpha-0123456789";
const char* kBeta = "sk-beta-0123456789";
const char* kGamma = "sk-gamma-0123456789";
const char* kSecret = "sk-secret-0123456789";
const char* kAdmin = "sk-admin-0123456789";

std::string key_entry(const char* id, const char* key, const char* role = "user") {
  return "      - {id: " + std::string(id) + ", role: " + role + ", sha256: " + shoal::governance::sha256_hex(key) + "}\n";
}

// Five tenants: alpha and beta (public), gamma (business), secret (sensitive, cached encrypted,
// the model sees masked prompts), ops (an admin key). The public domain keeps the masked prompt in
// the audit log, so a value the masker missed would show up there.
std::string governance_yaml(const std::string& key_file, const std::string& extra = "") {
  std::string y = "auth:\n  required: true\ntenants:\n";
  y += "  - name: alpha\n    domain: public\n    keys:\n" + key_entry("a1", kAlpha);
  y += "  - name: beta\n    domain: public\n    keys:\n" + key_entry("b1", kBeta);
  y += "  - name: gamma\n    domain: business\n    keys:\n" + key_entry("g1", kGamma);
  y += "  - name: secret\n    domain: sensitive\n    keys:\n" + key_entry("s1", kSecret);
  y += "  - name: ops\n    domain: business\n    keys:\n" + key_entry("root", kAdmin, "admin");
  y += "domains:\n  public:\n    store_masked_text: true\n"
       "  sensitive:\n    cache: true\n    encrypt_cache: true\n    model_sees_masked: true\n";
  y += "cache:\n  enabled: true\n  key_file: " + key_file + "\n";
  return y + extra;
}

struct governed_cluster {
  shoal::test::temp_dir keys;
  std::unique_ptr<local_cluster> cluster;

  explicit governed_cluster(const std::string& extra = "") {
    keys.write("cache.key", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
    cluster = std::make_unique<local_cluster>(
        shared_path(kStories), std::vector<shoal::test::node_def>{{"n0", {"router", "gateway", "worker"}, 1}},
        std::vector<shoal::test::replica_def>{{"r0", {"n0"}}}, governance_yaml(keys / "cache.key", extra));
    cluster->wait_ready(90);
  }
  shoal::client::client client(const char* key) {
    shoal::client::client_options o;
    o.api_key = key;
    return shoal::client::client("127.0.0.1", cluster->rpc_port(), o);
  }
};

shoal::client::generate_params greedy(const std::string& prompt, int n) {
  shoal::client::generate_params p;
  p.prompt = prompt;
  p.sampling.temperature = 0;
  p.max_tokens = n;
  p.ignore_eos = true;
  return p;
}

struct answer {
  std::vector<std::int32_t> ids;
  std::string text;
  bool chunks_cached = true;
  int chunks = 0;
  shoal::client::summary sum;
};

answer run(shoal::client::client& c, const shoal::client::generate_params& p) {
  answer a;
  a.sum = c.generate(p, [&](const shoal::client::chunk& ch) {
    a.ids.insert(a.ids.end(), ch.ids.begin(), ch.ids.end());
    a.text += ch.text;
    a.chunks_cached = a.chunks_cached && ch.cached;
    ++a.chunks;
    return true;
  });
  return a;
}

bool is_cached(const answer& a) { return a.sum.replica == "cache" && a.chunks > 0 && a.chunks_cached; }

template <class F>
void expect_refused(F&& f, shoal::errc code, const std::string& what) {
  try {
    f();
    BOOST_ERROR(what << ": expected " << shoal::to_string(code) << ", got no error");
  } catch (const shoal::error& e) {
    BOOST_CHECK_MESSAGE(e.code() == code, what << ": expected " << shoal::to_string(code) << ", got "
                                                << shoal::to_string(e.code()) << " (" << e.what() << ")");
  }
}

// Every value stored in a RocksDB database, decompressed (SST blocks may be compressed, so a byte
// search of the files alone could miss a value).
std::string rocksdb_contents(const std::string& path) {
  rocksdb::Options o;
  rocksdb::DB* raw = nullptr;
  auto s = rocksdb::DB::OpenForReadOnly(o, path, &raw);
  BOOST_REQUIRE_MESSAGE(s.ok(), path << ": " << s.ToString());
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string all;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    all += it->key().ToString();
    all += '\n';
    all += it->value().ToString();
    all += '\n';
  }
  return all;
}

void flush_and_compact(const std::string& path) {
  rocksdb::Options o;
  rocksdb::DB* raw = nullptr;
  auto s = rocksdb::DB::Open(o, path, &raw);
  BOOST_REQUIRE_MESSAGE(s.ok(), path << ": " << s.ToString());
  std::unique_ptr<rocksdb::DB> db(raw);
  BOOST_REQUIRE(db->Flush(rocksdb::FlushOptions()).ok());
  BOOST_REQUIRE(db->CompactRange(rocksdb::CompactRangeOptions(), nullptr, nullptr).ok());
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// ---- planted personal data: valid numbers generated here, checked with their own rules

std::string digits(std::mt19937_64& rng, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>('0' + rng() % 10));
  return s;
}

std::string china_id(std::mt19937_64& rng) {
  static const int w[] = {7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2};
  const int year = 1950 + static_cast<int>(rng() % 60), month = 1 + static_cast<int>(rng() % 12),
            day = 1 + static_cast<int>(rng() % 28);
  char birth[16];
  std::snprintf(birth, sizeof birth, "%04d%02d%02d", year, month, day);
  std::string s = "1101" + digits(rng, 2) + birth + digits(rng, 3);
  int sum = 0;
  for (int i = 0; i < 17; ++i) sum += (s[static_cast<std::size_t>(i)] - '0') * w[i];
  return s + "10X98765432"[sum % 11];
}

std::string luhn_card(std::mt19937_64& rng) {
  std::string s = "62" + digits(rng, 13);
  int sum = 0;
  for (int i = static_cast<int>(s.size()) - 1, k = 0; i >= 0; --i, ++k) {
    int d = s[static_cast<std::size_t>(i)] - '0';
    if (k % 2 == 0) d *= 2;  // the check digit will sit to the right
    sum += d > 9 ? d - 9 : d;
  }
  return s + static_cast<char>('0' + (10 - sum % 10) % 10);
}

std::string phone(std::mt19937_64& rng, std::string& plain) {
  plain = "1" + std::string(1, "3456789"[rng() % 7]) + digits(rng, 9);
  switch (rng() % 3) {
    case 0: return plain;
    case 1: return "+86 " + plain.substr(0, 3) + "-" + plain.substr(3, 4) + "-" + plain.substr(7);
    default: return "+86" + plain;
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(governance)

BOOST_AUTO_TEST_CASE(cache_hits_are_per_tenant_and_domain, *boost::unit_test::precondition(needs_shared{kStories})) {
  governed_cluster g;
  auto alpha = g.client(kAlpha);
  const auto p = greedy("Once upon a time, a little dog", 16);
  auto first = run(alpha, p);
  BOOST_CHECK(!is_cached(first));
  BOOST_CHECK_EQUAL(first.ids.size(), 16u);
  auto second = run(alpha, p);
  BOOST_CHECK_MESSAGE(is_cached(second), "the repeated deterministic request was not a cache hit (replica "
                                             << second.sum.replica << ")");
  BOOST_CHECK(second.ids == first.ids);
  BOOST_CHECK_EQUAL(second.text, first.text);
  BOOST_CHECK_EQUAL(second.sum.completion_tokens, 16);
  BOOST_CHECK_EQUAL(second.sum.finish_reason, "length");

  // Another tenant in the same domain, and one in another domain: misses (then their own hits).
  auto beta = g.client(kBeta);
  auto b = run(beta, p);
  BOOST_CHECK(!is_cached(b));
  BOOST_CHECK(b.ids == first.ids);  // same model, same greedy answer, computed again
  BOOST_CHECK(is_cached(run(beta, p)));
  auto gamma = g.client(kGamma);
  BOOST_CHECK(!is_cached(run(gamma, p)));

  // Anything that changes the output changes the key.
  auto longer = p;
  longer.max_tokens = 17;
  BOOST_CHECK(!is_cached(run(alpha, longer)));
  auto stop = p;
  stop.stop = {"zzz"};
  BOOST_CHECK(!is_cached(run(alpha, stop)));
  // Sampling without a seed is not deterministic: never cached.
  auto sampled = p;
  sampled.sampling.temperature = 0.8f;
  run(alpha, sampled);
  BOOST_CHECK(!is_cached(run(alpha, sampled)));
  // With a seed it is, and the cached answer is the seeded one.
  sampled.sampling.seed = 42;
  auto s1 = run(alpha, sampled);
  auto s2 = run(alpha, sampled);
  BOOST_CHECK(!is_cached(s1));
  BOOST_CHECK(is_cached(s2));
  BOOST_CHECK(s1.ids == s2.ids);
  // The request can opt out.
  auto nc = p;
  nc.no_cache = true;
  BOOST_CHECK(!is_cached(run(alpha, nc)));
  // Bytes that are not UTF-8 where the audit record quotes the request: a clear refusal or a normal
  // answer, and the router (and its audit log) keep going.
  auto bad_model = p;
  bad_model.model = "m\xff\xfe";
  expect_refused([&] { run(alpha, bad_model); }, shoal::errc::not_found, "a model name that is not UTF-8");
  auto bad_id = p;
  bad_id.request_id = "id-\xc3\x28";
  bad_id.no_cache = true;
  BOOST_CHECK_EQUAL(run(alpha, bad_id).ids.size(), 16u);
  BOOST_CHECK(is_cached(run(alpha, p)));

  // Planted personal data, from a sensitive tenant too: its logs are scanned at the end.
  run(alpha, greedy(shoal::test::pii_sentence(), 4));
  // The sensitive domain caches its answers sealed: the text is nowhere in the database.
  auto secret = g.client(kSecret);
  run(secret, greedy(shoal::test::pii_sentence(), 4));
  const auto sp = greedy("Lily and Tom went to the big", 24);
  auto sfirst = run(secret, sp);
  auto ssecond = run(secret, sp);
  BOOST_CHECK(!is_cached(sfirst));
  BOOST_CHECK(is_cached(ssecond));
  BOOST_CHECK(ssecond.ids == sfirst.ids);
  g.cluster->stop_node("n0");
  const auto cache_db = g.cluster->data_dir("n0") + "/cache";
  const auto contents = rocksdb_contents(cache_db);
  // Public answers are stored as they are (this shows the search would find a stored text)...
  BOOST_CHECK(contents.find(first.text) != std::string::npos);
  // ...sensitive ones are not.
  BOOST_CHECK(sfirst.text.size() > 20);
  BOOST_CHECK(contents.find(sfirst.text) == std::string::npos);
  for (const auto& f : std::filesystem::recursive_directory_iterator(cache_db)) {
    if (f.is_regular_file()) BOOST_CHECK(read_file(f.path()).find(sfirst.text) == std::string::npos);
  }
  shoal::test::expect_no_planted_pii_in_logs(*g.cluster);
}

BOOST_AUTO_TEST_CASE(planted_personal_data_is_never_stored_in_clear,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  governed_cluster g;
  std::mt19937_64 rng(20261129);
  struct planted {
    std::string prompt;
    std::vector<std::string> values;  // as written, and digits only
  };
  std::vector<planted> work;
  for (int i = 0; i < 1000; ++i) {
    std::string plain;
    const auto ph = phone(rng, plain);
    const auto id = china_id(rng);
    const auto card = luhn_card(rng);
    planted p;
    switch (i % 3) {
      case 0: p.prompt = "Call me at " + ph + " about the story."; p.values = {ph, plain}; break;
      case 1: p.prompt = "My ID is " + id + " and my card is " + card + "."; p.values = {id, card}; break;
      default: p.prompt = "客户电话" + ph + "，身份证号" + id + "，卡号" + card; p.values = {ph, plain, id, card}; break;
    }
    work.push_back(p);
  }
  work.push_back({shoal::test::pii_sentence(), shoal::test::planted_pii()});
  std::atomic<int> next{0}, failures{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&, t] {
      auto c = g.client(t % 2 ? kSecret : kAlpha);
      for (int i = next++; i < static_cast<int>(work.size()); i = next++) {
        try {
          run(c, greedy(work[static_cast<std::size_t>(i)].prompt, 4));
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  BOOST_CHECK_EQUAL(failures.load(), 0);
  const auto metrics = shoal::test::http_get("127.0.0.1", g.cluster->metrics_port("n0"), "/metrics");
  BOOST_REQUIRE_EQUAL(metrics.status, 200);
  g.cluster->stop_node("n0");
  const std::string data = g.cluster->data_dir("n0");
  flush_and_compact(data + "/audit");
  flush_and_compact(data + "/cache");
  const auto audit = rocksdb_contents(data + "/audit");
  const auto cache = rocksdb_contents(data + "/cache");
  // The searches can find things: the masked prompts are in the audit log as the policy says.
  BOOST_CHECK(audit.find("Call me at [PHONE] about the story.") != std::string::npos);
  BOOST_CHECK(audit.find("[ID]") != std::string::npos);
  BOOST_CHECK(audit.find("[CARD]") != std::string::npos);
  std::string files;
  for (const auto& f : std::filesystem::recursive_directory_iterator(g.cluster->dir())) {
    if (f.is_regular_file() && f.path().filename() != "cluster.yaml") files += read_file(f.path());
  }
  BOOST_CHECK(files.find("[node n0]") != std::string::npos);  // the node's log is among them
  int leaks = 0;
  for (const auto& w : work) {
    for (const auto& v : w.values) {
      for (const std::string* where : std::vector<const std::string*>{&audit, &cache, &files, &metrics.body}) {
        if (where->find(v) != std::string::npos) {
          if (++leaks <= 5) BOOST_ERROR("planted value " << v << " found in clear");
        }
      }
    }
  }
  BOOST_CHECK_EQUAL(leaks, 0);
  shoal::test::expect_no_planted_pii_in_logs(*g.cluster);
}

// Not only prompts: whatever a client writes that an audit record quotes (a request id, a model
// name, a request kind, an admin filter, and the refusals that repeat them) is masked before it is
// stored.
BOOST_AUTO_TEST_CASE(client_text_in_audit_records_is_masked, *boost::unit_test::precondition(needs_shared{kStories})) {
  governed_cluster g;
  const auto& v = shoal::test::planted_pii();  // an email, a mobile number, an ID, a card
  auto alpha = g.client(kAlpha);
  auto served = greedy("Once upon a time", 4);
  served.no_cache = true;
  served.request_id = "id " + v[0];
  BOOST_CHECK_EQUAL(run(alpha, served).ids.size(), 4u);
  auto model = greedy("Once upon a time", 4);
  model.model = "model " + v[1];
  expect_refused([&] { run(alpha, model); }, shoal::errc::not_found, "a model name with a phone number");
  auto kind = greedy("Once upon a time", 4);
  kind.kind = "kind " + v[2];
  expect_refused([&] { run(alpha, kind); }, shoal::errc::invalid_argument, "a kind with an ID number");
  auto admin = g.client(kAdmin);
  shoal::client::admin_params q;
  q.op = "query";
  q.principal = "principal " + v[3];
  q.operation = "operation " + v[0];
  q.tenant = "tenant " + v[1];
  admin.admin(q);
  q.since = "since " + v[2];  // not a date: the failed query is audited, quoting it
  expect_refused([&] { admin.admin(q); }, shoal::errc::invalid_argument, "a since that is not a date");
  shoal::client::admin_params u;
  u.op = "unblock";
  u.principal = "who " + v[3];
  expect_refused([&] { admin.admin(u); }, shoal::errc::not_found, "unblocking a principal that is not blocked");
  g.cluster->stop_node("n0");
  const std::string db = g.cluster->data_dir("n0") + "/audit";
  flush_and_compact(db);
  std::string stored = rocksdb_contents(db);
  for (const auto& f : std::filesystem::recursive_directory_iterator(db)) {
    if (f.is_regular_file()) stored += read_file(f.path());
  }
  // The search finds what is there: the masked forms of the fields.
  for (const char* masked :
       {"id [EMAIL]", "model [PHONE]", "kind [ID]", "principal [CARD]", "since [ID]", "who [CARD]"}) {
    BOOST_CHECK_MESSAGE(stored.find(masked) != std::string::npos, "'" << masked << "' is not in the audit store");
  }
  for (const auto& value : v) {
    const auto at = stored.find(value);
    BOOST_CHECK_MESSAGE(at == std::string::npos, "planted value " << value << " is in the audit store in clear: ..."
                                                                   << (at == std::string::npos ? "" : stored.substr(at > 80 ? at - 80 : 0, 160))
                                                                   << "...");
  }
  auto log = shoal::governance::audit_log::open(db, true);
  BOOST_CHECK(log->verify().ok);
  shoal::test::expect_no_planted_pii_in_logs(*g.cluster);
}

BOOST_AUTO_TEST_CASE(acknowledged_requests_are_audited_through_kill_9,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  governed_cluster g;
  std::mutex m;
  std::set<std::string> acknowledged;
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < 6; ++t) {
    ts.emplace_back([&, t] {
      auto c = g.client(t % 2 ? kBeta : kAlpha);
      for (int i = 0; !stop; ++i) {
        try {
          auto p = greedy("Once upon a time " + std::to_string(t) + " " + std::to_string(i), 24);
          p.no_cache = true;
          auto a = run(c, p);
          std::lock_guard lock(m);
          acknowledged.insert(a.sum.request_id);
        } catch (const std::exception&) {
          return;  // the node is gone
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  g.cluster->kill_node("n0");
  stop = true;
  for (auto& t : ts) t.join();
  BOOST_TEST_MESSAGE(acknowledged.size() << " requests acknowledged before kill -9");
  BOOST_REQUIRE(acknowledged.size() >= 6);
  const std::string db = g.cluster->data_dir("n0") + "/audit";
  // The node comes back on the same store and serves again.
  g.cluster->start_node("n0");
  g.cluster->wait_ready(90);
  auto alpha = g.client(kAlpha);
  run(alpha, greedy("After the restart", 4));
  run(alpha, greedy(shoal::test::pii_sentence(), 4));
  g.cluster->stop_node("n0");
  auto v = shoal::test::run_shoal({"audit", "verify", "--db", db});
  BOOST_CHECK_MESSAGE(v.status == 0, v.out << v.err);
  std::set<std::string> recorded;
  auto log = shoal::governance::audit_log::open(db, true);
  log->query({}, [&](const nlohmann::json& r) {
    if (r.value("kind", "") == "request" && r["outcome"].value("status", "") == "ok") {
      recorded.insert(r.value("request_id", ""));
      // Where: the node and the client's address as the gateway saw it.
      BOOST_CHECK_EQUAL(r["where"].value("node", ""), "n0");
      BOOST_CHECK_EQUAL(r["where"].value("client", "").rfind("127.0.0.1:", 0), 0u);
      BOOST_CHECK_EQUAL(r["how"].value("api_method", ""), "rpc.generate");
    }
  });
  int missing = 0;
  for (const auto& id : acknowledged) {
    if (!recorded.count(id) && ++missing <= 5) BOOST_ERROR("acknowledged request " << id << " has no audit record");
  }
  BOOST_CHECK_EQUAL(missing, 0);
  shoal::test::expect_no_planted_pii_in_logs(*g.cluster);
}

BOOST_AUTO_TEST_CASE(export_rule_blocks_across_restart_until_an_audited_unblock,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  governed_cluster g(
      "alerts:\n  - name: export-burst\n    kind: operations\n    operations: [export, query]\n    max: 3\n"
      "    window_seconds: 60\n");
  auto alpha = g.client(kAlpha);
  auto beta = g.client(kBeta);
  run(alpha, greedy("Once upon a time", 4));
  // A user key sees its own tenant's records only.
  shoal::client::admin_params q;
  q.op = "query";
  for (int i = 0; i < 2; ++i) {
    for (const auto& line : alpha.admin(q)) {
      BOOST_CHECK_EQUAL(nlohmann::json::parse(line)["who"]["tenant"].get<std::string>(), "alpha");
    }
  }
  q.tenant = "beta";
  expect_refused([&] { alpha.admin(q); }, shoal::errc::forbidden, "a user key reading another tenant");
  q.tenant.clear();
  q.op = "export";
  alpha.admin(q);  // the third export/query in the window: still allowed
  expect_refused([&] { alpha.admin(q); }, shoal::errc::forbidden, "the fourth export within the window");
  expect_refused([&] { run(alpha, greedy("Once upon a time", 4)); }, shoal::errc::forbidden, "a blocked principal");
  run(beta, greedy("Once upon a time", 4));  // other tenants are not affected

  // The block survives a restart of the node.
  g.cluster->stop_node("n0");
  g.cluster->start_node("n0");
  g.cluster->wait_ready(90);
  auto alpha2 = g.client(kAlpha);
  expect_refused([&] { run(alpha2, greedy("Once upon a time", 4)); }, shoal::errc::forbidden, "blocked after restart");
  auto admin = g.client(kAdmin);
  shoal::client::admin_params b;
  b.op = "blocks";
  auto blocks = admin.admin(b);
  BOOST_REQUIRE_EQUAL(blocks.size(), 1u);
  BOOST_CHECK_EQUAL(nlohmann::json::parse(blocks[0])["principal"].get<std::string>(), "alpha/a1");
  expect_refused([&] { beta.admin(b); }, shoal::errc::forbidden, "blocks needs an admin key");
  shoal::client::admin_params u;
  u.op = "unblock";
  u.principal = "alpha/a1";
  admin.admin(u);
  auto after = run(alpha2, greedy("Once upon a time", 4));
  BOOST_CHECK_EQUAL(after.ids.size(), 4u);
  shoal::client::admin_params filtered;
  filtered.op = "query";
  filtered.principal = shoal::test::pii_sentence();
  admin.admin(filtered);

  // The block and the unblock are in the audit log, and the chain verifies.
  g.cluster->stop_node("n0");
  const std::string db = g.cluster->data_dir("n0") + "/audit";
  auto log = shoal::governance::audit_log::open(db, true);
  int blocked = 0, unblocked = 0, refused_blocked = 0, deploys = 0;
  log->query({}, [&](const nlohmann::json& r) {
    if (r.value("kind", "") == "admin" && r["what"].value("operation", "") == "deploy") {
      ++deploys;
      BOOST_CHECK_EQUAL(r["deploy"]["models"][0]["weights"].get<std::string>().size(), 64u);
    }
    if (r.value("kind", "") == "alert" && r["who"].value("principal", "") == "a1") ++blocked;
    if (r.value("kind", "") == "admin" && r["what"].value("operation", "") == "unblock" &&
        r.value("target", "") == "alpha/a1") {
      ++unblocked;
    }
    if (r.value("kind", "") == "request" && r["outcome"].value("status", "") == "blocked") ++refused_blocked;
  });
  BOOST_CHECK_EQUAL(blocked, 1);
  BOOST_CHECK_EQUAL(unblocked, 1);
  BOOST_CHECK_EQUAL(deploys, 2);  // the first start and the restart
  BOOST_CHECK_GE(refused_blocked, 2);
  BOOST_CHECK(log->verify().ok);
  shoal::test::expect_no_planted_pii_in_logs(*g.cluster);
}

BOOST_AUTO_TEST_SUITE_END()
