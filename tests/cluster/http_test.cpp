// The OpenAI-compatible HTTP API on real `shoal node` processes on 127.0.0.1: the official `openai`
// npm package against it, SSE framing, readiness as workers come and go, malformed input, and
// per-tenant limits.

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "governance/auth.hpp"
#include "tests/support/http.hpp"
#include "tests/support/local_cluster.hpp"
#include "tests/support/shared.hpp"

using shoal::test::http_raw;
using shoal::test::http_request;
using shoal::test::http_response;
using shoal::test::local_cluster;
using shoal::test::needs_shared;
using shoal::test::shared_path;
using json = nlohmann::json;

namespace {

const char* kStories = "models/stories260K/hf";
const char* kOpenaiVersion = "4.95.0";

// stories260K with a chat template (it ships none), so chat requests have something to render.
std::string chat_model(const shoal::test::temp_dir& dir) {
  namespace fs = std::filesystem;
  const std::string out = dir / "stories-chat";
  fs::create_directories(out);
  for (const auto& e : fs::directory_iterator(shared_path(kStories))) fs::copy(e.path(), out + "/" + e.path().filename().string());
  auto cfg = shoal::test::read_json(out + "/tokenizer_config.json");
  cfg["chat_template"] =
      "{{ bos_token }}{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
      "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}";
  std::ofstream(out + "/tokenizer_config.json", std::ios::trunc) << cfg.dump(2);
  return out;
}

// Two tenants with hashed keys: "alpha" limited to 3 requests a minute, "beta" unlimited.
std::string tenants_yaml() {
  return "auth:\n  required: true\n"
         "tenants:\n"
         "  - name: alpha\n    domain: public\n    limits:\n      requests_per_minute: 3\n"
         "    keys:\n      - id: alpha-1\n        sha256: " + shoal::governance::sha256_hex("key-alpha") + "\n"
         "  - name: beta\n    domain: business\n"
         "    keys:\n      - id: beta-1\n        role: service\n        sha256: " + shoal::governance::sha256_hex("key-beta") + "\n";
}

http_response post(int port, const std::string& path, const json& body, const std::string& key = "key-beta") {
  std::vector<std::string> headers;
  if (!key.empty()) headers.push_back("Authorization: Bearer " + key);
  return http_request("127.0.0.1", port, "POST", path, body.dump(), headers);
}

bool is_error_body(const std::string& body) {
  try {
    auto j = json::parse(body);
    return j.contains("error") && j["error"]["message"].is_string() && j["error"]["type"].is_string() &&
           !j["error"]["message"].get<std::string>().empty();
  } catch (...) {
    return false;
  }
}

void wait_until(const std::function<bool()>& ok, int timeout_s, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (!ok()) {
    BOOST_REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "timed out waiting for " << what);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(http)

// Boost.Test precondition: Node.js and npm are on PATH (tools/deps.sh does not install them).
struct needs_node {
  boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
    auto on_path = [](const std::string& exe) {
      const char* path = std::getenv("PATH");
      std::stringstream dirs(path ? path : "");
      for (std::string d; std::getline(dirs, d, ':');) {
        if (!d.empty() && ::access((d + "/" + exe).c_str(), X_OK) == 0) return true;
      }
      return false;
    };
    boost::test_tools::assertion_result r(on_path("node") && on_path("npm"));
    if (!r) r.message() << "Node.js and npm are not on PATH (the openai npm package needs them)";
    return r;
  }
};

BOOST_AUTO_TEST_CASE(openai_npm_package, *boost::unit_test::precondition(needs_shared{kStories}) *
                                             boost::unit_test::precondition(needs_node{})) {
  namespace fs = std::filesystem;
  // The package is installed once per build tree, pinned.
  const std::string npm_dir = std::string(SHOAL_BIN_DIR) + "/../test-npm/openai-" + kOpenaiVersion;
  if (!fs::exists(npm_dir + "/node_modules/openai/package.json")) {
    fs::create_directories(npm_dir);
    auto r = shoal::test::run_process({"npm", "install", "--no-audit", "--no-fund", "--prefix", npm_dir,
                                       std::string("openai@") + kOpenaiVersion},
                                      300);
    BOOST_REQUIRE_MESSAGE(r.status == 0, "npm could not install openai@" << kOpenaiVersion
                                                                          << " (is the npm registry reachable?): "
                                                                          << r.err);
  }
  fs::copy_file(std::string(SHOAL_SOURCE_DIR) + "/tests/cluster/openai_sdk.mjs", npm_dir + "/openai_sdk.mjs",
                fs::copy_options::overwrite_existing);

  shoal::test::temp_dir models;
  local_cluster cl(chat_model(models), {{"main", {"router", "gateway", "worker"}, 1}}, {{"r0", {"main"}}},
                   tenants_yaml());
  cl.wait_ready();
  auto r = shoal::test::run_process(
      {"node", npm_dir + "/openai_sdk.mjs", "http://127.0.0.1:" + std::to_string(cl.http_port()) + "/v1", "key-beta",
       "m"},
      120);
  BOOST_TEST_MESSAGE("openai_sdk.mjs:\n" << r.out << r.err);
  BOOST_TEST(r.status == 0, r.out << r.err);
  BOOST_TEST(r.out.find("ALL OK") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(sse_stream_is_well_formed, *boost::unit_test::precondition(needs_shared{kStories})) {
  shoal::test::temp_dir models;
  local_cluster cl(chat_model(models), {{"main", {"router", "gateway", "worker"}, 1}}, {{"r0", {"main"}}},
                   tenants_yaml());
  cl.wait_ready();
  for (const bool chat : {false, true}) {
    json body = {{"model", "m"}, {"max_tokens", 20}, {"temperature", 0}, {"ignore_eos", true}, {"stream", true},
                 {"stream_options", {{"include_usage", true}}}};
    if (chat) body["messages"] = {{{"role", "user"}, {"content", "Hello"}}};
    else body["prompt"] = "Once upon a time";
    auto r = post(cl.http_port(), chat ? "/v1/chat/completions" : "/v1/completions", body);
    BOOST_REQUIRE_EQUAL(r.status, 200);
    BOOST_TEST(r.headers.find("text/event-stream") != std::string::npos, r.headers);
    // Events: "data: <json>\n\n" ... "data: [DONE]\n\n", nothing else.
    std::vector<std::string> events;
    std::size_t pos = 0;
    while (pos < r.body.size()) {
      const auto end = r.body.find("\n\n", pos);
      BOOST_REQUIRE_MESSAGE(end != std::string::npos, "unterminated event at " << pos << ": " << r.body.substr(pos));
      events.push_back(r.body.substr(pos, end - pos));
      pos = end + 2;
    }
    BOOST_REQUIRE_GE(events.size(), 3u);
    BOOST_TEST(events.back() == "data: [DONE]");
    std::string text, finish;
    json usage;
    for (std::size_t i = 0; i + 1 < events.size(); ++i) {
      BOOST_REQUIRE_MESSAGE(events[i].rfind("data: ", 0) == 0, events[i]);
      auto j = json::parse(events[i].substr(6));
      BOOST_TEST(j["object"] == (chat ? "chat.completion.chunk" : "text_completion"));
      BOOST_TEST(j["id"] == json::parse(events[0].substr(6))["id"]);
      if (j.contains("usage")) usage = j["usage"];
      for (auto& c : j["choices"]) {
        text += chat ? c["delta"].value("content", "") : c["text"].get<std::string>();
        if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
      }
    }
    BOOST_TEST(!text.empty());
    BOOST_TEST(finish == "length");
    BOOST_TEST(usage["completion_tokens"] == 20);
    BOOST_TEST(usage["total_tokens"] == usage["prompt_tokens"].get<int>() + 20);
    // The same request without streaming gives the same greedy text and usage.
    body.erase("stream");
    body.erase("stream_options");
    auto whole = post(cl.http_port(), chat ? "/v1/chat/completions" : "/v1/completions", body);
    BOOST_REQUIRE_EQUAL(whole.status, 200);
    auto w = json::parse(whole.body);
    BOOST_TEST((chat ? w["choices"][0]["message"]["content"] : w["choices"][0]["text"]).get<std::string>() == text);
    BOOST_TEST(w["usage"] == usage);
  }
}

BOOST_AUTO_TEST_CASE(readiness_follows_the_worker, *boost::unit_test::precondition(needs_shared{kStories})) {
  // The 3-node shape: the worker is its own process, started late and then killed.
  local_cluster cl(shared_path(kStories), {{"front", {"router", "gateway"}, 1}, {"wa", {"worker"}, 1}},
                   {{"r0", {"wa"}}}, "", false);
  cl.wait_live(60);
  const int port = cl.http_port();
  auto not_ready = shoal::test::http_get("127.0.0.1", port, "/readyz");
  BOOST_TEST(not_ready.status == 503);
  BOOST_TEST(json::parse(not_ready.body)["reason"].is_string(), not_ready.body);
  BOOST_TEST_MESSAGE("before the worker: " << not_ready.body);

  cl.start_node("wa");
  wait_until([&] { return shoal::test::http_get("127.0.0.1", port, "/readyz").status == 200; }, 90,
             "/readyz to turn 200 once the model is loaded");
  auto ok = post(port, "/v1/completions", {{"prompt", "Once"}, {"max_tokens", 4}}, "");
  BOOST_TEST(ok.status == 200, ok.body);

  cl.kill_node("wa");
  const auto t_kill = std::chrono::steady_clock::now();
  wait_until([&] { return shoal::test::http_get("127.0.0.1", port, "/readyz").status == 503; }, 20,
             "/readyz to turn 503 after the worker died");
  const auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_kill).count();
  BOOST_TEST_MESSAGE("/readyz turned 503 " << took << " s after the kill: "
                                           << shoal::test::http_get("127.0.0.1", port, "/readyz").body);
  BOOST_TEST(took < 10.0, "readiness took " << took << " s to notice the dead worker");
  BOOST_TEST(shoal::test::http_get("127.0.0.1", port, "/livez").status == 200);
  // The RPC health call says the same.
  shoal::client::client c("127.0.0.1", cl.rpc_port());
  BOOST_TEST(!c.health().ready);
  // A request now is refused as unavailable (503), not left hanging.
  auto refused = post(port, "/v1/completions", {{"prompt", "Once"}, {"max_tokens", 4}}, "");
  BOOST_TEST(refused.status == 503, refused.body);
  BOOST_TEST(is_error_body(refused.body), refused.body);
}

BOOST_AUTO_TEST_CASE(malformed_requests_get_json_4xx, *boost::unit_test::precondition(needs_shared{kStories})) {
  shoal::test::temp_dir models;
  local_cluster cl(chat_model(models), {{"main", {"router", "gateway", "worker"}, 1}}, {{"r0", {"main"}}},
                   tenants_yaml());
  cl.wait_ready();
  const int port = cl.http_port();
  const std::string auth = "Authorization: Bearer key-beta";
  auto raw_post = [&](const std::string& path, const std::string& body) {
    return "POST " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  };
  std::vector<std::string> bodies = {
      "", "{", "nope", "{\"prompt\": }", "{\"prompt\": \"x\"} trailing", "[]", "\"str\"", "3", "null",
      "{\"prompt\": 5}", "{\"prompt\": []}", "{\"prompt\": [1, \"a\"]}", "{\"prompt\": [-1]}",
      "{\"prompt\": \"x\", \"max_tokens\": \"10\"}", "{\"prompt\": \"x\", \"max_tokens\": -1}",
      "{\"prompt\": \"x\", \"max_tokens\": -100000}", "{\"prompt\": \"x\", \"max_tokens\": 1.5}",
      "{\"prompt\": \"x\", \"max_tokens\": 0}", "{\"prompt\": \"x\", \"temperature\": \"hot\"}",
      "{\"prompt\": \"x\", \"temperature\": 5}", "{\"prompt\": \"x\", \"top_p\": []}", "{\"prompt\": \"x\", \"top_p\": 0}",
      "{\"prompt\": \"x\", \"stream\": \"yes\"}", "{\"prompt\": \"x\", \"n\": 0}", "{\"prompt\": \"x\", \"n\": 1000}",
      "{\"prompt\": \"x\", \"n\": \"2\"}", "{\"prompt\": \"x\", \"stop\": 7}", "{\"prompt\": \"x\", \"stop\": [\"\"]}",
      "{\"prompt\": \"x\", \"seed\": \"s\"}", "{\"prompt\": \"x\", \"logprobs\": 2}", "{\"prompt\": \"x\", \"echo\": true}",
      "{\"prompt\": \"x\", \"model\": 3}", "{\"prompt\": \"x\", \"model\": \"nonexistent\"}",
      "{\"prompt\": \"x\", \"unknown_field\": 1, \"max_tokens\": -5}", "{\"prompt\": \"\xff\xfe\"}",
      "{\"prompt\": \"ok\", \"stop\": \"\xc3\x28\"}", "{\"\xff\": 1}", "{\"prompt\": \"x\", \"priority\": 1e300}",
      "{\"prompt\": \"x\", \"stream_options\": 1}", "{\"prompt\": \"x\", \"max_tokens\": 99999999999999999999999}",
      std::string(100000, '[') + std::string(100000, ']'),
  };
  std::vector<std::string> chat_bodies = {
      "{}", "{\"messages\": \"hi\"}", "{\"messages\": []}", "{\"messages\": [1]}", "{\"messages\": [{}]}",
      "{\"messages\": [{\"role\": 5, \"content\": \"x\"}]}", "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}",
      "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
      "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": -1}",
      "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": true}",
      "{\"messages\": [{\"role\": \"user\", \"content\": \"\xed\xa0\x80\"}]}",
  };
  int sent = 0, bad = 0;
  std::string first_bad;
  auto check = [&](const http_response& r, const std::string& what) {
    ++sent;
    if (r.status < 400 || r.status > 499 || !is_error_body(r.body)) {
      if (bad++ == 0) first_bad = what + " -> " + std::to_string(r.status) + " " + r.body;
    }
  };
  for (int round = 0; sent < 1000; ++round) {
    for (const auto& b : bodies) check(http_raw("127.0.0.1", port, raw_post("/v1/completions", b)), b.substr(0, 80));
    for (const auto& b : chat_bodies) check(http_raw("127.0.0.1", port, raw_post("/v1/chat/completions", b)), b);
    // Too large: a declared length over the limit is refused before the body is read (so the
    // client sends only its start), and a chunked body is cut off where it passes the limit (a
    // little past it is sent: the server discards up to 64 KiB after answering, then closes cleanly).
    if (round % 10 == 0) {
      const std::string declared = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth +
                                   "\r\nContent-Type: application/json\r\nContent-Length: " +
                                   std::to_string(5 << 20) + "\r\n\r\n{\"prompt\": \"" + std::string(1000, 'a');
      auto r = http_raw("127.0.0.1", port, declared);
      check(r, "Content-Length of 5 MiB");
      BOOST_TEST(r.status == 413);
      std::string chunked = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth +
                            "\r\nTransfer-Encoding: chunked\r\n\r\n";
      for (int k = 0; k < 4; ++k) chunked += "100000\r\n" + std::string(0x100000, 'a') + "\r\n";
      chunked += "4000\r\n" + std::string(0x4000, 'a') + "\r\n";
      r = http_raw("127.0.0.1", port, chunked);
      check(r, "4 MiB + 16 KiB chunked body");
      BOOST_TEST(r.status == 413);
      // Not HTTP at all, and a path that does not exist.
      check(http_raw("127.0.0.1", port, "GARBAGE\r\n\r\n"), "garbage request line");
      check(http_request("127.0.0.1", port, "GET", "/v1/nothing"), "unknown path");
      check(http_request("127.0.0.1", port, "GET", "/v1/completions"), "wrong method");
    }
  }
  // Requests that only the replica can refuse (a token id outside the vocabulary, more tokens than
  // the context holds), more of them than its queue is long: refused one by one, they must not
  // leave the router thinking the queue is full.
  for (int i = 0; i < 300; ++i) {
    check(http_raw("127.0.0.1", port, raw_post("/v1/completions", i % 2 ? "{\"prompt\": [1, 99999]}"
                                                                        : "{\"prompt\": \"x\", \"max_tokens\": 100000}")),
          "refused by the replica");
  }
  BOOST_TEST_MESSAGE(sent << " malformed requests sent");
  BOOST_TEST(bad == 0, bad << " of " << sent << " malformed requests were not answered 4xx with a JSON error; first: "
                           << first_bad);
  // Unknown fields alone are ignored (as vLLM does), so this one succeeds.
  auto unknown = post(port, "/v1/completions", {{"prompt", "Once"}, {"max_tokens", 2}, {"frobnicate", true}});
  BOOST_TEST(unknown.status == 200, unknown.body);
  // And the server still serves real requests.
  auto ok = post(port, "/v1/chat/completions",
                 {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 8}, {"n", 2}, {"seed", 7}});
  BOOST_REQUIRE_EQUAL(ok.status, 200);
  auto j = json::parse(ok.body);
  BOOST_TEST(j["choices"].size() == 2u);
  BOOST_TEST(j["usage"]["completion_tokens"].get<int>() > 0);
}

