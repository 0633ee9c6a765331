// The cluster runtime with real processes on loopback: router, batcher and shard workers in
// separate `shoal node` processes, requests through the Cap'n Proto gateway.

#include <boost/test/unit_test.hpp>
#include <atomic>
#include <thread>

#include "engine/model/model.hpp"
#include "engine/runner/generate.hpp"
#include "tests/support/local_cluster.hpp"
#include "tests/support/process.hpp"
#include "tests/support/shared.hpp"

using shoal::test::local_cluster;
using shoal::test::needs_shared;
using shoal::test::read_json;
using shoal::test::shared_path;

namespace {

const char* kStories = "models/stories260K/hf";
const char* kDeepseek = "models/deepseek-v3-tiny/hf";

shoal::client::generate_params greedy(const std::vector<std::int32_t>& ids, int n) {
  shoal::client::generate_params p;
  p.prompt_ids = ids;
  p.sampling.temperature = 0;
  p.max_tokens = n;
  p.ignore_eos = true;
  return p;
}

std::vector<std::int32_t> generate_ids(shoal::client::client& c, const shoal::client::generate_params& p) {
  std::vector<std::int32_t> ids;
  c.generate(p, [&](const shoal::client::chunk& ch) {
    ids.insert(ids.end(), ch.ids.begin(), ch.ids.end());
    return true;
  });
  return ids;
}

void check_goldens(int rpc_port) {
  shoal::client::client c("127.0.0.1", rpc_port);
  auto prompts = read_json(shared_path("golden/prompts.json"));
  for (auto& p : prompts["prompts"]) {
    auto g = read_json(shared_path("golden/" + p["name"].get<std::string>() + ".json"));
    auto want = g["generated_ids"].get<std::vector<std::int32_t>>();
    std::string text;
    std::vector<std::int32_t> ids;
    auto sum = c.generate(greedy(g["prompt_ids"], 48), [&](const shoal::client::chunk& ch) {
      ids.insert(ids.end(), ch.ids.begin(), ch.ids.end());
      text += ch.text;
      return true;
    });
    BOOST_TEST(ids == want, boost::test_tools::per_element());
    BOOST_TEST(text == g["generated_text"].get<std::string>());
    BOOST_TEST(sum.finish_reason == "length");
  }
}

// What the engine alone produces for a prompt (the reference for batched results).
std::vector<std::int32_t> alone(const shoal::model& m, const std::vector<std::int32_t>& prompt, int n) {
  auto be = shoal::kernels::make_reference_backend();
  shoal::model_runner r(m, *be, {}, nullptr, {});
  shoal::generation_options o;
  o.sampling.temperature = 0;
  o.max_tokens = n;
  o.ignore_eos = true;
  return shoal::generate(r, prompt, o).generated_ids;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cluster)

BOOST_AUTO_TEST_CASE(one_node_goldens_and_concurrency, *boost::unit_test::precondition(needs_shared{kStories})) {
  local_cluster cl(shared_path(kStories), {{"main", {"router", "gateway", "worker"}, 2}},
                   {{"r0", {"main"}, 8192, 32, 256, 256}});
  cl.wait_ready();
  check_goldens(cl.rpc_port());

  // 16 concurrent requests with different prompts and lengths: each as if alone.
  auto m = shoal::model::load(shared_path(kStories));
  const std::vector<std::string> texts = {"Once upon a time", "The cat", "Lily and Tom went to the park",
                                          "A little bird", "Tim had a red ball", "One day", "The sun was",
                                          "Sam and his dog"};
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<int> lengths;
  for (int i = 0; i < 16; ++i) {
    auto ids = m->tok().encode(texts[i % texts.size()] + (i >= 8 ? " and then" : ""));
    prompts.push_back(ids);
    lengths.push_back(10 + 7 * i);
  }
  std::vector<std::vector<std::int32_t>> got(16);
  std::vector<std::thread> ts;
  for (int i = 0; i < 16; ++i) {
    ts.emplace_back([&, i] {
      shoal::client::client c("127.0.0.1", cl.rpc_port());
      got[i] = generate_ids(c, greedy(prompts[i], lengths[i]));
    });
  }
  for (auto& t : ts) t.join();
  for (int i = 0; i < 16; ++i) {
    BOOST_TEST(got[i] == alone(*m, prompts[i], lengths[i]), "request " << i);
  }
}

// A seeded, non-greedy request through the cluster (gateway -> router -> batcher -> rank 0's
// sampler in another process) gives the same tokens and text as `shoal generate --seed` with the
// same parameters: every sampling parameter, the seed included, arrives intact.
BOOST_AUTO_TEST_CASE(seeded_sampling_matches_shoal_generate, *boost::unit_test::precondition(needs_shared{kStories})) {
  local_cluster cl(shared_path(kStories), {{"front", {"router", "gateway"}, 1}, {"wa", {"worker"}, 1}},
                   {{"r0", {"wa"}, 4096, 32, 256, 256}});
  cl.wait_ready();
  auto m = shoal::model::load(shared_path(kStories));
  const std::string prompt = "Once upon a time";
  const auto greedy_ids = alone(*m, m->tok().encode(prompt), 40);
  struct sampling_case {
    float temperature;
    int top_k;
    float top_p, min_p, repetition, presence, frequency;
    std::uint64_t seed;
  };
  for (const auto& k : {sampling_case{0.8f, 40, 0.9f, 0.05f, 1.1f, 0.2f, 0.3f, 42},
                        sampling_case{1.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 7}}) {
    auto cli = shoal::test::run_shoal(
        {"generate", "--model", shared_path(kStories), "--prompt", prompt, "--max-tokens", "40", "--ignore-eos",
         "--threads", "1", "--json", "--temperature", std::to_string(k.temperature), "--top-k", std::to_string(k.top_k),
         "--top-p", std::to_string(k.top_p), "--min-p", std::to_string(k.min_p), "--repetition-penalty",
         std::to_string(k.repetition), "--presence-penalty", std::to_string(k.presence), "--frequency-penalty",
         std::to_string(k.frequency), "--seed", std::to_string(k.seed)});
    BOOST_REQUIRE_MESSAGE(cli.status == 0, cli.err);
    auto want = nlohmann::json::parse(cli.out);
    const auto want_ids = want["generated_ids"].get<std::vector<std::int32_t>>();

    shoal::client::client c("127.0.0.1", cl.rpc_port());
    shoal::client::generate_params p;
    p.prompt = prompt;
    p.max_tokens = 40;
    p.ignore_eos = true;
    // The values above print and parse back exactly, so the CLI got these very floats.
    p.sampling.temperature = k.temperature;
    p.sampling.top_k = k.top_k;
    p.sampling.top_p = k.top_p;
    p.sampling.min_p = k.min_p;
    p.sampling.repetition_penalty = k.repetition;
    p.sampling.presence_penalty = k.presence;
    p.sampling.frequency_penalty = k.frequency;
    p.sampling.seed = k.seed;
    std::vector<std::int32_t> ids;
    std::string text;
    c.generate(p, [&](const shoal::client::chunk& ch) {
      ids.insert(ids.end(), ch.ids.begin(), ch.ids.end());
      text += ch.text;
      return true;
    });
    BOOST_TEST_MESSAGE("seed " << k.seed << ": " << text);
    BOOST_TEST(ids != greedy_ids, "seed " << k.seed << " sampled the greedy answer: the case tests nothing");
    BOOST_TEST(ids == want_ids, boost::test_tools::per_element());
    BOOST_TEST(text == want["generated_text"].get<std::string>());
  }
}

BOOST_AUTO_TEST_CASE(cancel_frees_blocks, *boost::unit_test::precondition(needs_shared{kStories})) {
  local_cluster cl(shared_path(kStories), {{"main", {"router", "gateway", "worker"}, 1}}, {{"r0", {"main"}, 4096, 8, 64, 64}});
  cl.wait_ready();
  shoal::client::client c("127.0.0.1", cl.rpc_port());
  int seen = 0;
  auto p = greedy({1, 403}, 400);
  const auto t0 = std::chrono::steady_clock::now();
  auto sum = c.generate(p, [&](const shoal::client::chunk& ch) {
    seen += static_cast<int>(ch.ids.size());
    return seen < 5;  // cancel after 5 tokens
  });
  BOOST_TEST(sum.finish_reason == "cancelled");
  BOOST_TEST(seen < 20, "tokens after cancel: " << seen);
  BOOST_TEST((std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)));
  // Its KV blocks are back in the pool.
  double usage = 1;
  for (int i = 0; i < 50 && usage > 0; ++i) {
    auto h = c.health();
    usage = h.replicas.at(0).kv_usage;
    if (usage > 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  BOOST_TEST(usage == 0.0);
}

BOOST_AUTO_TEST_CASE(tensor_parallel_across_three_processes, *boost::unit_test::precondition(needs_shared{kStories})) {
  local_cluster cl(shared_path(kStories),
                   {{"front", {"router", "gateway"}, 1}, {"wa", {"worker"}, 1}, {"wb", {"worker"}, 1}},
                   {{"tp2", {"wa", "wb"}, 4096, 32, 256, 256}});
  cl.wait_ready(90);
  check_goldens(cl.rpc_port());
}

// DeepSeek-V3 split across two shard-worker processes (replica key `parallel`): every golden's 24
// greedy ids, one request at a time and all at once.
void check_deepseek_split(const std::string& parallel) {
  shoal::test::replica_def rep{"split2", {"wa", "wb"}, 4096, 32, 256, 256};
  rep.parallel = parallel;
  local_cluster cl(shared_path(kDeepseek),
                   {{"front", {"router", "gateway"}, 1}, {"wa", {"worker"}, 1}, {"wb", {"worker"}, 1}}, {rep});
  cl.wait_ready(90);
  std::vector<std::vector<std::int32_t>> prompts, wants;
  for (auto& p : read_json(shared_path("golden/deepseek-v3-tiny/prompts.json"))) {
    auto g = read_json(shared_path("golden/deepseek-v3-tiny/" + p["name"].get<std::string>() + ".json"));
    prompts.push_back(g["prompt_ids"].get<std::vector<std::int32_t>>());
    wants.push_back(g["generated_ids"].get<std::vector<std::int32_t>>());
  }
  BOOST_REQUIRE_EQUAL(prompts.size(), 3u);
  shoal::client::client c("127.0.0.1", cl.rpc_port());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    BOOST_TEST(generate_ids(c, greedy(prompts[i], static_cast<int>(wants[i].size()))) == wants[i],
               boost::test_tools::per_element());
  }
  // Concurrently: the sequences share steps, so one MoE call routes tokens of several sequences.
  std::vector<std::vector<std::int32_t>> got(prompts.size());
  std::vector<std::thread> ts;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    ts.emplace_back([&, i] {
      shoal::client::client ci("127.0.0.1", cl.rpc_port());
      got[i] = generate_ids(ci, greedy(prompts[i], static_cast<int>(wants[i].size())));
    });
  }
  for (auto& t : ts) t.join();
  for (std::size_t i = 0; i < prompts.size(); ++i) BOOST_TEST(got[i] == wants[i], boost::test_tools::per_element());
}

