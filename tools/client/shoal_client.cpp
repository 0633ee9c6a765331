// GCC 12 reports kj's ExceptionOr<T> as maybe-uninitialized when T holds strings: a false
// positive in kj's headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "tools/client/shoal_client.hpp"

#include <cstdlib>

#include <capnp/message.h>
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include <exception>
#include <mutex>

#include "schemas/shoal.capnp.h"

namespace shoal::client {

namespace {

// One kj event loop per thread, shared by the thread's clients (kj allows one loop per thread).
struct thread_io {
  kj::AsyncIoContext io = kj::setupAsyncIo();
};

std::shared_ptr<thread_io> this_thread_io() {
  thread_local std::weak_ptr<thread_io> current;
  auto p = current.lock();
  if (!p) {
    p = std::make_shared<thread_io>();
    current = p;
  }
  return p;
}

capnp::Text::Reader text(const std::string& s) {
  return capnp::Text::Reader(s.data(), s.size());
}
std::string str(capnp::Text::Reader t) {
  return std::string(t.begin(), t.size());
}

void fill(rpc::GenerateRequest::Builder out, const generate_params& p, const std::string& default_key) {
  out.setModel(text(p.model));
  out.setPrompt(text(p.prompt));
  auto ids = out.initPromptIds(static_cast<unsigned>(p.prompt_ids.size()));
  for (unsigned i = 0; i < p.prompt_ids.size(); ++i) ids.set(i, p.prompt_ids[i]);
  auto s = out.initSampling();
  s.setTemperature(p.sampling.temperature);
  s.setTopK(p.sampling.top_k);
  s.setTopP(p.sampling.top_p);
  s.setMinP(p.sampling.min_p);
  s.setRepetitionPenalty(p.sampling.repetition_penalty);
  s.setPresencePenalty(p.sampling.presence_penalty);
  s.setFrequencyPenalty(p.sampling.frequency_penalty);
  s.setHasSeed(p.sampling.seed.has_value());
  s.setSeed(p.sampling.seed.value_or(0));
  out.setMaxTokens(p.max_tokens);
  out.setIgnoreEos(p.ignore_eos);
  auto stop = out.initStop(static_cast<unsigned>(p.stop.size()));
  for (unsigned i = 0; i < p.stop.size(); ++i) stop.set(i, text(p.stop[i]));
  auto stop_ids = out.initStopTokenIds(static_cast<unsigned>(p.stop_ids.size()));
  for (unsigned i = 0; i < p.stop_ids.size(); ++i) stop_ids.set(i, p.stop_ids[i]);
  out.setPriority(p.priority);
  out.setKind(text(p.kind));
  out.setAddSpecial(p.add_special);
  out.setSpecialsAsText(p.specials_as_text);
  out.setRequestId(text(p.request_id));
  out.setApiKey(text(p.api_key.empty() ? default_key : p.api_key));
  out.setNoCache(p.no_cache);
}

// A summary, or the exception it stands for when the generation ended in error.
summary convert(rpc::Summary::Reader s) {
  if (s.getFinishReason() == "error") {
    throw error(errc_from_string(str(s.getErrorCode())),
                "request " + str(s.getRequestId()) + " failed: " + str(s.getErrorMessage()));
  }
  summary out;
  out.request_id = str(s.getRequestId());
  out.finish_reason = str(s.getFinishReason());
  out.prompt_tokens = s.getPromptTokens();
  out.completion_tokens = s.getCompletionTokens();
  out.queue_seconds = s.getQueueSeconds();
  out.ttft_seconds = s.getTtftSeconds();
  out.total_seconds = s.getTotalSeconds();
  out.replica = str(s.getReplica());
  out.cached = s.getCached();
  return out;
}

[[noreturn]] void throw_refusal(rpc::Error::Reader e) {
  throw error(errc_from_string(str(e.getCode())), str(e.getMessage()));
}

// What a generation's TokenSink has seen, shared with the waiting call.
struct stream_state {
  const chunk_callback* on_chunk = nullptr;
  std::function<void()> cancel;
  bool stopped = false;        // the callback asked to cancel, or threw
  std::exception_ptr failure;  // what the callback threw, or the generation's error
};

class sink_impl final : public rpc::TokenSink::Server {
 public:
  sink_impl(std::shared_ptr<stream_state> state, kj::Own<kj::PromiseFulfiller<summary>> done)
      : state_(std::move(state)), done_(kj::mv(done)) {}
  // The connection went away before `done` (the gateway stopped or the network broke).
  ~sink_impl() noexcept(false) {
    if (done_->isWaiting())
      done_->reject(
          KJ_EXCEPTION(DISCONNECTED, "the gateway dropped the stream before its summary"));
  }

