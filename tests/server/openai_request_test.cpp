// OpenAI request bodies to generation requests, without actors or sockets: defaults as OpenAI's
// API documents them, each wrong field refused naming it, the choices a request expands to.

#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include "server/openai_request.hpp"

using shoal::server::door_options;
using shoal::server::openai_request;
using shoal::server::parse_openai_request;
using shoal::server::request_error;
using json = nlohmann::json;

namespace {

openai_request parse(const json& body, bool chat = false, door_options o = {}) {
  return parse_openai_request(body.dump(), chat, o);
}

// The error a body is refused with (fails the test when it is accepted).
request_error refusal(const std::string& body, bool chat = false, door_options o = {}) {
  try {
    parse_openai_request(body, chat, o);
  } catch (const request_error& e) {
    return e;
  }
  BOOST_ERROR("accepted: " << body);
  return {};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(openai_request_parsing)

BOOST_AUTO_TEST_CASE(completion_defaults_follow_openai) {
  auto r = parse({{"prompt", "Once upon a time"}});
  BOOST_TEST(!r.chat);
  BOOST_TEST(r.model == "");
  BOOST_TEST(r.n == 1);
  BOOST_TEST(!r.stream);
  BOOST_REQUIRE_EQUAL(r.prompts.size(), 1u);
  BOOST_TEST(r.prompts[0].text == "Once upon a time");
  BOOST_TEST(r.base.max_tokens == 16);  // OpenAI's completions default
  BOOST_TEST(r.base.sampling.temperature == 1.0f);
  BOOST_TEST(r.base.sampling.top_p == 1.0f);
  BOOST_TEST(!r.base.sampling.seed.has_value());
  BOOST_TEST(r.base.api_method == "http.completions");
  // A chat's default answer length is longer.
  auto c = parse({{"messages", {{{"role", "user"}, {"content", "hi"}}}}}, true);
  BOOST_TEST(c.base.max_tokens == 256);
  BOOST_TEST(c.base.api_method == "http.chat.completions");
  BOOST_TEST(c.add_generation_prompt);
}

BOOST_AUTO_TEST_CASE(fields_are_read_as_written) {
  auto r = parse({{"model", "m"},
                  {"prompt", json::array({json::array({1, 2, 3}), "two"})},
                  {"max_tokens", 7},
                  {"temperature", 0},
                  {"top_p", 0.5},
                  {"top_k", 40},
                  {"min_p", 0.1},
                  {"repetition_penalty", 1.2},
                  {"presence_penalty", -1},
                  {"frequency_penalty", 2},
                  {"seed", 42},
                  {"stop", {"x", "yz"}},
                  {"ignore_eos", true},
                  {"priority", -3},
                  {"n", 2},
                  {"stream", true},
                  {"stream_options", {{"include_usage", true}}},
                  {"frobnicate", "ignored, as vLLM does"}});
  BOOST_TEST(r.model == "m");
  BOOST_REQUIRE_EQUAL(r.prompts.size(), 2u);
  BOOST_TEST(r.prompts[0].ids == (std::vector<std::int32_t>{1, 2, 3}));
  BOOST_TEST(r.prompts[1].text == "two");
  BOOST_TEST(r.base.max_tokens == 7);
  BOOST_TEST(r.base.sampling.temperature == 0.0f);
  BOOST_TEST(r.base.sampling.top_p == 0.5f);
  BOOST_TEST(r.base.sampling.top_k == 40);
  BOOST_TEST(r.base.sampling.repetition_penalty == 1.2f);
  BOOST_TEST(r.base.sampling.presence_penalty == -1.0f);
  BOOST_TEST(r.base.sampling.frequency_penalty == 2.0f);
  BOOST_TEST(r.base.sampling.seed.has_value());
  BOOST_TEST(r.base.sampling.seed.value_or(0) == 42u);
  BOOST_TEST(r.base.stop == (std::vector<std::string>{"x", "yz"}));
  BOOST_TEST(r.base.ignore_eos);
  BOOST_TEST(r.base.priority == -3);
  BOOST_TEST(r.n == 2);
  BOOST_TEST(r.stream);
  BOOST_TEST(r.include_usage);
}

BOOST_AUTO_TEST_CASE(choices_are_prompts_times_n_with_distinct_seeds) {
  auto r = parse({{"prompt", {"a", "b"}}, {"n", 3}, {"seed", 10}});
  auto all = shoal::server::choices(r, nullptr);
  BOOST_REQUIRE_EQUAL(all.size(), 6u);
  for (std::size_t i = 0; i < all.size(); ++i) {
    BOOST_TEST(all[i].prompt == (i < 3 ? "a" : "b"));
    BOOST_TEST(all[i].sampling.seed.value_or(0) == 10u + i % 3);
  }
  // A chat: its rendered prompt, the template's ranges, no BOS added (the template writes it).
  auto c = parse({{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"n", 2}}, true);
  shoal::server::rendered_chat rendered{"<s>user: hi", {0, 9}, true};
  auto chat = shoal::server::choices(c, &rendered);
  BOOST_REQUIRE_EQUAL(chat.size(), 2u);
  BOOST_TEST(chat[1].prompt == "<s>user: hi");
  BOOST_TEST(chat[1].special_ranges == (std::vector<std::int32_t>{0, 9}));
  BOOST_TEST(!chat[1].add_special);
  BOOST_TEST(chat[1].parse_special);
}

BOOST_AUTO_TEST_CASE(chat_messages_are_normalised_for_the_template) {
  auto c = parse({{"messages",
                   {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}},
                    {{"role", "assistant"}, {"tool_calls", {{{"type", "function"}}}}},
                    {{"role", "assistant"}}}},
                  {"tools", json::array()}},
                 true);
  BOOST_TEST(c.messages[0]["content"] == "ab");
  BOOST_TEST(c.messages[1]["content"].is_null());  // a tool call keeps content none
  BOOST_TEST(c.messages[2]["content"] == "");
  BOOST_TEST(c.tools.is_array());
}