BOOST_AUTO_TEST_CASE(tenant_over_its_limit_gets_429, *boost::unit_test::precondition(needs_shared{kStories})) {
  shoal::test::temp_dir models;
  local_cluster cl(chat_model(models), {{"main", {"router", "gateway", "worker"}, 1}}, {{"r0", {"main"}}},
                   tenants_yaml());
  cl.wait_ready();
  const int port = cl.http_port();
  const json req = {{"prompt", "Once upon a time"}, {"max_tokens", 4}};
  for (int i = 0; i < 3; ++i) {
    auto r = post(port, "/v1/completions", req, "key-alpha");
    BOOST_TEST(r.status == 200, r.body);
  }
  auto over = post(port, "/v1/completions", req, "key-alpha");
  BOOST_TEST(over.status == 429, over.body);
  BOOST_TEST(is_error_body(over.body));
  BOOST_TEST(json::parse(over.body)["error"]["type"] == "rate_limit_error");
  // The other tenant is unaffected.
  for (int i = 0; i < 5; ++i) {
    auto r = post(port, "/v1/completions", req, "key-beta");
    BOOST_TEST(r.status == 200, r.body);
  }
  BOOST_TEST(post(port, "/v1/completions", req, "key-alpha").status == 429);
  // Keys are the router's business: unknown and missing keys are 401 (auth is required here).
  auto unknown = post(port, "/v1/completions", req, "key-gamma");
  BOOST_TEST(unknown.status == 401, unknown.body);
  BOOST_TEST(json::parse(unknown.body)["error"]["code"] == "invalid_api_key");
  BOOST_TEST(post(port, "/v1/completions", req, "").status == 401);
  auto models_list = shoal::test::http_get("127.0.0.1", port, "/v1/models");
  BOOST_TEST(models_list.status == 200);
  BOOST_TEST(json::parse(models_list.body)["data"][0]["id"] == "m");
}

