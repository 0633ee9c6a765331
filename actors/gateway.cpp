// GCC 12 reports kj's ExceptionOr<T> (a Maybe<T> beside an exception) as maybe-uninitialized
// when T holds strings; a false positive in kj's headers, not in this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "actors/gateway.hpp"
#include "telemetry/log.hpp"

#include <kj/compat/http.h>

#include <capnp/rpc-twoparty.h>
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

#include <nlohmann/json.hpp>

#include "actors/errors.hpp"
#include "server/front_door.hpp"
#include "server/http_gateway.hpp"
#include "engine/common/error.hpp"
#include "engine/model/model_info.hpp"
#include "engine/tokenizer/chat_template.hpp"
#include "schemas/shoal.capnp.h"

namespace shoal::actors {

namespace {

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

std::string str(capnp::Text::Reader t) {
  return std::string(t.begin(), t.size());
}
capnp::Text::Reader text(const std::string& s) {
  return capnp::Text::Reader(s.data(), s.size());
}

void fill_summary(rpc::Summary::Builder out, const generation_summary& s) {
  out.setRequestId(text(s.id));
  out.setFinishReason(text(s.finish_reason));
  out.setErrorCode(text(s.error_code));
  out.setErrorMessage(text(s.error_message));
  out.setPromptTokens(s.prompt_tokens);
  out.setCompletionTokens(s.completion_tokens);
  out.setQueueSeconds(s.queue_seconds);
  out.setTtftSeconds(s.ttft_seconds);
  out.setTotalSeconds(s.total_seconds);
  out.setReplica(text(s.replica));
  out.setCached(s.cached);
}

void set_error(rpc::Error::Builder e, const std::string& code, const std::string& message) {
  e.setCode(text(code));
  e.setMessage(text(message));
}

// An errc name and a message for a CAF error (the router answers tokenize with caf::error).
std::pair<std::string, std::string> describe(caf::actor_system&, const caf::error& e) {
  auto why = read_error(e, "the router");
  return {to_string(why.code), why.message};
}

// ---- the loop's state

class gateway_loop;

// One generation in flight, owned by gateway_loop::generations_ on the loop thread. Streaming
// (generate, chat) forwards chunks to the client's TokenSink, one call in flight at a time
// (Cap'n Proto's stream flow control), coalescing what arrives meanwhile; collecting (complete)
// keeps the tokens for the final answer.
struct generation {
  std::uint64_t key = 0;
  std::string id;
  kj::Maybe<rpc::TokenSink::Client> sink;
  kj::Own<kj::PromiseFulfiller<submit_result>> submitted;
  kj::Own<kj::PromiseFulfiller<generation_summary>> finished;  // collecting only
  bool pull = false;                                          // tokens wait for next()
  kj::Own<kj::PromiseFulfiller<pulled>> waiting;              // pull: a next() call waiting
  bool accepted = false;
  bool cancel_wanted = false;
  bool cancel_sent = false;
  bool consumer = true;  // false once the client can no longer receive the result
  std::optional<generation_summary> summary;
  // Streaming.
  std::vector<token_chunk> queued;
  bool sending = false;
  bool done_sent = false;
  // Collecting.
  std::vector<std::int32_t> ids;
  std::string text;
};

struct started {
  std::uint64_t key;
  kj::Promise<submit_result> submitted;
  kj::Maybe<kj::Promise<generation_summary>> finished;
};

// The per-request CAF side: sends the request to the router with itself as the sink, and posts
// the answer, every chunk and the summary to the loop. When the loop is gone (the gateway
// stopped), it cancels the request instead, so no generation runs on for nobody.
sink_actor::behavior_type bridge(sink_actor::pointer self, std::shared_ptr<inbox> box,
                                 gateway_loop* loop, std::uint64_t key, router_actor router,
                                 generate_request req, caf::timespan timeout);

class gateway_loop : public kj::TaskSet::ErrorHandler, public front_door {
 public:
  gateway_loop(caf::actor_system& sys, router_actor router, gateway_options opts)
      : sys_(sys),
        router_(std::move(router)),
        opts_(std::move(opts)),
        inbox_(std::make_shared<inbox>()),
        tasks_(kj::heap<kj::TaskSet>(*this)) {
    std::random_device rd;
    char buf[16];
    std::snprintf(buf, sizeof(buf), "%08x", rd());
    id_prefix_ = std::string("rpc-") + buf + "-";
  }

