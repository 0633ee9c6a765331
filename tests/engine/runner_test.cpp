// The forward pass beyond the goldens: both file formats agree on arbitrary token sequences,
// chunked prefill equals one-token-at-a-time decoding, batching several sequences equals running
// each alone, and a tensor-parallel split (2 ranks, in-process all-reduce) equals the whole model.

#include <boost/test/unit_test.hpp>
#include <barrier>
#include <cmath>
#include <random>
#include <thread>

#include "engine/common/error.hpp"
#include "engine/model/model.hpp"
#include "engine/runner/model_runner.hpp"
#include "tests/support/shared.hpp"
#include "tests/support/compare.hpp"

using shoal::test::needs_shared;
using shoal::test::shared_path;

namespace {

const char* kStories = "models/stories260K/hf";
const char* kStoriesGguf = "models/stories260K/gguf/stories260K-f32.gguf";
const char* kQwen = "models/qwen2-tiny/hf";
const char* kQwenGguf = "models/qwen2-tiny/gguf/qwen2-tiny.gguf";

std::vector<std::int32_t> random_ids(std::int32_t vocab, std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> d(3, vocab - 1);
  std::vector<std::int32_t> ids(n);
  for (auto& x : ids) x = d(rng);
  return ids;
}

// Logits at every position of `ids`, fed as one prefill batch.
std::vector<float> prefill_logits(shoal::model_runner& r, const std::vector<std::int32_t>& ids) {
  std::vector<std::int32_t> table;
  for (std::int32_t b = 0; b < r.cache().num_blocks(); ++b) table.push_back(b);
  shoal::forward_batch batch;
  for (std::size_t i = 0; i < ids.size(); ++i) batch.add(ids[i], static_cast<std::int32_t>(i), table, true);
  std::vector<float> logits;
  r.forward(batch, logits);
  return logits;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  BOOST_REQUIRE_EQUAL(a.size(), b.size());
  float worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = shoal::test::worse(worst, a[i] - b[i]);
  return worst;
}

void formats_agree(const char* hf, const char* gguf, std::int32_t vocab) {
  auto a = shoal::model::load(shared_path(hf));
  auto b = shoal::model::load(shared_path(gguf));
  auto be = shoal::kernels::make_reference_backend();
  shoal::model_runner ra(*a, *be, {}, nullptr, {});
  shoal::model_runner rb(*b, *be, {}, nullptr, {});
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    auto ids = random_ids(vocab, 40 + seed * 13, seed);
    BOOST_TEST(max_abs_diff(prefill_logits(ra, ids), prefill_logits(rb, ids)) <= 1e-4f, "seed " << seed);
  }
}

// Sum-all-reduce between threads of one process.
class thread_comm final : public shoal::communicator {
 public:
  struct shared_state {
    explicit shared_state(int n) : bar(n), bufs(n) {}
    std::barrier<> bar;
    std::vector<float*> bufs;
  };
  thread_comm(shared_state& s, int rank, int world) : s_(s), rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  void all_reduce_sum(const shoal::kernels::tensor& t) override {
    float* data = static_cast<float*>(t.data);
    const auto n = static_cast<std::size_t>(t.elements());
    s_.bufs[rank_] = data;
    s_.bar.arrive_and_wait();
    std::vector<float> sum(n, 0.0f);
    for (int r = 0; r < world_; ++r) {
      for (std::size_t i = 0; i < n; ++i) sum[i] += s_.bufs[r][i];
    }
    s_.bar.arrive_and_wait();
    std::copy(sum.begin(), sum.end(), data);
    s_.bar.arrive_and_wait();
  }

 private:
  shared_state& s_;
  int rank_, world_;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(runner)

BOOST_AUTO_TEST_CASE(stories_hf_and_gguf_agree,
                     *boost::unit_test::precondition(needs_shared{kStories}) *
                         boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  formats_agree(kStories, kStoriesGguf, 512);
}

BOOST_AUTO_TEST_CASE(qwen2_hf_and_gguf_agree,
                     *boost::unit_test::precondition(needs_shared{kQwen}) *
                         boost::unit_test::precondition(needs_shared{kQwenGguf})) {
  formats_agree(kQwen, kQwenGguf, 32000);
}

BOOST_AUTO_TEST_CASE(prefill_equals_stepwise_decode, *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  auto m = shoal::model::load(shared_path(kStoriesGguf));
  auto be = shoal::kernels::make_reference_backend();
  auto ids = random_ids(512, 37, 9);
  shoal::model_runner whole(*m, *be, {}, nullptr, {});
  auto expect = prefill_logits(whole, ids);
  // Same tokens one per forward call, with a block size that does not divide the length.
  shoal::model_runner step(*m, *be, {}, nullptr, shoal::kv_cache_options{.block_size = 5, .num_blocks = 0});
  std::vector<std::int32_t> table = {7, 2, 9, 0, 4, 1, 3, 8, 6, 5};  // physical blocks out of order
  std::vector<float> got, logits;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    shoal::forward_batch b;
    b.add(ids[i], static_cast<std::int32_t>(i), table, true);
    step.forward(b, logits);
    got.insert(got.end(), logits.begin(), logits.end());
  }
  BOOST_TEST(max_abs_diff(expect, got) <= 1e-4f);
}

