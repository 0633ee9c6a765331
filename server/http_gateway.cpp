// GCC 12 reports kj's ExceptionOr<T> (a Maybe<T> beside an exception) as maybe-uninitialized
// when T holds strings; a false positive in kj's headers, not in this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "server/http_gateway.hpp"
#include "telemetry/log.hpp"

#include <arpa/inet.h>
#include <kj/compat/http.h>
#include <kj/debug.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

#include "actors/gateway.hpp"
#include "engine/common/error.hpp"

namespace shoal::actors {

std::string peer_address(kj::AsyncIoStream& s) {
  sockaddr_storage addr{};
  kj::uint len = sizeof addr;
  try {
    s.getpeername(reinterpret_cast<sockaddr*>(&addr), &len);
  } catch (...) {
    return "";
  }
  char host[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  return "";
}

namespace {

using json = nlohmann::ordered_json;

// ---- errors

/// A request the gateway answers with an error body instead of a generation.
struct http_error {
  unsigned status = 400;
  std::string type;     // OpenAI's error.type
  std::string code;     // OpenAI's error.code
  std::string message;
  std::string param;    // the request field at fault, when one is
};

const char* status_text(unsigned status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

// The router's refusal (an errc name) as an HTTP error, the way OpenAI's API says the same thing.
http_error from_errc(const std::string& code, const std::string& message) {
  http_error e;
  e.message = message;
  e.code = code;
  if (code == "invalid_argument" || code == "out_of_range" || code == "unsupported") {
    e.status = 400;
    e.type = "invalid_request_error";
  } else if (code == "unauthenticated") {
    e.status = 401;
    e.type = "authentication_error";
    e.code = "invalid_api_key";
  } else if (code == "forbidden") {
    e.status = 403;
    e.type = "permission_error";
  } else if (code == "not_found") {
    e.status = 404;
    e.type = "invalid_request_error";
    e.code = "model_not_found";
  } else if (code == "rate_limited") {
    e.status = 429;
    e.type = "rate_limit_error";
    e.code = "rate_limit_exceeded";
  } else if (code == "overloaded" || code == "unavailable") {
    e.status = 503;
    e.type = "service_unavailable";
  } else {
    e.status = 500;
    e.type = "server_error";
  }
  return e;
}

http_error bad_request(const std::string& message, const std::string& param = "",
                       const std::string& code = "invalid_value") {
  return http_error{400, "invalid_request_error", code, message, param};
}

json error_body(const http_error& e) {
  json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", e.code}};
  if (!e.param.empty()) err["param"] = e.param;
  return json{{"error", err}};
}

std::string dump(const json& j) {
  // Generated text is valid UTF-8 (the engine replaces invalid bytes); replace keeps any slip from
  // becoming an exception in the middle of a response.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// ---- request fields

// Nesting deeper than this is refused before parsing: a body of 4 MiB of '[' would otherwise make a
// tree whose destruction recurses that deep.
constexpr int kMaxJsonDepth = 64;

bool too_deep(const std::string& s) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

// A field of the request body, or null when absent or JSON null (OpenAI treats both as "default").
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::int64_t get_int(const json& body, const char* name, std::int64_t fallback, std::int64_t lo, std::int64_t hi) {
  const auto* v = field(body, name);
  if (!v) return fallback;
  std::int64_t x = 0;
  if (v->is_number_integer()) x = v->get<std::int64_t>();
  else if (v->is_number_unsigned()) {
    auto u = v->get<std::uint64_t>();
    x = u > static_cast<std::uint64_t>(hi) ? hi + (hi < std::numeric_limits<std::int64_t>::max() ? 1 : 0)
                                           : static_cast<std::int64_t>(u);
  } else {
    throw bad_request(std::string("'") + name + "' must be an integer", name, "invalid_type");
  }
  if (x < lo || x > hi) {
    throw bad_request(std::string("'") + name + "' must be between " + std::to_string(lo) + " and " +
                          std::to_string(hi) + ", got " + v->dump(),
                      name);
  }
  return x;
}

double get_number(const json& body, const char* name, double fallback, double lo, double hi) {
  const auto* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number()) throw bad_request(std::string("'") + name + "' must be a number", name, "invalid_type");
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    throw bad_request(std::string("'") + name + "' must be between " + json(lo).dump() + " and " +
                          json(hi).dump() + ", got " + v->dump(),
                      name);
  }
  return x;
}

bool get_bool(const json& body, const char* name, bool fallback) {
  const auto* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) throw bad_request(std::string("'") + name + "' must be true or false", name, "invalid_type");
  return v->get<bool>();
}

std::string get_string(const json& body, const char* name, const std::string& fallback) {
  const auto* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_string()) throw bad_request(std::string("'") + name + "' must be a string", name, "invalid_type");
  return v->get<std::string>();
}

[[noreturn]] void unsupported(const std::string& what, const std::string& param) {
  throw http_error{400, "invalid_request_error", "unsupported", what + " is not supported by this server", param};
}

// ---- one HTTP generation request (one or more choices)

struct job {
  bool chat = false;
  bool stream = false;
  bool include_usage = false;
  std::string id;       // the response id (cmpl-... / chatcmpl-...)
  std::string model;    // as served
  std::int64_t created = 0;
  std::int64_t n = 1;                      // choices per prompt
  std::vector<generate_request> requests;  // one per choice, in choice order
  std::vector<std::uint64_t> keys;
  std::vector<std::string> texts;
  std::vector<generation_summary> summaries;
  std::vector<bool> started;               // stream: the choice's first chunk went out
};

/// What finish_reason OpenAI clients expect: stop (a stop string or EOS) or length.
std::string openai_finish(const std::string& reason) {
  if (reason == "stop" || reason == "eos") return "stop";
  if (reason == "length") return "length";
  return reason;
}

// Serialises writes to one response stream: choices stream concurrently, a kj stream takes one
// write at a time. A failed write (the client went away) fails every later one.
class sse_writer {
 public:
  explicit sse_writer(kj::Own<kj::AsyncOutputStream> out) : out_(kj::mv(out)) {}

