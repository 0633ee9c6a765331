// GCC 12 reports kj's ExceptionOr<T> (a Maybe<T> beside an exception) as maybe-uninitialized
// when T holds strings; a false positive in kj's headers, not in this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "server/rpc_service.hpp"

#include <capnp/message.h>
#include <capnp/rpc-twoparty.h>
#include <capnp/rpc.capnp.h>
#include <capnp/serialize-async.h>
#include <kj/debug.h>

#include <optional>

#include "engine/common/error.hpp"
#include "schemas/shoal.capnp.h"
#include "server/connection_limit.hpp"
#include "server/http_gateway.hpp"
#include "server/openai_request.hpp"
#include "telemetry/log.hpp"

namespace shoal::server {

namespace {

using actors::generate_request;
using actors::generation_summary;
using actors::submit_result;

std::string str(capnp::Text::Reader t) { return std::string(t.begin(), t.size()); }
capnp::Text::Reader text(const std::string& s) { return capnp::Text::Reader(s.data(), s.size()); }

// `message` is what the client is told about the summary's error (see shoal_impl::shown).
void fill_summary(rpc::Summary::Builder out, const generation_summary& s, const std::string& message) {
  out.setRequestId(text(s.id));
  out.setFinishReason(text(s.finish_reason));
  out.setErrorCode(text(s.error_code));
  out.setErrorMessage(text(message));
  out.setPromptTokens(s.prompt_tokens);
  out.setCompletionTokens(s.completion_tokens);
  out.setQueueSeconds(s.queue_seconds);
  out.setTtftSeconds(s.ttft_seconds);
  out.setTotalSeconds(s.total_seconds);
  out.setReplica(text(s.replica));
  out.setCached(s.cached);
}

// Fails an RPC call with `message` as the client sees it (no kj source location or variables).
[[noreturn]] void fail_call(const std::string& message) {
  kj::throwFatalException(kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::heapString(message)));
}

/// Why a request is refused: an errc name and a message.
struct refusal {
  std::string code;
  std::string message;
};

refusal refuse(errc code, std::string message) { return refusal{to_string(code), std::move(message)}; }

class handle_impl final : public rpc::GenerationHandle::Server {
 public:
  handle_impl(front_door& door, std::uint64_t key) : door_(door), key_(key) {}
  // Dropping the handle (or the connection) cancels, as schemas/shoal.capnp promises.
  ~handle_impl() noexcept(false) { door_.cancel(key_); }

 protected:
  kj::Promise<void> cancel(CancelContext) override {
    door_.cancel(key_);
    return kj::READY_NOW;
  }

 private:
  front_door& door_;
  std::uint64_t key_;
};

class shoal_impl final : public rpc::Shoal::Server {
 public:
  shoal_impl(front_door& door, std::string peer, kj::TaskSet& streams)
      : door_(door), peer_(std::move(peer)), streams_(streams) {}

 protected:
  kj::Promise<void> generate(GenerateContext ctx) override {
    const auto key = str(ctx.getParams().getRequest().getApiKey());
    return check_caller(key, "rpc.generate").then([this, ctx](std::optional<refusal> who) mutable -> kj::Promise<void> {
      if (who) return answer(ctx, *who);
      auto params = ctx.getParams();
      generate_request req;
      req.api_method = "rpc.generate";
      auto bad = convert(params.getRequest(), req);
      if (!bad && !params.hasSink()) bad = refuse(errc::invalid_argument, "generate needs a sink for its tokens");
      if (bad) return refused(ctx, req, *bad);
      return stream(ctx, std::move(req), params.getSink());
    });
  }

  kj::Promise<void> chat(ChatContext ctx) override {
    const auto key = str(ctx.getParams().getRequest().getGeneration().getApiKey());
    return check_caller(key, "rpc.chat").then([this, ctx](std::optional<refusal> who) mutable -> kj::Promise<void> {
      if (who) return answer(ctx, *who);
      auto params = ctx.getParams();
      auto chat = params.getRequest();
      generate_request req;
      req.api_method = "rpc.chat";
      auto bad = convert(chat.getGeneration(), req);
      if (!bad && !params.hasSink()) bad = refuse(errc::invalid_argument, "chat needs a sink for its tokens");
      if (!bad) bad = render(chat, req);
      if (bad) return refused(ctx, req, *bad);
      return stream(ctx, std::move(req), params.getSink());
    });
  }

