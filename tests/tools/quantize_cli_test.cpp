// `shoal quantize` and `shoal make-model --format gguf` as a user runs them: the outputs load and
// generate, and bad requests end with one clear message and a non-zero status, never a crash.

#include <boost/test/unit_test.hpp>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/model/gguf.hpp"
#include "tests/support/process.hpp"
#include "tests/support/shared.hpp"
#include "tests/support/temp_dir.hpp"

using shoal::test::needs_shared;
using shoal::test::run_shoal;
using shoal::test::shared_path;
using shoal::test::temp_dir;

namespace {

const char* kStories = "models/stories260K/hf";

void expect_failure(const std::vector<std::string>& args,
                    std::initializer_list<std::string> fragments) {
  auto r = run_shoal(args);
  BOOST_TEST(r.status != 0);
  BOOST_TEST(r.status < 128, "crashed with status " << r.status << ": " << r.err);
  for (auto& f : fragments)
    BOOST_TEST(r.err.find(f) != std::string::npos, "stderr '" << r.err << "' lacks '" << f << "'");
}

nlohmann::json generate_json(const std::string& model, const std::string& prompt) {
  auto r = run_shoal({"generate", "--model", model, "--prompt", prompt, "--json", "--temperature",
                      "0", "--max-tokens", "16", "--ignore-eos"});
  BOOST_REQUIRE_MESSAGE(r.status == 0, "shoal generate failed: " << r.err);
  return nlohmann::json::parse(r.out);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(quantize_cli)

BOOST_AUTO_TEST_CASE(quantized_outputs_generate,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  for (auto [type, out] : {std::pair<std::string, std::string>{"int8", d / "int8"},
                           {"int4", d / "int4"},
                           {"q8_0", d / "q8.gguf"},
                           {"q4_0", d / "q4.gguf"},
                           {"f16", d / "f16.gguf"},
                           {"bf16", d / "bf16.gguf"}}) {
    auto r = run_shoal({"quantize", "--model", shared_path(kStories), "--out", out, "--type", type,
                        "--group-size", "32"});
    BOOST_REQUIRE_MESSAGE(r.status == 0, type << ": " << r.err);
    BOOST_TEST(r.out.find("wrote " + out) != std::string::npos);
    auto j = generate_json(out, "Once upon a time");
    BOOST_TEST(j["generated_ids"].size() == 16u, type);
    BOOST_TEST(!j["generated_text"].get<std::string>().empty(), type);
  }
  // stories260K's 172-wide down projections cannot take 32-element blocks: kept, and said so.
  auto r = run_shoal(
      {"quantize", "--model", shared_path(kStories), "--out", d / "q8b.gguf", "--type", "q8_0"});
  BOOST_TEST(r.status == 0);
  BOOST_TEST(r.err.find("blk.0.ffn_down.weight has 172 columns") != std::string::npos, r.err);
}

BOOST_AUTO_TEST_CASE(existing_out_needs_force,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  std::filesystem::create_directories(d / "out");
  expect_failure(
      {"quantize", "--model", shared_path(kStories), "--out", d / "out", "--type", "int8"},
      {d / "out", "already exists", "--force"});
  auto r = run_shoal({"quantize", "--model", shared_path(kStories), "--out", d / "out", "--type",
                      "int8", "--force"});
  BOOST_TEST(r.status == 0, r.err);
  // --force never deletes the source itself.
  expect_failure({"quantize", "--model", shared_path(kStories), "--out", shared_path(kStories),
                  "--type", "int8", "--force"},
                 {"source model itself"});
}

BOOST_AUTO_TEST_CASE(bad_requests, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  expect_failure({"quantize", "--model", shared_path(kStories), "--out", d / "x", "--type", "q3_k"},
                 {"q3_k", "int8, int4, fp8", "q8_0, q4_0, f32, f16, bf16"});
  expect_failure({"quantize", "--model", shared_path(kStories), "--out", d / "x", "--type", "int4",
                  "--group-size", "24"},
                 {"--group-size 24"});
  expect_failure({"quantize", "--model", d / "missing", "--out", d / "x", "--type", "int8"},
                 {"missing"});
  expect_failure({"make-model", "--shape", "tiny", "--dtype", "q8_0", "--out", d / "m"},
                 {"--format gguf"});
}

// `--type f32` writes GGUF as llama.cpp's convert_hf_to_gguf.py does: every tensor of stories260K
// (names, shapes, types, bytes, q/k rows permuted to GGUF's interleaved RoPE pairs) equals the
// stories260K-f32.gguf that llama.cpp wrote, bundled in ../shared.
BOOST_AUTO_TEST_CASE(f32_gguf_equals_llama_cpp_conversion,
                     *boost::unit_test::precondition(needs_shared{kStories}) *
                         boost::unit_test::precondition(needs_shared{"models/stories260K/gguf/stories260K-f32.gguf"})) {
  temp_dir d;
  const std::string out = d / "s.gguf";
  auto r = run_shoal({"quantize", "--type", "f32", "--model", shared_path(kStories), "--out", out});
  BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
  shoal::gguf_file ours(out), ref(shared_path("models/stories260K/gguf/stories260K-f32.gguf"));
  BOOST_TEST(ours.tensors().size() == ref.tensors().size());
  int same = 0;
  for (const auto& t : ref.tensors()) {
    const auto* o = ours.find_tensor(t.name);
    BOOST_TEST_CONTEXT(t.name) {
      BOOST_REQUIRE(o);
      BOOST_TEST(o->ne == t.ne, boost::test_tools::per_element());
      BOOST_TEST((o->type == t.type));
      BOOST_REQUIRE_EQUAL(o->nbytes, t.nbytes);
      const bool equal = std::equal(t.data, t.data + t.nbytes, o->data);
      BOOST_TEST(equal);
      same += equal;
    }
  }
  BOOST_TEST(same == 48);
  for (const char* key : {"llama.attention.head_count", "llama.attention.head_count_kv", "llama.block_count",
                          "llama.embedding_length", "llama.feed_forward_length", "llama.rope.dimension_count"}) {
    BOOST_TEST(ours.get_number(key) == ref.get_number(key), key);
  }
  BOOST_TEST(ours.find("tokenizer.ggml.tokens")->strs == ref.find("tokenizer.ggml.tokens")->strs,
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(make_model_gguf) {
  temp_dir d;
  for (std::string dtype : {"f16", "q8_0", "q4_0"}) {
    const std::string out = d / ("tiny-" + dtype + ".gguf");
    auto r = run_shoal(
        {"make-model", "--shape", "tiny", "--format", "gguf", "--dtype", dtype, "--out", out});
    BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
    auto insp = run_shoal({"inspect", "--model", out, "--json"});
    BOOST_REQUIRE_MESSAGE(insp.status == 0, insp.err);
    auto j = nlohmann::json::parse(insp.out);
    bool found = false;
    for (auto& t : j["tensors"]) {
      if (t["name"] == "blk.0.attn_q.weight")
        found = t["dtype"] == (dtype == "f16" ? "F16" : dtype == "q8_0" ? "Q8_0" : "Q4_0");
    }
    BOOST_TEST(found, dtype);
    auto g = generate_json(out, "hello world");
    BOOST_TEST(g["generated_ids"].size() == 16u);
  }
  // The GGUF tokenizer is the HF one converted: both encode alike.
  auto hf = run_shoal({"make-model", "--shape", "tiny", "--out", d / "hf"});
  BOOST_REQUIRE(hf.status == 0);
  auto a = run_shoal(
      {"tokenize", "--model", d / "hf", "--text", "The quick brown fox, 42 times!", "--json"});
  auto b = run_shoal({"tokenize", "--model", d / "tiny-q8_0.gguf", "--text",
                      "The quick brown fox, 42 times!", "--json"});
  BOOST_TEST(a.status == 0);
  BOOST_TEST(a.out == b.out);
  expect_failure(
      {"make-model", "--shape", "tiny", "--format", "gguf", "--out", d / "tiny-f16.gguf"},
      {"already exists"});
}

BOOST_AUTO_TEST_SUITE_END()