// A client that goes away mid-generation cancels it: the generation ends as cancelled, not at its
// 1,500th token. A streamed one with a plain close (noticed at the next token write); a
// non-streamed one, which writes nothing until the end, when its connection is reset (a plain
// close looks the same as a client half-closing after its request, which still wants the answer).
void check_disconnect_cancels(bool streamed) {
  // A ~26M-parameter random model: 1,500 tokens take seconds, so the generation is surely running
  // when the client goes away.
  shoal::test::temp_dir models;
  auto made = shoal::test::run_shoal({"make-model", "--shape", "small", "--dtype", "bf16", "--out", models / "small"});
  BOOST_REQUIRE_MESSAGE(made.status == 0, made.err);
  local_cluster cl(models / "small", {{"main", {"router", "gateway", "worker"}, 1}}, {{"r0", {"main"}}});
  cl.wait_ready(90);
  const int port = cl.http_port();
  auto metrics = [&] { return shoal::test::http_get("127.0.0.1", cl.metrics_port("main"), "/metrics").body; };
  {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    BOOST_REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    const std::string body = std::string(R"({"prompt": "Once", "max_tokens": 1500, "ignore_eos": true, "stream": )") +
                             (streamed ? "true" : "false") + "}";
    const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                            std::to_string(body.size()) + "\r\n\r\n" + body;
    BOOST_REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()));
    if (streamed) {
      // Read until the first token event, then hang up.
      std::string got;
      char buf[4096];
      while (got.find("\"text\"") == std::string::npos) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        BOOST_REQUIRE_MESSAGE(n > 0, "the stream ended before its first token: " << got);
        got.append(buf, static_cast<std::size_t>(n));
      }
    } else {
      // Nothing comes back before the end: reset the connection once the replica produces tokens.
      wait_until([&] { return shoal::test::metric_value(metrics(), "shoal:generation_tokens_total") > 0; }, 60,
                 "the generation to start");
      linger reset{1, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    }
    ::close(fd);
  }
  wait_until([&] { return shoal::test::metric_value(metrics(), "shoal:request_success_total{finished_reason=\"cancelled\"") >= 1; }, 60,
             "the generation to end as cancelled");
  BOOST_TEST(metrics().find("finished_reason=\"length\"") == std::string::npos, "the generation ran to its end");
}