 protected:
  kj::Promise<void> chunk(ChunkContext ctx) override {
    if (state_->stopped || !state_->on_chunk || !*state_->on_chunk) return kj::READY_NOW;
    auto c = ctx.getParams().getChunk();
    shoal::client::chunk out;
    for (auto id : c.getTokenIds()) out.ids.push_back(id);
    out.text = str(c.getText());
    out.index = c.getIndex();
    out.cached = c.getCached();
    bool keep = true;
    try {
      keep = (*state_->on_chunk)(out);
    } catch (...) {
      state_->failure = std::current_exception();
      keep = false;
    }
    if (!keep) {
      state_->stopped = true;
      state_->cancel();
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> done(DoneContext ctx) override {
    try {
      done_->fulfill(convert(ctx.getParams().getSummary()));
    } catch (const error&) {
      // A generation that ended in error: the waiting call throws it.
      state_->failure = std::current_exception();
      done_->fulfill(summary{});
    }
    return kj::READY_NOW;
  }

 private:
  std::shared_ptr<stream_state> state_;
  kj::Own<kj::PromiseFulfiller<summary>> done_;
};

}  // namespace

errc errc_from_string(const std::string& code) {
  // Every code, so a code added to errc is understood here too (internal is the last).
  for (int i = 0; i <= static_cast<int>(errc::internal); ++i) {
    if (code == to_string(static_cast<errc>(i))) return static_cast<errc>(i);
  }
  return errc::internal;
}

std::pair<std::string, std::int32_t> parse_endpoint(const std::string& endpoint) {
  const auto colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) {
    throw error(errc::invalid_argument, "expected HOST:PORT, got '" + endpoint + "'");
  }
  std::string host = endpoint.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  const std::string port_text = endpoint.substr(colon + 1);
  std::size_t used = 0;
  int port = -1;
  try {
    port = std::stoi(port_text, &used);
  } catch (const std::exception&) {
  }
  if (used != port_text.size() || port <= 0 || port > 65535) {
    throw error(errc::invalid_argument,
                "'" + port_text + "' in '" + endpoint + "' is not a port number");
  }
  return {host, port};
}

struct client::impl {
  std::shared_ptr<thread_io> tio = this_thread_io();
  std::string host;
  std::int32_t port;
  client_options opts;
  // The connection; reset to connect again after it broke. Destroyed in reverse order.
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyVatNetwork> network;
  kj::Own<capnp::RpcSystem<capnp::rpc::twoparty::VatId>> rpc_system;
  kj::Maybe<rpc::Shoal::Client> shoal;
  kj::Maybe<kj::ForkedPromise<void>> disconnected;
  kj::Maybe<kj::Promise<void>> disconnect_watch;  // sets `broken` when the connection ends
  bool broken = false;
  // The peer has answered a call on this connection: it speaks Shoal's RPC. Until then any failure
  // (no answer, a close, bytes that are not Cap'n Proto) means it is not a Shoal RPC gateway.
  bool verified = false;
  // cancel() from any thread reaches the running generation through these. A cancel that comes
  // before the gateway has answered (no handle yet) is kept in `cancel_requested`.
  std::mutex cancel_mutex;
  bool streaming = false;
  bool cancel_requested = false;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> cancel_fulfiller;

  ~impl() { disconnect(); }

  kj::WaitScope& ws() { return tio->io.waitScope; }

  std::string where() const { return host + ":" + std::to_string(port); }

  void disconnect() {
    verified = false;
    shoal = nullptr;
    disconnect_watch = nullptr;
    disconnected = nullptr;
    rpc_system = nullptr;
    network = nullptr;
    stream = nullptr;
  }