  kj::Promise<void> complete(CompleteContext ctx) override {
    // A client that gives up (or disconnects) cancels the generation: see the guard below.
    ctx.allowCancellation();
    const auto key = str(ctx.getParams().getRequest().getApiKey());
    return check_caller(key, "rpc.complete").then([this, ctx](std::optional<refusal> who) mutable -> kj::Promise<void> {
      if (who) return answer(ctx, *who);
      generate_request req;
      req.api_method = "rpc.complete";
      if (auto bad = convert(ctx.getParams().getRequest(), req)) return refused(ctx, req, *bad);
      auto s = door_.start(std::move(req));
      const auto key = s.key;
      auto guard = kj::defer([this, key] { door_.abandon(key); });
      return s.submitted
          .then([this, ctx, key](submit_result r) mutable -> kj::Promise<void> {
            if (!r.accepted) {
              set_error(ctx.getResults().initError(), r.error_code, r.error_message);
              return kj::READY_NOW;
            }
            auto got = kj::heap<collected>();
            auto& c = *got;
            return collect(key, c).then([this, ctx, &c]() mutable {
              auto out = ctx.getResults().initCompletion();
              out.setRequestId(text(c.summary.id));
              auto ids = out.initTokenIds(static_cast<unsigned>(c.ids.size()));
              for (unsigned i = 0; i < c.ids.size(); ++i) ids.set(i, c.ids[i]);
              out.setText(text(c.text));
              fill_summary(out.initSummary(), c.summary, shown(c.summary.error_code, c.summary.error_message));
            }).attach(kj::mv(got));
          })
          .attach(kj::mv(guard));
    });
  }

  kj::Promise<void> tokenize(TokenizeContext ctx) override {
    auto p = ctx.getParams();
    actors::tokenize_request t;
    t.model = str(p.getModel());
    t.text = str(p.getText());
    t.add_special = p.getAddSpecial();
    if (auto msg = door_.unknown_model(t.model)) {
      set_error(ctx.getResults().initError(), to_string(errc::not_found), *msg);
      return kj::READY_NOW;
    }
    if (t.text.size() > static_cast<std::size_t>(door_.options().max_prompt_bytes)) {
      set_error(ctx.getResults().initError(), to_string(errc::out_of_range), too_long(t.text.size()));
      return kj::READY_NOW;
    }
    return door_.tokenize(std::move(t)).then([this, ctx](outcome<std::vector<std::int32_t>> o) mutable {
      auto res = ctx.getResults();
      if (!o.value) return set_error(res.initError(), o.code, o.message);
      auto ids = res.initIds(static_cast<unsigned>(o.value->size()));
      for (unsigned i = 0; i < o.value->size(); ++i) ids.set(i, (*o.value)[i]);
    });
  }

  kj::Promise<void> models(ModelsContext ctx) override {
    return door_.status().then([ctx](outcome<actors::cluster_status> o) mutable {
      // models() has no error field: a router that does not answer fails the call.
      if (!o.value) fail_call("the router did not answer: " + o.message);
      const auto& st = *o.value;
      auto list = ctx.getResults().initModels(static_cast<unsigned>(st.models.size()));
      for (unsigned i = 0; i < st.models.size(); ++i) {
        std::int32_t ctx_len = 0, replicas = 0, healthy = 0;
        for (const auto& r : st.replicas) {
          if (r.model != st.models[i]) continue;
          ++replicas;
          if (r.healthy) ++healthy;
          ctx_len = std::max(ctx_len, r.context_length);
        }
        auto m = list[i];
        m.setName(text(st.models[i]));
        m.setContextLength(ctx_len);
        m.setReplicas(replicas);
        m.setHealthyReplicas(healthy);
      }
    });
  }