BOOST_AUTO_TEST_CASE(client_disconnect_cancels_the_stream) { check_disconnect_cancels(true); }

BOOST_AUTO_TEST_CASE(client_reset_cancels_a_whole_answer) { check_disconnect_cancels(false); }

// DeepSeek-V3's chat template through both doors: each reference rendering in
// ../shared/tokenizers/deepseek-v3 (system prompts, Chinese, a tool call and its output) sent as
// messages to RPC `chat` (messagesJson) and to /v1/chat/completions gives the reference prompt
// length, and the same greedy continuation as generating from the reference ids directly.
BOOST_AUTO_TEST_CASE(deepseek_chat_through_rpc_and_http,
                     *boost::unit_test::precondition(needs_shared{"models/deepseek-v3-tiny/hf"}) *
                         boost::unit_test::precondition(needs_shared{"tokenizers/deepseek-v3/chat_template_golden.json"})) {
  local_cluster cl(shared_path("models/deepseek-v3-tiny/hf"), {{"main", {"router", "gateway", "worker"}, 1}},
                   {{"r0", {"main"}}});
  cl.wait_ready();
  auto golden = shoal::test::read_json(shared_path("tokenizers/deepseek-v3/chat_template_golden.json"));
  shoal::client::client c("127.0.0.1", cl.rpc_port());
  int checked = 0;
  for (const auto& cs : golden["cases"]) {
    if (!cs["add_generation_prompt"].get<bool>()) continue;
    const auto want_ids = cs["expected_ids"].get<std::vector<std::int32_t>>();
    BOOST_TEST_CONTEXT("case " << cs["name"].get<std::string>()) {
      shoal::client::generate_params direct;
      direct.prompt_ids = want_ids;
      direct.sampling.temperature = 0;
      direct.max_tokens = 8;
      direct.ignore_eos = true;
      std::vector<std::int32_t> want_gen;
      std::string want_text;
      c.generate(direct, [&](const shoal::client::chunk& ch) {
        want_gen.insert(want_gen.end(), ch.ids.begin(), ch.ids.end());
        want_text += ch.text;
        return true;
      });
      BOOST_REQUIRE_EQUAL(want_gen.size(), 8u);

      shoal::client::chat_params chat;
      chat.messages_json = cs["messages"].dump();
      chat.generation = direct;
      chat.generation.prompt_ids.clear();
      std::vector<std::int32_t> got;
      auto sum = c.chat(chat, [&](const shoal::client::chunk& ch) {
        got.insert(got.end(), ch.ids.begin(), ch.ids.end());
        return true;
      });
      BOOST_TEST(sum.prompt_tokens == static_cast<std::int32_t>(want_ids.size()));
      BOOST_TEST(got == want_gen, boost::test_tools::per_element());

      json body = {{"model", "m"}, {"messages", cs["messages"]}, {"max_tokens", 8}, {"temperature", 0},
                   {"ignore_eos", true}};
      auto r = post(cl.http_port(), "/v1/chat/completions", body, "");
      BOOST_REQUIRE_MESSAGE(r.status == 200, r.status << " " << r.body);
      auto j = json::parse(r.body);
      BOOST_TEST(j["usage"]["prompt_tokens"].get<std::int32_t>() == static_cast<std::int32_t>(want_ids.size()));
      BOOST_TEST(j["usage"]["completion_tokens"].get<std::int32_t>() == 8);
      BOOST_TEST(j["choices"][0]["message"]["content"].get<std::string>() == want_text);
    }
    ++checked;
  }
  BOOST_TEST(checked >= 3);
}

BOOST_AUTO_TEST_SUITE_END()