// Routed experts split by id, attention replicated ('parallel: expert').
BOOST_AUTO_TEST_CASE(expert_parallel_across_three_processes, *boost::unit_test::precondition(needs_shared{kDeepseek})) {
  check_deepseek_split("expert");
}

// Latent-attention heads split (2 of 4 per rank) and routed experts split by id on the same two
// ranks ('parallel: tensor+expert').
BOOST_AUTO_TEST_CASE(tensor_and_expert_parallel_across_three_processes,
                     *boost::unit_test::precondition(needs_shared{kDeepseek})) {
  check_deepseek_split("tensor+expert");
}

// Heads and every expert's columns split ('parallel: tensor').
BOOST_AUTO_TEST_CASE(deepseek_tensor_parallel_across_three_processes,
                     *boost::unit_test::precondition(needs_shared{kDeepseek})) {
  check_deepseek_split("tensor");
}

// Expert parallelism of a dense model is refused at setup, the replica's health naming why.
BOOST_AUTO_TEST_CASE(expert_split_of_a_dense_model_is_refused, *boost::unit_test::precondition(needs_shared{kStories})) {
  shoal::test::replica_def rep{"ep2", {"wa", "wb"}, 4096, 32, 256, 256};
  rep.parallel = "expert";
  local_cluster cl(shared_path(kStories),
                   {{"front", {"router", "gateway"}, 1}, {"wa", {"worker"}, 1}, {"wb", {"worker"}, 1}}, {rep});
  // The replica fails at setup; poll health until its detail says why (or give up after a minute).
  const std::string want = "needs a mixture-of-experts model";
  std::string why;
  for (int i = 0; i < 300 && why.find(want) == std::string::npos; ++i) {
    try {
      shoal::client::client c("127.0.0.1", cl.rpc_port());
      for (auto& r : c.health().replicas) {
        BOOST_TEST(!r.healthy);
        why = r.detail;
      }
    } catch (const std::exception& e) {
      why = e.what();
    }
    if (why.find(want) == std::string::npos) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  BOOST_TEST_MESSAGE("replica detail: " << why);
  BOOST_TEST(why.find(want) != std::string::npos, "replica detail: " << why);
}

BOOST_AUTO_TEST_CASE(killed_worker_fails_its_requests_not_others) {
  // A ~26M-parameter random model decodes slowly enough that streams are surely in flight when the
  // worker dies (stories260K finishes 480 tokens in a few hundred milliseconds).
  shoal::test::temp_dir models;
  auto made = shoal::test::run_shoal({"make-model", "--shape", "small", "--dtype", "bf16", "--out", models / "small"});
  BOOST_REQUIRE_MESSAGE(made.status == 0, made.err);
  local_cluster cl(models / "small",
                   {{"front", {"router", "gateway"}, 1}, {"wa", {"worker"}, 1}, {"wb", {"worker"}, 1}},
                   {{"ra", {"wa"}, 4096, 32, 256, 256}, {"rb", {"wb"}, 4096, 32, 256, 256}});
  cl.wait_ready(90);
  // Long streams on both replicas (round robin puts consecutive requests on different replicas).
  std::atomic<int> errors{0}, finished{0};
  // 12 concurrent 200-token streams keep both replicas busy past the kill 300 ms in.
  constexpr int kStreams = 12;
  std::vector<std::string> reasons(kStreams);
  std::vector<std::chrono::steady_clock::time_point> ended(kStreams);
  std::vector<bool> failed(kStreams, false);
  std::vector<std::thread> ts;
  for (int i = 0; i < kStreams; ++i) {
    ts.emplace_back([&, i] {
      shoal::client::client c("127.0.0.1", cl.rpc_port());
      try {
        auto s = c.generate(greedy({1, 403}, 200));
        reasons[i] = s.finish_reason;
        ++finished;
      } catch (const shoal::error& e) {
        reasons[i] = std::string("error: ") + e.what();
        failed[i] = true;
        ++errors;
      }
      ended[i] = std::chrono::steady_clock::now();
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto t_kill = std::chrono::steady_clock::now();
  cl.kill_node("wb");
  for (auto& t : ts) t.join();
  BOOST_TEST(errors.load() >= 1, "no request failed after its worker died");
  BOOST_TEST(finished.load() >= 1, "requests on the healthy replica did not finish");
  for (int i = 0; i < kStreams; ++i) {
    BOOST_TEST_MESSAGE("outcome: " << reasons[i]);
    // The dead replica's streams end with an explicit error within seconds, not a hang.
    if (failed[i]) BOOST_TEST((ended[i] - t_kill < std::chrono::seconds(20)), "stream " << i << " ended late");
  }
  shoal::client::client c("127.0.0.1", cl.rpc_port());
  auto h = c.health();
  for (auto& r : h.replicas) {
    if (r.name == "rb") BOOST_TEST(!r.healthy);
    if (r.name == "ra") BOOST_TEST(r.healthy);
  }
  // New requests all go to the healthy replica and succeed.
  for (int i = 0; i < 4; ++i) {
    auto s = c.generate(greedy({1, 403}, 4));
    BOOST_TEST(s.replica == "ra");
  }
}

BOOST_AUTO_TEST_CASE(up_names_an_unreachable_node) {
  shoal::test::temp_dir d;
  d.write("c.yaml",
          "cluster: x\nmodels:\n  - name: m\n    path: /nonexistent\nnodes:\n"
          "  - name: front\n    host: 127.0.0.1\n    port: 7799\n    rpc_port: 7798\n    roles: [router, gateway]\n"
          "  - name: far\n    host: 10.255.255.1\n    port: 7797\n    roles: [worker]\n"
          "replicas:\n  - name: r\n    tensor_parallel: [far]\n");
  auto r = shoal::test::run_shoal({"up", "--config", d / "c.yaml", "--timeout", "10"});
  BOOST_TEST(r.status != 0);
  BOOST_TEST(r.err.find("far") != std::string::npos, r.err);
  BOOST_TEST(r.err.find("10.255.255.1") != std::string::npos, r.err);
}

BOOST_AUTO_TEST_SUITE_END()