  const gateway_options& options() const override { return opts_; }

  /// Runs the tasks CAF threads post, until the loop exits.
  kj::Promise<void> drain_inbox() {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    auto batch = inbox_->take(paf.fulfiller);
    if (batch.empty()) return paf.promise.then([this] { return drain_inbox(); });
    for (auto& t : batch) {
      try {
        t();
      } catch (const std::exception& e) {
        log::error("gateway: {}", e.what());
      } catch (const kj::Exception& e) {
        log::error("gateway: {}", e.getDescription().cStr());
      }
    }
    // Yield to I/O between batches.
    return kj::evalLater([this] { return drain_inbox(); });
  }

  /// Asks the router from a short-lived helper actor; the answer comes back through the inbox, so
  /// the event loop never blocks on CAF.
  template <class T, class... Ts>
  kj::Promise<outcome<T>> ask(Ts... xs) {
    const auto key = ++next_key_;
    auto paf = kj::newPromiseAndFulfiller<outcome<T>>();
    pending_.emplace(key, kj::heap<pending<T>>(kj::mv(paf.fulfiller)));
    auto box = inbox_;
    auto* loop = this;
    auto router = router_;
    const caf::timespan timeout = std::chrono::milliseconds(opts_.query_timeout_ms);
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

  /// Starts a generation: streaming to `sink` when given, collecting otherwise.
  started start(generate_request req, kj::Maybe<rpc::TokenSink::Client> sink, bool pull = false) {
    const auto key = ++next_key_;
    if (req.id.empty()) req.id = id_prefix_ + std::to_string(key);
    auto g = kj::heap<generation>();
    g->key = key;
    g->id = req.id;
    auto submitted = kj::newPromiseAndFulfiller<submit_result>();
    g->submitted = kj::mv(submitted.fulfiller);
    started s{key, kj::mv(submitted.promise), nullptr};
    g->pull = pull;
    KJ_IF_MAYBE (client, sink) {
      g->sink = kj::mv(*client);
    } else if (!pull) {
      auto finished = kj::newPromiseAndFulfiller<generation_summary>();
      g->finished = kj::mv(finished.fulfiller);
      s.finished = kj::mv(finished.promise);
    }
    generations_.emplace(key, kj::mv(g));
    sys_.spawn(bridge, inbox_, this, key, router_, std::move(req),
               caf::timespan{std::chrono::milliseconds(opts_.query_timeout_ms)});
    return s;
  }

  generation* find(std::uint64_t key) {
    auto it = generations_.find(key);
    return it == generations_.end() ? nullptr : it->second.get();
  }

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
    if (g->pull) {
      g->queued.push_back(c);
      deliver_pull(key);
      return;
    }
    if (g->sink == nullptr) {
      g->ids.insert(g->ids.end(), c.ids.begin(), c.ids.end());
      g->text += c.text;
      return;
    }
    g->queued.push_back(c);
    pump(key);
  }

  void on_summary(std::uint64_t key, const generation_summary& s) {
    auto* g = find(key);
    if (!g) return;
    g->summary = s;
    if (!g->consumer) {
      forget(key);
    } else if (g->pull) {
      deliver_pull(key);
    } else if (g->sink == nullptr) {
      g->finished->fulfill(generation_summary(s));
    } else {
      pump(key);
    }
  }

  /// Cancels the generation (idempotent; a no-op once it has finished). A cancel that arrives
  /// before the router accepted the request is sent when it does.
  void cancel(std::uint64_t key) {
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
    g->waiting = nullptr;
    cancel(key);
  }

  // ---- front_door (the HTTP server)