  kj::Promise<void> admin(AdminContext ctx) override {
    auto r = ctx.getParams().getRequest();
    actors::admin_request a;
    a.api_key = str(r.getApiKey());
    a.op = str(r.getOp());
    a.tenant = str(r.getTenant());
    a.principal = str(r.getPrincipal());
    a.operation = str(r.getOperation());
    a.since = str(r.getSince());
    a.until = str(r.getUntil());
    a.limit = r.getLimit();
    a.api_method = "rpc.admin";
    a.client_address = peer_;
    return door_.admin(std::move(a)).then([this, ctx](outcome<actors::admin_result> o) mutable {
      auto res = ctx.getResults();
      if (!o.value) return set_error(res.initError(), o.code, o.message);
      if (!o.value->ok) return set_error(res.initError(), o.value->error_code, o.value->error_message);
      auto lines = res.initLines(static_cast<unsigned>(o.value->lines.size()));
      for (unsigned i = 0; i < o.value->lines.size(); ++i) lines.set(i, text(o.value->lines[i]));
    });
  }

  kj::Promise<void> health(HealthContext ctx) override {
    return door_.status().then([ctx](outcome<actors::cluster_status> o) mutable {
      auto h = ctx.getResults().initHealth();
      // This answer itself shows the event loop is alive, whatever the router says.
      h.setLive(true);
      if (!o.value) {
        h.setReady(false);
        h.setDetail(text("router: " + o.message));
        return;
      }
      const auto& st = *o.value;
      h.setReady(st.ready);
      h.setDetail(text(st.detail));
      auto list = h.initReplicas(static_cast<unsigned>(st.replicas.size()));
      for (unsigned i = 0; i < st.replicas.size(); ++i) {
        const auto& r = st.replicas[i];
        auto out = list[i];
        out.setName(text(r.name));
        out.setModel(text(r.model));
        out.setHealthy(r.healthy);
        out.setDetail(text(r.detail));
        out.setKvUsage(r.kv_usage);
        out.setWaiting(r.waiting);
        out.setRunning(r.running);
      }
    });
  }

 private:
  struct collected {
    std::vector<std::int32_t> ids;
    std::string text;
    generation_summary summary;
  };

  // The router's word on the caller's key (or its absence), before the door looks at anything else.
  kj::Promise<std::optional<refusal>> check_caller(std::string key, const char* method) {
    actors::door_caller c;
    c.api_key = std::move(key);
    c.client_address = peer_;
    c.api_method = method;
    c.operation = "generate";
    return door_.authenticate(c).then([this, c](outcome<actors::auth_result> a) -> std::optional<refusal> {
      if (!a.value) {
        // The router wrote no record of this one: the door does (as the HTTP door does), so that
        // every refused request has one.
        auto r = refuse(errc::unavailable, "the router did not answer: " + a.message);
        actors::door_refusal d;
        d.caller = c;
        d.error_code = r.code;
        d.error_message = r.message;
        door_.refused(std::move(d));
        return r;
      }
      if (!a.value->ok) return refusal{a.value->error_code, a.value->error_message};  // audited there
      return std::nullopt;
    });
  }

  // What the client is told about an error: for a failure of ours (one the HTTP door answers 500:
  // internal, corrupt_file, ...) the code and "internal error" only, as on HTTP (its text can name
  // files, peers, a library's words); what happened goes to the node log, masked.
  std::string shown(const std::string& code, const std::string& message) const {
    if (code.empty() || !internal_failure(code)) return message;
    log::error("rpc: {}: {}: {}", peer_, code, door_.telemetry().for_log(message));
    return "internal error";
  }

  void set_error(rpc::Error::Builder e, const std::string& code, const std::string& message) const {
    e.setCode(text(code));
    e.setMessage(text(shown(code, message)));
  }

  template <class Context>
  kj::Promise<void> answer(Context& ctx, const refusal& r) {
    set_error(ctx.getResults().initError(), r.code, r.message);
    return kj::READY_NOW;
  }

  // A refusal of this door's own: audited, then answered.
  template <class Context>
  kj::Promise<void> refused(Context& ctx, const generate_request& req, const refusal& r) {
    actors::door_refusal d;
    d.caller.api_key = req.api_key;
    d.caller.client_address = peer_;
    d.caller.api_method = req.api_method;
    d.caller.operation = "generate";
    d.model = req.model;
    d.error_code = r.code;
    d.error_message = r.message;
    door_.refused(std::move(d));
    return answer(ctx, r);
  }

