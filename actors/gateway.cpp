// GCC 12 reports kj's ExceptionOr<T> (a Maybe<T> beside an exception) as maybe-uninitialized
// when T holds strings; a false positive in kj's headers, not in this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "actors/gateway.hpp"

#include <kj/async-io.h>
#include <kj/debug.h>

#include <atomic>
#include <cstdio>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include "engine/common/error.hpp"
#include "engine/model/model_info.hpp"
#include "engine/tokenizer/chat_template.hpp"
#include "actors/errors.hpp"
#include "server/door_telemetry.hpp"
#include "server/http_gateway.hpp"
#include "server/rpc_service.hpp"
#include "telemetry/log.hpp"

namespace shoal::actors {

namespace {

using server::outcome;
using server::pulled;

// ---- CAF threads -> the event loop

// Work that CAF threads post to the gateway's event loop. A posted task captures only plain data
// (ids, token chunks): it reaches kj objects through the loop's tables, on the loop thread, so a
// task dropped unrun (the loop has exited) is safe to destroy on any thread.
class inbox {
 public:
  using task = std::function<void()>;

  /// Queues `t` for the loop thread; false when the loop has exited (the task is dropped).
  bool post(task t) {
    std::lock_guard lock(mutex_);
    if (closed_) return false;
    queue_.push_back(std::move(t));
    if (wake_) {
      wake_->fulfill();
      wake_ = nullptr;
    }
    return true;
  }

  /// Loop thread: the queued tasks, or none and `wake` stored to be fulfilled by the next post().
  std::deque<task> take(kj::Own<kj::CrossThreadPromiseFulfiller<void>>& wake) {
    std::lock_guard lock(mutex_);
    std::deque<task> out;
    out.swap(queue_);
    if (out.empty()) wake_ = kj::mv(wake);
    return out;
  }

  /// Loop thread, before the loop exits: later posts are refused.
  void close() {
    std::deque<task> dropped;
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> wake;
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      dropped.swap(queue_);
      wake = kj::mv(wake_);
    }
  }

 private:
  std::mutex mutex_;
  bool closed_ = false;
  std::deque<task> queue_;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> wake_;
};

// An errc name and a message for a CAF error (the router answers tokenize with caf::error).
std::pair<std::string, std::string> describe(caf::actor_system&, const caf::error& e) {
  auto why = read_error(e, "the router");
  return {to_string(why.code), why.message};
}

// ---- the loop's state

class gateway_loop;

// One generation in flight, owned by gateway_loop::generations_ on the loop thread. Its tokens
// wait (coalescing) until the door that started it pulls them with next(); that door's pace is
// the flow control.
struct generation {
  std::uint64_t key = 0;
  std::string id;
  kj::Own<kj::PromiseFulfiller<submit_result>> submitted;
  kj::Own<kj::PromiseFulfiller<pulled>> waiting;  // a next() call waiting
  bool accepted = false;
  bool cancel_wanted = false;
  bool cancel_sent = false;
  bool consumer = true;  // false once the client can no longer receive the result
  std::optional<generation_summary> summary;
  std::vector<token_chunk> queued;
};

// The per-request CAF side: sends the request to the router with itself as the sink, and posts
// the answer, every chunk and the summary to the loop. When the loop is gone (the gateway
// stopped), it cancels the request instead, so no generation runs on for nobody.
sink_actor::behavior_type bridge(sink_actor::pointer self, std::shared_ptr<inbox> box,
                                 gateway_loop* loop, std::uint64_t key, router_actor router,
                                 generate_request req, caf::timespan timeout);

class gateway_loop final : public server::front_door {
 public:
  gateway_loop(caf::actor_system& sys, router_actor router, gateway_options opts)
      : sys_(sys),
        router_(std::move(router)),
        opts_(std::move(opts)),
        telemetry_(opts_.registry, opts_.pii),
        inbox_(std::make_shared<inbox>()) {
    std::random_device rd;
    char buf[16];
    std::snprintf(buf, sizeof(buf), "%08x", rd());
    id_prefix_ = std::string("rpc-") + buf + "-";
    load_tokenizers();
  }

  const server::door_options& options() const override { return opts_; }
  server::door_telemetry& telemetry() override { return telemetry_; }

