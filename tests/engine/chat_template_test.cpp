// The chat-template renderer against independent references: the goldens in ../shared (rendered
// by Python Jinja2 with transformers' settings), published templates of Llama-2, Llama-3 and
// Qwen2 (ChatML) with prompts derived by hand from each model's documented format, whitespace
// rules derived by hand from Jinja2's trim_blocks/lstrip_blocks, and the errors a caller sees.

#include <boost/test/unit_test.hpp>

#include <initializer_list>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/tokenizer/chat_template.hpp"
#include "tests/support/shared.hpp"

using json = nlohmann::ordered_json;
using shoal::chat_template_vars;
using shoal::errc;
using shoal::render_chat_template;
using shoal::test::needs_shared;

namespace {

// Templates as published in each model's tokenizer_config.json. Llama-2 writes its newlines as
// Jinja escapes (\n inside the template's string literals); Llama-3 and Qwen2 embed real ones.
const std::string kLlama2 =
    R"({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %})"
    R"({% set system_message = messages[0]['content'] %}{% else %})"
    R"({% set loop_messages = messages %}{% set system_message = false %}{% endif %})"
    R"({% for message in loop_messages %})"
    R"({% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %})"
    R"({{ raise_exception('Conversation roles must alternate )"
    R"(user/assistant/user/assistant/...') }})"
    R"({% endif %}{% if loop.index0 == 0 and system_message != false %})"
    R"({% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %})"
    R"({% else %}{% set content = message['content'] %}{% endif %})"
    R"({% if message['role'] == 'user' %})"
    R"({{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }})"
    R"({% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }})"
    R"({% endif %}{% endfor %})";

const std::string kLlama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const std::string kQwen2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

json msg(const std::string& role, const std::string& content) {
  return json{{"role", role}, {"content", content}};
}

chat_template_vars vars(json messages, bool add_generation_prompt = false, std::string bos = "<s>",
                        std::string eos = "</s>") {
  chat_template_vars v;
  v.messages = std::move(messages);
  v.add_generation_prompt = add_generation_prompt;
  v.bos_token = std::move(bos);
  v.eos_token = std::move(eos);
  return v;
}

// Renders a template with no messages: for the rules that do not depend on them.
std::string render(const std::string& source) {
  return render_chat_template(source, vars(json::array()));
}

// Expects render to fail with `code`, its message holding every fragment.
template <typename F>
void expect_error(F&& render_fn, errc code, std::initializer_list<std::string> fragments) {
  try {
    const std::string out = render_fn();
    BOOST_ERROR("expected an error, rendered '" << out << "'");
  } catch (const shoal::error& e) {
    BOOST_TEST(static_cast<int>(e.code()) == static_cast<int>(code),
               "code " << shoal::to_string(e.code()) << " for: " << e.what());
    const std::string what = e.what();
    for (const auto& f : fragments)
      BOOST_TEST(what.find(f) != std::string::npos, "message '" << what << "' lacks '" << f << "'");
  }
}

// Every golden case of one tokenizer directory, with the file's template and token variables.
void check_goldens(const std::string& dir) {
  const json golden = json::parse(
      shoal::test::read_file(shoal::test::shared_path(dir + "/chat_template_golden.json")));
  const json config =
      json::parse(shoal::test::read_file(shoal::test::shared_path(dir + "/tokenizer_config.json")));
  const std::string source = golden["chat_template"].get<std::string>();
  BOOST_TEST(config["chat_template"].get<std::string>() == source);
  const json& tv = golden["template_variables"];
  json extra = json::object();
  for (const auto& [k, v] : tv.items())
    if (k != "bos_token" && k != "eos_token" && k != "tools") extra[k] = v;

  int checked = 0;
  int mismatches = 0;
  for (const auto& c : golden["cases"]) {
    auto v = vars(c["messages"], c["add_generation_prompt"].get<bool>(),
                  tv["bos_token"].get<std::string>(), tv["eos_token"].get<std::string>());
    v.tools = tv.value("tools", json(nullptr));
    const std::string expected = c["expected"].get<std::string>();
    const std::string got = render_chat_template(source, v, extra);
    ++checked;
    if (got != expected) ++mismatches;
    BOOST_TEST(got == expected, dir << " case " << c["name"].get<std::string>());
  }
  BOOST_TEST_MESSAGE(dir << ": " << checked << " golden cases, " << mismatches << " mismatches");
  BOOST_TEST(checked == static_cast<int>(golden["cases"].size()));
  BOOST_TEST(checked > 0);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(chat_template)

BOOST_AUTO_TEST_CASE(deepseek_v3_goldens,
                     *boost::unit_test::precondition(needs_shared{
                         "tokenizers/deepseek-v3/chat_template_golden.json"})) {
  check_goldens("tokenizers/deepseek-v3");
}

BOOST_AUTO_TEST_CASE(deepseek_coder_goldens,
                     *boost::unit_test::precondition(needs_shared{
                         "tokenizers/deepseek-coder-6.7b-instruct/chat_template_golden.json"})) {
  check_goldens("tokenizers/deepseek-coder-6.7b-instruct");
}

// Llama-2 chat: "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>".
BOOST_AUTO_TEST_CASE(llama2_format) {
  const json conversation =
      json::array({msg("system", "You are helpful."), msg("user", "Hello"),
                   msg("assistant", "Hi there!"), msg("user", "How are you?")});
  BOOST_TEST(render_chat_template(kLlama2, vars(conversation)) ==
             "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHello [/INST] Hi there! </s>"
             "<s>[INST] How are you? [/INST]");
  // No system prompt; content.strip() trims the user's whitespace; the template ignores
  // add_generation_prompt.
  BOOST_TEST(render_chat_template(kLlama2, vars(json::array({msg("user", "  Hi  ")}), true)) ==
             "<s>[INST] Hi [/INST]");
}

BOOST_AUTO_TEST_CASE(llama2_raises_when_roles_do_not_alternate) {
  for (const json& conversation :
       {json::array({msg("user", "a"), msg("user", "b")}), json::array({msg("assistant", "a")}),
        json::array({msg("system", "s"), msg("assistant", "a")})}) {
    expect_error([&] { return render_chat_template(kLlama2, vars(conversation)); },
                 errc::invalid_argument,
                 {"chat template raised: Conversation roles must alternate "
                  "user/assistant/user/assistant/..."});
  }
  try {
    render_chat_template(kLlama2, vars(json::array({msg("user", "a"), msg("user", "b")})));
  } catch (const shoal::error& e) {
    BOOST_TEST(std::string(e.what()) ==
               "chat template raised: Conversation roles must alternate "
               "user/assistant/user/assistant/...");
  }
}

// Llama-3 instruct: each turn is
// "<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>".
BOOST_AUTO_TEST_CASE(llama3_format) {
  const json conversation =
      json::array({msg("system", "SYS"), msg("user", "Hi"), msg("assistant", " Hello! ")});
  BOOST_TEST(
      render_chat_template(kLlama3, vars(conversation, false, "<|begin_of_text|>", "<|eot_id|>")) ==
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>");
  BOOST_TEST(render_chat_template(kLlama3, vars(json::array({msg("user", "Hi")}), true,
                                                "<|begin_of_text|>", "<|eot_id|>")) ==
             "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// Qwen2 ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n", with a default system turn when
// the conversation has none.
BOOST_AUTO_TEST_CASE(chatml_qwen2_format) {
  BOOST_TEST(render_chat_template(kQwen2,
                                  vars(json::array({msg("user", "Hi")}), true, "", "<|im_end|>")) ==
             "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
             "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const json conversation =
      json::array({msg("system", "Be terse."), msg("user", "Hi"), msg("assistant", "Hello")});
  BOOST_TEST(render_chat_template(kQwen2, vars(conversation, false, "", "<|im_end|>")) ==
             "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
             "<|im_start|>assistant\nHello<|im_end|>\n");
}

BOOST_AUTO_TEST_CASE(whitespace_control) {
  // `{%-` strips all whitespace before the tag, `-%}` all after; plain tags leave text alone.
  BOOST_TEST(render("a  {%- if true %}  b  {% endif -%}  c") == "a  b  c");
  BOOST_TEST(render("{{ 'a' -}}  \n  b") == "ab");
  BOOST_TEST(render("a \n {{- 'b' }}") == "ab");
  BOOST_TEST(render("  {%- if true %}\n\tx\n  {% endif %}  y") == "\tx\n  y");
}

BOOST_AUTO_TEST_CASE(trim_blocks) {
  // The first newline after a block or comment tag goes; after a variable tag it stays.
  BOOST_TEST(render("{% if true %}\nyes\n{% endif %}\nafter") == "yes\nafter");
  BOOST_TEST(render("{{ 'a' }}\nb") == "a\nb");
  BOOST_TEST(render("{# note #}\nx") == "x");
  BOOST_TEST(render("{% if true %}\n\nyes{% endif %}") == "\nyes");
  // `+%}` keeps the newline.
  BOOST_TEST(render("{% if true +%}\nx{% endif %}") == "\nx");
}

BOOST_AUTO_TEST_CASE(lstrip_blocks) {
  // Spaces and tabs before a block or comment tag that starts its line go; not before {{ }}.
  BOOST_TEST(render("  {% if true %}x{% endif %}") == "x");
  BOOST_TEST(render("  {{ 'x' }}") == "  x");
  BOOST_TEST(render("a\n  {# c #}\nb") == "a\nb");
  BOOST_TEST(render("a\n    {% if true %}\n    b\n    {% endif %}\nc") == "a\n    b\nc");
  BOOST_TEST(render("a {% if true %}b{% endif %}") == "a b");  // text before the tag on its line
  // `{%+` keeps them.
  BOOST_TEST(render("  {%+ if true %}x{% endif %}") == "  x");
  // A loop body on its own lines, as templates are usually written.
  BOOST_TEST(render("{% for i in [1, 2] %}\n  {{ i }}\n{% endfor %}\n") == "  1\n  2\n");
  const auto v = vars(json::array({msg("user", "x")}));
  BOOST_TEST(render_chat_template("{% for m in messages %}\n    {{- m.role }}\n{% endfor %}", v) ==
             "user\n");
}

BOOST_AUTO_TEST_CASE(template_text_rules) {
  BOOST_TEST(render("x\n") == "x");  // one trailing newline is dropped
  BOOST_TEST(render("x\n\n") == "x\n");
  BOOST_TEST(render("a\r\nb") == "a\nb");
  BOOST_TEST(render("{% raw %}{{ x }}{% endraw %}") == "{{ x }}");
  BOOST_TEST(render("a{# comment {{ x }} #}b") == "ab");
}

BOOST_AUTO_TEST_CASE(expressions) {
  BOOST_TEST(render("{{ 'a' ~ 1 ~ none ~ true }}") == "a1NoneTrue");
  BOOST_TEST(
      render("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 3 / 2 }}|{{ 4 / 2 }}") ==
      "7|3|-4|2|1.5|2.0");
  BOOST_TEST(
      render("{{ 'x' if false else 'y' }}|{{ 'x' if false }}|{{ [] or 'empty' }}|{{ 0 and 1 }}") ==
      "y||empty|0");
  BOOST_TEST(render("{{ 1 < 2 < 3 }}{{ 'b' in 'abc' }}{{ 3 not in [1, 2] }}{{ not none }}") ==
             "TrueTrueTrueTrue");
  BOOST_TEST(render("{{ [1, 'a', none, true, 1.5] }}|{{ {'k': \"it's\"} }}|{{ (1,) }}") ==
             "[1, 'a', None, True, 1.5]|{'k': \"it's\"}|(1,)");
  BOOST_TEST(render(R"({{ 'a\tb\\n\'' }})") == "a\tb\\n'");
  BOOST_TEST(
      render("{{ [1, 2, 3][1:] }}{{ [1, 2, 3][::-1] }}{{ [1, 2, 3][-1] }}{{ 'héllo'[1] }}") ==
      "[2, 3][3, 2, 1]3é");
  // Filters bind tighter than + and `is` tighter than not.
  BOOST_TEST(render("{{ 'a' + '  b  ' | trim }}|{{ not undefined_name is defined }}") == "ab|True");
}

BOOST_AUTO_TEST_CASE(undefined_and_none) {
  const auto v = vars(json::array({json{{"role", "assistant"}, {"content", nullptr}}}));
  BOOST_TEST(render_chat_template(
                 "{{ messages[0]['content'] is none }}{{ messages[0].missing is defined }}"
                 "{{ messages[5] is defined }}[{{ nothing }}]{{ nothing | default('d') }}{{ "
                 "messages[0].content }}",
                 v) == "TrueFalseFalse[]dNone");
  // Attribute access on an undefined value fails, as in Jinja2's default Undefined.
  expect_error([] { return render("{{ nothing.attr }}"); }, errc::invalid_argument,
               {"'nothing' is undefined"});
}

BOOST_AUTO_TEST_CASE(loops_scopes_and_namespaces) {
  BOOST_TEST(
      render("{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}"
             "{{ loop.last }}{{ loop.length }};{% endfor %}") ==
      "10TrueFalse3;21FalseFalse3;32FalseTrue3;");
  // `set` inside a loop does not leak out; a namespace carries state across iterations.
  BOOST_TEST(
      render("{% set x = 0 %}{% set ns = namespace(n=0) %}{% for i in [1, 2] %}{% set x = i %}"
             "{% set ns.n = ns.n + i %}{% endfor %}{{ x }} {{ ns.n }}") == "0 3");
  // `set` inside if does leak.
  BOOST_TEST(render("{% if true %}{% set y = 5 %}{% endif %}{{ y }}") == "5");
  BOOST_TEST(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }},{% endfor %}") ==
             "a=1,b=2,");
  BOOST_TEST(render("{% for x in [] %}x{% else %}empty{% endfor %}") == "empty");
  BOOST_TEST(
      render("{% for x in [1, 2, 3, 4] if x is odd %}{{ x }}/{{ loop.length }} {% endfor %}") ==
      "1/2 3/2 ");
  BOOST_TEST(render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}"
                    "{% break %}{% endif %}{{ i }}{% endfor %}") == "02");
  BOOST_TEST(render("{% macro greet(name, p='!') %}Hi {{ name }}{{ p }}{% endmacro %}"
                    "{{ greet('a') }} {{ greet('b', p='?') }}") == "Hi a! Hi b?");
}

BOOST_AUTO_TEST_CASE(filters_and_methods) {
  BOOST_TEST(
      render(
          "{{ '  x  ' | trim }}|{{ 'ab' | upper }}|{{ 'AB' | lower }}|{{ 'hELLO' | capitalize }}|"
          "{{ 'hello world' | title }}|{{ [1, 2] | length }}|{{ 'héllo' | count }}") ==
      "x|AB|ab|Hello|Hello World|2|5");
  BOOST_TEST(render("{{ {'b': 1, 'a': [1, 2.5, none, true], 'c': 'é\"'} | tojson }}") ==
             R"({"b": 1, "a": [1, 2.5, null, true], "c": "é\""})");
  BOOST_TEST(render("{{ {'a': 1} | tojson(indent=2) }}") == "{\n  \"a\": 1\n}");
  BOOST_TEST(
      render(
          "{{ [1, 2] | join(', ') }}|{{ [3, 1] | first }}|{{ [3, 1] | last }}|{{ '5' | int + 1 }}|"
          "{{ 3.9 | int }}|{{ 1 | string ~ 2 }}|{{ 'aXa' | replace('a', 'b') }}|{{ 'ab' | list "
          "}}") == "1, 2|3|1|6|3|12|bXb|['a', 'b']");
  const auto v = vars(json::array({msg("system", "s"), msg("user", "u1"), msg("user", "u2")}));
  BOOST_TEST(render_chat_template(
                 "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') "
                 "| join(',') }}|{{ messages | rejectattr('role', 'equalto', 'user') | list "
                 "| length }}|{{ messages | map(attribute='role') | unique | list }}",
                 v) == "u1,u2|1|['system', 'user']");
  BOOST_TEST(
      render(
          "{{ ' a b '.strip() }}|{{ 'xxaxx'.lstrip('x') }}|{{ 'a,b'.split(',') }}|{{ 'a b'.split() "
          "}}|"
          "{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('x') }}|{{ 'aa'.replace('a', 'b', 1) }}|"
          "{{ {'k': 1}.get('k') }}{{ {'k': 1}.get('z', 2) }}{{ {'k': 1}.keys() | list }}") ==
      "a b|axx|['a', 'b']|['a', 'b']|TrueFalse|ba|12['k']");
}

BOOST_AUTO_TEST_CASE(tools_and_extra_variables) {
  // transformers always defines `tools` (None when absent) and passes further variables through.
  BOOST_TEST(render("{{ tools is defined }} {{ tools is none }}") == "True True");
  auto v = vars(json::array());
  v.tools = json::array({json{{"name", "f"}}});
  BOOST_TEST(render_chat_template("{% for t in tools %}{{ t | tojson }}{% endfor %}", v) ==
             R"({"name": "f"})");
  BOOST_TEST(render_chat_template("{{ date_string }}", v, json{{"date_string", "26 Jul 2024"}}) ==
             "26 Jul 2024");
}

BOOST_AUTO_TEST_CASE(unknown_constructs_are_unsupported) {
  expect_error([] { return render("line 1\nline 2\n{% include 'other.j2' %}"); }, errc::unsupported,
               {"include", "line 3"});
  expect_error([] { return render("{% frobnicate %}"); }, errc::unsupported,
               {"frobnicate", "line 1"});
  expect_error([] { return render("\n{{ 'x' | frobnicate }}"); }, errc::unsupported,
               {"frobnicate", "line 2"});
  expect_error([] { return render("{{ 'x' is frobnicated }}"); }, errc::unsupported,
               {"frobnicated"});
  expect_error([] { return render("{{ lipsum() }}"); }, errc::unsupported, {"lipsum"});
  expect_error([] { return render("{{ 'x'.zfill(3) }}"); }, errc::unsupported, {"zfill"});
  // As in Jinja2, an unknown filter in a branch not taken is only an error once it runs.
  BOOST_TEST(render("{% if false %}{{ 'x' | frobnicate }}{% endif %}ok") == "ok");
}

BOOST_AUTO_TEST_CASE(syntax_errors) {
  expect_error([] { return render("a\n{% if true "); }, errc::invalid_argument, {"line 2", "%}"});
  expect_error([] { return render("{{ x "); }, errc::invalid_argument, {"line 1", "}}"});
  expect_error([] { return render("{# comment"); }, errc::invalid_argument, {"line 1", "#}"});
  expect_error([] { return render("{% if true %}x"); }, errc::invalid_argument,
               {"line 1", "endif"});
  expect_error([] { return render("{% for x in y %}\n{% endif %}"); }, errc::invalid_argument,
               {"line 2", "endif"});
  expect_error([] { return render("{{ 1 + }}"); }, errc::invalid_argument, {"line 1"});
  expect_error([] { return render("{% break %}"); }, errc::invalid_argument, {"break"});
}

BOOST_AUTO_TEST_CASE(runaway_templates_stop) {
  expect_error(
      [] {
        return render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
      },
      errc::out_of_range, {"loop iterations"});
  expect_error([] { return render("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"); },
               errc::out_of_range, {"macro"});
  expect_error([] { return render("{{ range(1000000) | length }}"); }, errc::out_of_range,
               {"Range too big"});
  expect_error([] { return render("{{ 'x' * 1000000000000 }}"); }, errc::out_of_range,
               {"too large"});
  std::string deep = "{{ 1";
  for (int i = 0; i < 20000; ++i) deep += " + 1";
  expect_error([&] { return render(deep + " }}"); }, errc::invalid_argument, {"nested too deeply"});
}

BOOST_AUTO_TEST_SUITE_END()