  kj::Promise<void> write(const std::string& s) {
    auto bytes = kj::heapString(s.data(), s.size());
    auto forked = tail_
                      .then([this, bytes = kj::mv(bytes)]() mutable {
                        auto p = out_->write(bytes.begin(), bytes.size());
                        return p.attach(kj::mv(bytes));
                      })
                      .fork();
    tail_ = forked.addBranch();
    return forked.addBranch();
  }

  static std::string event(const json& j) { return "data: " + dump(j) + "\n\n"; }

 private:
  kj::Own<kj::AsyncOutputStream> out_;
  kj::Promise<void> tail_ = kj::READY_NOW;
};

class openai_service final : public kj::HttpService {
 public:
  openai_service(front_door& door, const kj::HttpHeaderTable& table, kj::HttpHeaderId authorization,
                 kj::AsyncIoStream& connection)
      : door_(door),
        table_(table),
        authorization_(authorization),
        connection_(connection),
        peer_(peer_address(connection)) {}

  kj::Promise<void> request(kj::HttpMethod method, kj::StringPtr url, const kj::HttpHeaders& headers,
                            kj::AsyncInputStream& body, Response& response) override {
    std::string path(url.cStr());
    path = path.substr(0, path.find('?'));
    try {
      if (path == "/livez") {
        if (method != kj::HttpMethod::GET && method != kj::HttpMethod::HEAD) throw not_allowed("GET");
        // Answered by this loop alone: it shows the process and its event loop are alive.
        return send_json(response, 200, json{{"status", "alive"}});
      }
      if (path == "/readyz") {
        if (method != kj::HttpMethod::GET && method != kj::HttpMethod::HEAD) throw not_allowed("GET");
        return readyz(response);
      }
      if (path == "/v1/models") {
        if (method != kj::HttpMethod::GET) throw not_allowed("GET");
        return models(response);
      }
      const bool completions = path == "/v1/completions";
      const bool chat = path == "/v1/chat/completions";
      if (!completions && !chat) {
        throw http_error{404, "invalid_request_error", "not_found",
                         "no such endpoint: " + path +
                             " (served: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, "
                             "GET /livez, GET /readyz)",
                         ""};
      }
      if (method != kj::HttpMethod::POST) throw not_allowed("POST");
      const auto limit = static_cast<std::uint64_t>(door_.options().max_body_bytes);
      KJ_IF_MAYBE (length, headers.get(kj::HttpHeaderId::CONTENT_LENGTH)) {
        char* end = nullptr;
        const auto n = std::strtoull(length->cStr(), &end, 10);
        if (n > limit) throw too_large(n);
      }
      std::string key;
      KJ_IF_MAYBE (auth, headers.get(authorization_)) {
        std::string h(auth->cStr());
        if (h.size() < 7 || strncasecmp(h.c_str(), "Bearer ", 7) != 0) {
          throw http_error{401, "authentication_error", "invalid_api_key",
                           "the Authorization header must be 'Bearer YOUR_API_KEY'", ""};
        }
        key = h.substr(7);
        while (!key.empty() && key.front() == ' ') key.erase(key.begin());
      }
      // Read one byte past the limit: a chunked body that long is refused like a long one.
      return body.readAllText(limit + 1)
          .then(
              [this, &response, chat, limit, key](kj::String text) -> kj::Promise<void> {
                try {
                  if (text.size() > limit) throw too_large(text.size());
                  return generate(response, parse(std::string(text.cStr(), text.size()), chat, key));
                } catch (const http_error& e) {
                  return send_error(response, e);
                }
              },
              [this, &response, limit](kj::Exception&&) -> kj::Promise<void> {
                return send_error(response, too_large(limit + 1));
              });
    } catch (const http_error& e) {
      return send_error(response, e);
    } catch (const std::exception& e) {
      return send_error(response, http_error{500, "server_error", "internal", e.what(), ""});
    }
  }