  /// Runs the tasks CAF threads post, until the loop exits.
  kj::Promise<void> drain_inbox() {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    auto batch = inbox_->take(paf.fulfiller);
    if (batch.empty()) return paf.promise.then([this] { return drain_inbox(); });
    for (auto& t : batch) {
      try {
        t();
      } catch (const std::exception& e) {
        log::error("gateway: {}", telemetry_.for_log(e.what()));
      } catch (const kj::Exception& e) {
        log::error("gateway: {}", telemetry_.for_log(e));
      }
    }
    // Yield to I/O between batches.
    return kj::evalLater([this] { return drain_inbox(); });
  }

  /// Asks the router from a short-lived helper actor, waiting `timeout_ms` for its answer; the
  /// answer comes back through the inbox, so the event loop never blocks on CAF.
  template <class T, class... Ts>
  kj::Promise<outcome<T>> ask(std::int32_t timeout_ms, Ts... xs) {
    const auto key = ++next_key_;
    auto paf = kj::newPromiseAndFulfiller<outcome<T>>();
    pending_.emplace(key, kj::heap<pending<T>>(kj::mv(paf.fulfiller)));
    auto box = inbox_;
    auto* loop = this;
    auto router = router_;
    const caf::timespan timeout = std::chrono::milliseconds(timeout_ms);
    // The helper may start on a CAF worker thread: it captures copies, never `this`'s members.
    // `key` goes as a spawn argument: CAF 0.17 dereferences a null argument tuple when a function
    // actor is spawned without arguments (UBSan stops there).
    sys_.spawn(
        [box, loop, router, timeout, xs...](caf::event_based_actor* self, std::uint64_t key) {
          self->request(router, timeout, xs...)
              .then(
                  [=](T& v) {
                    outcome<T> o;
                    o.value = std::move(v);
                    box->post([=] { loop->resolve(key, o); });
                  },
                  [=](caf::error& e) {
                    outcome<T> o;
                    std::tie(o.code, o.message) = describe(self->system(), e);
                    box->post([=] { loop->resolve(key, o); });
                  });
        },
        key);
    return kj::mv(paf.promise);
  }

  template <class T>
  void resolve(std::uint64_t key, const outcome<T>& o) {
    auto it = pending_.find(key);
    if (it == pending_.end()) return;
    auto p = kj::mv(it->second);
    pending_.erase(it);
    static_cast<pending<T>&>(*p).fulfiller->fulfill(outcome<T>(o));
  }

  // ---- front_door

  kj::Promise<outcome<auth_result>> authenticate(door_caller caller) override {
    return ask<auth_result>(opts_.query_timeout_ms, authn_atom::value, std::move(caller));
  }

  void refused(door_refusal refusal) override { caf::anon_send(router_, refused_atom::value, std::move(refusal)); }

  started_pull start(generate_request req) override {
    const auto key = ++next_key_;
    if (req.id.empty()) req.id = id_prefix_ + std::to_string(key);
    auto g = kj::heap<generation>();
    g->key = key;
    g->id = req.id;
    auto submitted = kj::newPromiseAndFulfiller<submit_result>();
    g->submitted = kj::mv(submitted.fulfiller);
    generations_.emplace(key, kj::mv(g));
    sys_.spawn(bridge, inbox_, this, key, router_, std::move(req),
               caf::timespan{std::chrono::milliseconds(opts_.submit_timeout_ms)});
    return {key, kj::mv(submitted.promise)};
  }

  kj::Promise<pulled> next(std::uint64_t key) override {
    auto* g = find(key);
    if (!g) {
      pulled p;
      p.summary.emplace();
      p.summary->finish_reason = "error";
      p.summary->error_code = to_string(errc::internal);
      p.summary->error_message = "the gateway has no generation " + std::to_string(key);
      return p;
    }
    auto paf = kj::newPromiseAndFulfiller<pulled>();
    g->waiting = kj::mv(paf.fulfiller);
    deliver(key);
    return kj::mv(paf.promise);
  }

  /// Cancels the generation (idempotent; a no-op once it has finished). A cancel that arrives
  /// before the router accepted the request is sent when it does.
  void cancel(std::uint64_t key) override {
    auto* g = find(key);
    if (!g || g->summary) return;
    g->cancel_wanted = true;
    if (g->accepted && !g->cancel_sent) {
      g->cancel_sent = true;
      caf::anon_send(router_, cancel_atom::value, g->id);
    }
  }