  started_pull start_pull(generate_request req) override {
    auto s = start(std::move(req), nullptr, true);
    return {s.key, kj::mv(s.submitted)};
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
    deliver_pull(key);
    return kj::mv(paf.promise);
  }

  kj::Promise<outcome<cluster_status>> status() override { return ask<cluster_status>(status_atom::value); }

  std::string render_chat(const std::string& model, const nlohmann::ordered_json& messages,
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
    auto prompt = render_chat_template(*tok.chat_template(), vars);
    if (prompt.size() > static_cast<std::size_t>(opts_.max_prompt_bytes)) {
      throw error(errc::out_of_range, "the rendered chat is " + std::to_string(prompt.size()) +
                                          " bytes; this gateway accepts at most " +
                                          std::to_string(opts_.max_prompt_bytes));
    }
    return prompt;
  }

  std::optional<std::string> served_name(const std::string& model) const override {
    if (opts_.models.empty()) return model;
    if (model.empty()) return opts_.models.front().first;
    if (model_path(model)) return model;
    return std::nullopt;
  }

  void forget(std::uint64_t key) {
    generations_.erase(key);
    if (generations_.empty() && idle_) {
      idle_->fulfill();
      idle_ = nullptr;
    }
  }

  /// Stopping: cancels every generation and resolves once each client has its summary.
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
    tasks_ = nullptr;
    idle_ = nullptr;
    generations_.clear();
    pending_.clear();
  }