 private:
  static http_error not_allowed(const char* allowed) {
    return http_error{405, "invalid_request_error", "method_not_allowed",
                      std::string("this endpoint answers ") + allowed + " only", ""};
  }

  http_error too_large(std::uint64_t bytes) const {
    return http_error{413, "invalid_request_error", "request_too_large",
                      "the request body is " + (bytes > static_cast<std::uint64_t>(door_.options().max_body_bytes)
                                                    ? "over " + std::to_string(door_.options().max_body_bytes)
                                                    : std::to_string(bytes)) +
                          " bytes; this server accepts at most " + std::to_string(door_.options().max_body_bytes),
                      ""};
  }

  kj::Promise<void> send_json(Response& response, unsigned status, const json& body) {
    kj::HttpHeaders headers(table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, "application/json");
    auto text = dump(body) + "\n";
    // A kj::String keeps its bytes in place when moved into attach(), unlike a short std::string.
    auto bytes = kj::heapString(text.data(), text.size());
    auto stream = response.send(status, status_text(status), headers, bytes.size());
    auto write = stream->write(bytes.begin(), bytes.size());
    return write.attach(kj::mv(stream), kj::mv(bytes));
  }

  kj::Promise<void> send_error(Response& response, const http_error& e) {
    return send_json(response, e.status, error_body(e));
  }

  kj::Promise<void> readyz(Response& response) {
    return door_.status().then([this, &response](outcome<cluster_status> o) {
      if (!o.value) {
        return send_json(response, 503, json{{"status", "not ready"}, {"reason", "router: " + o.message}});
      }
      // The same verdict as the RPC health call: the router's (a healthy replica with KV room).
      const auto& st = *o.value;
      json replicas = json::array();
      for (const auto& r : st.replicas) {
        replicas.push_back({{"name", r.name},
                            {"model", r.model},
                            {"healthy", r.healthy},
                            {"detail", r.detail},
                            {"kv_usage", r.kv_usage},
                            {"waiting", r.waiting},
                            {"running", r.running}});
      }
      json body = {{"status", st.ready ? "ready" : "not ready"}, {"reason", st.detail}, {"replicas", replicas}};
      return send_json(response, st.ready ? 200 : 503, body);
    });
  }

