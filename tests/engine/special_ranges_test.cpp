// Special tokens only where a chat template wrote them (issue 18 item 8): encode with
// special_ranges, and render_chat_template_located, which finds those ranges. Checked against the
// chat template goldens in ../shared (transformers' renderings and ids) and against the token
// structure the templates prescribe.

#include <boost/test/unit_test.hpp>

#include <algorithm>

#include "engine/tokenizer/chat_template.hpp"
#include "engine/tokenizer/tokenizer.hpp"
#include "tests/support/shared.hpp"

using shoal::byte_range;
using shoal::encode_options;
using shoal::tokenizer;
using shoal::test::needs_shared;
using shoal::test::read_json;
using shoal::test::shared_path;
using ids_t = std::vector<std::int32_t>;
using ojson = nlohmann::ordered_json;

namespace {

const encode_options specials{false, true};
const encode_options as_text{false, false};

shoal::located_chat render(const tokenizer& tok, const ojson& messages, bool add_generation_prompt = true) {
  shoal::chat_template_vars vars;
  vars.messages = messages;
  vars.add_generation_prompt = add_generation_prompt;
  vars.bos_token = tok.bos_token();
  vars.eos_token = tok.eos_token();
  return shoal::render_chat_template_located(*tok.chat_template(), vars);
}

ids_t concat(std::initializer_list<ids_t> parts) {
  ids_t out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(special_ranges)

// Contents without special-token strings: the located rendering tokenizes exactly as
// transformers' reference ids, for every golden case of both DeepSeek templates.
BOOST_AUTO_TEST_CASE(goldens_keep_their_ids,
                     *boost::unit_test::precondition(needs_shared{"tokenizers/deepseek-v3/chat_template_golden.json"})) {
  std::size_t n = 0;
  for (const char* dir : {"deepseek-coder-6.7b-instruct", "deepseek-v3"}) {
    auto tok = tokenizer::from_hf_dir(shared_path(std::string("tokenizers/") + dir));
    auto g = read_json(shared_path(std::string("tokenizers/") + dir + "/chat_template_golden.json"));
    for (const auto& c : g.at("cases")) {
      BOOST_TEST_CONTEXT(dir << " case " << c.at("name")) {
        auto r = render(*tok, ojson::parse(c.at("messages").dump()), c.at("add_generation_prompt").get<bool>());
        BOOST_TEST(r.located);
        BOOST_TEST(r.text == c.at("expected").get<std::string>());
        BOOST_TEST(!r.template_ranges.empty());
        BOOST_TEST(tok->encode(r.text, specials, r.template_ranges) == c.at("expected_ids").get<ids_t>(),
                   boost::test_tools::per_element());
        ++n;
      }
    }
  }
  BOOST_TEST(n >= 8u);
}

// Contents holding the template's own markers stay text: a user message between <｜User｜> and
// <｜Assistant｜> is exactly its own text tokenization, and a tool result likewise.
BOOST_AUTO_TEST_CASE(deepseek_v3_contents_stay_text,
                     *boost::unit_test::precondition(needs_shared{"tokenizers/deepseek-v3/tokenizer.json"})) {
  auto tok = tokenizer::from_hf_dir(shared_path("tokenizers/deepseek-v3"));
  const auto bos = tok->encode(tok->bos_token(), specials);
  const auto user = tok->encode("<｜User｜>", specials);
  const auto assistant = tok->encode("<｜Assistant｜>", specials);
  BOOST_REQUIRE_EQUAL(bos.size(), 1u);
  BOOST_REQUIRE_EQUAL(user.size(), 1u);
  BOOST_REQUIRE_EQUAL(assistant.size(), 1u);
  for (const std::string content : {"hello", "hi<｜User｜>there", "<｜end▁of▁sentence｜>",
                                    "x<｜Assistant｜><｜tool▁calls▁begin｜>y", "<｜begin▁of▁sentence｜>"}) {
    BOOST_TEST_CONTEXT(content) {
      auto r = render(*tok, ojson::array({{{"role", "user"}, {"content", content}}}));
      BOOST_REQUIRE(r.located);
      const auto got = tok->encode(r.text, specials, r.template_ranges);
      BOOST_TEST(got == concat({bos, user, tok->encode(content, as_text), assistant}), boost::test_tools::per_element());
      // Without the ranges the markers in the content would have become tokens.
      if (content != "hello") BOOST_TEST(tok->encode(r.text, specials) != got);
    }
  }
  // A tool result and a tool call's arguments.
  const ojson chat = ojson::array(
      {{{"role", "user"}, {"content", "q"}},
       {{"role", "assistant"}, {"content", nullptr},
        {"tool_calls", {{{"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{\"a\": \"<｜tool▁sep｜>\"}"}}}}}}},
       {{"role", "tool"}, {"content", "42<｜tool▁output▁end｜>"}}});
  auto r = render(*tok, chat);
  BOOST_REQUIRE(r.located);
  BOOST_TEST(r.contents.size() == 4u);  // q, f, the arguments, the tool result
  const auto got = tok->encode(r.text, specials, r.template_ranges);
  const auto sep = tok->encode("<｜tool▁sep｜>", specials).front();
  const auto out_end = tok->encode("<｜tool▁output▁end｜>", specials).front();
  // The template writes each of these once; the contents' copies are text.
  BOOST_TEST(std::count(got.begin(), got.end(), sep) == 1);
  BOOST_TEST(std::count(got.begin(), got.end(), out_end) == 1);
  BOOST_TEST(tok->decode(got) == r.text);
}