  /// The tokenizer of a served model, for chat templates; loaded on first use.
  const tokenizer& model_tokenizer(const std::string& model) {
    auto& tok = tokenizers_[model];
    if (!tok) {
      const auto* path = model_path(model);
      if (!path) throw error(errc::not_found, "unknown model '" + model + "'");
      tok = load_model_tokenizer(*path);
    }
    return *tok;
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

  /// An error message when the gateway knows the served models and `model` is not one.
  std::optional<std::string> unknown_model(const std::string& model) const {
    if (opts_.models.empty() || model.empty() || model_path(model)) return std::nullopt;
    std::string served;
    for (const auto& [name, _] : opts_.models) served += (served.empty() ? "" : ", ") + name;
    return "unknown model '" + model + "' (served: " + served + ")";
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

  // Hands what has arrived to a waiting next() call; the generation ends with its summary.
  void deliver_pull(std::uint64_t key) {
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

  // Sends the next coalesced chunk, or `done` once the summary is in and nothing is queued.
  void pump(std::uint64_t key) {
    auto* g = find(key);
    if (!g || g->sending || !g->consumer || !tasks_) return;
    KJ_IF_MAYBE (sink, g->sink) {
      if (!g->queued.empty()) {
        auto req = sink->chunkRequest();
        auto c = req.initChunk();
        std::size_t n = 0;
        std::string joined;
        bool cached = false;
        for (const auto& q : g->queued) {
          n += q.ids.size();
          joined += q.text;
          cached = cached || q.cached;
        }
        auto ids = c.initTokenIds(static_cast<unsigned>(n));
        unsigned i = 0;
        for (const auto& q : g->queued) {
          for (auto id : q.ids) ids.set(i++, id);
        }
        c.setText(text(joined));
        c.setIndex(g->queued.front().index);
        c.setCached(cached);
        g->queued.clear();
        g->sending = true;
        tasks_->add(req.send().then(
            [this, key] {
              if (auto* g2 = find(key)) {
                g2->sending = false;
                pump(key);
              }
            },
            [this, key](kj::Exception&&) { abandon(key); }));
      } else if (g->summary && !g->done_sent) {
        auto req = sink->doneRequest();
        const auto& s = *g->summary;
        fill_summary(req.initSummary(), s);
        g->done_sent = true;
        g->sending = true;
        tasks_->add(req.send().then(
            [this, key](capnp::Response<rpc::TokenSink::DoneResults>&&) { forget(key); },
            [this, key](kj::Exception&&) { forget(key); }));
      }
    }
  }

  void taskFailed(kj::Exception&& e) override {
    log::error("gateway: {}", e.getDescription().cStr());
  }

  caf::actor_system& sys_;
  router_actor router_;
  gateway_options opts_;
  std::shared_ptr<inbox> inbox_;
  std::string id_prefix_;
  std::uint64_t next_key_ = 0;
  // All below: touched on the loop thread only.
  std::unordered_map<std::uint64_t, kj::Own<generation>> generations_;
  std::unordered_map<std::uint64_t, kj::Own<pending_base>> pending_;
  std::map<std::string, std::unique_ptr<tokenizer>> tokenizers_;
  kj::Own<kj::TaskSet> tasks_;
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
            if (!box->post([=] { loop->on_submit(key, r); })) return orphaned();
            if (!accepted) return self->quit();
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

// ---- RPC objects

// Fails an RPC call with `message` as the client sees it (no kj source location or variables).
[[noreturn]] void fail_call(const std::string& message) {
  kj::throwFatalException(
      kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::heapString(message)));
}

class handle_impl final : public rpc::GenerationHandle::Server {
 public:
  handle_impl(gateway_loop& loop, std::uint64_t key) : loop_(loop), key_(key) {}
  // Dropping the handle (or the connection) cancels, as schemas/shoal.capnp promises.
  ~handle_impl() noexcept(false) { loop_.cancel(key_); }

 protected:
  kj::Promise<void> cancel(CancelContext) override {
    loop_.cancel(key_);
    return kj::READY_NOW;
  }

 private:
  gateway_loop& loop_;
  std::uint64_t key_;
};

struct refusal {
  errc code;
  std::string message;
};

class shoal_impl final : public rpc::Shoal::Server {
 public:
  shoal_impl(gateway_loop& loop, std::string peer) : loop_(loop), peer_(std::move(peer)) {}

 protected:
  kj::Promise<void> generate(GenerateContext ctx) override {
    auto params = ctx.getParams();
    generate_request req;
    auto bad = convert(params.getRequest(), req);
    if (!bad && !params.hasSink())
      bad = refusal{errc::invalid_argument, "generate needs a sink for its tokens"};
    if (bad) {
      set_error(ctx.getResults().initError(), to_string(bad->code), bad->message);
      return kj::READY_NOW;
    }
    return stream(ctx, std::move(req), params.getSink());
  }

  kj::Promise<void> chat(ChatContext ctx) override {
    auto params = ctx.getParams();
    auto chat = params.getRequest();
    generate_request req;
    auto bad = convert(chat.getGeneration(), req);
    if (!bad && !params.hasSink())
      bad = refusal{errc::invalid_argument, "chat needs a sink for its tokens"};
    if (!bad) bad = render(chat, req);
    if (bad) {
      set_error(ctx.getResults().initError(), to_string(bad->code), bad->message);
      return kj::READY_NOW;
    }
    return stream(ctx, std::move(req), params.getSink());
  }

  kj::Promise<void> complete(CompleteContext ctx) override {
    // A client that gives up (or disconnects) cancels the generation: see the guard below.
    ctx.allowCancellation();
    generate_request req;
    if (auto bad = convert(ctx.getParams().getRequest(), req)) {
      set_error(ctx.getResults().initError(), to_string(bad->code), bad->message);
      return kj::READY_NOW;
    }
    auto s = loop_.start(std::move(req), nullptr);
    const auto key = s.key;
    auto finished = kj::mv(KJ_ASSERT_NONNULL(s.finished));
    auto guard = kj::defer([this, key] { loop_.abandon(key); });
    return s.submitted
        .then([this, ctx, key,
               finished = kj::mv(finished)](submit_result r) mutable -> kj::Promise<void> {
          if (!r.accepted) {
            set_error(ctx.getResults().initError(), r.error_code, r.error_message);
            return kj::READY_NOW;
          }
          return finished.then([this, ctx, key](generation_summary s) mutable {
            auto* g = loop_.find(key);
            if (!g) fail_call("internal: the gateway lost the state of request " + s.id);
            auto c = ctx.getResults().initCompletion();
            c.setRequestId(text(s.id));
            auto ids = c.initTokenIds(static_cast<unsigned>(g->ids.size()));
            for (unsigned i = 0; i < g->ids.size(); ++i) ids.set(i, g->ids[i]);
            c.setText(text(g->text));
            fill_summary(c.initSummary(), s);
          });
        })
        .attach(kj::mv(guard));
  }

  kj::Promise<void> tokenize(TokenizeContext ctx) override {
    auto p = ctx.getParams();
    tokenize_request t;
    t.model = str(p.getModel());
    t.text = str(p.getText());
    t.add_special = p.getAddSpecial();
    if (auto msg = loop_.unknown_model(t.model)) {
      set_error(ctx.getResults().initError(), to_string(errc::not_found), *msg);
      return kj::READY_NOW;
    }
    if (t.text.size() > static_cast<std::size_t>(loop_.options().max_prompt_bytes)) {
      set_error(ctx.getResults().initError(), to_string(errc::out_of_range),
                too_long(t.text.size()));
      return kj::READY_NOW;
    }
    return loop_.ask<std::vector<std::int32_t>>(tokenize_atom::value, std::move(t))
        .then([ctx](outcome<std::vector<std::int32_t>> o) mutable {
          auto res = ctx.getResults();
          if (!o.value) {
            set_error(res.initError(), o.code, o.message);
            return;
          }
          auto ids = res.initIds(static_cast<unsigned>(o.value->size()));
          for (unsigned i = 0; i < o.value->size(); ++i) ids.set(i, (*o.value)[i]);
        });
  }

  kj::Promise<void> models(ModelsContext ctx) override {
    return loop_.ask<cluster_status>(status_atom::value)
        .then([ctx](outcome<cluster_status> o) mutable {
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
    admin_request a;
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
    return loop_.ask<admin_result>(admin_atom::value, std::move(a))
        .then([ctx](outcome<admin_result> o) mutable {
          auto res = ctx.getResults();
          if (!o.value) return set_error(res.initError(), o.code, o.message);
          if (!o.value->ok) return set_error(res.initError(), o.value->error_code, o.value->error_message);
          auto lines = res.initLines(static_cast<unsigned>(o.value->lines.size()));
          for (unsigned i = 0; i < o.value->lines.size(); ++i) lines.set(i, text(o.value->lines[i]));
        });
  }

  kj::Promise<void> health(HealthContext ctx) override {
    return loop_.ask<cluster_status>(status_atom::value)
        .then([ctx](outcome<cluster_status> o) mutable {
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
  template <class Context>
  kj::Promise<void> stream(Context ctx, generate_request req, rpc::TokenSink::Client sink) {
    auto s = loop_.start(std::move(req), kj::mv(sink));
    const auto key = s.key;
    return s.submitted.then([this, ctx, key](submit_result r) mutable {
      auto res = ctx.getResults();
      if (!r.accepted) {
        set_error(res.initError(), r.error_code, r.error_message);
        return;
      }
      res.setRequestId(text(r.id));
      res.setHandle(kj::heap<handle_impl>(loop_, key));
    });
  }

  std::string too_long(std::size_t bytes) const {
    return "the prompt is " + std::to_string(bytes) + " bytes; this gateway accepts at most " +
           std::to_string(loop_.options().max_prompt_bytes);
  }

  // The wire request as the router's message. Checks only what is the gateway's own limit (sizes)
  // or cheap to say early; the router and the batcher validate the rest (sampling values,
  // context length, vocabulary) and their refusals come back as the `error` field.
  std::optional<refusal> convert(rpc::GenerateRequest::Reader r, generate_request& out) const {
    const auto& o = loop_.options();
    const auto limit = static_cast<std::size_t>(o.max_prompt_bytes);
    out.model = str(r.getModel());
    if (auto msg = loop_.unknown_model(out.model)) return refusal{errc::not_found, *msg};
    out.prompt = str(r.getPrompt());
    if (out.prompt.size() > limit) return refusal{errc::out_of_range, too_long(out.prompt.size())};
    auto ids = r.getPromptIds();
    if (ids.size() * sizeof(std::int32_t) > limit) {
      return refusal{errc::out_of_range, "the prompt has " + std::to_string(ids.size()) +
                                             " token ids; this gateway accepts at most " +
                                             std::to_string(limit / sizeof(std::int32_t))};
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
      return refusal{errc::out_of_range, "the prompt and stop strings are " +
                                             std::to_string(stop_bytes + out.prompt.size()) +
                                             " bytes; this gateway accepts at most " +
                                             std::to_string(limit)};
    }
    for (auto id : r.getStopTokenIds()) out.stop_ids.push_back(id);
    out.priority = r.getPriority();
    out.kind = str(r.getKind());
    out.add_special = r.getAddSpecial();
    out.parse_special = !r.getSpecialsAsText();
    out.id = str(r.getRequestId());
    out.api_key = str(r.getApiKey());
    out.client_address = peer_;
    out.no_cache = r.getNoCache();
    if (out.api_method.empty()) out.api_method = "rpc.generate";
    if (out.id.size() > 256)
      return refusal{errc::invalid_argument, "requestId is longer than 256 bytes"};
    return std::nullopt;
  }

  // Renders the chat with the model's template into req.prompt (BOS comes from the template).
  std::optional<refusal> render(rpc::ChatRequest::Reader chat, generate_request& req) {
    try {
      nlohmann::ordered_json messages = nlohmann::ordered_json::array();
      nlohmann::ordered_json tools = nullptr;
      if (chat.hasMessagesJson() && chat.getMessagesJson().size() > 0) {
        messages = nlohmann::ordered_json::parse(str(chat.getMessagesJson()));
        if (!messages.is_array())
          return refusal{errc::invalid_argument, "messagesJson must be a JSON array"};
      } else {
        for (auto m : chat.getMessages()) {
          messages.push_back({{"role", str(m.getRole())}, {"content", str(m.getContent())}});
        }
      }
      if (chat.hasToolsJson() && chat.getToolsJson().size() > 0) {
        tools = nlohmann::ordered_json::parse(str(chat.getToolsJson()));
      }
      req.prompt = loop_.render_chat(req.model, messages, tools, chat.getAddGenerationPrompt());
    } catch (const nlohmann::json::exception& e) {
      return refusal{errc::invalid_argument, std::string("invalid chat JSON: ") + e.what()};
    } catch (const error& e) {
      return refusal{e.code(), e.what()};
    }
    req.prompt_ids.clear();
    req.add_special = false;
    req.parse_special = true;
    return std::nullopt;
  }

  gateway_loop& loop_;
  std::string peer_;  // the client connection's address, for audit records
};

// One client connection: Cap'n Proto two-party RPC with this gateway's read limits.
struct connection {
  connection(kj::Own<kj::AsyncIoStream>&& s, capnp::Capability::Client bootstrap,
             capnp::ReaderOptions limits)
      : stream(kj::mv(s)),
        network(*stream, capnp::rpc::twoparty::Side::SERVER, limits),
        rpc_system(capnp::makeRpcServer(network, kj::mv(bootstrap))) {}
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc_system;
};

class connection_errors : public kj::TaskSet::ErrorHandler {
  void taskFailed(kj::Exception&& e) override {
    log::error("gateway: connection: {}", e.getDescription().cStr());
  }
};

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
    bool started = false;
    try {
      auto io = kj::setupAsyncIo();
      kj::Own<kj::ConnectionReceiver> listener;
      KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                     auto addr = io.provider->getNetwork()
                                     .parseAddress(opts.host, static_cast<unsigned>(opts.port))
                                     .wait(io.waitScope);
                     listener = addr->listen();
                   })) {
        ready.set_exception(std::make_exception_ptr(error(
            errc::unavailable, "the gateway cannot listen on " + opts.host + ":" +
                                   std::to_string(opts.port) + ": " + e->getDescription().cStr())));
        return;
      }
      port_ = static_cast<std::int32_t>(listener->getPort());
      kj::Own<kj::ConnectionReceiver> http_listener;
      if (opts.http) {
        KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                       auto addr = io.provider->getNetwork()
                                       .parseAddress(opts.host, static_cast<unsigned>(opts.http_port))
                                       .wait(io.waitScope);
                       http_listener = addr->listen();
                     })) {
          ready.set_exception(std::make_exception_ptr(error(
              errc::unavailable, "the HTTP gateway cannot listen on " + opts.host + ":" +
                                     std::to_string(opts.http_port) + ": " + e->getDescription().cStr())));
          return;
        }
        http_port_ = static_cast<std::int32_t>(http_listener->getPort());
      }
      capnp::ReaderOptions limits;
      limits.traversalLimitInWords = opts.max_message_words;
      limits.nestingLimit = opts.max_nesting;

      gateway_loop loop(sys, std::move(router), std::move(opts));
      auto stop = kj::newPromiseAndCrossThreadFulfiller<void>();
      ready.set_value(kj::mv(stop.fulfiller));
      started = true;

      connection_errors errors;
      {
        // One bootstrap object per connection, so requests know where they came from.
        auto bootstrap = [&loop](std::string peer) -> capnp::Capability::Client {
          return kj::heap<shoal_impl>(loop, std::move(peer));
        };
        kj::TaskSet connections(errors);
        auto inbox_task = loop.drain_inbox().eagerlyEvaluate([](kj::Exception&& e) {
          log::error("gateway: inbox: {}", e.getDescription().cStr());
        });
        auto accepting =
            accept_loop(*listener, bootstrap, limits, connections, io.provider->getTimer());
        // The HTTP API on the same loop: it reaches the router through `loop` as the RPC does.
        kj::Own<http_gateway> http;
        if (http_listener) {
          http = make_http_gateway(loop, io.provider->getTimer());
          accepting = accepting.exclusiveJoin(http->listen(*http_listener));
        }
        stop.promise.exclusiveJoin(kj::mv(accepting)).wait(io.waitScope);
        // Stop accepting; cancel what is in flight and give clients a moment to receive their
        // "cancelled" summaries; then drop the connections (and with them the RPC objects that
        // refer to `loop`).
        listener = nullptr;
        http_listener = nullptr;
        loop.cancel_all()
            .exclusiveJoin(io.provider->getTimer().afterDelay(stop_grace_ms * kj::MILLISECONDS))
            .wait(io.waitScope);
        loop.shutdown();
      }
    } catch (...) {
      if (!started) {
        ready.set_exception(std::current_exception());
        return;
      }
      // The loop itself failed: nothing can serve any more; say why rather than die silently.
      try {
        throw;
      } catch (const kj::Exception& e) {
        log::error("gateway: event loop failed: {}", e.getDescription().cStr());
      } catch (const std::exception& e) {
        log::error("gateway: event loop failed: {}", e.what());
      }
    }
  }

  kj::Promise<void> accept_loop(kj::ConnectionReceiver& listener,
                                std::function<capnp::Capability::Client(std::string)> bootstrap,
                                capnp::ReaderOptions limits,
                                kj::TaskSet& connections, kj::Timer& timer) {
    return listener.accept()
        .then(
            [bootstrap, limits, conns = &connections](
                kj::Own<kj::AsyncIoStream>&& stream) mutable -> kj::Promise<void> {
              auto peer = peer_address(*stream);
              auto conn = kj::heap<connection>(kj::mv(stream), bootstrap(std::move(peer)), limits);
              auto closed = conn->network.onDisconnect();
              conns->add(closed.attach(kj::mv(conn)));
              return kj::READY_NOW;
            },
            [t = &timer](kj::Exception&& e) -> kj::Promise<void> {
              // Out of file descriptors and the like: say so, and try again shortly.
              log::error("gateway: accept: {}", e.getDescription().cStr());
              return t->afterDelay(100 * kj::MILLISECONDS);
            })
        .then([this, l = &listener, bootstrap, limits, conns = &connections, t = &timer]() mutable {
          return accept_loop(*l, bootstrap, limits, *conns, *t);
        });
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