  kj::Promise<void> models(Response& response) {
    return door_.status().then([this, &response](outcome<cluster_status> o) {
      if (!o.value) return send_error(response, from_errc("unavailable", "the router did not answer: " + o.message));
      json data = json::array();
      for (const auto& name : o.value->models) {
        std::int32_t ctx_len = 0, healthy = 0;
        for (const auto& r : o.value->replicas) {
          if (r.model != name) continue;
          if (r.healthy) ++healthy;
          ctx_len = std::max(ctx_len, r.context_length);
        }
        data.push_back({{"id", name},
                        {"object", "model"},
                        {"created", 0},
                        {"owned_by", "shoal"},
                        {"context_length", ctx_len},
                        {"healthy_replicas", healthy}});
      }
      return send_json(response, 200, json{{"object", "list"}, {"data", data}});
    });
  }

  // ---- parsing a generation request

  kj::Own<job> parse(const std::string& text, bool chat, const std::string& key) {
    if (too_deep(text)) {
      throw bad_request("the JSON body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels", "",
                        "invalid_json");
    }
    json body;
    try {
      body = json::parse(text);
    } catch (const json::exception& e) {
      throw bad_request(std::string("the body is not valid JSON: ") + e.what(), "", "invalid_json");
    }
    if (!body.is_object()) throw bad_request("the body must be a JSON object", "", "invalid_json");
    // Unknown fields are ignored, as vLLM does (OpenAI's own API refuses them); known ones are checked.
    const auto& o = door_.options();
    auto j = kj::heap<job>();
    j->chat = chat;
    const std::string requested = get_string(body, "model", "");
    auto served = door_.served_name(requested);
    if (!served) {
      throw http_error{404, "invalid_request_error", "model_not_found",
                       "the model '" + requested + "' does not exist", "model"};
    }
    j->model = *served;
    j->stream = get_bool(body, "stream", false);
    if (const auto* so = field(body, "stream_options")) {
      if (!so->is_object()) throw bad_request("'stream_options' must be an object", "stream_options", "invalid_type");
      j->include_usage = get_bool(*so, "include_usage", false);
    }

    generate_request base;
    base.model = requested;
    base.api_key = key;
    base.client_address = peer_;
    base.api_method = chat ? "http.chat.completions" : "http.completions";
    auto& s = base.sampling;
    s.temperature = static_cast<float>(get_number(body, "temperature", 1.0, 0.0, 2.0));
    s.top_p = static_cast<float>(get_number(body, "top_p", 1.0, 0.0, 1.0));
    if (s.top_p <= 0.0f) throw bad_request("'top_p' must be above 0", "top_p");
    s.presence_penalty = static_cast<float>(get_number(body, "presence_penalty", 0.0, -2.0, 2.0));
    s.frequency_penalty = static_cast<float>(get_number(body, "frequency_penalty", 0.0, -2.0, 2.0));
    // vLLM's extensions, same names.
    s.top_k = static_cast<std::int32_t>(get_int(body, "top_k", 0, -1, 1 << 20));
    if (s.top_k < 0) s.top_k = 0;
    s.min_p = static_cast<float>(get_number(body, "min_p", 0.0, 0.0, 1.0));
    s.repetition_penalty = static_cast<float>(get_number(body, "repetition_penalty", 1.0, 0.01, 100.0));
    if (field(body, "seed")) {
      s.seed = static_cast<std::uint64_t>(
          get_int(body, "seed", 0, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()));
    }
    base.ignore_eos = get_bool(body, "ignore_eos", false);
    base.priority = static_cast<std::int32_t>(get_int(body, "priority", 0, -1000, 1000));
    const std::int64_t max_tokens_cap = 1 << 20;
    const char* max_name = chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    base.max_tokens = static_cast<std::int32_t>(get_int(body, max_name, chat ? 256 : 16, 1, max_tokens_cap));
    if (const auto* stop = field(body, "stop")) {
      if (stop->is_string()) {
        base.stop.push_back(stop->get<std::string>());
      } else if (stop->is_array()) {
        for (const auto& x : *stop) {
          if (!x.is_string()) throw bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type");
          base.stop.push_back(x.get<std::string>());
        }
      } else {
        throw bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type");
      }
      if (base.stop.size() > 16) throw bad_request("'stop' takes at most 16 strings", "stop");
      for (const auto& x : base.stop) {
        if (x.empty()) throw bad_request("'stop' strings must not be empty", "stop");
      }
    }
    const auto n = get_int(body, "n", 1, 1, o.max_n);
    j->n = n;
    if (field(body, "logit_bias") && !(*field(body, "logit_bias")).empty()) unsupported("'logit_bias'", "logit_bias");

    std::vector<generate_request> prompts;
    if (chat) {
      if (get_bool(body, "logprobs", false)) unsupported("'logprobs'", "logprobs");
      if (const auto* rf = field(body, "response_format")) {
        if (!rf->is_object() || get_string(*rf, "type", "text") != "text") {
          unsupported("'response_format' other than text", "response_format");
        }
      }
      generate_request r = base;
      r.prompt = render(body, r.model);
      r.add_special = false;  // the template writes BOS itself
      r.parse_special = true;
      prompts.push_back(std::move(r));
    } else {
      if (field(body, "logprobs")) unsupported("'logprobs'", "logprobs");
      if (get_bool(body, "echo", false)) unsupported("'echo'", "echo");
      if (field(body, "suffix")) unsupported("'suffix'", "suffix");
      if (get_int(body, "best_of", n, 1, o.max_n) != n) unsupported("'best_of' other than n", "best_of");
      for (auto& p : completion_prompts(body)) {
        generate_request r = base;
        if (p.is_string()) r.prompt = p.get<std::string>();
        else r.prompt_ids = p.get<std::vector<std::int32_t>>();
        prompts.push_back(std::move(r));
      }
    }
    if (static_cast<std::int64_t>(prompts.size()) * n > o.max_n) {
      throw bad_request("prompts x n is " + std::to_string(static_cast<std::int64_t>(prompts.size()) * n) +
                            "; this server runs at most " + std::to_string(o.max_n) + " choices per request",
                        "n");
    }
    for (auto& p : prompts) {
      if (p.prompt.size() > static_cast<std::size_t>(o.max_prompt_bytes)) {
        throw bad_request("the prompt is " + std::to_string(p.prompt.size()) + " bytes; this server accepts at most " +
                              std::to_string(o.max_prompt_bytes),
                          chat ? "messages" : "prompt");
      }
      for (std::int64_t i = 0; i < n; ++i) {
        generate_request r = p;
        // Different choices of one seeded request differ, and stay reproducible.
        if (r.sampling.seed) *r.sampling.seed += static_cast<std::uint64_t>(i);
        j->requests.push_back(std::move(r));
      }
    }
    return j;
  }