BOOST_AUTO_TEST_CASE(batched_sequences_equal_alone, *boost::unit_test::precondition(needs_shared{kQwen})) {
  auto m = shoal::model::load(shared_path(kQwen));
  auto be = shoal::kernels::make_reference_backend();
  auto a = random_ids(32000, 11, 21), b = random_ids(32000, 6, 22);
  shoal::model_runner alone(*m, *be, {}, nullptr, {});
  auto la = prefill_logits(alone, a);
  auto lb = prefill_logits(alone, b);  // overwrites the same blocks: fine, it is a fresh prefill
  // Both sequences in one batch with disjoint block tables.
  shoal::model_runner both(*m, *be, {}, nullptr, shoal::kv_cache_options{.block_size = 4, .num_blocks = 16});
  std::vector<std::int32_t> ta = {0, 2, 4}, tb = {1, 3};
  shoal::forward_batch batch;
  for (std::size_t i = 0; i < a.size(); ++i) batch.add(a[i], static_cast<std::int32_t>(i), ta, true);
  for (std::size_t i = 0; i < b.size(); ++i) batch.add(b[i], static_cast<std::int32_t>(i), tb, true);
  std::vector<float> logits;
  both.forward(batch, logits);
  const std::size_t V = static_cast<std::size_t>(m->config().vocab_size);
  std::vector<float> ga(logits.begin(), logits.begin() + a.size() * V);
  std::vector<float> gb(logits.begin() + a.size() * V, logits.end());
  BOOST_TEST(max_abs_diff(la, ga) <= 1e-4f);
  BOOST_TEST(max_abs_diff(lb, gb) <= 1e-4f);
}

BOOST_AUTO_TEST_CASE(tensor_parallel_two_ranks_equal_whole, *boost::unit_test::precondition(needs_shared{kQwen})) {
  for (const char* path : {kQwen, kStories}) {
    auto m = shoal::model::load(shared_path(path));
    auto be0 = shoal::kernels::make_reference_backend();
    auto be1 = shoal::kernels::make_reference_backend();
    auto ids = random_ids(static_cast<std::int32_t>(std::min<std::int64_t>(m->tok().vocab_size(), 32000)), 19, 5);
    shoal::model_runner whole(*m, *be0, {}, nullptr, {});
    auto expect = prefill_logits(whole, ids);
    thread_comm::shared_state st(2);
    thread_comm c0(st, 0, 2), c1(st, 1, 2);
    shoal::model_runner r0(*m, *be0, {0, 2}, &c0, {});
    shoal::model_runner r1(*m, *be1, {1, 2}, &c1, {});
    std::vector<float> l0, l1;
    std::thread t([&] { l1 = prefill_logits(r1, ids); });
    l0 = prefill_logits(r0, ids);
    t.join();
    BOOST_TEST(max_abs_diff(expect, l0) <= 1e-4f, path);
    BOOST_TEST(max_abs_diff(expect, l1) <= 1e-4f, path);
  }
}

// Attention reads every cached position of a sequence up to each token's own, through the block
// table: a table that does not cover them with valid blocks is a scheduler bug (internal), caught
// before any kernel reads outside the cache, not a client's bad input.
BOOST_AUTO_TEST_CASE(forward_refuses_tables_that_do_not_cover_what_attention_reads,
                     *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  auto m = shoal::model::load(shared_path(kStoriesGguf));
  auto be = shoal::kernels::make_reference_backend();
  shoal::model_runner r(*m, *be, {}, nullptr, shoal::kv_cache_options{.block_size = 4, .num_blocks = 8});
  std::vector<float> logits;
  auto decode_at = [&](std::int32_t pos, const std::vector<std::int32_t>& table) {
    shoal::forward_batch b;
    b.add(5, pos, table, true);
    r.forward(b, logits);
  };
  auto internal = [](const shoal::error& e) {
    BOOST_TEST_MESSAGE("refused: " << shoal::to_string(e.code()) << ": " << e.what());
    return e.code() == shoal::errc::internal;
  };
  // Valid tables pass: position 9 reads blocks 0..2.
  decode_at(9, {3, 1, 2});
  BOOST_TEST(logits.size() == static_cast<std::size_t>(m->config().vocab_size));
  // Too short for the token's own position.
  BOOST_CHECK_EXCEPTION(decode_at(9, {3, 1}), shoal::error, internal);
  // The token's own block is fine, an earlier one it attends to is not a block of the cache.
  BOOST_CHECK_EXCEPTION(decode_at(9, {8, 1, 2}), shoal::error, internal);
  BOOST_CHECK_EXCEPTION(decode_at(9, {3, -1, 2}), shoal::error, internal);
  // A batch whose token lists disagree, or that names a sequence it has no table for.
  shoal::forward_batch bad;
  bad.add(5, 0, std::vector<std::int32_t>{0}, true);
  bad.positions.push_back(1);
  BOOST_CHECK_EXCEPTION(r.forward(bad, logits), shoal::error, internal);
  shoal::forward_batch orphan;
  orphan.add(5, 0, std::vector<std::int32_t>{0}, true);
  orphan.seq_of_token[0] = 3;
  BOOST_CHECK_EXCEPTION(r.forward(orphan, logits), shoal::error, internal);
}

BOOST_AUTO_TEST_SUITE_END()