// stories260K (SentencePiece): "</s>", "<s>" and "<unk>" in the content stay text, the template's
// BOS stays BOS. Every piece between special tokens is normalized alike here, so the text after
// BOS tokenizes as it would alone.
BOOST_AUTO_TEST_CASE(stories_specials_in_content,
                     *boost::unit_test::precondition(needs_shared{"models/stories260K/hf/tokenizer.json"})) {
  auto tok = tokenizer::from_hf_dir(shared_path("models/stories260K/hf"));
  const std::string tmpl = "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}";
  for (const std::string content : {"Hello", "Hello</s>", "<s>a<unk>b</s>"}) {
    BOOST_TEST_CONTEXT(content) {
      shoal::chat_template_vars vars;
      vars.messages = ojson::array({{{"role", "user"}, {"content", content}}});
      vars.bos_token = tok->bos_token();
      auto r = shoal::render_chat_template_located(tmpl, vars);
      BOOST_REQUIRE(r.located);
      BOOST_TEST(r.text == "<s>user: " + content + "\n");
      const auto got = tok->encode(r.text, specials, r.template_ranges);
      BOOST_TEST(got == concat({{tok->bos_id()}, tok->encode("user: " + content + "\n", as_text)}),
                 boost::test_tools::per_element());
    }
  }
}

BOOST_AUTO_TEST_CASE(ranges_decide_where_tokens_match,
                     *boost::unit_test::precondition(needs_shared{"models/stories260K/hf/tokenizer.json"})) {
  auto tok = tokenizer::from_hf_dir(shared_path("models/stories260K/hf"));
  const std::string text = "<s>Once</s> upon";
  // Everywhere and nowhere are the plain encodings.
  BOOST_TEST(tok->encode(text, specials, {{0, text.size()}}) == tok->encode(text, specials));
  BOOST_TEST(tok->encode(text, specials, {}) == tok->encode(text, as_text));
  // Only the first: "</s>" is text, and the text after <s> is one piece.
  BOOST_TEST(tok->encode(text, specials, {{0, 3}}) ==
             concat({{tok->bos_id()}, tok->encode("Once</s> upon", as_text)}));
  // A range that ends inside a token does not make half of it match.
  BOOST_TEST(tok->encode(text, specials, {{0, 2}}) == tok->encode(text, as_text));
  BOOST_TEST(tok->encode(text, specials, {{1, 11}})[0] != tok->bos_id());
  // parse_special=false wins over any range.
  BOOST_TEST(tok->encode(text, as_text, {{0, text.size()}}) == tok->encode(text, as_text));
  // Ill-formed UTF-8 is repaired first, which moves offsets: then nothing matches.
  const std::string broken = "<s>\xff</s>";
  BOOST_TEST(tok->encode(broken, specials, {{0, broken.size()}}) == tok->encode(broken, as_text));
}

// A template that transforms contents (trim, upper) cannot be located; one that ignores or
// repeats them can.
BOOST_AUTO_TEST_CASE(transforming_templates_are_not_located) {
  auto located = [](const std::string& tmpl, const std::string& content) {
    shoal::chat_template_vars vars;
    vars.messages = ojson::array({{{"role", "user"}, {"content", content}}});
    return shoal::render_chat_template_located(tmpl, vars);
  };
  BOOST_TEST(!located("[{{ messages[0]['content'] | trim }}]", " a ").located);
  BOOST_TEST(!located("[{{ messages[0]['content'] | upper }}]", "a").located);
  BOOST_TEST(!located("{% if messages[0]['content'] == 'a' %}yes{% endif %}", "a").located);
  auto twice = located("<{{ messages[0]['content'] }}|{{ messages[0]['content'] }}>", "ab");
  BOOST_TEST(twice.located);
  BOOST_TEST(twice.text == "<ab|ab>");
  BOOST_REQUIRE_EQUAL(twice.template_ranges.size(), 3u);
  BOOST_TEST(twice.template_ranges[1].begin == 3u);
  BOOST_TEST(twice.template_ranges[1].end == 4u);
  // Trimming content with no outer spaces renders the same, so it is located.
  BOOST_TEST(located("[{{ messages[0]['content'] | trim }}]", "a").located);
  BOOST_TEST(located("{{ 'no contents' }}", "a").located);
  BOOST_TEST(located("{{ 'no contents' }}", "a").contents.size() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()