  // Starts a streamed generation. Its tokens go to `sink` from a task of this connection (so a
  // client that drops the call, but not the connection, still gets them), which pulls the next
  // chunks only once the sink took the last ones.
  template <class Context>
  kj::Promise<void> stream(Context ctx, generate_request req, rpc::TokenSink::Client sink) {
    auto s = door_.start(std::move(req));
    const auto key = s.key;
    auto submitted = s.submitted.fork();
    auto forget = kj::defer([this, key] { door_.abandon(key); });
    streams_.add(submitted.addBranch()
                     .then([this, key, sink](submit_result r) mutable -> kj::Promise<void> {
                       if (!r.accepted) return kj::READY_NOW;
                       return pump(key, kj::mv(sink));
                     })
                     .catch_([this](kj::Exception&& e) {
                       // The sink failed: the client is gone (or broke its sink); the guard cancels.
                       if (e.getType() == kj::Exception::Type::DISCONNECTED) {
                         door_.telemetry().client_gone("rpc", "response", peer_);
                       } else {
                         log::debug("rpc: {}: a sink failed: {}", peer_, door_.telemetry().for_log(e));
                       }
                     })
                     .attach(kj::mv(forget)));
    return submitted.addBranch().then([this, ctx, key](submit_result r) mutable {
      auto res = ctx.getResults();
      if (!r.accepted) return set_error(res.initError(), r.error_code, r.error_message);
      res.setRequestId(text(r.id));
      res.setHandle(kj::heap<handle_impl>(door_, key));
    });
  }

  // Sends what next() delivers: the chunks coalesced into one call, then `done` with the summary.
  kj::Promise<void> pump(std::uint64_t key, rpc::TokenSink::Client sink) {
    return door_.next(key).then([this, key, sink](pulled p) mutable -> kj::Promise<void> {
      kj::Promise<void> sent = kj::READY_NOW;
      if (!p.chunks.empty()) {
        auto req = sink.chunkRequest();
        auto c = req.initChunk();
        std::size_t n = 0;
        std::string joined;
        bool cached = false;
        for (const auto& q : p.chunks) {
          n += q.ids.size();
          joined += q.text;
          cached = cached || q.cached;
        }
        auto ids = c.initTokenIds(static_cast<unsigned>(n));
        unsigned i = 0;
        for (const auto& q : p.chunks) {
          for (auto id : q.ids) ids.set(i++, id);
        }
        c.setText(text(joined));
        c.setIndex(p.chunks.front().index);
        c.setCached(cached);
        sent = req.send();
      }
      if (p.summary) {
        return sent.then([sink, s = *p.summary, message = shown(p.summary->error_code, p.summary->error_message)]() mutable {
          auto req = sink.doneRequest();
          fill_summary(req.initSummary(), s, message);
          return req.send().ignoreResult();
        });
      }
      return sent.then([this, key, sink]() mutable { return pump(key, kj::mv(sink)); });
    });
  }

  kj::Promise<void> collect(std::uint64_t key, collected& c) {
    return door_.next(key).then([this, key, &c](pulled p) -> kj::Promise<void> {
      for (const auto& q : p.chunks) {
        c.ids.insert(c.ids.end(), q.ids.begin(), q.ids.end());
        c.text += q.text;
      }
      if (p.summary) {
        c.summary = *p.summary;
        return kj::READY_NOW;
      }
      return collect(key, c);
    });
  }

  std::string too_long(std::size_t bytes) const {
    return "the prompt is " + std::to_string(bytes) + " bytes; this gateway accepts at most " +
           std::to_string(door_.options().max_prompt_bytes);
  }

