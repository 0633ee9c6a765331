// The answer cache's store (TTL, size eviction, purge, sealed values) and the anomaly rules, on
// real RocksDB in temporary directories, with times given explicitly (no sleeping, no clocks).

#include <rocksdb/db.h>

#include <boost/test/unit_test.hpp>
#include <filesystem>
#include <fstream>

#include "governance/alerts.hpp"
#include "governance/answer_cache.hpp"
#include "engine/common/error.hpp"
#include "tests/support/temp_dir.hpp"

using namespace shoal::governance;

namespace {

cached_answer answer(const std::string& text, std::int32_t n = 3) {
  cached_answer a;
  for (std::int32_t i = 0; i < n; ++i) a.ids.push_back(100 + i);
  a.text = text;
  a.finish_reason = "length";
  a.prompt_tokens = 5;
  a.completion_tokens = n;
  return a;
}

std::string raw_contents(const std::string& path) {
  rocksdb::Options o;
  rocksdb::DB* raw = nullptr;
  BOOST_REQUIRE(rocksdb::DB::OpenForReadOnly(o, path, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string all;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) all += it->key().ToString() + it->value().ToString();
  return all;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(answer_cache_store)

BOOST_AUTO_TEST_CASE(round_trip_ttl_and_tenant_separation) {
  shoal::test::temp_dir d;
  cache_spec spec;
  spec.ttl_seconds = 100;
  answer_cache c(d / "c", spec);
  c.put("alpha", "k1", answer("a tale"), false, 1000);
  auto got = c.get("alpha", "k1", 1050);
  BOOST_REQUIRE(got);
  BOOST_CHECK_EQUAL(got->text, "a tale");
  BOOST_CHECK((got->ids == std::vector<std::int32_t>{100, 101, 102}));
  BOOST_CHECK_EQUAL(got->finish_reason, "length");
  BOOST_CHECK_EQUAL(got->completion_tokens, 3);
  // The same key under another tenant is another entry.
  BOOST_CHECK(!c.get("beta", "k1", 1050));
  // Expired at stored + ttl, and removed.
  BOOST_CHECK(!c.get("alpha", "k1", 1100));
  BOOST_CHECK_EQUAL(c.counts().entries, 0);
  BOOST_CHECK_EQUAL(c.counts().bytes, 0);
}

BOOST_AUTO_TEST_CASE(size_limit_evicts_oldest_first) {
  shoal::test::temp_dir d;
  cache_spec spec;
  spec.max_bytes = 1000;
  answer_cache c(d / "c", spec);
  std::int64_t evicted = 0;
  for (int i = 0; i < 20; ++i) evicted += c.put("t", "k" + std::to_string(i), answer(std::string(60, 'x')), false, 10 + i);
  BOOST_CHECK_GT(evicted, 0);
  BOOST_CHECK_LE(c.counts().bytes, 1000);
  BOOST_CHECK_EQUAL(c.counts().entries + evicted, 20);
  // The newest survive, the oldest went.
  BOOST_CHECK(c.get("t", "k19", 20));
  BOOST_CHECK(!c.get("t", "k0", 20));
}

BOOST_AUTO_TEST_CASE(counts_survive_reopen_and_purge_is_per_tenant) {
  shoal::test::temp_dir d;
  cache_spec spec;
  std::int64_t entries = 0, bytes = 0;
  {
    answer_cache c(d / "c", spec);
    c.put("alpha", "k1", answer("one"), false, 10);
    c.put("alpha", "k2", answer("two"), false, 10);
    c.put("beta", "k1", answer("three"), false, 10);
    entries = c.counts().entries;
    bytes = c.counts().bytes;
  }
  answer_cache c(d / "c", spec);
  BOOST_CHECK_EQUAL(c.counts().entries, entries);
  BOOST_CHECK_EQUAL(c.counts().bytes, bytes);
  BOOST_CHECK_EQUAL(c.purge_tenant("alpha"), 2);
  BOOST_CHECK(!c.get("alpha", "k1", 11));
  BOOST_CHECK(!c.get("alpha", "k2", 11));
  BOOST_CHECK(c.get("beta", "k1", 11));
  // A tenant whose name is a prefix of another's is not swept with it.
  c.put("al", "k", answer("x"), false, 10);
  c.put("alp", "k", answer("y"), false, 10);
  BOOST_CHECK_EQUAL(c.purge_tenant("al"), 1);
  BOOST_CHECK(c.get("alp", "k", 11));
}

BOOST_AUTO_TEST_CASE(sealed_values_need_the_key) {
  shoal::test::temp_dir d;
  d.write("key", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
  cache_spec spec;
  spec.key_file = d / "key";
  const std::string secret = "the secret answer nobody may read";
  {
    answer_cache c(d / "c", spec);
    BOOST_CHECK(c.has_key());
    c.put("s", "k", answer(secret), true, 10);
    c.put("p", "k", answer("a plain answer"), false, 10);
    BOOST_REQUIRE(c.get("s", "k", 11));
    BOOST_CHECK_EQUAL(c.get("s", "k", 11)->text, secret);
  }
  const auto raw = raw_contents(d / "c");
  BOOST_CHECK(raw.find(secret) == std::string::npos);
  BOOST_CHECK(raw.find("a plain answer") != std::string::npos);
  // Another key cannot open it: an error, never garbage.
  d.write("other", "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
  cache_spec other = spec;
  other.key_file = d / "other";
  answer_cache c(d / "c", other);
  BOOST_CHECK_THROW(c.get("s", "k", 11), shoal::error);
  // Without any key a sealed put is refused.
  answer_cache nokey(d / "c3", cache_spec{});
  BOOST_CHECK_THROW(nokey.put("s", "k", answer(secret), true, 10), shoal::error);
}

BOOST_AUTO_TEST_CASE(bad_keys_are_named) {
  shoal::test::temp_dir d;
  d.write("short", "abcd");
  cache_spec spec;
  spec.key_file = d / "short";
  try {
    answer_cache c(d / "c", spec);
    BOOST_ERROR("a 2-byte key was accepted");
  } catch (const shoal::error& e) {
    BOOST_CHECK(std::string(e.what()).find("short") != std::string::npos);
  }
  spec.key_file.clear();
  spec.key_env = "SHOAL_TEST_NO_SUCH_VARIABLE";
  BOOST_CHECK_THROW(answer_cache(d / "c", spec), shoal::error);
}

BOOST_AUTO_TEST_CASE(keys_differ_in_every_field) {
  cache_key_fields f;
  f.tenant = "t";
  f.domain = "public";
  f.model = "m";
  f.model_version = "v1";
  f.kind = "generate";
  f.masked_prompt = "hello";
  f.max_tokens = 8;
  f.sampling = "{}";
  const auto base = cache_key(f);
  BOOST_CHECK_EQUAL(base.size(), 64u);
  BOOST_CHECK_EQUAL(cache_key(f), base);
  auto changed = [&](auto mutate) {
    auto g = f;
    mutate(g);
    return cache_key(g) != base;
  };
  BOOST_CHECK(changed([](auto& g) { g.tenant = "u"; }));
  BOOST_CHECK(changed([](auto& g) { g.domain = "business"; }));
  BOOST_CHECK(changed([](auto& g) { g.model = "n"; }));
  BOOST_CHECK(changed([](auto& g) { g.model_version = "v2"; }));
  BOOST_CHECK(changed([](auto& g) { g.masked_prompt = "hello "; }));
  BOOST_CHECK(changed([](auto& g) { g.prompt_ids = {1}; }));
  BOOST_CHECK(changed([](auto& g) { g.max_tokens = 9; }));
  BOOST_CHECK(changed([](auto& g) { g.ignore_eos = true; }));
  BOOST_CHECK(changed([](auto& g) { g.add_special = false; }));
  BOOST_CHECK(changed([](auto& g) { g.stop = {"x"}; }));
  BOOST_CHECK(changed([](auto& g) { g.stop_ids = {2}; }));
  BOOST_CHECK(changed([](auto& g) { g.sampling = "{\"seed\":1}"; }));
  // Fields cannot run into each other.
  auto a = f, b = f;
  a.tenant = "ab";
  a.domain = "c";
  b.tenant = "a";
  b.domain = "bc";
  BOOST_CHECK(cache_key(a) != cache_key(b));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(alert_rules)

using clk = alert_engine::clock;

BOOST_AUTO_TEST_CASE(operations_window_slides) {
  alert_rule r;
  r.name = "exports";
  r.kind = "operations";
  r.operations = {"export"};
  r.max = 2;
  r.window_seconds = 60;
  alert_engine e({r});
  const auto t0 = clk::time_point{} + std::chrono::hours(1);
  BOOST_CHECK(!e.operation("t", "t/a", "export", t0));
  BOOST_CHECK(!e.operation("t", "t/a", "generate", t0));  // not counted
  BOOST_CHECK(!e.operation("t", "t/a", "export", t0 + std::chrono::seconds(10)));
  BOOST_CHECK(!e.operation("t", "t/b", "export", t0 + std::chrono::seconds(10)));  // another principal
  auto trip = e.operation("t", "t/a", "export", t0 + std::chrono::seconds(20));
  BOOST_REQUIRE(trip);
  BOOST_CHECK_EQUAL(trip->rule, "exports");
  // A minute later the early events have left the window.
  alert_engine e2({r});
  BOOST_CHECK(!e2.operation("t", "t/a", "export", t0));
  BOOST_CHECK(!e2.operation("t", "t/a", "export", t0 + std::chrono::seconds(30)));
  BOOST_CHECK(!e2.operation("t", "t/a", "export", t0 + std::chrono::seconds(61)));
}

BOOST_AUTO_TEST_CASE(rules_can_name_a_tenant) {
  alert_rule r;
  r.name = "only-acme";
  r.kind = "operations";
  r.operations = {"query"};
  r.max = 1;
  r.tenant = "acme";
  alert_engine e({r});
  const auto t0 = clk::time_point{} + std::chrono::hours(1);
  BOOST_CHECK(!e.operation("other", "other/x", "query", t0));
  BOOST_CHECK(!e.operation("other", "other/x", "query", t0));
  BOOST_CHECK(!e.operation("acme", "acme/x", "query", t0));
  BOOST_CHECK(e.operation("acme", "acme/x", "query", t0));
}

BOOST_AUTO_TEST_CASE(output_volume_against_ceiling_and_baseline) {
  alert_rule r;
  r.name = "volume";
  r.kind = "output_tokens";
  r.max = 0;
  r.baseline_factor = 5;
  r.window_seconds = 60;
  alert_engine e({r});
  auto t = clk::time_point{} + std::chrono::hours(1);
  // Four quiet minutes of ~100 tokens build the baseline.
  for (int m = 0; m < 4; ++m) {
    BOOST_CHECK(!e.output_tokens("t", "t/a", 100, t + std::chrono::minutes(m)));
  }
  // Then 10x that within a minute trips it.
  const auto burst = t + std::chrono::minutes(4) + std::chrono::seconds(1);
  BOOST_CHECK(!e.output_tokens("t", "t/a", 300, burst));
  auto trip = e.output_tokens("t", "t/a", 700, burst + std::chrono::seconds(1));
  BOOST_REQUIRE(trip);
  BOOST_CHECK(trip->detail.find("baseline") != std::string::npos);
  alert_rule ceiling = r;
  ceiling.baseline_factor = 0;
  ceiling.max = 1000;
  alert_engine e2({ceiling});
  BOOST_CHECK(!e2.output_tokens("t", "t/a", 600, t));
  BOOST_CHECK(e2.output_tokens("t", "t/a", 600, t + std::chrono::seconds(5)));
}

BOOST_AUTO_TEST_CASE(miss_probes_group_by_prefix) {
  alert_rule r;
  r.name = "probing";
  r.kind = "miss_probes";
  r.max = 2;
  r.prefix_chars = 8;
  alert_engine e({r});
  const auto t0 = clk::time_point{} + std::chrono::hours(1);
  BOOST_CHECK(!e.miss_probe("t", "t/a", "account 1234 balance?", t0));
  BOOST_CHECK(!e.miss_probe("t", "t/a", "account 5678 balance?", t0));
  BOOST_CHECK(!e.miss_probe("t", "t/a", "weather today", t0));
  BOOST_CHECK(e.miss_probe("t", "t/a", "account 9999 balance?", t0));
}

BOOST_AUTO_TEST_SUITE_END()