BOOST_AUTO_TEST_CASE(each_wrong_field_is_named) {
  struct probe {
    std::string body;
    std::string param;
    std::string code;
    bool chat = false;
  };
  const std::vector<probe> probes = {
      {"{\"prompt\": 5}", "prompt", "invalid_type"},
      {"{}", "prompt", "missing_required_parameter"},
      {"{\"prompt\": \"x\", \"max_tokens\": 0}", "max_tokens", "invalid_value"},
      {"{\"prompt\": \"x\", \"max_tokens\": \"10\"}", "max_tokens", "invalid_type"},
      {"{\"prompt\": \"x\", \"temperature\": 5}", "temperature", "invalid_value"},
      {"{\"prompt\": \"x\", \"top_p\": 0}", "top_p", "invalid_value"},
      {"{\"prompt\": \"x\", \"n\": 1000}", "n", "invalid_value"},
      {"{\"prompt\": \"x\", \"stop\": [\"\"]}", "stop", "invalid_value"},
      {"{\"prompt\": \"x\", \"stop\": 7}", "stop", "invalid_type"},
      {"{\"prompt\": \"x\", \"seed\": \"s\"}", "seed", "invalid_type"},
      {"{\"prompt\": \"x\", \"logprobs\": 2}", "logprobs", "unsupported"},
      {"{\"prompt\": \"x\", \"echo\": true}", "echo", "unsupported"},
      {"{\"prompt\": \"x\", \"best_of\": 3}", "best_of", "unsupported"},
      {"{\"prompt\": \"x\", \"logit_bias\": {\"1\": 2}}", "logit_bias", "unsupported"},
      {"{\"prompt\": \"x\", \"stream_options\": 1}", "stream_options", "invalid_type"},
      {"{\"prompt\": \"x\", \"model\": 3}", "model", "invalid_type"},
      {"{\"messages\": []}", "messages", "invalid_type", true},
      {"{\"messages\": [{\"content\": \"x\"}]}", "messages", "invalid_type", true},
      {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", "messages", "unsupported", true},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": 1}", "tools", "invalid_type", true},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": {\"type\": \"json\"}}",
       "response_format", "unsupported", true},
  };
  for (const auto& p : probes) {
    BOOST_TEST_CONTEXT(p.body) {
      auto e = refusal(p.body, p.chat);
      BOOST_TEST(e.status == 400u);
      BOOST_TEST(e.param == p.param);
      BOOST_TEST(e.code == p.code);
      BOOST_TEST(!e.message.empty());
      BOOST_TEST(e.errc == (p.code == "unsupported" ? "unsupported" : "invalid_argument"));
    }
  }
}

BOOST_AUTO_TEST_CASE(malformed_json_is_refused_without_a_deep_tree) {
  for (const std::string body : {"", "{", "nope", "[]", "3", "null", "{\"prompt\": \"x\"} trailing"}) {
    BOOST_TEST_CONTEXT(body) {
      auto e = refusal(body);
      BOOST_TEST(e.status == 400u);
      BOOST_TEST(e.code == "invalid_json");
    }
  }
  auto deep = refusal(std::string(100000, '[') + std::string(100000, ']'));
  BOOST_TEST(deep.message.find("deeper than 64") != std::string::npos, deep.message);
}