  // The wire request as the router's message. Checks only what is the gateway's own limit (sizes)
  // or cheap to say early; the router and the batcher validate the rest (sampling values,
  // context length, vocabulary) and their refusals come back as the `error` field.
  std::optional<refusal> convert(rpc::GenerateRequest::Reader r, generate_request& out) const {
    const auto& o = door_.options();
    const auto limit = static_cast<std::size_t>(o.max_prompt_bytes);
    out.api_key = str(r.getApiKey());
    out.client_address = peer_;
    out.model = str(r.getModel());
    if (auto msg = door_.unknown_model(out.model)) return refuse(errc::not_found, *msg);
    out.prompt = str(r.getPrompt());
    if (out.prompt.size() > limit) return refuse(errc::out_of_range, too_long(out.prompt.size()));
    auto ids = r.getPromptIds();
    if (ids.size() * sizeof(std::int32_t) > limit) {
      return refuse(errc::out_of_range, "the prompt has " + std::to_string(ids.size()) +
                                            " token ids; this gateway accepts at most " +
                                            std::to_string(limit / sizeof(std::int32_t)));
    }
    for (auto id : ids) out.prompt_ids.push_back(id);
    auto s = r.getSampling();
    out.sampling.temperature = s.getTemperature();
    out.sampling.top_k = s.getTopK();
    out.sampling.top_p = s.getTopP();
    out.sampling.min_p = s.getMinP();
    out.sampling.repetition_penalty = s.getRepetitionPenalty();
    out.sampling.presence_penalty = s.getPresencePenalty();
    out.sampling.frequency_penalty = s.getFrequencyPenalty();
    if (s.getHasSeed()) out.sampling.seed = s.getSeed();
    out.max_tokens = r.getMaxTokens();
    out.ignore_eos = r.getIgnoreEos();
    // Stop strings count against the prompt's byte limit: the batcher matches each against the
    // text of every token.
    std::size_t stop_bytes = 0;
    for (auto t : r.getStop()) {
      stop_bytes += t.size();
      out.stop.push_back(str(t));
    }
    if (stop_bytes + out.prompt.size() > limit) {
      return refuse(errc::out_of_range, "the prompt and stop strings are " + std::to_string(stop_bytes + out.prompt.size()) +
                                            " bytes; this gateway accepts at most " + std::to_string(limit));
    }
    for (auto id : r.getStopTokenIds()) out.stop_ids.push_back(id);
    out.priority = r.getPriority();
    out.kind = str(r.getKind());
    out.add_special = r.getAddSpecial();
    // Special-token strings become tokens only where the caller's tenant may send them (the
    // router decides); specialsAsText keeps them text for anyone.
    out.parse_special = !r.getSpecialsAsText();
    out.id = str(r.getRequestId());
    out.no_cache = r.getNoCache();
    if (out.id.size() > 256) return refuse(errc::invalid_argument, "requestId is longer than 256 bytes");
    return std::nullopt;
  }

  // Renders the chat with the model's template into req.prompt (BOS comes from the template);
  // only the template's own text may hold special tokens.
  std::optional<refusal> render(rpc::ChatRequest::Reader chat, generate_request& req) {
    // Both JSON fields are checked before they are parsed, as the HTTP door checks its body:
    // within the prompt's byte limit (rendering a chat costs what its text does), and nested no
    // deeper than max_json_depth (the renderer copies and dumps the tree recursively, on the event
    // loop's thread that both doors share).
    const auto limit = static_cast<std::size_t>(door_.options().max_prompt_bytes);
    for (const auto& [field, value] : {std::pair{"messagesJson", chat.getMessagesJson()},
                                       std::pair{"toolsJson", chat.getToolsJson()}}) {
      if (value.size() > limit) {
        return refuse(errc::out_of_range, std::string(field) + " is " + std::to_string(value.size()) +
                                              " bytes; this gateway accepts at most " + std::to_string(limit));
      }
      if (json_too_deep(std::string_view(value.begin(), value.size()))) {
        return refuse(errc::invalid_argument,
                      std::string(field) + " nests deeper than " + std::to_string(max_json_depth) + " levels");
      }
    }
    try {
      nlohmann::ordered_json messages = nlohmann::ordered_json::array();
      nlohmann::ordered_json tools = nullptr;
      if (chat.hasMessagesJson() && chat.getMessagesJson().size() > 0) {
        messages = nlohmann::ordered_json::parse(str(chat.getMessagesJson()));
        if (!messages.is_array()) return refuse(errc::invalid_argument, "messagesJson must be a JSON array");
      } else {
        std::size_t bytes = 0;
        for (auto m : chat.getMessages()) bytes += m.getRole().size() + m.getContent().size();
        if (bytes > limit) {
          return refuse(errc::out_of_range, "the messages are " + std::to_string(bytes) +
                                                " bytes; this gateway accepts at most " + std::to_string(limit));
        }
        for (auto m : chat.getMessages()) {
          messages.push_back({{"role", str(m.getRole())}, {"content", str(m.getContent())}});
        }
      }
      if (chat.hasToolsJson() && chat.getToolsJson().size() > 0) {
        tools = nlohmann::ordered_json::parse(str(chat.getToolsJson()));
      }
      auto r = door_.render_chat(req.model, messages, tools, chat.getAddGenerationPrompt());
      req.prompt = std::move(r.prompt);
      req.special_ranges = std::move(r.special_ranges);
      req.parse_special = r.parse_special;
    } catch (const nlohmann::json::exception& e) {
      return refuse(errc::invalid_argument, std::string("invalid chat JSON: ") + e.what());
    } catch (const error& e) {
      return refusal{to_string(e.code()), e.what()};
    }
    req.prompt_ids.clear();
    req.add_special = false;
    return std::nullopt;
  }

