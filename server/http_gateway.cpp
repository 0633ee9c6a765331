// GCC 12 reports kj's ExceptionOr<T> (a Maybe<T> beside an exception) as maybe-uninitialized
// when T holds strings; a false positive in kj's headers, not in this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "server/http_gateway.hpp"

#include <arpa/inet.h>
#include <kj/compat/http.h>
#include <kj/debug.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "engine/common/error.hpp"
#include "server/connection_limit.hpp"
#include "server/openai_request.hpp"
#include "telemetry/log.hpp"

namespace shoal::server {

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
using actors::cluster_status;
using actors::door_caller;
using actors::generate_request;
using actors::generation_summary;
using actors::submit_result;

const char* status_text(unsigned status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

std::string dump(const json& j) {
  // Generated text is valid UTF-8 (the engine replaces invalid bytes); replace keeps any slip from
  // becoming an exception in the middle of a response.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

kj::Promise<void> send_json(kj::HttpService::Response& response, const kj::HttpHeaderTable& table, unsigned status,
                            const json& body) {
  kj::HttpHeaders headers(table);
  headers.set(kj::HttpHeaderId::CONTENT_TYPE, "application/json");
  auto text = dump(body) + "\n";
  // A kj::String keeps its bytes in place when moved into attach(), unlike a short std::string.
  auto bytes = kj::heapString(text.data(), text.size());
  auto stream = response.send(status, status_text(status), headers, bytes.size());
  auto write = stream->write(bytes.begin(), bytes.size());
  return write.attach(kj::mv(stream), kj::mv(bytes));
}

request_error not_allowed(const char* allowed) {
  return request_error{405, "invalid_request_error", "method_not_allowed",
                       std::string("this endpoint answers ") + allowed + " only", "", "invalid_argument"};
}

request_error too_large(std::uint64_t bytes, std::int64_t limit) {
  return request_error{413, "invalid_request_error", "request_too_large",
                       "the request body is " +
                           (bytes > static_cast<std::uint64_t>(limit) ? "over " + std::to_string(limit)
                                                                      : std::to_string(bytes)) +
                           " bytes; this server accepts at most " + std::to_string(limit),
                       "", "out_of_range"};
}

// A Content-Length that kj let through but that is not a length: kj reads "-5" as 2^64 - 5 and
// a 25-digit number as the largest 64-bit one.
bool valid_length(kj::StringPtr text, std::uint64_t& out) {
  if (text.size() == 0 || text.size() > 19) return false;  // 19 digits always fit in 63 bits
  out = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    out = out * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return true;
}

const char* bad_length_message = "the Content-Length header must be one decimal number of bytes, sent once";

// ---- one HTTP request, as it goes through the door

struct exchange {
  explicit exchange(door_telemetry& t) : telemetry(t) {}
  // kj-http drops a request whose client hangs up (its connection's whenWriteDisconnected), with
  // no word to the service: one dropped before it was over is a client that went away.
  ~exchange() {
    if (!over && !gone_counted) telemetry.client_gone("http", read ? "response" : "request", caller.client_address);
  }

  door_telemetry& telemetry;
  door_caller caller;      // the key (until the router has it), the peer, the API method
  std::string model;       // as the client named it, once known
  bool audited = false;    // its audit record is written (or the router writes it)
  bool read = false;       // the request is all in (its body read, or it has none)
  bool responded = false;  // the status line went out
  bool gone_counted = false;
  bool over = false;       // the service's promise settled (answered, failed, or counted as gone)
};

// The body as read: the text, or why there is none.
struct body_read {
  enum class how { ok, too_large, timed_out, ended_early, malformed } end = how::ok;
  std::string text;
};

// ---- one HTTP generation request (one or more choices)

struct job {
  openai_request request;
  std::string id;       // the response id (cmpl-... / chatcmpl-...)
  std::string model;    // as served
  std::int64_t created = 0;
  std::vector<generate_request> requests;  // one per choice, in choice order
  std::vector<std::uint64_t> keys;
  std::vector<std::string> texts;
  std::vector<generation_summary> summaries;
  std::vector<bool> started;               // stream: the choice's first chunk went out
};

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
                 kj::AsyncIoStream& connection, std::string peer, kj::Timer& timer)
      : door_(door),
        table_(table),
        authorization_(authorization),
        connection_(connection),
        peer_(std::move(peer)),
        timer_(timer) {}

  kj::Promise<void> request(kj::HttpMethod method, kj::StringPtr url, const kj::HttpHeaders& headers,
                            kj::AsyncInputStream& body, Response& response) override {
    auto x = kj::heap<exchange>(door_.telemetry());
    auto& ex = *x;
    std::string path(url.cStr());
    path = path.substr(0, path.find('?'));
    ex.caller.client_address = peer_;
    const bool completions = path == "/v1/completions";
    const bool chat = path == "/v1/chat/completions";
    ex.caller.api_method = completions ? "http.completions"
                           : chat      ? "http.chat.completions"
                           : path == "/v1/models" ? "http.models"
                                                  : "http";
    ex.caller.operation = completions || chat         ? "generate"
                          : path == "/v1/models"       ? "models"
                          : path == "/livez" || path == "/readyz" ? "health"
                                                       : "http";
    kj::Promise<void> done = nullptr;
    try {
      done = route(method, path, headers, body, response, ex);
    } catch (const request_error& e) {
      done = refuse(response, ex, e);
    } catch (const std::exception& e) {
      done = internal(response, ex, e.what());
    }
    return done
        .then([&ex]() -> kj::Promise<void> {
          ex.over = true;
          return kj::READY_NOW;
        }, [this, &response, &ex](kj::Exception&& e) -> kj::Promise<void> {
          ex.over = true;
          if (e.getType() == kj::Exception::Type::DISCONNECTED) {
            if (!ex.gone_counted) door_.telemetry().client_gone("http", "response", peer_);
            ex.gone_counted = true;
            return kj::mv(e);  // kj closes the connection without a word
          }
          return internal(response, ex, door_.telemetry().for_log(e));
        })
        .attach(kj::mv(x));
  }

 private:
  // ---- routing: the key first, then the endpoint

  kj::Promise<void> route(kj::HttpMethod method, const std::string& path, const kj::HttpHeaders& headers,
                          kj::AsyncInputStream& body, Response& response, exchange& ex) {
    KJ_IF_MAYBE (auth, headers.get(authorization_)) {
      std::string h(auth->cStr());
      if (h.size() < 7 || strncasecmp(h.c_str(), "Bearer ", 7) != 0) {
        throw request_error{401, "authentication_error", "invalid_api_key",
                            "the Authorization header must be 'Bearer YOUR_API_KEY'", "", "unauthenticated"};
      }
      // The key without the whitespace around it (spaces or tabs, HTTP's OWS).
      const auto first = h.find_first_not_of(" \t", 7);
      ex.caller.api_key = first == std::string::npos ? "" : h.substr(first, h.find_last_not_of(" \t") + 1 - first);
      // A key header that is given is a claim to be someone: an empty key is an invalid key, not
      // a request without one (which would run as anonymous).
      if (ex.caller.api_key.empty()) {
        throw request_error{401, "authentication_error", "invalid_api_key",
                            "the Authorization header carries an empty API key", "", "unauthenticated"};
      }
    }
    const bool generation = ex.caller.operation == "generate";
    // Generations always ask (a cluster that requires keys refuses one without); other endpoints
    // only check a key that is given, so probes and model listings need none.
    if (!generation && ex.caller.api_key.empty()) return serve(method, path, headers, body, response, ex);
    return door_.authenticate(ex.caller)
        .then([this, method, path, &headers, &body, &response, &ex](
                  outcome<actors::auth_result> a) -> kj::Promise<void> {
          if (!a.value) {
            return refuse(response, ex, from_errc("unavailable", "the router did not answer: " + a.message));
          }
          if (!a.value->ok) {
            ex.audited = true;  // the router wrote the record
            return refuse(response, ex, from_errc(a.value->error_code, a.value->error_message));
          }
          try {
            return serve(method, path, headers, body, response, ex);
          } catch (const request_error& e) {
            return refuse(response, ex, e);
          }
        });
  }

  kj::Promise<void> serve(kj::HttpMethod method, const std::string& path, const kj::HttpHeaders& headers,
                          kj::AsyncInputStream& body, Response& response, exchange& ex) {
    // kj lets "-5" and 25-digit lengths through (as 2^64 - 5 and 2^64 - 1).
    std::uint64_t declared = 0;
    bool has_length = false;
    KJ_IF_MAYBE (length, headers.get(kj::HttpHeaderId::CONTENT_LENGTH)) {
      if (!valid_length(*length, declared)) throw bad_request(bad_length_message, "", "invalid_request");
      has_length = true;
    }
    ex.read = path != "/v1/completions" && path != "/v1/chat/completions";  // the others read no body
    if (path == "/livez") {
      if (method != kj::HttpMethod::GET && method != kj::HttpMethod::HEAD) throw not_allowed("GET");
      // Answered by this loop alone: it shows the process and its event loop are alive.
      return send(response, ex, 200, json{{"status", "alive"}});
    }
    if (path == "/readyz") {
      if (method != kj::HttpMethod::GET && method != kj::HttpMethod::HEAD) throw not_allowed("GET");
      return readyz(response, ex);
    }
    if (path == "/v1/models") {
      if (method != kj::HttpMethod::GET) throw not_allowed("GET");
      return models(response, ex);
    }
    const bool chat = path == "/v1/chat/completions";
    if (path != "/v1/completions" && !chat) {
      throw request_error{404, "invalid_request_error", "not_found",
                          "no such endpoint: " + path +
                              " (served: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, "
                              "GET /livez, GET /readyz)",
                          "", "not_found"};
    }
    if (method != kj::HttpMethod::POST) throw not_allowed("POST");
    const auto limit = door_.options().max_body_bytes;
    if (has_length && declared > static_cast<std::uint64_t>(limit)) throw too_large(declared, limit);
    const bool chunked = !has_length;
    return read_body(body, static_cast<std::uint64_t>(limit))
        .then([this, &response, &ex, chat, chunked, has_length, declared, limit](body_read b) -> kj::Promise<void> {
          try {
            switch (b.end) {
              case body_read::how::too_large:
                throw too_large(b.text.size(), limit);
              case body_read::how::timed_out:
                throw request_error{408, "invalid_request_error", "request_timeout",
                                    "the request body did not arrive within " +
                                        std::to_string(door_.options().body_timeout_ms) + " ms of its headers",
                                    "", "invalid_argument"};
              case body_read::how::ended_early:
                door_.telemetry().client_gone("http", "request", peer_);
                ex.gone_counted = true;
                throw bad_request(has_length ? "the body ended after " + std::to_string(b.text.size()) + " of the " +
                                                   std::to_string(declared) + " bytes its Content-Length declared"
                                             : "the chunked body ended before its last (zero-size) chunk",
                                  "", "invalid_request");
              case body_read::how::malformed:
                throw bad_request(chunked ? "the chunked body is malformed: a chunk size is not hexadecimal, or a "
                                            "chunk does not end where its size says"
                                          : "the body does not match its Content-Length",
                                  "", "invalid_request");
              case body_read::how::ok:
                ex.read = true;
                break;
            }
            return generate(response, ex, std::move(b.text), chat);
          } catch (const request_error& e) {
            return refuse(response, ex, e);
          }
        });
  }

  // Reads the whole body, up to one byte past `limit`, within the body timeout. kj reports a
  // body that ends before its framing says as DISCONNECTED; any other failure of a chunked body
  // is its framing.
  kj::Promise<body_read> read_body(kj::AsyncInputStream& body, std::uint64_t limit) {
    struct reading {
      body_read out;
      char buf[16384];
    };
    auto r = kj::heap<reading>();
    auto& st = *r;
    auto timeout = timer_.afterDelay(door_.options().body_timeout_ms * kj::MILLISECONDS).then([] {
      body_read b;
      b.end = body_read::how::timed_out;
      return b;
    });
    return read_more(body, st.out, st.buf, sizeof st.buf, limit)
        .then([&st]() { return kj::mv(st.out); },
              [&st](kj::Exception&& e) {
                st.out.end = e.getType() == kj::Exception::Type::DISCONNECTED ? body_read::how::ended_early
                                                                              : body_read::how::malformed;
                return kj::mv(st.out);
              })
        .exclusiveJoin(kj::mv(timeout))
        .attach(kj::mv(r));
  }

  kj::Promise<void> read_more(kj::AsyncInputStream& body, body_read& out, char* buf, std::size_t size,
                              std::uint64_t limit) {
    return body.tryRead(buf, 1, size).then([this, &body, &out, buf, size, limit](std::size_t n) -> kj::Promise<void> {
      if (n == 0) return kj::READY_NOW;
      out.text.append(buf, n);
      if (out.text.size() > limit) {
        out.end = body_read::how::too_large;
        return kj::READY_NOW;
      }
      return read_more(body, out, buf, size, limit);
    });
  }

  // ---- answers

  kj::Promise<void> send(Response& response, exchange& ex, unsigned status, const json& body) {
    ex.responded = true;
    return send_json(response, table_, status, body);
  }

  /// Refuses the request with `e`, auditing it unless the router already has.
  kj::Promise<void> refuse(Response& response, exchange& ex, const request_error& e) {
    if (!ex.audited) {
      ex.audited = true;
      actors::door_refusal r;
      r.caller = ex.caller;
      r.model = ex.model;
      r.error_code = e.errc.empty() ? "invalid_argument" : e.errc;
      r.error_message = e.message;  // the router masks it before it is stored
      door_.refused(std::move(r));
    }
    log::debug("http: {} {}: {} {}", peer_, ex.caller.api_method, e.status, door_.telemetry().for_log(e.message));
    const auto shown = for_client(ex, e);
    return send(response, ex, shown.status, error_body(shown));
  }

  /// `e` as the client may see it: a failure of ours (500) says "internal error" and no more (its
  /// text can name files, peers, a library's words); what happened goes to the node log, masked.
  request_error for_client(const exchange& ex, request_error e) const {
    if (e.status != 500) return e;
    log::error("http: {} {}: {}: {}", peer_, ex.caller.api_method, e.errc, door_.telemetry().for_log(e.message));
    e.message = "internal error";
    return e;
  }

  // A failure of this door's own code: logged (masked: descriptions can quote the client), and
  // answered 500 when nothing was sent yet; otherwise the connection is dropped.
  kj::Promise<void> internal(Response& response, exchange& ex, const std::string& what) {
    log::error("http: {} {}: {}", peer_, ex.caller.api_method, door_.telemetry().for_log(what));
    if (ex.responded) return KJ_EXCEPTION(DISCONNECTED, "dropping a connection whose answer failed");
    ex.audited = true;  // a failure of ours, not a refusal
    return send(response, ex, 500, error_body(from_errc("internal", "internal error")));
  }

  kj::Promise<void> readyz(Response& response, exchange& ex) {
    return door_.status().then([this, &response, &ex](outcome<cluster_status> o) {
      if (!o.value) {
        return send(response, ex, 503, json{{"status", "not ready"}, {"reason", "router: " + o.message}});
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
      return send(response, ex, st.ready ? 200 : 503, body);
    });
  }

  kj::Promise<void> models(Response& response, exchange& ex) {
    return door_.status().then([this, &response, &ex](outcome<cluster_status> o) {
      if (!o.value) {
        return send(response, ex, 503, error_body(from_errc("unavailable", "the router did not answer: " + o.message)));
      }
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
      return send(response, ex, 200, json{{"object", "list"}, {"data", data}});
    });
  }

  // ---- a generation request

  kj::Promise<void> generate(Response& response, exchange& ex, std::string text, bool chat) {
    auto owned = kj::heap<job>();
    auto& j = *owned;
    j.request = parse_openai_request(text, chat, door_.options());
    ex.model = j.request.model;
    auto served = door_.served_name(j.request.model);
    if (!served) {
      throw request_error{404, "invalid_request_error", "model_not_found",
                          "the model '" + j.request.model + "' does not exist", "model", "not_found"};
    }
    j.model = *served;
    std::optional<rendered_chat> rendered;
    if (chat) {
      try {
        rendered = door_.render_chat(j.request.model, j.request.messages, j.request.tools,
                                     j.request.add_generation_prompt);
      } catch (const error& e) {
        auto h = from_errc(to_string(e.code()), e.what());
        h.param = "messages";
        throw h;
      } catch (const nlohmann::json::exception& e) {
        throw bad_request(std::string("the chat template failed on these messages: ") + e.what(), "messages");
      }
    }
    j.requests = choices(j.request, rendered ? &*rendered : nullptr);
    for (auto& r : j.requests) {
      r.api_key = ex.caller.api_key;
      r.client_address = peer_;
    }
    // From here the router audits each choice.
    ex.audited = true;
    return run(response, ex, kj::mv(owned));
  }

  kj::Promise<void> run(Response& response, exchange& ex, kj::Own<job> owned) {
    auto& j = *owned;
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(rng()));
    j.id = std::string(j.request.chat ? "chatcmpl-" : "cmpl-") + hex;
    j.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                    .count();
    const auto count = j.requests.size();
    j.texts.resize(count);
    j.summaries.resize(count);
    j.started.assign(count, false);
    kj::Vector<kj::Promise<submit_result>> submitted;
    for (std::size_t i = 0; i < count; ++i) {
      j.requests[i].id = j.id + "-" + std::to_string(i);
      auto s = door_.start(std::move(j.requests[i]));
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
        .then([this, &response, &ex, &j](kj::Array<submit_result> results) -> kj::Promise<void> {
          for (const auto& r : results) {
            if (!r.accepted) {
              for (auto k : j.keys) door_.abandon(k);
              return refuse(response, ex, from_errc(r.error_code, r.error_message));  // audited by the router
            }
          }
          return j.request.stream ? stream(response, ex, j) : collect(response, ex, j);
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
      if (i % static_cast<std::size_t>(j.request.n) == 0) prompt += j.summaries[i].prompt_tokens;
      completion += j.summaries[i].completion_tokens;
    }
    return json{{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  }

  kj::Promise<void> collect(Response& response, exchange& ex, job& j) {
    kj::Vector<kj::Promise<void>> all;
    for (std::size_t i = 0; i < j.keys.size(); ++i) all.add(collect_one(j, i));
    return kj::joinPromises(all.releaseAsArray()).then([this, &response, &ex, &j]() {
      for (const auto& s : j.summaries) {
        if (s.finish_reason == "error") return refuse(response, ex, from_errc(s.error_code, s.error_message));
      }
      json choices = json::array();
      for (std::size_t i = 0; i < j.summaries.size(); ++i) {
        json c = {{"index", i}};
        if (j.request.chat) {
          c["message"] = {{"role", "assistant"}, {"content", j.texts[i]}};
        } else {
          c["text"] = j.texts[i];
        }
        c["logprobs"] = nullptr;
        c["finish_reason"] = openai_finish(j.summaries[i].finish_reason);
        choices.push_back(std::move(c));
      }
      json out = {{"id", j.id},
                  {"object", j.request.chat ? "chat.completion" : "text_completion"},
                  {"created", j.created},
                  {"model", j.model},
                  {"choices", choices},
                  {"usage", usage(j)}};
      return send(response, ex, 200, out);
    });
  }

  json chunk(const job& j, json choice) const {
    return json{{"id", j.id},
                {"object", j.request.chat ? "chat.completion.chunk" : "text_completion"},
                {"created", j.created},
                {"model", j.model},
                {"choices", json::array({std::move(choice)})}};
  }

  kj::Promise<void> stream_one(const exchange& ex, job& j, sse_writer& w, std::size_t i) {
    return door_.next(j.keys[i]).then([this, &ex, &j, &w, i](pulled p) -> kj::Promise<void> {
      std::string events;
      std::string text;
      for (const auto& c : p.chunks) text += c.text;
      if (j.request.chat && !j.started[i]) {
        j.started[i] = true;
        events += sse_writer::event(
            chunk(j, {{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                      {"finish_reason", nullptr}}));
      }
      if (!text.empty()) {
        json c = {{"index", i}};
        if (j.request.chat) c["delta"] = {{"content", text}};
        else c["text"] = text;
        c["logprobs"] = nullptr;
        c["finish_reason"] = nullptr;
        events += sse_writer::event(chunk(j, std::move(c)));
      }
      if (p.summary) {
        j.summaries[i] = *p.summary;
        if (p.summary->finish_reason == "error") {
          // Headers are gone already: the error travels as an event, as vLLM sends it.
          events += sse_writer::event(error_body(for_client(ex, from_errc(p.summary->error_code, p.summary->error_message))));
        } else {
          json c = {{"index", i}};
          if (j.request.chat) c["delta"] = json::object();
          else c["text"] = "";
          c["logprobs"] = nullptr;
          c["finish_reason"] = openai_finish(p.summary->finish_reason);
          events += sse_writer::event(chunk(j, std::move(c)));
        }
      }
      auto write = events.empty() ? kj::Promise<void>(kj::READY_NOW) : w.write(events);
      if (p.summary) return write;
      return write.then([this, &ex, &j, &w, i] { return stream_one(ex, j, w, i); });
    });
  }

  kj::Promise<void> stream(Response& response, exchange& ex, job& j) {
    kj::HttpHeaders headers(table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, "text/event-stream");
    headers.add("Cache-Control", "no-cache");
    ex.responded = true;
    auto writer = kj::heap<sse_writer>(response.send(200, "OK", headers));
    auto& w = *writer;
    kj::Vector<kj::Promise<void>> all;
    for (std::size_t i = 0; i < j.keys.size(); ++i) {
      all.add(stream_one(ex, j, w, i).catch_([this, &j](kj::Exception&& e) -> kj::Promise<void> {
        // The client went away (a write failed): stop every choice now, not at its next token.
        for (auto k : j.keys) door_.abandon(k);
        return kj::mv(e);
      }));
    }
    return kj::joinPromises(all.releaseAsArray())
        .then([this, &j, &w] {
          std::string tail;
          if (j.request.include_usage) {
            tail += sse_writer::event(json{{"id", j.id},
                                           {"object", j.request.chat ? "chat.completion.chunk" : "text_completion"},
                                           {"created", j.created},
                                           {"model", j.model},
                                           {"choices", json::array()},
                                           {"usage", usage(j)}});
          }
          tail += "data: [DONE]\n\n";
          return w.write(tail);
        })
        .catch_([this](kj::Exception&& e) -> kj::Promise<void> {
          // A client that disconnected mid-stream: its generations are cancelled; nothing to answer.
          if (e.getType() == kj::Exception::Type::DISCONNECTED) {
            return KJ_EXCEPTION(DISCONNECTED, "the client went away mid-stream");
          }
          return kj::mv(e);
        })
        .attach(kj::mv(writer));
  }

  front_door& door_;
  const kj::HttpHeaderTable& table_;
  kj::HttpHeaderId authorization_;
  kj::AsyncIoStream& connection_;  // owned by this connection's server, which owns this service
  std::string peer_;
  kj::Timer& timer_;
};

// What kj-http could not hand to the service: a request head it cannot parse, or (after the head)
// a Content-Length it cannot read. Those are the client's mistakes (400, audited like any other
// refusal); a client going away is routine. Nothing the client sent is echoed into a log.
class connection_errors final : public kj::HttpServerErrorHandler {
 public:
  connection_errors(front_door& door, const kj::HttpHeaderTable& table, std::string peer)
      : door_(door), table_(table), peer_(std::move(peer)) {}

  kj::Promise<void> handleClientProtocolError(kj::HttpHeaders::ProtocolError e,
                                              kj::HttpService::Response& response) override {
    // kj says 501 for a request line whose method it does not know: to a client that is a
    // malformed request like any other. Its description is kj's own words, not the client's bytes.
    const unsigned status = e.statusCode >= 400 && e.statusCode < 500 ? e.statusCode : 400;
    return refuse(response, request_error{status, "invalid_request_error", "bad_request",
                                          std::string("malformed HTTP request: ") + e.description.cStr(), "",
                                          "invalid_argument"});
  }

  kj::Promise<void> handleApplicationError(kj::Exception e, kj::Maybe<kj::HttpService::Response&> response) override {
    // A client going away was counted where it was noticed.
    if (e.getType() == kj::Exception::Type::DISCONNECTED) return kj::READY_NOW;
    // The service answers its own failures, so what reaches here comes from kj reading the
    // request: its framing. kj's description quotes request bytes: only its own words are logged.
    log::debug("http: {}: unreadable request framing: {}", peer_, door_.telemetry().for_log(e));
    KJ_IF_MAYBE (r, response) {
      const bool length = e.getDescription().startsWith("invalid Content-Length");
      return refuse(*r, bad_request(length ? bad_length_message
                                           : "the request's body framing (Content-Length or chunked encoding) "
                                             "cannot be read",
                                    "", "invalid_request"));
    }
    return kj::READY_NOW;
  }

 private:
  kj::Promise<void> refuse(kj::HttpService::Response& response, const request_error& e) {
    actors::door_refusal r;
    r.caller.client_address = peer_;
    r.caller.api_method = "http";
    r.caller.operation = "http";
    r.error_code = e.errc;
    r.error_message = e.message;
    door_.refused(std::move(r));
    return send_json(response, table_, e.status, error_body(e));
  }

  front_door& door_;
  const kj::HttpHeaderTable& table_;
  std::string peer_;
};

// One client connection: its own kj-http server, so that what goes wrong on it is answered and
// audited knowing who the client is.
struct http_connection {
  http_connection(front_door& door, const kj::HttpHeaderTable& table, kj::HttpHeaderId authorization,
                  kj::Timer& timer, kj::AsyncIoStream& stream)
      : peer(peer_address(stream)),
        errors(door, table, peer),
        service(door, table, authorization, stream, peer, timer),
        server(timer, table, service, settings(errors)) {}

  static kj::HttpServerSettings settings(connection_errors& errors) {
    kj::HttpServerSettings s;
    s.errorHandler = errors;
    return s;
  }

  std::string peer;
  connection_errors errors;
  openai_service service;
  kj::HttpServer server;
};

class http_gateway_impl final : public http_gateway {
 public:
  http_gateway_impl(front_door& door, kj::Timer& timer)
      : door_(door),
        timer_(timer),
        table_(make_table(authorization_)),
        connections_("http", door.options().max_connections, timer,
                     [this](kj::Own<kj::AsyncIoStream> stream) { return serve(kj::mv(stream)); },
                     [this](kj::AsyncIoStream& stream) { return refuse(stream); }) {}

  kj::Promise<void> listen(kj::ConnectionReceiver& listener) override { return connections_.listen(listener); }

 private:
  static kj::Own<kj::HttpHeaderTable> make_table(kj::HttpHeaderId& authorization) {
    kj::HttpHeaderTable::Builder builder;
    authorization = builder.add("Authorization");
    return builder.build();
  }

  kj::Promise<void> serve(kj::Own<kj::AsyncIoStream> stream) {
    auto conn = kj::heap<http_connection>(door_, *table_, authorization_, timer_, *stream);
    auto& server = conn->server;
    auto& c = *conn;
    return server.listenHttp(kj::mv(stream))
        .catch_([this, &c](kj::Exception&& e) {
          // Each request's failures were answered (or counted) as they happened; this is only
          // how the connection ended.
          if (e.getType() != kj::Exception::Type::DISCONNECTED) {
            log::debug("http: {}: the connection ended: {}", c.peer, door_.telemetry().for_log(e));
          }
        })
        .attach(kj::mv(conn));
  }

  // Over the connection limit: a 503 before the close, so that a client sees why.
  kj::Promise<void> refuse(kj::AsyncIoStream& stream) {
    const auto limit = door_.options().max_connections;
    const auto body = dump(error_body(request_error{503, "service_unavailable", "too_many_connections",
                                                    "this server has its limit of " + std::to_string(limit) +
                                                        " connections open; try again later",
                                                    "", "overloaded"})) +
                      "\n";
    const std::string answer = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                               "Connection: close\r\nContent-Length: " +
                               std::to_string(body.size()) + "\r\n\r\n" + body;
    auto text = kj::heapString(answer.data(), answer.size());
    auto write = stream.write(text.begin(), text.size()).attach(kj::mv(text));
    return write.then([&stream] { return close_after_answer(stream); });
  }

  front_door& door_;
  kj::Timer& timer_;
  kj::HttpHeaderId authorization_ = kj::HttpHeaderId::HOST;
  kj::Own<kj::HttpHeaderTable> table_;
  bounded_listener connections_;
};

}  // namespace

kj::Own<http_gateway> make_http_gateway(front_door& door, kj::Timer& timer) {
  return kj::heap<http_gateway_impl>(door, timer);
}

}  // namespace shoal::server