  /// The client can no longer take the result (its call was cancelled, its sink failed): cancel,
  /// and drop the generation once its summary arrives.
  void abandon(std::uint64_t key) override {
    auto* g = find(key);
    if (!g) return;
    if (g->summary) {
      forget(key);
      return;
    }
    g->consumer = false;
    g->queued.clear();
    // A next() still waiting belongs to a client that is gone (another choice of its request hit
    // the broken connection): it ends as a disconnect, which the doors count and log at debug. A
    // dropped fulfiller would end it as kj's FAILED "PromiseFulfiller was destroyed", an error.
    if (g->waiting) {
      auto waiting = kj::mv(g->waiting);
      waiting->reject(KJ_EXCEPTION(DISCONNECTED, "the client went away"));
    }
    cancel(key);
  }

  kj::Promise<outcome<cluster_status>> status() override {
    return ask<cluster_status>(opts_.query_timeout_ms, status_atom::value);
  }

  kj::Promise<outcome<std::vector<std::int32_t>>> tokenize(tokenize_request req) override {
    return ask<std::vector<std::int32_t>>(opts_.query_timeout_ms, tokenize_atom::value, std::move(req));
  }

  kj::Promise<outcome<admin_result>> admin(admin_request req) override {
    return ask<admin_result>(opts_.admin_timeout_ms, admin_atom::value, std::move(req));
  }