  rpc::Shoal::Client& connect() {
    // Notice a connection the gateway closed while this client was idle, and connect again.
    ws().poll();
    if (broken) disconnect();
    KJ_IF_MAYBE (s, shoal) {
      return *s;
    }
    broken = false;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                   auto& timer = tio->io.provider->getTimer();
                   auto addr = tio->io.provider->getNetwork()
                                   .parseAddress(host, static_cast<unsigned>(port))
                                   .wait(ws());
                   stream = timer
                                .timeoutAfter(opts.connect_timeout_ms * kj::MILLISECONDS,
                                              addr->connect())
                                .wait(ws());
                 })) {
      disconnect();
      throw error(errc::unavailable, "cannot connect to the Shoal gateway at " + where() + ": " +
                                         e->getDescription().cStr());
    }
    capnp::ReaderOptions limits;
    limits.traversalLimitInWords = opts.max_message_words;
    network =
        kj::heap<capnp::TwoPartyVatNetwork>(*stream, capnp::rpc::twoparty::Side::CLIENT, limits);
    rpc_system = kj::heap(capnp::makeRpcClient(*network));
    auto& forked = disconnected.emplace(network->onDisconnect().fork());
    disconnect_watch = forked.addBranch().then([this] { broken = true; }).eagerlyEvaluate(nullptr);
    capnp::MallocMessageBuilder message(8);
    auto vat = message.initRoot<capnp::rpc::twoparty::VatId>();
    vat.setSide(capnp::rpc::twoparty::Side::SERVER);
    shoal = rpc_system->bootstrap(vat).castAs<rpc::Shoal>();
    return KJ_ASSERT_NONNULL(shoal);
  }

  /// Waits for `p`, turning kj failures into shoal::error; a lost connection is dropped so the
  /// next call connects again.
  template <class T>
  T wait(kj::Promise<T>&& p) {
    std::optional<T> out;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { out.emplace(p.wait(ws())); })) {
      fail(*e);
    }
    return std::move(*out);
  }

  /// As wait(), for a call that answers at once: a peer that accepted the connection but does not
  /// answer within opts.call_timeout_ms (not a Shoal gateway, or a stuck one) is an error naming it.
  template <class T>
  T wait_answer(kj::Promise<T>&& p, const char* call) {
    bool timed_out = false;
    auto timeout = opts.call_timeout_ms <= 0
                       ? kj::Promise<T>(kj::NEVER_DONE)
                       : tio->io.provider->getTimer()
                             .afterDelay(opts.call_timeout_ms * kj::MILLISECONDS)
                             .then([&timed_out]() -> T {
                               timed_out = true;
                               kj::throwFatalException(KJ_EXCEPTION(FAILED, "call timed out"));
                             });
    std::optional<T> out;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { out.emplace(p.exclusiveJoin(kj::mv(timeout)).wait(ws())); })) {
      if (timed_out) {
        disconnect();
        throw error(errc::unavailable, "the peer at " + where() + " did not answer '" + call + "' within " +
                                           std::to_string(opts.call_timeout_ms) +
                                           " ms: it is not a Shoal RPC gateway, or a stuck one (is that address a "
                                           "Shoal gateway's RPC port?)");
      }
      if (!verified) not_a_gateway(*e);
      fail(*e);
    }
    verified = true;
    return std::move(*out);
  }

  /// Before a call whose answer may take long (a generation), makes sure the peer is a Shoal RPC
  /// gateway: one health call within the call timeout on a connection that has not answered yet.
  void ensure_gateway(const char* call) {
    if (verified) return;
    wait_answer(KJ_ASSERT_NONNULL(shoal).healthRequest().send(), call);
  }

  /// A failure before the peer ever answered: it does not speak Shoal's RPC (an HTTP server closes
  /// on the Cap'n Proto bytes; a CAF node's handshake reads as a giant message), unless it said
  /// it is full (a gateway at its connection limit).
  [[noreturn]] void not_a_gateway(const kj::Exception& e) {
    const std::string what = e.getDescription().cStr();
    disconnect();
    // An exception the peer sent (Cap'n Proto prefixes those so) shows it speaks Cap'n Proto RPC:
    // a gateway refusing the connection (at its connection limit), not a stranger.
    if (e.getType() == kj::Exception::Type::OVERLOADED || what.rfind("remote exception: ", 0) == 0) {
      throw error(errc::overloaded, "the Shoal gateway at " + where() + " refused the connection: " +
                                        what.substr(what.rfind("remote exception: ", 0) == 0 ? 18 : 0));
    }
    throw error(errc::unavailable, "the peer at " + where() +
                                       " is not a Shoal RPC gateway: the connection failed before any answer (" + what +
                                       "); is that the gateway's RPC port (rpc_port)?");
  }

  [[noreturn]] void fail(const kj::Exception& e) {
    const std::string what = e.getDescription().cStr();
    if (what.find("larger than our single-message size limit") != std::string::npos) {
      // Refused here, before sending: the connection is still good.
      throw error(errc::out_of_range,
                  "the request is larger than the " +
                      std::to_string(opts.max_message_words * 8 >> 20) +
                      " MiB a Cap'n Proto message may hold here (the gateway's default limit)");
    }
    if (what.find("too large") != std::string::npos ||
        what.find("nesting limit") != std::string::npos) {
      disconnect();
      throw error(errc::out_of_range,
                  "the Shoal gateway at " + where() +
                      " refused the message and closed the connection: " + what);
    }
    if (e.getType() == kj::Exception::Type::OVERLOADED) {
      disconnect();
      throw error(errc::overloaded, "the Shoal gateway at " + where() + " refused: " + what);
    }
    if (e.getType() == kj::Exception::Type::DISCONNECTED) {
      disconnect();
      throw error(errc::unavailable,
                  "lost the connection to the Shoal gateway at " + where() + ": " + what);
    }
    throw error(errc::internal, "the Shoal gateway at " + where() + " failed the call: " + what);
  }

  // generate and chat: send `request` (with the sink set), stream until done.
  template <class Request>
  summary run_stream(Request&& request, std::shared_ptr<stream_state> state,
                     kj::Promise<summary>&& done) {
    {
      std::lock_guard lock(cancel_mutex);
      streaming = true;
      cancel_requested = false;
    }
    KJ_DEFER({
      std::lock_guard lock(cancel_mutex);
      streaming = false;
      cancel_fulfiller = nullptr;
    });
    auto resp = wait(request.send());
    if (resp.hasError()) throw_refusal(resp.getError());
    // Keep `resp` (and its handle) until the end: dropping the handle cancels the generation.
    auto handle = resp.getHandle();
    auto cancel = kj::newPromiseAndCrossThreadFulfiller<void>();
    {
      std::lock_guard lock(cancel_mutex);
      if (cancel_requested)
        cancel.fulfiller->fulfill();
      else
        cancel_fulfiller = kj::mv(cancel.fulfiller);
    }
    auto cancelling =
        cancel.promise
            .then([handle]() mutable { return handle.cancelRequest().send().ignoreResult(); })
            .eagerlyEvaluate([](kj::Exception&&) {});
    // The server going away ends the wait too (the sink would otherwise wait forever).
    auto lost = KJ_ASSERT_NONNULL(disconnected).addBranch().then([]() -> summary {
      kj::throwFatalException(
          KJ_EXCEPTION(DISCONNECTED, "the gateway closed the connection mid-stream"));
    });
    std::optional<summary> result;
    auto e = kj::runCatchingExceptions(
        [&] { result.emplace(done.exclusiveJoin(kj::mv(lost)).wait(ws())); });
    if (state->failure) std::rethrow_exception(state->failure);
    KJ_IF_MAYBE (ex, e) {
      fail(*ex);
    }
    return *result;
  }
};