  front_door& door_;
  std::string peer_;       // the client connection's address, for audit records
  kj::TaskSet& streams_;   // the connection's streams (see connection)
};

class quiet_errors final : public kj::TaskSet::ErrorHandler {
  void taskFailed(kj::Exception&&) override {}  // each stream task catches its own failures
};

// One client connection: Cap'n Proto two-party RPC with this door's read limits. The streams
// task set is dropped first (it holds the clients' sinks, which belong to the RPC system) and
// exists before the bootstrap object that uses it.
struct connection {
  connection(front_door& door, kj::Own<kj::AsyncIoStream>&& s, capnp::ReaderOptions limits)
      : door(door),
        streams(kj::heap<kj::TaskSet>(errors)),
        stream(kj::mv(s)),
        peer(peer_address(*stream)),
        network(*stream, capnp::rpc::twoparty::Side::SERVER, limits),
        rpc_system(capnp::makeRpcServer(network, kj::heap<shoal_impl>(door, peer, *streams))) {}
  ~connection() noexcept(false) {
    // Streams still running when the connection ends: the client went away mid-answer.
    if (!streams->isEmpty()) door.telemetry().client_gone("rpc", "response", peer);
    streams = nullptr;
  }

  front_door& door;
  quiet_errors errors;
  kj::Own<kj::TaskSet> streams;
  kj::Own<kj::AsyncIoStream> stream;
  std::string peer;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc_system;
};

class rpc_door_impl final : public rpc_door {
 public:
  rpc_door_impl(front_door& door, kj::Timer& timer)
      : door_(door),
        connections_("rpc", door.options().max_connections, timer,
                     [this](kj::Own<kj::AsyncIoStream> stream) { return serve(kj::mv(stream)); },
                     [this](kj::AsyncIoStream& stream) { return refuse(stream); }) {}

  kj::Promise<void> listen(kj::ConnectionReceiver& listener) override { return connections_.listen(listener); }

 private:
  kj::Promise<void> serve(kj::Own<kj::AsyncIoStream> stream) {
    capnp::ReaderOptions limits;
    limits.traversalLimitInWords = door_.options().max_message_words;
    limits.nestingLimit = door_.options().max_nesting;
    auto conn = kj::heap<connection>(door_, kj::mv(stream), limits);
    auto closed = conn->network.onDisconnect();
    return closed.attach(kj::mv(conn));
  }

  // Over the connection limit: a Cap'n Proto Abort ("overloaded") before the close, which the
  // client's pending calls fail with, so it sees why.
  kj::Promise<void> refuse(kj::AsyncIoStream& stream) {
    auto message = kj::heap<capnp::MallocMessageBuilder>();
    auto abort = message->initRoot<capnp::rpc::Message>().initAbort();
    const auto reason = "this gateway has its limit of " + std::to_string(door_.options().max_connections) +
                        " connections open; try again later";
    abort.setReason(text(reason));
    abort.setType(capnp::rpc::Exception::Type::OVERLOADED);
    auto write = capnp::writeMessage(stream, *message).attach(kj::mv(message));
    return write.then([&stream] { return close_after_answer(stream); });
  }

  front_door& door_;
  bounded_listener connections_;
};

}  // namespace

kj::Own<rpc_door> make_rpc_door(front_door& door, kj::Timer& timer) { return kj::heap<rpc_door_impl>(door, timer); }

}  // namespace shoal::server
