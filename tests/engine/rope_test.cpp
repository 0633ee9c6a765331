// RoPE frequency scaling against values published elsewhere, not recomputed by our formula.

#include <boost/test/unit_test.hpp>
#include <cmath>

#include "engine/model/model.hpp"

BOOST_AUTO_TEST_SUITE(rope)

BOOST_AUTO_TEST_CASE(yarn_matches_deepseek_v3_tiny_reference) {
  // ../shared/README.md: theta 1e4, 8 rotary dims, factor 4 over 256 original positions, beta
  // 32/1: "the inverse frequencies are 1.0, 0.0625, 0.0025, 0.00025"; mscale = mscale_all_dim = 1
  // gives a cos/sin factor of 1.
  shoal::rope_scaling_config s;
  s.type = "yarn";
  s.factor = 4.0f;
  s.original_max_positions = 256;
  s.mscale = 1.0f;
  s.mscale_all_dim = 1.0f;
  float attn = 0;
  auto inv = shoal::rope_inverse_frequencies(10000.0f, 8, s, attn);
  const float want[] = {1.0f, 0.0625f, 0.0025f, 0.00025f};
  BOOST_REQUIRE_EQUAL(inv.size(), 4u);
  for (int i = 0; i < 4; ++i) BOOST_TEST(std::fabs(inv[i] - want[i]) <= 1e-6f * want[i] + 1e-9f, "dim pair " << i);
  BOOST_TEST(std::fabs(attn - 1.0f) < 1e-6f);
}

BOOST_AUTO_TEST_CASE(yarn_default_attention_factor) {
  // Without mscale keys, YaRN scales cos/sin by 0.1 ln(factor) + 1 (YaRN paper, eq. for sqrt(1/t)).
  shoal::rope_scaling_config s;
  s.type = "yarn";
  s.factor = 4.0f;
  s.original_max_positions = 4096;
  float attn = 0;
  shoal::rope_inverse_frequencies(10000.0f, 128, s, attn);
  BOOST_TEST(std::fabs(attn - (0.1f * std::log(4.0f) + 1.0f)) < 1e-6f);
}

BOOST_AUTO_TEST_CASE(llama3_keeps_high_and_scales_low_frequencies) {
  // Llama 3.1: factor 8, low 1, high 4, 8192 original positions, theta 5e5, head dim 128.
  // Wavelengths below 8192/4 = 2048 keep their frequency; above 8192 they are divided by 8; the
  // band between is interpolated (Meta's apply_scaling in llama/model.py).
  shoal::rope_scaling_config s;
  s.type = "llama3";
  s.factor = 8.0f;
  s.low_freq_factor = 1.0f;
  s.high_freq_factor = 4.0f;
  s.original_max_positions = 8192;
  float attn = 0;
  shoal::rope_scaling_config none;
  auto base = shoal::rope_inverse_frequencies(500000.0f, 128, none, attn);
  auto inv = shoal::rope_inverse_frequencies(500000.0f, 128, s, attn);
  int kept = 0, scaled = 0, blended = 0;
  for (std::size_t i = 0; i < inv.size(); ++i) {
    const double wavelen = 2 * M_PI / base[i];
    if (wavelen < 2048) {
      BOOST_TEST(inv[i] == base[i]);
      ++kept;
    } else if (wavelen > 8192) {
      BOOST_TEST(std::fabs(inv[i] - base[i] / 8) <= 1e-6f * base[i]);
      ++scaled;
    } else {
      BOOST_TEST(inv[i] < base[i]);
      BOOST_TEST(inv[i] > base[i] / 8);
      ++blended;
    }
  }
  BOOST_TEST(kept > 0);
  BOOST_TEST(scaled > 0);
  BOOST_TEST(blended > 0);
}

BOOST_AUTO_TEST_CASE(linear_divides_every_frequency) {
  shoal::rope_scaling_config s, none;
  s.type = "linear";
  s.factor = 2.0f;
  float attn = 0;
  auto base = shoal::rope_inverse_frequencies(10000.0f, 64, none, attn);
  auto inv = shoal::rope_inverse_frequencies(10000.0f, 64, s, attn);
  for (std::size_t i = 0; i < inv.size(); ++i) BOOST_TEST(inv[i] == base[i] / 2.0f);
  BOOST_TEST(attn == 1.0f);
}

BOOST_AUTO_TEST_SUITE_END()