client::client(std::string host, std::int32_t port, client_options opts)
    : impl_(std::make_unique<impl>()) {
  impl_->host = std::move(host);
  impl_->port = port;
  impl_->opts = opts;
  if (impl_->opts.api_key.empty()) {
    if (const char* k = std::getenv("SHOAL_API_KEY")) impl_->opts.api_key = k;
  }
  impl_->connect();
}

client::~client() = default;

summary client::generate(const generate_params& params, const chunk_callback& on_chunk) {
  auto& shoal = impl_->connect();
  impl_->ensure_gateway("generate");
  auto done = kj::newPromiseAndFulfiller<summary>();
  auto state = std::make_shared<stream_state>();
  state->on_chunk = &on_chunk;
  state->cancel = [this] { cancel(); };
  auto req = shoal.generateRequest();
  fill(req.initRequest(), params, impl_->opts.api_key);
  req.setSink(kj::heap<sink_impl>(state, kj::mv(done.fulfiller)));
  return impl_->run_stream(kj::mv(req), state, kj::mv(done.promise));
}

summary client::chat(const chat_params& params, const chunk_callback& on_chunk) {
  auto& shoal = impl_->connect();
  impl_->ensure_gateway("chat");
  auto done = kj::newPromiseAndFulfiller<summary>();
  auto state = std::make_shared<stream_state>();
  state->on_chunk = &on_chunk;
  state->cancel = [this] { cancel(); };
  auto req = shoal.chatRequest();
  auto r = req.initRequest();
  auto msgs = r.initMessages(static_cast<unsigned>(params.messages.size()));
  for (unsigned i = 0; i < params.messages.size(); ++i) {
    msgs[i].setRole(text(params.messages[i].role));
    msgs[i].setContent(text(params.messages[i].content));
  }
  r.setMessagesJson(text(params.messages_json));
  r.setToolsJson(text(params.tools_json));
  r.setAddGenerationPrompt(params.add_generation_prompt);
  fill(r.initGeneration(), params.generation, impl_->opts.api_key);
  req.setSink(kj::heap<sink_impl>(state, kj::mv(done.fulfiller)));
  return impl_->run_stream(kj::mv(req), state, kj::mv(done.promise));
}

