// The continuous-batching scheduler on its own: budgets, chunked prefill, joining and leaving at
// step boundaries, priorities, preemption with recompute, and block accounting.

#include <boost/test/unit_test.hpp>
#include <numeric>

#include "engine/sched/scheduler.hpp"

using namespace shoal::sched;

namespace {

std::unique_ptr<sequence> make_seq(const std::string& id, int prompt, int max_tokens, int priority = 0) {
  auto s = std::make_unique<sequence>();
  s->id = id;
  s->tokens.resize(prompt);
  std::iota(s->tokens.begin(), s->tokens.end(), 1);
  s->prompt_len = prompt;
  s->max_tokens = max_tokens;
  s->priority = priority;
  return s;
}

// Runs one step, sampling token 7 for every sampled item; removes sequences that reached max_tokens.
// `ids` receives the planned sequences' ids (the plan's pointers die with removed sequences).
step_plan run_step(scheduler& s, std::vector<std::string>* ids = nullptr) {
  auto plan = s.schedule();
  if (ids) for (auto& i : plan.items) ids->push_back(i.seq->id);
  std::vector<std::int32_t> sampled;
  for (auto& i : plan.items) if (i.sample) sampled.push_back(7);
  s.complete(plan, sampled);
  std::vector<std::string> done;
  for (auto& i : plan.items) if (i.seq->generated() >= i.seq->max_tokens) done.push_back(i.seq->id);
  for (auto& id : done) s.remove(id);
  return plan;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(scheduler_suite)

BOOST_AUTO_TEST_CASE(chunked_prefill_does_not_stall_decoding) {
  scheduler s({.block_size = 4, .num_blocks = 64, .max_running = 8, .token_budget = 16, .max_prefill_chunk = 8});
  BOOST_REQUIRE(s.add(make_seq("short", 3, 10)));
  run_step(s);  // prefill "short" (3 tokens) and sample its first token
  BOOST_REQUIRE(s.add(make_seq("long", 40, 2)));
  // Every following step keeps decoding "short" (1 token) while "long" prefills in chunks of <= 8.
  for (int step = 0; step < 5; ++step) {
    auto plan = run_step(s);
    BOOST_REQUIRE(!plan.items.empty());
    BOOST_TEST(plan.items[0].seq->id == "short");
    BOOST_TEST(plan.items[0].count == 1);
    BOOST_TEST(plan.tokens <= 16);
    if (plan.items.size() > 1) BOOST_TEST(plan.items[1].count <= 8);
  }
  BOOST_TEST(s.find("long")->computed == 40);
}

BOOST_AUTO_TEST_CASE(new_requests_join_and_finished_leave_at_step_boundaries) {
  scheduler s({.block_size = 4, .num_blocks = 64, .max_running = 8, .token_budget = 64, .max_prefill_chunk = 64});
  s.add(make_seq("a", 5, 2));
  auto p1 = run_step(s);
  BOOST_TEST(p1.items.size() == 1u);
  s.add(make_seq("b", 5, 3));
  std::vector<std::string> ids;
  run_step(s, &ids);  // a decodes (and finishes), b prefills
  BOOST_TEST((ids == std::vector<std::string>{"a", "b"}));
  BOOST_TEST(s.find("a") == nullptr);
  auto p3 = run_step(s);
  BOOST_TEST(p3.items.size() == 1u);
  BOOST_TEST(p3.items[0].seq->id == "b");
}

BOOST_AUTO_TEST_CASE(priority_then_fcfs) {
  scheduler s({.block_size = 4, .num_blocks = 64, .max_running = 1, .token_budget = 64, .max_prefill_chunk = 64});
  s.add(make_seq("low1", 4, 1, 0));
  s.add(make_seq("low2", 4, 1, 0));
  s.add(make_seq("high", 4, 1, 5));
  std::vector<std::string> order;
  for (int i = 0; i < 3; ++i) run_step(s, &order);
  BOOST_TEST((order == std::vector<std::string>{"high", "low1", "low2"}));
}

BOOST_AUTO_TEST_CASE(preemption_recomputes_and_returns_blocks) {
  // 6 blocks of 4 slots: two sequences that each grow to 12 tokens cannot both stay resident.
  scheduler s({.block_size = 4, .num_blocks = 6, .max_running = 4, .token_budget = 32, .max_prefill_chunk = 32});
  BOOST_REQUIRE(s.add(make_seq("first", 8, 8, 1)));
  BOOST_REQUIRE(s.add(make_seq("second", 8, 8, 0)));
  bool preempted = false;
  for (int step = 0; step < 40 && (s.running() + s.waiting()) > 0; ++step) {
    auto plan = run_step(s);
    for (auto& id : plan.preempted) {
      BOOST_TEST(id == "second");  // the lower priority one gives way
      preempted = true;
    }
  }
  BOOST_TEST(preempted);
  BOOST_TEST(s.preemptions() >= 1);
  BOOST_TEST(s.running() + s.waiting() == 0);
  BOOST_TEST(s.free_blocks() == 6);  // everything returned
}

BOOST_AUTO_TEST_CASE(refuses_what_can_never_fit_and_full_queues) {
  scheduler s({.block_size = 4, .num_blocks = 4, .max_running = 4, .token_budget = 32, .max_prefill_chunk = 32,
               .max_waiting = 2});
  std::string why;
  BOOST_TEST(!s.add(make_seq("huge", 10, 10), &why));
  BOOST_TEST(why.find("KV") != std::string::npos);
  BOOST_TEST(s.add(make_seq("a", 2, 2)));
  BOOST_TEST(s.add(make_seq("b", 2, 2)));
  BOOST_TEST(!s.add(make_seq("c", 2, 2), &why));
  BOOST_TEST(why.find("queue is full") != std::string::npos);
  BOOST_TEST(!s.add(make_seq("a", 2, 2), &why));
}

BOOST_AUTO_TEST_CASE(remove_frees_blocks_immediately) {
  scheduler s({.block_size = 4, .num_blocks = 8, .max_running = 4, .token_budget = 32, .max_prefill_chunk = 32});
  s.add(make_seq("x", 9, 4));
  run_step(s);
  BOOST_TEST(s.free_blocks() == 8 - 3);
  auto gone = s.remove("x");
  BOOST_REQUIRE(gone);
  BOOST_TEST(s.free_blocks() == 8);
  BOOST_TEST(s.kv_usage() == 0.0);
}

BOOST_AUTO_TEST_SUITE_END()