  server::rendered_chat render_chat(const std::string& model, const nlohmann::ordered_json& messages,
                                    const nlohmann::ordered_json& tools, bool add_generation_prompt) override {
    if (opts_.models.empty()) {
      throw error(errc::unsupported, "this gateway was started without model paths, so it cannot render chats");
    }
    if (!messages.is_array()) throw error(errc::invalid_argument, "the messages must be a JSON array");
    if (messages.empty()) throw error(errc::invalid_argument, "the chat has no messages");
    for (const auto& m : messages) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        throw error(errc::invalid_argument, "every chat message needs a string \"role\"");
      }
    }
    const auto& tok = model_tokenizer(model);
    if (!tok.chat_template()) {
      throw error(errc::unsupported,
                  "model '" + (model.empty() ? opts_.models.front().first : model) + "' has no chat template");
    }
    chat_template_vars vars;
    vars.messages = messages;
    vars.tools = tools;
    vars.add_generation_prompt = add_generation_prompt;
    vars.bos_token = tok.bos_token();
    vars.eos_token = tok.eos_token();
    auto located = render_chat_template_located(*tok.chat_template(), vars);
    if (located.text.size() > static_cast<std::size_t>(opts_.max_prompt_bytes)) {
      throw error(errc::out_of_range, "the rendered chat is " + std::to_string(located.text.size()) +
                                          " bytes; this gateway accepts at most " +
                                          std::to_string(opts_.max_prompt_bytes));
    }
    server::rendered_chat out;
    if (located.located) {
      for (const auto& r : located.template_ranges) {
        out.special_ranges.push_back(static_cast<std::int32_t>(r.begin));
        out.special_ranges.push_back(static_cast<std::int32_t>(r.end));
      }
      // No template text at all: nothing may be parsed (an empty list would mean "everywhere").
      out.parse_special = !out.special_ranges.empty();
    } else {
      // The template transforms contents, so where they went is unknown. When none of them holds a
      // special-token string, parsing the whole prompt gives exactly the ids a located one would;
      // otherwise there is no safe way to keep them text.
      for (const auto& c : located.contents) {
        if (tok.encode(c, encode_options{false, true}) !=
            tok.encode(c, encode_options{false, false})) {
          throw error(errc::invalid_argument,
                      "a message holds a special-token string, and this model's chat template transforms message "
                      "contents, so it cannot be kept as plain text; remove the special-token text");
        }
      }
      if (!located.text.empty()) out.special_ranges = {0, static_cast<std::int32_t>(located.text.size())};
      out.parse_special = !located.text.empty();
    }
    out.prompt = std::move(located.text);
    return out;
  }

  std::optional<std::string> served_name(const std::string& model) const override {
    if (opts_.models.empty()) return model;
    if (model.empty()) return opts_.models.front().first;
    if (model_path(model)) return model;
    return std::nullopt;
  }

  std::optional<std::string> unknown_model(const std::string& model) const override {
    if (opts_.models.empty() || model.empty() || model_path(model)) return std::nullopt;
    std::string served;
    for (const auto& [name, _] : opts_.models) served += (served.empty() ? "" : ", ") + name;
    return "unknown model '" + model + "' (served: " + served + ")";
  }

  // ---- from the bridge (loop thread)

  void on_submit(std::uint64_t key, const submit_result& r) {
    auto* g = find(key);
    if (!g) return;
    g->accepted = r.accepted;
    g->submitted->fulfill(submit_result(r));
    if (!r.accepted) {
      forget(key);
      return;
    }
    if (g->cancel_wanted) cancel(key);
  }

  void on_chunk(std::uint64_t key, const token_chunk& c) {
    auto* g = find(key);
    if (!g || !g->consumer) return;
    g->queued.push_back(c);
    deliver(key);
  }

  void on_summary(std::uint64_t key, const generation_summary& s) {
    auto* g = find(key);
    if (!g) return;
    g->summary = s;
    if (!g->consumer) {
      forget(key);
    } else {
      deliver(key);
    }
  }

  // ---- stopping

  /// Cancels every generation and resolves once each has ended (delivered or abandoned).
  kj::Promise<void> cancel_all() {
    for (auto& [key, g] : generations_) cancel(key);
    if (generations_.empty()) return kj::READY_NOW;
    auto paf = kj::newPromiseAndFulfiller<void>();
    idle_ = kj::mv(paf.fulfiller);
    return kj::mv(paf.promise);
  }

  /// Before the loop exits: cancel everything in flight, refuse further posts, drop kj state that
  /// refers to client connections.
  void shutdown() {
    for (auto& [key, g] : generations_) cancel(key);
    inbox_->close();
    idle_ = nullptr;
    generations_.clear();
    pending_.clear();
  }

 private:
  struct pending_base {
    virtual ~pending_base() noexcept(false) = default;
  };
  template <class T>
  struct pending : pending_base {
    explicit pending(kj::Own<kj::PromiseFulfiller<outcome<T>>> f) : fulfiller(kj::mv(f)) {}
    kj::Own<kj::PromiseFulfiller<outcome<T>>> fulfiller;
  };

  generation* find(std::uint64_t key) {
    auto it = generations_.find(key);
    return it == generations_.end() ? nullptr : it->second.get();
  }

  void forget(std::uint64_t key) {
    generations_.erase(key);
    if (generations_.empty() && idle_) {
      idle_->fulfill();
      idle_ = nullptr;
    }
  }

  // Hands what has arrived to a waiting next() call; the generation ends with its summary.
  void deliver(std::uint64_t key) {
    auto* g = find(key);
    if (!g || !g->waiting || (g->queued.empty() && !g->summary)) return;
    pulled p;
    p.chunks = std::move(g->queued);
    g->queued.clear();
    p.summary = g->summary;
    auto f = kj::mv(g->waiting);
    if (p.summary) forget(key);
    f->fulfill(kj::mv(p));
  }

  /// Loads every served model's tokenizer (for chat templates), before the doors open: a large
  /// vocabulary takes a while to load, which on the event loop would stall both doors and /livez.
  /// A model whose tokenizer does not load keeps its error, for the chats that ask for it.
  void load_tokenizers() {
    for (const auto& [name, path] : opts_.models) {
      auto& t = tokenizers_[name];
      if (t.tok || !t.why.empty()) continue;  // a name served twice: the first entry, as model_path
      try {
        t.tok = load_model_tokenizer(path);
      } catch (const error& e) {
        t.code = e.code();
        t.why = e.what();
      } catch (const std::exception& e) {
        t.code = errc::internal;
        t.why = "model '" + name + "': its tokenizer did not load: " + e.what();
      }
      if (!t.tok) log::warn("gateway: chats for model '{}' will be refused: {}", name, t.why);
    }
  }

  /// The tokenizer of a served model ("" = the default), loaded at start; throws its load error.
  const tokenizer& model_tokenizer(const std::string& model) const {
    const auto name = served_name(model);
    const auto it = name ? tokenizers_.find(*name) : tokenizers_.end();
    if (it == tokenizers_.end()) throw error(errc::not_found, "unknown model '" + model + "'");
    if (!it->second.tok) throw error(it->second.code, it->second.why);
    return *it->second.tok;
  }

  /// The path of a served model ("" = the default), or null when the gateway does not know it.
  const std::string* model_path(const std::string& model) const {
    if (opts_.models.empty()) return nullptr;
    if (model.empty()) return &opts_.models.front().second;
    for (const auto& [name, path] : opts_.models) {
      if (name == model) return &path;
    }
    return nullptr;
  }

  caf::actor_system& sys_;
  router_actor router_;
  gateway_options opts_;
  server::door_telemetry telemetry_;
  std::shared_ptr<inbox> inbox_;
  std::string id_prefix_;
  std::uint64_t next_key_ = 0;
  // All below: touched on the loop thread only.
  std::unordered_map<std::uint64_t, kj::Own<generation>> generations_;
  std::unordered_map<std::uint64_t, kj::Own<pending_base>> pending_;
  // A served model's tokenizer, or why it did not load.
  struct loaded_tokenizer {
    std::unique_ptr<tokenizer> tok;
    errc code = errc::internal;
    std::string why;
  };
  std::map<std::string, loaded_tokenizer> tokenizers_;  // by served name; filled at start, read only after
  kj::Own<kj::PromiseFulfiller<void>> idle_;  // cancel_all() waiting for the last generation
};

