// Greedy generation against the independent reference implementations' outputs in ../shared/golden:
// exact prompt ids and generated ids, and logits within tolerance, through both file formats.

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <map>

#include "engine/model/model.hpp"
#include "engine/runner/generate.hpp"
#include "tests/support/shared.hpp"
#include "tests/support/compare.hpp"

using shoal::test::needs_shared;
using shoal::test::read_json;
using shoal::test::shared_path;

namespace {

struct run_output {
  shoal::generation_result result;
  std::map<std::int32_t, std::vector<float>> logits;  // by position
};

// Both backends: the plain reference and the fast one (best instruction level, 2 threads).
std::unique_ptr<shoal::kernels::backend> make_backend(bool fast) {
  return fast ? shoal::kernels::make_cpu_backend(2) : shoal::kernels::make_reference_backend();
}

run_output run_greedy(const shoal::model& m, const std::vector<std::int32_t>& prompt_ids, int n, bool fast) {
  auto be = make_backend(fast);
  shoal::model_runner runner(m, *be, {}, nullptr, {});
  shoal::generation_options opts;
  opts.sampling.temperature = 0.0f;
  opts.max_tokens = n;
  opts.ignore_eos = true;
  run_output out;
  out.result = shoal::generate(runner, prompt_ids, opts, {},
                               [&](std::int32_t pos, std::int32_t, std::span<const float> l) {
                                 out.logits[pos].assign(l.begin(), l.end());
                               });
  return out;
}

void check_stories(const std::string& model_rel, bool fast) {
  auto m = shoal::model::load(shared_path(model_rel));
  auto prompts = read_json(shared_path("golden/prompts.json"));
  int checked = 0;
  for (auto& p : prompts["prompts"]) {
    const std::string name = p["name"];
    auto g = read_json(shared_path("golden/" + name + ".json"));
    BOOST_TEST_CONTEXT(model_rel << (fast ? " fast" : " reference") << " prompt " << name) {
      auto ids = m->tok().encode(g["prompt"].get<std::string>());
      auto want_prompt = g["prompt_ids"].get<std::vector<std::int32_t>>();
      BOOST_TEST(ids == want_prompt, boost::test_tools::per_element());
      auto want_gen = g["generated_ids"].get<std::vector<std::int32_t>>();
      auto out = run_greedy(*m, want_prompt, static_cast<int>(want_gen.size()), fast);
      BOOST_TEST(out.result.generated_ids == want_gen, boost::test_tools::per_element());
      BOOST_TEST(out.result.text == g["text"].get<std::string>());
      BOOST_TEST(out.result.generated_text == g["generated_text"].get<std::string>());
      for (auto& la : g["logits_at"]) {
        const std::int32_t pos = la["position"];
        BOOST_REQUIRE_MESSAGE(out.logits.count(pos), "no logits at position " << pos);
        const auto& got = out.logits[pos];
        auto want = la["logits"].get<std::vector<float>>();
        BOOST_REQUIRE_EQUAL(got.size(), want.size());
        float worst = 0;
        for (std::size_t i = 0; i < want.size(); ++i) worst = shoal::test::worse(worst, got[i] - want[i]);
        BOOST_TEST(worst <= 1e-4f, "position " << pos << " max |logit error| " << worst);
      }
      ++checked;
    }
  }
  BOOST_TEST(checked == 4);
}

void check_qwen2(const std::string& model_rel, bool fast) {
  auto m = shoal::model::load(shared_path(model_rel));
  auto prompts = read_json(shared_path("golden/qwen2-tiny/prompts.json"));
  int checked = 0;
  for (auto& p : prompts) {
    const std::string name = p["name"];
    auto g = read_json(shared_path("golden/qwen2-tiny/" + name + ".json"));
    BOOST_TEST_CONTEXT(model_rel << (fast ? " fast" : " reference") << " prompt " << name) {
      auto ids = m->tok().encode(g["prompt"].get<std::string>());
      auto want_prompt = g["prompt_ids"].get<std::vector<std::int32_t>>();
      BOOST_TEST(ids == want_prompt, boost::test_tools::per_element());
      auto want_gen = g["generated_ids"].get<std::vector<std::int32_t>>();
      auto out = run_greedy(*m, want_prompt, static_cast<int>(want_gen.size()), fast);
      BOOST_TEST(out.result.generated_ids == want_gen, boost::test_tools::per_element());
      const auto last = static_cast<std::int32_t>(want_prompt.size() - 1);
      auto full = g["last_prompt_logits"].get<std::vector<float>>();
      BOOST_REQUIRE_EQUAL(out.logits[last].size(), full.size());
      float worst = 0;
      for (std::size_t i = 0; i < full.size(); ++i) worst = shoal::test::worse(worst, out.logits[last][i] - full[i]);
      BOOST_TEST(worst <= 1e-3f, "last prompt position max |logit error| " << worst);
      for (auto& at : g["logits_top10_at"]) {
        const std::int32_t pos = at["position"];
        for (auto& pair : at["top"]) {
          const std::int32_t id = pair[0];
          const float want = pair[1];
          BOOST_TEST(std::fabs(out.logits[pos][id] - want) <= 1e-3f, "position " << pos << " id " << id);
        }
      }
      ++checked;
    }
  }
  BOOST_TEST(checked == 4);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(golden)

BOOST_AUTO_TEST_CASE(stories260k_hf, *boost::unit_test::precondition(needs_shared{"models/stories260K/hf"})) {
  check_stories("models/stories260K/hf", false);
  check_stories("models/stories260K/hf", true);
}

BOOST_AUTO_TEST_CASE(stories260k_gguf,
                     *boost::unit_test::precondition(needs_shared{"models/stories260K/gguf/stories260K-f32.gguf"})) {
  check_stories("models/stories260K/gguf/stories260K-f32.gguf", false);
  check_stories("models/stories260K/gguf/stories260K-f32.gguf", true);
}

BOOST_AUTO_TEST_CASE(qwen2_tiny_hf, *boost::unit_test::precondition(needs_shared{"models/qwen2-tiny/hf"})) {
  check_qwen2("models/qwen2-tiny/hf", false);
  check_qwen2("models/qwen2-tiny/hf", true);
}

BOOST_AUTO_TEST_CASE(qwen2_tiny_gguf,
                     *boost::unit_test::precondition(needs_shared{"models/qwen2-tiny/gguf/qwen2-tiny.gguf"})) {
  check_qwen2("models/qwen2-tiny/gguf/qwen2-tiny.gguf", false);
  check_qwen2("models/qwen2-tiny/gguf/qwen2-tiny.gguf", true);
}

BOOST_AUTO_TEST_SUITE_END()