// Issue 18 item 11: a list of prompts that alone exceeds the choices a request may run names
// `prompt`; only a product that n pushes over the limit names `n`.
BOOST_AUTO_TEST_CASE(too_many_choices_names_the_field_to_change) {
  json many = json::array();
  for (int i = 0; i < 300; ++i) many.push_back("p");
  auto e = refusal(json{{"prompt", many}}.dump());
  BOOST_TEST(e.param == "prompt", e.message);
  e = refusal(json{{"prompt", many}, {"n", 2}}.dump());
  BOOST_TEST(e.param == "prompt", e.message);
  e = refusal(json{{"prompt", {"a", "b", "c"}}, {"n", 8}}.dump());
  BOOST_TEST(e.param == "n", e.message);
  door_options small;
  small.max_n = 4;
  e = refusal(json{{"prompt", {"a", "b"}}, {"n", 3}}.dump(), false, small);
  BOOST_TEST(e.param == "n", e.message);
  BOOST_TEST(e.message.find("4") != std::string::npos, e.message);
  BOOST_TEST(parse({{"prompt", {"a", "b"}}, {"n", 2}}, false, small).n == 2);
}

BOOST_AUTO_TEST_CASE(prompt_size_is_bounded) {
  door_options o;
  o.max_prompt_bytes = 10;
  auto e = refusal(json{{"prompt", std::string(11, 'a')}}.dump(), false, o);
  BOOST_TEST(e.param == "prompt");
  BOOST_TEST(e.errc == "out_of_range");
  BOOST_TEST(parse({{"prompt", std::string(10, 'a')}}, false, o).prompts[0].text.size() == 10u);
}

BOOST_AUTO_TEST_CASE(router_refusals_map_to_openai_errors) {
  struct row {
    const char* errc;
    unsigned status;
    const char* type;
  };
  for (const auto& r : {row{"invalid_argument", 400, "invalid_request_error"},
                        row{"unauthenticated", 401, "authentication_error"},
                        row{"forbidden", 403, "permission_error"}, row{"not_found", 404, "invalid_request_error"},
                        row{"rate_limited", 429, "rate_limit_error"}, row{"overloaded", 503, "service_unavailable"},
                        row{"unavailable", 503, "service_unavailable"}, row{"internal", 500, "server_error"}}) {
    auto e = shoal::server::from_errc(r.errc, "m");
    BOOST_TEST(e.status == r.status, r.errc);
    BOOST_TEST(e.type == r.type, r.errc);
    BOOST_TEST(e.errc == r.errc);
  }
  auto body = shoal::server::error_body(shoal::server::bad_request("bad", "n"));
  BOOST_TEST(body["error"]["param"] == "n");
  BOOST_TEST(body["error"]["message"] == "bad");
  BOOST_TEST(shoal::server::error_body(shoal::server::bad_request("bad"))["error"]["param"].is_null());
}

// The same bound guards RPC chat's messagesJson and toolsJson, checked before they are parsed.
BOOST_AUTO_TEST_CASE(json_depth_is_judged_before_parsing) {
  using shoal::server::json_too_deep;
  using shoal::server::max_json_depth;
  const auto open = [](int n, char c = '[') { return std::string(static_cast<std::size_t>(n), c); };
  BOOST_TEST(!json_too_deep(open(max_json_depth) + open(max_json_depth, ']')));
  BOOST_TEST(json_too_deep(open(max_json_depth + 1) + open(max_json_depth + 1, ']')));
  BOOST_TEST(json_too_deep(open(max_json_depth / 2, '{') + open(max_json_depth / 2 + 1)));  // both kinds count
  BOOST_TEST(json_too_deep(open(100000)));  // unbalanced counts too
  // Brackets inside strings are text; an escaped quote does not end the string.
  BOOST_TEST(!json_too_deep("[\"" + open(100) + "\\\"" + open(100, '{') + "\"]"));
  // Depth is how many are open at once, not how many there are.
  std::string wide = "[";
  for (int i = 0; i < 10000; ++i) wide += "[[{}]],";
  BOOST_TEST(!json_too_deep(wide + "1]"));
}

// What the doors answer with "internal error" only: what the HTTP door answers 500.
BOOST_AUTO_TEST_CASE(internal_failures_are_the_500s) {
  for (const char* code : {"internal", "corrupt_file", "cancelled", "no_such_code", ""}) {
    BOOST_TEST(shoal::server::internal_failure(code), code);
  }
  for (const char* code : {"invalid_argument", "not_found", "unsupported", "out_of_range", "unavailable", "overloaded",
                           "unauthenticated", "forbidden", "rate_limited"}) {
    BOOST_TEST(!shoal::server::internal_failure(code), code);
  }
}

BOOST_AUTO_TEST_SUITE_END()