  // The completions `prompt`: a string, a list of strings, a list of token ids, or a list of those.
  static std::vector<json> completion_prompts(const json& body) {
    const auto* p = field(body, "prompt");
    if (!p) throw bad_request("'prompt' is required", "prompt", "missing_required_parameter");
    auto is_ids = [](const json& a) {
      if (!a.is_array() || a.empty()) return false;
      for (const auto& x : a) {
        if (!x.is_number_integer() && !x.is_number_unsigned()) return false;
        const auto v = x.get<std::int64_t>();
        if (v < 0 || v > std::numeric_limits<std::int32_t>::max()) return false;
      }
      return true;
    };
    const char* shape = "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists";
    if (p->is_string()) return {*p};
    if (!p->is_array() || p->empty()) throw bad_request(shape, "prompt", "invalid_type");
    if (is_ids(*p)) return {*p};
    std::vector<json> out;
    for (const auto& x : *p) {
      if (!x.is_string() && !is_ids(x)) throw bad_request(shape, "prompt", "invalid_type");
      out.push_back(x);
    }
    return out;
  }

  // Chat messages as the template expects them: content as text (a list of text parts is joined).
  // An assistant message that calls tools keeps content null (OpenAI sends null or omits it), as
  // templates test for it (DeepSeek-V3's renders tool calls only when content is none).
  std::string render(const json& body, const std::string& model) {
    const auto* msgs = field(body, "messages");
    if (!msgs) throw bad_request("'messages' is required", "messages", "missing_required_parameter");
    if (!msgs->is_array() || msgs->empty()) {
      throw bad_request("'messages' must be a non-empty list of messages", "messages", "invalid_type");
    }
    json messages = json::array();
    for (const auto& m : *msgs) {
      if (!m.is_object()) throw bad_request("every message must be an object", "messages", "invalid_type");
      json out = m;
      const auto* role = field(m, "role");
      if (!role || !role->is_string()) throw bad_request("every message needs a string 'role'", "messages", "invalid_type");
      const auto* content = field(m, "content");
      if (!content) {
        const auto* calls = field(m, "tool_calls");
        out["content"] = calls && calls->is_array() && !calls->empty() ? json(nullptr) : json("");
      } else if (content->is_array()) {
        std::string joined;
        for (const auto& part : *content) {
          if (!part.is_object() || get_string(part, "type", "") != "text" || !field(part, "text") ||
              !part["text"].is_string()) {
            throw http_error{400, "invalid_request_error", "unsupported",
                             "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                             "messages"};
          }
          joined += part["text"].get<std::string>();
        }
        out["content"] = joined;
      } else if (!content->is_string()) {
        throw bad_request("a message's 'content' must be a string or a list of text parts", "messages", "invalid_type");
      }
      messages.push_back(std::move(out));
    }
    json tools = nullptr;
    if (const auto* t = field(body, "tools")) {
      if (!t->is_array()) throw bad_request("'tools' must be a list", "tools", "invalid_type");
      tools = *t;
    }
    const bool add_generation_prompt = get_bool(body, "add_generation_prompt", true);
    try {
      return door_.render_chat(model, messages, tools, add_generation_prompt);
    } catch (const error& e) {
      auto h = from_errc(to_string(e.code()), e.what());
      h.param = "messages";
      throw h;
    } catch (const json::exception& e) {
      throw bad_request(std::string("the chat template failed on these messages: ") + e.what(), "messages");
    }
  }

  // ---- running it

  kj::Promise<void> generate(Response& response, kj::Own<job> owned) {
    auto& j = *owned;
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(rng()));
    j.id = std::string(j.chat ? "chatcmpl-" : "cmpl-") + hex;
    j.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                    .count();
    const auto count = j.requests.size();
    j.texts.resize(count);
    j.summaries.resize(count);
    j.started.assign(count, false);
    kj::Vector<kj::Promise<submit_result>> submitted;
    for (std::size_t i = 0; i < count; ++i) {
      j.requests[i].id = j.id + "-" + std::to_string(i);
      auto s = door_.start_pull(std::move(j.requests[i]));
      j.keys.push_back(s.key);
      submitted.add(kj::mv(s.submitted));
    }
    // However the response ends (done, failed, the connection dropped), nothing keeps running.
    auto guard = kj::defer([this, keys = j.keys] {
      for (auto k : keys) door_.abandon(k);
    });
    // A client that hangs up stops its generations at once; without this a non-streamed request
    // would only notice when its answer could not be written.
    auto hung_up = connection_.whenWriteDisconnected().then([]() -> kj::Promise<void> {
      return KJ_EXCEPTION(DISCONNECTED, "the client disconnected");
    });
    return kj::joinPromises(submitted.releaseAsArray())
        .then([this, &response, &j](kj::Array<submit_result> results) -> kj::Promise<void> {
          for (const auto& r : results) {
            if (!r.accepted) {
              for (auto k : j.keys) door_.abandon(k);
              return send_error(response, from_errc(r.error_code, r.error_message));
            }
          }
          return j.stream ? stream(response, j) : collect(response, j);
        })
        .exclusiveJoin(kj::mv(hung_up))
        .attach(kj::mv(guard), kj::mv(owned));
  }