sink_actor::behavior_type bridge(sink_actor::pointer self, std::shared_ptr<inbox> box,
                                 gateway_loop* loop, std::uint64_t key, router_actor router,
                                 generate_request req, caf::timespan timeout) {
  const std::string id = req.id;
  // The gateway has stopped: nobody will read this request's tokens.
  auto orphaned = [=] {
    caf::anon_send(router, cancel_atom::value, id);
    self->quit();
  };
  self->set_down_handler([=](caf::down_msg& dm) {
    generation_summary s;
    s.id = id;
    s.finish_reason = "error";
    s.error_code = to_string(errc::unavailable);
    s.error_message =
        "the replica serving the request stopped (" + self->system().render(dm.reason) + ")";
    box->post([=] { loop->on_summary(key, s); });
    self->quit();
  });
  req.sink = caf::actor_cast<sink_actor>(self);
  self->request(router, timeout, generate_atom::value, std::move(req))
      .then(
          [=](submit_result& r) {
            const bool accepted = r.accepted;
            const bool delivered = box->post([=] { loop->on_submit(key, r); });
            // A refused request runs nowhere: nothing to cancel (and a cancel by its id could reach
            // another request that holds the id, which is why this one was refused).
            if (!accepted) return self->quit();
            if (!delivered) return orphaned();
            // The answer comes from the replica's batcher: should it stop before the summary,
            // the client gets an error instead of waiting forever.
            if (self->current_sender()) self->monitor(self->current_sender());
          },
          [=](caf::error& e) {
            submit_result r;
            r.id = id;
            std::tie(r.error_code, r.error_message) = describe(self->system(), e);
            box->post([=] { loop->on_submit(key, r); });
            // It may still be accepted after the timeout: make sure it does not run.
            orphaned();
          });
  return {
      [=](token_chunk& c) {
        if (!box->post([=] { loop->on_chunk(key, c); })) orphaned();
      },
      [=](generation_summary& s) {
        box->post([=] { loop->on_summary(key, s); });
        self->quit();
      },
  };
}

// Listens on host:port; throws shoal::error (unavailable) naming `what` when it cannot.
kj::Own<kj::ConnectionReceiver> listen_on(kj::AsyncIoContext& io, const std::string& host, std::int32_t port,
                                          const std::string& what) {
  kj::Own<kj::ConnectionReceiver> listener;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                 auto addr = io.provider->getNetwork().parseAddress(host, static_cast<unsigned>(port)).wait(io.waitScope);
                 listener = addr->listen();
               })) {
    throw error(errc::unavailable, what + " cannot listen on " + host + ":" + std::to_string(port) + ": " +
                                       e->getDescription().cStr());
  }
  return listener;
}

class gateway_impl final : public gateway_server {
  // How long stop() waits for cancelled generations to deliver their summaries.
  static constexpr int stop_grace_ms = 2000;

