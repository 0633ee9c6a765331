// Sampling: greedy ties, filters, penalties, seeded determinism, parameter validation.

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <limits>
#include <map>

#include "engine/sampling/sampler.hpp"

using shoal::sampler;
using shoal::sampling_params;

namespace {

std::vector<float> logits_of(std::initializer_list<float> v) { return std::vector<float>(v); }

std::map<std::int32_t, int> histogram(const sampling_params& p, const std::vector<float>& logits, int n) {
  sampler s(p, static_cast<std::int64_t>(logits.size()));
  std::map<std::int32_t, int> h;
  for (int i = 0; i < n; ++i) {
    auto l = logits;
    ++h[s.sample(l)];
  }
  return h;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sampling)

BOOST_AUTO_TEST_CASE(greedy_first_index_wins_ties) {
  sampling_params p;
  p.temperature = 0;
  sampler s(p, 5);
  auto l = logits_of({1.0f, 3.0f, 2.0f, 3.0f, -1.0f});
  BOOST_TEST(s.sample(l) == 1);
}

BOOST_AUTO_TEST_CASE(padding_rows_are_never_chosen) {
  sampling_params p;
  p.temperature = 0;
  sampler s(p, 3);  // ids 3 and 4 are embedding padding past the tokenizer
  auto l = logits_of({1.0f, 2.0f, 0.0f, 9.0f, 9.0f});
  BOOST_TEST(s.sample(l) == 1);
}

BOOST_AUTO_TEST_CASE(same_seed_same_sequence_different_seed_differs) {
  sampling_params p;
  p.temperature = 1.0f;
  std::vector<float> logits(64);
  for (int i = 0; i < 64; ++i) logits[i] = std::sin(static_cast<float>(i));
  auto draw = [&](std::uint64_t seed) {
    p.seed = seed;
    sampler s(p, 64);
    std::vector<std::int32_t> out;
    for (int i = 0; i < 32; ++i) {
      auto l = logits;
      out.push_back(s.sample(l));
    }
    return out;
  };
  BOOST_TEST(draw(7) == draw(7));
  BOOST_TEST(draw(7) != draw(8));
}

BOOST_AUTO_TEST_CASE(top_k_one_is_greedy) {
  sampling_params p;
  p.temperature = 5.0f;
  p.top_k = 1;
  p.seed = 1;
  auto h = histogram(p, logits_of({0.5f, 0.1f, 0.7f, 0.6f}), 200);
  BOOST_TEST(h.size() == 1u);
  BOOST_TEST(h[2] == 200);
}

BOOST_AUTO_TEST_CASE(top_p_keeps_the_nucleus) {
  // Probabilities ~ 0.665, 0.245, 0.09: top_p 0.8 keeps ids 0 and 1 only.
  sampling_params p;
  p.top_p = 0.8f;
  p.seed = 3;
  auto h = histogram(p, logits_of({2.0f, 1.0f, 0.0f}), 2000);
  BOOST_TEST(h.count(2) == 0u);
  BOOST_TEST(h[0] > h[1]);
  BOOST_TEST(h[1] > 300);
}

BOOST_AUTO_TEST_CASE(min_p_drops_unlikely) {
  // p = 0.665, 0.245, 0.09; min_p 0.2 keeps ids with p >= 0.133: 0 and 1.
  sampling_params p;
  p.min_p = 0.2f;
  p.seed = 4;
  auto h = histogram(p, logits_of({2.0f, 1.0f, 0.0f}), 2000);
  BOOST_TEST(h.count(2) == 0u);
  BOOST_TEST(h[1] > 300);
}

BOOST_AUTO_TEST_CASE(temperature_sharpens) {
  sampling_params cold, hot;
  cold.temperature = 0.2f;
  hot.temperature = 2.0f;
  cold.seed = hot.seed = 5;
  auto hc = histogram(cold, logits_of({1.0f, 0.0f}), 2000);
  auto hh = histogram(hot, logits_of({1.0f, 0.0f}), 2000);
  // p(0) = 1/(1+e^-5) = 0.993 cold, 1/(1+e^-0.5) = 0.62 hot.
  BOOST_TEST(hc[0] > 1900);
  BOOST_TEST(hh[0] > 1100);
  BOOST_TEST(hh[0] < 1400);
}

BOOST_AUTO_TEST_CASE(repetition_penalty_divides_positive_multiplies_negative) {
  sampling_params p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  sampler s(p, 3);
  s.observe(0, false);
  s.observe(2, false);
  auto l = logits_of({3.0f, 2.0f, -1.0f});
  BOOST_TEST(s.sample(l) == 1);  // 3 -> 1.5 < 2
  BOOST_TEST(l[0] == 1.5f);
  BOOST_TEST(l[2] == -2.0f);
}

BOOST_AUTO_TEST_CASE(presence_and_frequency_penalties_count_output_only) {
  sampling_params p;
  p.temperature = 0;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  sampler s(p, 3);
  s.observe(1, false);  // prompt token: not penalised
  s.observe(0, true);
  s.observe(0, true);
  auto l = logits_of({1.0f, 1.0f, 0.0f});
  s.sample(l);
  BOOST_TEST(l[0] == 1.0f - 0.5f - 2 * 0.25f);
  BOOST_TEST(l[1] == 1.0f);
}

BOOST_AUTO_TEST_CASE(validation_names_the_field) {
  sampling_params p;
  p.temperature = -1;
  BOOST_TEST(p.validate().find("temperature") != std::string::npos);
  p = {};
  p.temperature = std::numeric_limits<float>::quiet_NaN();
  BOOST_TEST(p.validate().find("temperature") != std::string::npos);
  p = {};
  p.top_p = 0;
  BOOST_TEST(p.validate().find("top_p") != std::string::npos);
  p = {};
  p.top_k = -2;
  BOOST_TEST(p.validate().find("top_k") != std::string::npos);
  p = {};
  p.min_p = 1.5f;
  BOOST_TEST(p.validate().find("min_p") != std::string::npos);
  p = {};
  p.repetition_penalty = 0;
  BOOST_TEST(p.validate().find("repetition_penalty") != std::string::npos);
  p = {};
  BOOST_TEST(p.validate().empty());
}

BOOST_AUTO_TEST_SUITE_END()