  kj::Promise<void> collect_one(job& j, std::size_t i) {
    return door_.next(j.keys[i]).then([this, &j, i](pulled p) -> kj::Promise<void> {
      for (const auto& c : p.chunks) j.texts[i] += c.text;
      if (p.summary) {
        j.summaries[i] = *p.summary;
        return kj::READY_NOW;
      }
      return collect_one(j, i);
    });
  }

  json usage(const job& j) const {
    std::int64_t prompt = 0, completion = 0;
    for (std::size_t i = 0; i < j.summaries.size(); ++i) {
      // The n choices of one prompt count its tokens once, as OpenAI's usage does.
      if (i % static_cast<std::size_t>(j.n) == 0) prompt += j.summaries[i].prompt_tokens;
      completion += j.summaries[i].completion_tokens;
    }
    return json{{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  }

  kj::Promise<void> collect(Response& response, job& j) {
    kj::Vector<kj::Promise<void>> all;
    for (std::size_t i = 0; i < j.keys.size(); ++i) all.add(collect_one(j, i));
    return kj::joinPromises(all.releaseAsArray()).then([this, &response, &j]() {
      for (const auto& s : j.summaries) {
        if (s.finish_reason == "error") return send_error(response, from_errc(s.error_code, s.error_message));
      }
      json choices = json::array();
      for (std::size_t i = 0; i < j.summaries.size(); ++i) {
        json c = {{"index", i}};
        if (j.chat) {
          c["message"] = {{"role", "assistant"}, {"content", j.texts[i]}};
        } else {
          c["text"] = j.texts[i];
        }
        c["logprobs"] = nullptr;
        c["finish_reason"] = openai_finish(j.summaries[i].finish_reason);
        choices.push_back(std::move(c));
      }
      json out = {{"id", j.id},
                  {"object", j.chat ? "chat.completion" : "text_completion"},
                  {"created", j.created},
                  {"model", j.model},
                  {"choices", choices},
                  {"usage", usage(j)}};
      return send_json(response, 200, out);
    });
  }

  json chunk(const job& j, json choice) const {
    return json{{"id", j.id},
                {"object", j.chat ? "chat.completion.chunk" : "text_completion"},
                {"created", j.created},
                {"model", j.model},
                {"choices", json::array({std::move(choice)})}};
  }

  kj::Promise<void> stream_one(job& j, sse_writer& w, std::size_t i) {
    return door_.next(j.keys[i]).then([this, &j, &w, i](pulled p) -> kj::Promise<void> {
      std::string events;
      std::string text;
      for (const auto& c : p.chunks) text += c.text;
      if (j.chat && !j.started[i]) {
        j.started[i] = true;
        events += sse_writer::event(
            chunk(j, {{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                      {"finish_reason", nullptr}}));
      }
      if (!text.empty()) {
        json c = {{"index", i}};
        if (j.chat) c["delta"] = {{"content", text}};
        else c["text"] = text;
        c["logprobs"] = nullptr;
        c["finish_reason"] = nullptr;
        events += sse_writer::event(chunk(j, std::move(c)));
      }
      if (p.summary) {
        j.summaries[i] = *p.summary;
        if (p.summary->finish_reason == "error") {
          // Headers are gone already: the error travels as an event, as vLLM sends it.
          events += sse_writer::event(error_body(from_errc(p.summary->error_code, p.summary->error_message)));
        } else {
          json c = {{"index", i}};
          if (j.chat) c["delta"] = json::object();
          else c["text"] = "";
          c["logprobs"] = nullptr;
          c["finish_reason"] = openai_finish(p.summary->finish_reason);
          events += sse_writer::event(chunk(j, std::move(c)));
        }
      }
      auto write = events.empty() ? kj::Promise<void>(kj::READY_NOW) : w.write(events);
      if (p.summary) return write;
      return write.then([this, &j, &w, i] { return stream_one(j, w, i); });
    });
  }

  kj::Promise<void> stream(Response& response, job& j) {
    kj::HttpHeaders headers(table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, "text/event-stream");
    headers.add("Cache-Control", "no-cache");
    auto writer = kj::heap<sse_writer>(response.send(200, "OK", headers));
    auto& w = *writer;
    kj::Vector<kj::Promise<void>> all;
    for (std::size_t i = 0; i < j.keys.size(); ++i) {
      all.add(stream_one(j, w, i).catch_([this, &j](kj::Exception&& e) -> kj::Promise<void> {
        // The client went away (a write failed): stop every choice now, not at its next token.
        for (auto k : j.keys) door_.abandon(k);
        return kj::mv(e);
      }));
    }
    return kj::joinPromises(all.releaseAsArray())
        .then([this, &j, &w] {
          std::string tail;
          if (j.include_usage) {
            tail += sse_writer::event(json{{"id", j.id},
                                           {"object", j.chat ? "chat.completion.chunk" : "text_completion"},
                                           {"created", j.created},
                                           {"model", j.model},
                                           {"choices", json::array()},
                                           {"usage", usage(j)}});
          }
          tail += "data: [DONE]\n\n";
          return w.write(tail);
        })
        .catch_([](kj::Exception&&) {
          // A client that disconnected mid-stream: its generations are cancelled; nothing to answer.
        })
        .attach(kj::mv(writer));
  }

  front_door& door_;
  const kj::HttpHeaderTable& table_;
  kj::HttpHeaderId authorization_;
  kj::AsyncIoStream& connection_;  // owned by the server's connection, which owns this service
  std::string peer_;
};

// Malformed HTTP (not JSON) still gets an OpenAI-shaped body.
class json_errors final : public kj::HttpServerErrorHandler {
 public:
  explicit json_errors(const kj::HttpHeaderTable& table) : table_(table) {}

  kj::Promise<void> handleClientProtocolError(kj::HttpHeaders::ProtocolError e,
                                              kj::HttpService::Response& response) override {
    // kj says 501 for a request line whose method it does not know: to a client that is a
    // malformed request like any other.
    const unsigned status = e.statusCode >= 400 && e.statusCode < 500 ? e.statusCode : 400;
    return reply(response, status,
                 http_error{status, "invalid_request_error", "bad_request",
                            std::string("malformed HTTP request: ") + e.description.cStr(), ""});
  }

  kj::Promise<void> handleApplicationError(kj::Exception e, kj::Maybe<kj::HttpService::Response&> response) override {
    if (e.getType() == kj::Exception::Type::DISCONNECTED) return kj::READY_NOW;
    log::error("http: {}", e.getDescription().cStr());
    KJ_IF_MAYBE (r, response) {
      return reply(*r, 500, http_error{500, "server_error", "internal", "internal error", ""});
    }
    return kj::READY_NOW;
  }

 private:
  kj::Promise<void> reply(kj::HttpService::Response& response, unsigned status, const http_error& e) {
    kj::HttpHeaders headers(table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, "application/json");
    auto text = dump(error_body(e)) + "\n";
    auto bytes = kj::heapString(text.data(), text.size());
    auto stream = response.send(status, status_text(status), headers, bytes.size());
    auto write = stream->write(bytes.begin(), bytes.size());
    return write.attach(kj::mv(stream), kj::mv(bytes));
  }

  const kj::HttpHeaderTable& table_;
};

class http_gateway_impl final : public http_gateway {
 public:
  http_gateway_impl(front_door& door, kj::Timer& timer)
      : door_(door), table_(make_table(authorization_)), errors_(*table_), server_(make_server(timer)) {}

  kj::Promise<void> listen(kj::ConnectionReceiver& listener) override { return server_->listenHttp(listener); }

 private:
  static kj::Own<kj::HttpHeaderTable> make_table(kj::HttpHeaderId& authorization) {
    kj::HttpHeaderTable::Builder builder;
    authorization = builder.add("Authorization");
    return builder.build();
  }

  kj::Own<kj::HttpServer> make_server(kj::Timer& timer) {
    kj::HttpServerSettings settings;
    settings.errorHandler = errors_;
    // One service per connection, so each request knows its client's address.
    return kj::heap<kj::HttpServer>(
        timer, *table_,
        [this](kj::AsyncIoStream& conn) -> kj::Own<kj::HttpService> {
          return kj::heap<openai_service>(door_, *table_, authorization_, conn);
        },
        settings);
  }

  front_door& door_;
  kj::HttpHeaderId authorization_ = kj::HttpHeaderId::HOST;
  kj::Own<kj::HttpHeaderTable> table_;
  json_errors errors_;
  kj::Own<kj::HttpServer> server_;
};

}  // namespace

kj::Own<http_gateway> make_http_gateway(front_door& door, kj::Timer& timer) {
  return kj::heap<http_gateway_impl>(door, timer);
}

}  // namespace shoal::actors