completion client::complete(const generate_params& params) {
  impl_->connect();
  impl_->ensure_gateway("complete");
  auto req = KJ_ASSERT_NONNULL(impl_->shoal).completeRequest();
  fill(req.initRequest(), params, impl_->opts.api_key);
  auto resp = impl_->wait(req.send());
  if (resp.hasError()) throw_refusal(resp.getError());
  auto c = resp.getCompletion();
  completion out;
  out.info = convert(c.getSummary());
  out.request_id = str(c.getRequestId());
  for (auto id : c.getTokenIds()) out.ids.push_back(id);
  out.text = str(c.getText());
  return out;
}

std::vector<std::int32_t> client::tokenize(const std::string& text_in, const std::string& model,
                                           bool add_special) {
  auto req = impl_->connect().tokenizeRequest();
  req.setModel(text(model));
  req.setText(text(text_in));
  req.setAddSpecial(add_special);
  auto resp = impl_->wait_answer(req.send(), "tokenize");
  if (resp.hasError()) throw_refusal(resp.getError());
  std::vector<std::int32_t> ids;
  for (auto id : resp.getIds()) ids.push_back(id);
  return ids;
}

std::vector<model_info> client::models() {
  auto resp = impl_->wait_answer(impl_->connect().modelsRequest().send(), "models");
  std::vector<model_info> out;
  for (auto m : resp.getModels()) {
    out.push_back(
        {str(m.getName()), m.getContextLength(), m.getReplicas(), m.getHealthyReplicas()});
  }
  return out;
}

std::vector<std::string> client::admin(const admin_params& p) {
  auto req = impl_->connect().adminRequest();
  auto r = req.initRequest();
  r.setApiKey(text(p.api_key.empty() ? impl_->opts.api_key : p.api_key));
  r.setOp(text(p.op));
  r.setTenant(text(p.tenant));
  r.setPrincipal(text(p.principal));
  r.setOperation(text(p.operation));
  r.setSince(text(p.since));
  r.setUntil(text(p.until));
  r.setLimit(p.limit);
  auto resp = impl_->wait_answer(req.send(), "admin");
  if (resp.hasError()) throw_refusal(resp.getError());
  std::vector<std::string> out;
  for (auto l : resp.getLines()) out.push_back(str(l));
  return out;
}

health_info client::health() {
  auto resp = impl_->wait_answer(impl_->connect().healthRequest().send(), "health");
  auto h = resp.getHealth();
  health_info out;
  out.live = h.getLive();
  out.ready = h.getReady();
  out.detail = str(h.getDetail());
  for (auto r : h.getReplicas()) {
    out.replicas.push_back({str(r.getName()), str(r.getModel()), r.getHealthy(), str(r.getDetail()),
                            r.getKvUsage(), r.getWaiting(), r.getRunning()});
  }
  return out;
}

void client::cancel() {
  std::lock_guard lock(impl_->cancel_mutex);
  if (impl_->cancel_fulfiller)
    impl_->cancel_fulfiller->fulfill();
  else if (impl_->streaming)
    impl_->cancel_requested = true;
}

}  // namespace shoal::client
