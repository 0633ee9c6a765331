// The shoal CLI as a user runs it: golden generations through both formats, determinism of seeds,
// tokenize/chat-template/inspect, and clear errors (non-zero exit, one message) on bad input.

#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include "tests/support/process.hpp"
#include "tests/support/shared.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/compare.hpp"

using shoal::test::needs_shared;
using shoal::test::read_json;
using shoal::test::run_shoal;
using shoal::test::shared_path;
using shoal::test::temp_dir;

namespace {

const char* kStories = "models/stories260K/hf";
const char* kStoriesGguf = "models/stories260K/gguf/stories260K-f32.gguf";

nlohmann::json generate_json(const std::string& model, const std::string& prompt, std::vector<std::string> extra) {
  std::vector<std::string> args = {"generate", "--model", model, "--prompt", prompt, "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto r = run_shoal(args);
  BOOST_REQUIRE_MESSAGE(r.status == 0, "shoal generate failed: " << r.err);
  return nlohmann::json::parse(r.out);
}

void expect_failure(const std::vector<std::string>& args, std::initializer_list<std::string> fragments) {
  auto r = run_shoal(args);
  BOOST_TEST(r.status != 0);
  BOOST_TEST(r.status < 128, "crashed with status " << r.status << ": " << r.err);
  for (auto& f : fragments) BOOST_TEST(r.err.find(f) != std::string::npos, "stderr '" << r.err << "' lacks '" << f << "'");
}

void check_goldens_via_cli(const std::string& model) {
  auto prompts = read_json(shared_path("golden/prompts.json"));
  for (auto& p : prompts["prompts"]) {
    auto g = read_json(shared_path("golden/" + p["name"].get<std::string>() + ".json"));
    BOOST_TEST_CONTEXT(model << " " << p["name"]) {
      auto j = generate_json(model, g["prompt"], {"--temperature", "0", "--max-tokens", "48", "--ignore-eos"});
      BOOST_TEST(j["prompt_ids"] == g["prompt_ids"]);
      BOOST_TEST(j["generated_ids"] == g["generated_ids"]);
      BOOST_TEST(j["text"] == g["text"]);
      BOOST_TEST(j["generated_text"] == g["generated_text"]);
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cli)

BOOST_AUTO_TEST_CASE(generate_goldens_hf, *boost::unit_test::precondition(needs_shared{kStories})) {
  check_goldens_via_cli(shared_path(kStories));
}

BOOST_AUTO_TEST_CASE(generate_goldens_gguf, *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  check_goldens_via_cli(shared_path(kStoriesGguf));
}

BOOST_AUTO_TEST_CASE(dump_logits_matches_golden, *boost::unit_test::precondition(needs_shared{kStories})) {
  auto g = read_json(shared_path("golden/the_cat.json"));
  auto j = generate_json(shared_path(kStories), g["prompt"],
                         {"--temperature", "0", "--max-tokens", "4", "--ignore-eos", "--dump-logits"});
  for (auto& want : g["logits_at"]) {
    bool found = false;
    for (auto& got : j["logits_at"]) {
      if (got["position"] != want["position"]) continue;
      found = true;
      BOOST_TEST(got["input_token"] == want["input_token"]);
      float worst = 0;
      for (std::size_t i = 0; i < want["logits"].size(); ++i) {
        worst = shoal::test::worse(worst, got["logits"][i].get<float>() - want["logits"][i].get<float>());
      }
      BOOST_TEST(worst <= 1e-4f);
    }
    BOOST_TEST(found, "position " << want["position"] << " missing from --dump-logits");
  }
}

BOOST_AUTO_TEST_CASE(seeds, *boost::unit_test::precondition(needs_shared{kStories})) {
  std::vector<std::string> sampling = {"--temperature", "1.0", "--top-p", "0.95", "--max-tokens", "40", "--ignore-eos"};
  auto with_seed = [&](const std::string& seed) {
    auto args = sampling;
    args.push_back("--seed");
    args.push_back(seed);
    return generate_json(shared_path(kStories), "Once upon a time", args);
  };
  auto a = with_seed("11"), b = with_seed("11"), c = with_seed("12");
  BOOST_TEST(a["text"] == b["text"]);
  BOOST_TEST(a["generated_ids"] == b["generated_ids"]);
  BOOST_TEST(a["generated_ids"] != c["generated_ids"]);
}

BOOST_AUTO_TEST_CASE(stop_string_and_max_tokens, *boost::unit_test::precondition(needs_shared{kStories})) {
  auto g = read_json(shared_path("golden/once_upon_a_time.json"));
  const std::string full = g["generated_text"];
  // Stop at the first "Lily": the text must end right before it.
  auto j = generate_json(shared_path(kStories), g["prompt"],
                         {"--temperature", "0", "--max-tokens", "48", "--ignore-eos", "--stop", "Lily"});
  BOOST_TEST(j["finish_reason"] == "stop");
  BOOST_TEST(j["generated_text"] == full.substr(0, full.find("Lily")));
  auto k = generate_json(shared_path(kStories), g["prompt"], {"--temperature", "0", "--max-tokens", "5", "--ignore-eos"});
  BOOST_TEST(k["generated_ids"].size() == 5u);
  BOOST_TEST(k["finish_reason"] == "length");
}

BOOST_AUTO_TEST_CASE(streaming_text_equals_json_text, *boost::unit_test::precondition(needs_shared{kStories})) {
  auto r = run_shoal({"generate", "--model", shared_path(kStories), "--prompt", "The cat", "--temperature", "0",
                      "--max-tokens", "48", "--ignore-eos"});
  BOOST_REQUIRE_EQUAL(r.status, 0);
  auto g = read_json(shared_path("golden/the_cat.json"));
  BOOST_TEST(r.out == g["text"].get<std::string>() + "\n");
}

BOOST_AUTO_TEST_CASE(tokenize_text_and_jsonl, *boost::unit_test::precondition(needs_shared{"tokenizers/gpt2/golden.jsonl"})) {
  auto r = run_shoal({"tokenize", "--model", shared_path(kStories), "--text", "The cat", "--json"});
  BOOST_REQUIRE_EQUAL(r.status, 0);
  BOOST_TEST(nlohmann::json::parse(r.out)["ids"] == read_json(shared_path("golden/the_cat.json"))["prompt_ids"]);
  // JSON lines in, one line out each, in order; --no-bos gives the reference's ids exactly.
  temp_dir d;
  std::string in;
  std::vector<nlohmann::json> want;
  std::ifstream golden(shared_path("tokenizers/gpt2/golden.jsonl"));
  std::string line;
  for (int i = 0; i < 40 && std::getline(golden, line); ++i) {
    auto j = nlohmann::json::parse(line);
    in += nlohmann::json{{"text", j["text"]}}.dump() + "\n";
    want.push_back(j["ids"]);
  }
  d.write("in.jsonl", in);
  r = run_shoal({"tokenize", "--tokenizer", shared_path("tokenizers/gpt2"), "--input-jsonl", d / "in.jsonl", "--no-bos"});
  BOOST_REQUIRE_EQUAL(r.status, 0);
  std::istringstream out(r.out);
  std::size_t n = 0;
  while (std::getline(out, line)) {
    BOOST_REQUIRE(n < want.size());
    BOOST_TEST(nlohmann::json::parse(line)["ids"] == want[n], "line " << n);
    ++n;
  }
  BOOST_TEST(n == want.size());
}

BOOST_AUTO_TEST_CASE(chat_template_cli,
                     *boost::unit_test::precondition(needs_shared{"tokenizers/deepseek-v3/chat_template_golden.json"})) {
  auto g = read_json(shared_path("tokenizers/deepseek-v3/chat_template_golden.json"));
  temp_dir d;
  for (auto& c : g["cases"]) {
    d.write("m.json", c["messages"].dump());
    std::vector<std::string> args = {"chat-template", "--tokenizer", shared_path("tokenizers/deepseek-v3"), "--messages", d / "m.json"};
    if (c["add_generation_prompt"].get<bool>()) args.push_back("--add-generation-prompt");
    auto r = run_shoal(args);
    BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
    BOOST_TEST(r.out == c["expected"].get<std::string>(), "case " << c["name"]);
  }
}

BOOST_AUTO_TEST_CASE(inspect_reports_shapes, *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  auto r = run_shoal({"inspect", "--model", shared_path(kStoriesGguf), "--json"});
  BOOST_REQUIRE_EQUAL(r.status, 0);
  auto j = nlohmann::json::parse(r.out);
  BOOST_TEST(j["architecture"] == "llama");
  BOOST_TEST(j["layers"] == 5);
  BOOST_TEST(j["kv_heads"] == 4);
  BOOST_TEST(j["tokenizer"]["kind"] == "spm-bpe");
  // 512*64 embedding + 64 norm + 512*64 output + 5 layers * (64 + 64*64 + 2*32*64 + 64*64 + 64 + 3*64*172)
  BOOST_TEST(j["parameters"] == 512 * 64 + 64 + 512 * 64 + 5 * (64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 64 + 3 * 64 * 172));
}

BOOST_AUTO_TEST_CASE(bad_input_errors, *boost::unit_test::precondition(needs_shared{kStories})) {
  expect_failure({"generate", "--model", "/no/such/model", "--prompt", "x"}, {"/no/such/model", "no such file"});
  temp_dir d;
  expect_failure({"generate", "--model", d.path(), "--prompt", "x"}, {"config.json"});
  // A prompt longer than the 512-token context.
  std::string long_prompt;
  for (int i = 0; i < 600; ++i) long_prompt += "cat ";
  expect_failure({"generate", "--model", shared_path(kStories), "--prompt", long_prompt}, {"context", "512"});
  // stories260K has no chat template.
  d.write("chat.json", R"([{"role": "user", "content": "hi"}])");
  expect_failure({"generate", "--model", shared_path(kStories), "--chat-file", d / "chat.json"}, {"chat_template"});
  // An unknown template construct names the feature.
  d.write("t.jinja", "{% include 'header.jinja' %}{{ messages }}");
  expect_failure({"chat-template", "--model", shared_path(kStories), "--messages", d / "chat.json", "--chat-template", d / "t.jinja"},
                 {"include"});
  expect_failure({"generate", "--model", shared_path(kStories), "--prompt", "x", "--temperature", "-1"}, {"temperature"});
  expect_failure({"generate", "--model", shared_path(kStories), "--prompt", "x", "--top-p", "nan"}, {"top_p"});
  // --threads 0 or more threads than cores: warn and clamp, still answer.
  auto clamped = run_shoal({"generate", "--model", shared_path(kStories), "--prompt", "x", "--threads", "0", "--max-tokens", "2"});
  BOOST_TEST(clamped.status == 0);
  BOOST_TEST(clamped.err.find("--threads 0") != std::string::npos, clamped.err);
  clamped = run_shoal({"generate", "--model", shared_path(kStories), "--prompt", "x", "--threads", "4096", "--max-tokens", "2"});
  BOOST_TEST(clamped.status == 0);
  BOOST_TEST(clamped.err.find("exceeds") != std::string::npos, clamped.err);
  d.write("bad.json", "[{\"role\": ");
  expect_failure({"generate", "--model", shared_path(kStories), "--chat-file", d / "bad.json"}, {"bad.json", "invalid JSON"});
  expect_failure({"generate"}, {"--model"});
}

BOOST_AUTO_TEST_CASE(make_model_runs_end_to_end) {
  temp_dir d;
  auto r = run_shoal({"make-model", "--shape", "tiny", "--dtype", "bf16", "--out", d / "m"});
  BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
  auto j = generate_json(d / "m", "hello world", {"--max-tokens", "8", "--seed", "1", "--ignore-eos"});
  BOOST_TEST(j["generated_ids"].size() == 8u);
  // A second make-model into the same directory is refused without --force.
  expect_failure({"make-model", "--shape", "tiny", "--out", d / "m"}, {"already exists"});
}

BOOST_AUTO_TEST_SUITE_END()