 public:
  gateway_impl(caf::actor_system& sys, router_actor router, gateway_options opts) {
    std::promise<kj::Own<kj::CrossThreadPromiseFulfiller<void>>> ready;
    auto started = ready.get_future();
    thread_ =
        std::thread([this, &sys, router = std::move(router), opts = std::move(opts),
                     &ready]() mutable { run(sys, std::move(router), std::move(opts), ready); });
    try {
      stop_ = started.get();
    } catch (...) {
      thread_.join();
      throw;
    }
  }

  ~gateway_impl() noexcept override { stop(); }

  std::int32_t port() const override { return port_; }
  std::int32_t http_port() const override { return http_port_; }

  void stop() override {
    if (!thread_.joinable()) return;
    stop_->fulfill();
    thread_.join();
    stop_ = nullptr;
  }

 private:
  void run(caf::actor_system& sys, router_actor router, gateway_options opts,
           std::promise<kj::Own<kj::CrossThreadPromiseFulfiller<void>>>& ready) {
    // How a failure of the loop is logged: kj's descriptions can quote request bytes, so masked
    // and cut like everything else the doors log (its own masker: `loop`'s may not exist yet).
    const server::door_telemetry failure_log(nullptr, opts.pii);
    bool started = false;
    try {
      auto io = kj::setupAsyncIo();
      auto listener = listen_on(io, opts.host, opts.port, "the gateway");
      port_ = static_cast<std::int32_t>(listener->getPort());
      kj::Own<kj::ConnectionReceiver> http_listener;
      if (opts.http) {
        http_listener = listen_on(io, opts.host, opts.http_port, "the HTTP gateway");
        http_port_ = static_cast<std::int32_t>(http_listener->getPort());
      }

      gateway_loop loop(sys, std::move(router), std::move(opts));
      // However the loop ends, stopped or failed: generations in flight are cancelled and the
      // inbox refuses later posts (a bridge whose post is refused cancels its request), so nothing
      // runs on for a loop that is gone. Declared before the doors, so it runs after they are
      // dropped (their connections still call into `loop` as they close).
      KJ_DEFER(loop.shutdown());
      // kj's own log lines (it quotes request bytes in some) go to the node log at debug, masked.
      server::kj_log_to_debug kj_log(loop.telemetry());
      auto stop = kj::newPromiseAndCrossThreadFulfiller<void>();
      ready.set_value(kj::mv(stop.fulfiller));
      started = true;
      auto inbox_task = loop.drain_inbox().eagerlyEvaluate([&loop](kj::Exception&& e) {
        log::error("gateway: inbox: {}", loop.telemetry().for_log(e));
      });
      // Both doors on the same loop, reaching the router through `loop`.
      auto rpc = server::make_rpc_door(loop, io.provider->getTimer());
      auto accepting = rpc->listen(*listener);
      kj::Own<server::http_gateway> http;
      if (http_listener) {
        http = server::make_http_gateway(loop, io.provider->getTimer());
        accepting = accepting.exclusiveJoin(http->listen(*http_listener));
      }
      stop.promise.exclusiveJoin(kj::mv(accepting)).wait(io.waitScope);
      // Stop accepting; cancel what is in flight and give clients a moment to receive their
      // "cancelled" summaries; then drop the connections (and with them the doors' objects that
      // refer to `loop`).
      listener = nullptr;
      http_listener = nullptr;
      loop.cancel_all()
          .exclusiveJoin(io.provider->getTimer().afterDelay(stop_grace_ms * kj::MILLISECONDS))
          .wait(io.waitScope);
    } catch (...) {
      if (!started) {
        ready.set_exception(std::current_exception());
        return;
      }
      // The loop itself failed: nothing can serve any more; say why rather than die silently.
      try {
        throw;
      } catch (const kj::Exception& e) {
        log::error("gateway: event loop failed: {}", failure_log.for_log(e));
      } catch (const std::exception& e) {
        log::error("gateway: event loop failed: {}", failure_log.for_log(e.what()));
      } catch (...) {
        log::error("gateway: event loop failed (an exception of no known type)");
      }
    }
  }

  std::thread thread_;
  std::atomic<std::int32_t> port_{0};
  std::atomic<std::int32_t> http_port_{0};
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> stop_;
};

}  // namespace

std::unique_ptr<gateway_server> start_gateway(caf::actor_system& sys, router_actor router,
                                              gateway_options opts) {
  return std::make_unique<gateway_impl>(sys, std::move(router), std::move(opts));
}

}  // namespace shoal::actors
