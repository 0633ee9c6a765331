#include "actors/batcher.hpp"

#include <caf/io/middleman.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <set>

#include "actors/errors.hpp"
#include "engine/common/error.hpp"
#include "engine/model/model_info.hpp"
#include "engine/runner/generate.hpp"
#include "engine/sampling/sampler.hpp"
#include "engine/sched/scheduler.hpp"
#include "telemetry/log.hpp"
#include "telemetry/metrics.hpp"

namespace shoal::actors {

using telemetry::serving_metrics;

namespace {

using clock_type = std::chrono::steady_clock;

// A start that failed for want of a node is tried again after half a second, then twice as long
// each time up to 30 s: quick while `shoal up` restarts a node, cheap while a node stays away (an
// attempt that gets past reaching the nodes loads the model on every rank).
constexpr auto kFirstRetry = std::chrono::milliseconds(500);
constexpr auto kLastRetry = std::chrono::seconds(30);

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

struct request_state {
  generate_request req;
  std::unique_ptr<stream_decoder> decoder;
  std::unique_ptr<stop_matcher> stops;
  clock_type::time_point accepted;
  clock_type::time_point last_token;
  double queue_seconds = -1;
  double ttft_seconds = -1;
  bool announced = false;  // the workers know this sequence (seq_setup sent)
  std::int32_t prompt_tokens = 0;
};

struct rank_state {
  node_manager_actor node;    // the rank's node manager, once reached
  shard_worker_actor worker;  // the current start attempt's worker
  std::int32_t port = 0;      // its link's TCP port (communicator tcp)
};

struct batcher_state {
  batcher_options opts;
  std::unique_ptr<tokenizer> tok;
  std::int64_t context_length = 0;
  std::vector<std::int32_t> eos_ids;
  std::unique_ptr<sched::scheduler> scheduler;
  std::vector<rank_state> ranks;
  bool ready = false;    // every rank is linked: steps may run
  bool healthy = false;
  std::string detail = "starting";
  caf::error error;      // while not healthy: why, as a code (see replica_stats::error)
  bool failed_for_good = false;
  // The start attempt in progress; every (re)start is a new one, and answers to older ones are ignored.
  std::uint64_t attempt = 0;
  clock_type::time_point attempt_deadline;
  std::int32_t ranks_set_up = 0;
  int failures_in_a_row = 0;
  int restarts = 0;  // times the replica failed while serving and started again
  std::optional<clock_type::time_point> failing_since;
  bool failing_logged = false;
  std::map<std::string, request_state> requests;
  // The step in flight.
  bool stepping = false;
  std::uint64_t step_id = 0;
  sched::step_plan plan;
  std::vector<std::string> plan_ids;  // ids of plan items, in order
  int pending = 0;
  step_result rank0;
  std::optional<refusal> step_error;       // the first rank that failed this step, and how
  std::vector<std::size_t> step_silent;    // the ranks that did not answer it within step_timeout_s
  std::set<std::string> cancel_after_step;
  std::vector<std::string> dropped;  // sequences the workers should forget at the next step
  std::unique_ptr<serving_metrics> metrics;
  static inline const char* name = "batcher";
};

using self_ptr = batcher_actor::stateful_pointer<batcher_state>;

std::string rank_name(const batcher_state& st, std::size_t rank) {
  return "rank " + std::to_string(rank) + " (node '" + st.opts.ranks[rank].name + "')";
}

replica_stats make_stats(const batcher_state& st) {
  replica_stats s;
  s.name = st.opts.replica.name;
  s.model = st.opts.replica.model;
  s.kind = st.opts.replica.kind;
  s.healthy = st.healthy;
  s.detail = st.detail;
  if (!st.healthy) s.error = st.error ? st.error : make_error(errc::unavailable, st.detail);
  s.max_waiting = st.opts.replica.max_waiting;
  s.context_length = static_cast<std::int32_t>(st.context_length);
  if (st.scheduler) {
    s.kv_usage = st.scheduler->kv_usage();
    s.kv_blocks = st.scheduler->total_blocks();
    s.free_blocks = st.scheduler->free_blocks();
    s.waiting = st.scheduler->waiting();
    s.running = st.scheduler->running();
    s.preemptions = st.scheduler->preemptions();
  }
  return s;
}

void publish_stats(self_ptr self) {
  auto& st = self->state;
  if (st.metrics && st.scheduler) {
    st.metrics->running.Set(st.scheduler->running());
    st.metrics->waiting.Set(st.scheduler->waiting());
    st.metrics->kv_usage.Set(st.scheduler->kv_usage());
  }
  if (st.opts.router) self->send(st.opts.router, stats_atom::value, make_stats(st));
}

// Ends a request: summary to its sink, blocks back to the pool, workers told to forget it.
void finish(self_ptr self, const std::string& id, const std::string& reason, const refusal* failure = nullptr) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end()) return;
  auto& r = it->second;
  generation_summary sum;
  sum.id = id;
  sum.finish_reason = reason;
  if (failure) {
    sum.error_code = to_string(failure->code);
    sum.error_message = failure->message;
  }
  sum.prompt_tokens = r.prompt_tokens;
  sum.replica = st.opts.replica.name;
  sum.queue_seconds = std::max(0.0, r.queue_seconds);
  sum.ttft_seconds = std::max(0.0, r.ttft_seconds);
  sum.total_seconds = seconds_since(r.accepted);
  if (st.scheduler) {
    if (auto seq = st.scheduler->remove(id)) sum.completion_tokens = seq->generated();
  }
  // Whatever text the stop matcher still held back belongs to the output (no stop string matched).
  if (reason != "stop" && reason != "error" && r.stops) {
    std::string tail;
    if (r.decoder) {
      bool stopped = false;
      tail = r.stops->push(r.decoder->finish(), stopped);
      if (!stopped) tail += r.stops->flush();
    }
    if (!tail.empty()) self->send(r.req.sink, token_chunk{id, {}, tail, sum.completion_tokens, false});
  }
  self->send(r.req.sink, sum);
  if (st.metrics) {
    st.metrics->finished_by(reason).Increment();
    st.metrics->e2e.Observe(sum.total_seconds);
  }
  if (r.announced) st.dropped.push_back(id);
  st.requests.erase(it);
}

// ---- keeping the replica up

void start_attempt(self_ptr self);

// The workers of the current attempt are of no further use (a rank died, a link broke, a start
// failed): stop them, so their model slices and KV pools go, and forget them (their down messages
// then match no rank).
void stop_workers(self_ptr self) {
  for (auto& r : self->state.ranks) {
    if (r.worker) self->send_exit(r.worker, caf::exit_reason::user_shutdown);
    r.worker = nullptr;
    r.port = 0;
  }
}

// A start attempt failed: final unless the cause is a node or worker that did not answer
// (unavailable), in which case the whole start is tried again after a backoff.
void start_failed(self_ptr self, std::uint64_t attempt, const refusal& why) {
  auto& st = self->state;
  if (attempt != st.attempt) return;  // already failed or superseded
  ++st.attempt;                       // the answers still on their way are stale now
  stop_workers(self);
  st.ready = false;
  st.healthy = false;
  st.error = make_error(why);
  if (why.code != errc::unavailable) {
    st.failed_for_good = true;
    st.detail = why.message;
    log::error("replica {}: {} ({}; not retried)", st.opts.replica.name, why.message, to_string(why.code));
    publish_stats(self);
    return;
  }
  ++st.failures_in_a_row;
  auto backoff = std::chrono::duration_cast<std::chrono::milliseconds>(kFirstRetry) * (1 << std::min(st.failures_in_a_row - 1, 8));
  backoff = std::min<std::chrono::milliseconds>(backoff, kLastRetry);
  st.detail = why.message + " (retrying in " + std::to_string(backoff.count()) + " ms)";
  if (st.failures_in_a_row == 1) log::warn("replica {}: {}", st.opts.replica.name, st.detail);
  const auto now = clock_type::now();
  if (!st.failing_since) st.failing_since = now;
  if (!st.failing_logged && now - *st.failing_since >= st.opts.unreachable_after) {
    st.failing_logged = true;
    log::error("replica {}: cannot start for {} s: {}", st.opts.replica.name,
               std::chrono::duration_cast<std::chrono::seconds>(now - *st.failing_since).count(), why.message);
  }
  publish_stats(self);
  self->delayed_send(self, backoff, restart_atom::value, st.attempt);
}

// The replica was serving and lost a rank (a worker died, a step failed or outlived its timeout):
// the requests in flight end with the cause's code, and the replica starts over.
void replica_down(self_ptr self, const refusal& why) {
  auto& st = self->state;
  if (!st.ready) return;
  log::error("replica {}: {}; starting it again", st.opts.replica.name, why.message);
  st.ready = false;
  st.healthy = false;
  st.stepping = false;
  st.plan = {};
  st.cancel_after_step.clear();
  st.step_error.reset();
  st.step_silent.clear();
  const refusal failure{why.code, "replica " + st.opts.replica.name + " failed: " + why.message};
  std::vector<std::string> ids;
  for (auto& [id, _] : st.requests) ids.push_back(id);
  for (auto& id : ids) finish(self, id, "error", &failure);
  st.dropped.clear();  // the next workers start with no sequences
  ++st.restarts;
  st.error = make_error(errc::unavailable, failure.message);
  st.detail = failure.message + "; restarting";
  stop_workers(self);
  publish_stats(self);
  start_attempt(self);
}

caf::timespan time_left(const batcher_state& st) {
  const auto left = st.attempt_deadline - clock_type::now();
  return std::max<caf::timespan>(std::chrono::duration_cast<caf::timespan>(left), std::chrono::milliseconds(1));
}

// Every rank is linked: the replica takes requests.
void on_linked(self_ptr self, std::uint64_t attempt) {
  auto& st = self->state;
  if (attempt != st.attempt) return;
  st.ready = true;
  st.healthy = true;
  st.detail = "ready";
  st.error = caf::error{};
  st.failures_in_a_row = 0;
  st.failing_since.reset();
  st.failing_logged = false;
  if (st.restarts > 0) log::info("replica {}: serving again (restart {})", st.opts.replica.name, st.restarts);
  publish_stats(self);
  self->send(self, tick_atom::value);
}

// communicator nccl: rank 0 makes the NCCL unique id, and it travels to every rank in actor
// messages (no side channel); each rank then joins the communicator (blocking until all have).
void link_nccl(self_ptr self, std::uint64_t attempt) {
  auto& st = self->state;
  const auto world = static_cast<std::int32_t>(st.ranks.size());
  self->request(st.ranks[0].worker, time_left(st), nccl_id_atom::value)
      .then(
          [=](const std::string& id) {
            auto& s = self->state;
            if (attempt != s.attempt) return;
            auto joined = std::make_shared<int>(world);
            for (std::int32_t r = 0; r < world; ++r) {
              self->request(s.ranks[r].worker, time_left(s), nccl_join_atom::value, id)
                  .then(
                      [=](bool) {
                        if (--*joined == 0) on_linked(self, attempt);
                      },
                      [=](caf::error& e) {
                        auto why = read_error(e, rank_name(self->state, r));
                        start_failed(self, attempt, {why.code, rank_name(self->state, r) + " NCCL join: " + why.message});
                      });
            }
          },
          [=](caf::error& e) {
            auto why = read_error(e, rank_name(self->state, 0));
            start_failed(self, attempt, {why.code, "rank 0 NCCL unique id: " + why.message});
          });
}

// communicator tcp: every rank connects the ring with every rank's "host:port".
void link_tcp(self_ptr self, std::uint64_t attempt) {
  auto& st = self->state;
  const auto world = static_cast<std::int32_t>(st.ranks.size());
  std::vector<std::string> addrs;
  for (std::int32_t r = 0; r < world; ++r) addrs.push_back(st.opts.ranks[r].host + ":" + std::to_string(st.ranks[r].port));
  auto connected = std::make_shared<int>(world);
  for (std::int32_t r = 0; r < world; ++r) {
    self->request(st.ranks[r].worker, time_left(st), connect_atom::value, addrs)
        .then(
            [=](bool) {
              if (--*connected == 0) on_linked(self, attempt);
            },
            [=](caf::error& e) {
              auto why = read_error(e, rank_name(self->state, r));
              start_failed(self, attempt, {why.code, rank_name(self->state, r) + " link: " + why.message});
            });
  }
}

// A rank's node manager is known: spawn its shard worker there and load its slice.
void set_up_rank(self_ptr self, std::uint64_t attempt, std::int32_t rank) {
  auto& st = self->state;
  const auto world = static_cast<std::int32_t>(st.ranks.size());
  auto fail = [=](const std::string& step) {
    return [=](caf::error& e) {
      auto why = read_error(e, rank_name(self->state, rank));
      start_failed(self, attempt, {why.code, rank_name(self->state, rank) + " " + step + ": " + why.message});
    };
  };
  self->request(st.ranks[rank].node, time_left(st), spawn_atom::value)
      .then(
          [=](const shard_worker_actor& w) {
            auto& s = self->state;
            if (attempt != s.attempt) {
              self->send_exit(w, caf::exit_reason::user_shutdown);
              return;
            }
            s.ranks[rank].worker = w;
            self->monitor(w);
            shard_setup setup;
            setup.model_path = s.opts.model.path;
            setup.replica = s.opts.replica.name;
            setup.rank = rank;
            setup.world = world;
            setup.block_size = s.opts.replica.block_size;
            setup.num_blocks = s.opts.replica.kv_cache_tokens / s.opts.replica.block_size;
            setup.threads = s.opts.ranks[rank].threads;
            setup.bind_host = s.opts.ranks[rank].host;
            setup.parallel = s.opts.replica.parallel;
            setup.communicator = s.opts.replica.communicator;
            self->request(w, time_left(s), setup_atom::value, setup)
                .then(
                    [=](std::int32_t port) {
                      auto& s2 = self->state;
                      if (attempt != s2.attempt) return;
                      s2.ranks[rank].port = port;
                      if (++s2.ranks_set_up < world) return;
                      if (s2.opts.replica.communicator == "nccl" && world > 1) {
                        link_nccl(self, attempt);
                      } else {
                        link_tcp(self, attempt);
                      }
                    },
                    fail("setup"));
          },
          fail("spawn"));
}

// Reaches a rank's node manager: the local one, or the one published on the node's port (the
// middleman answers at once from its cache while the node is up, and connects again after the
// node restarted).
void reach_rank(self_ptr self, std::uint64_t attempt, std::int32_t rank) {
  auto& st = self->state;
  const auto& node = st.opts.ranks[rank];
  if (node.local) {
    st.ranks[rank].node = node.local;
    set_up_rank(self, attempt, rank);
    return;
  }
  const std::string where = "worker node '" + node.name + "' at " + node.host + ":" + std::to_string(node.port);
  // The middleman is this process's own actor: it always answers (the OS bounds a connect), and
  // time_left() bounds the wait for it.
  self->request(self->system().middleman().actor_handle(), time_left(st), caf::connect_atom::value, node.host, node.port)
      .then(
          [=](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>& ifs) {
            auto& s = self->state;
            if (attempt != s.attempt) return;
            if (!ptr || !self->system().assignable<node_manager_actor>(ifs)) {
              start_failed(self, attempt, {errc::unavailable, where + " does not publish a Shoal node manager"});
              return;
            }
            s.ranks[rank].node = caf::actor_cast<node_manager_actor>(std::move(ptr));
            set_up_rank(self, attempt, rank);
          },
          [=](caf::error& e) {
            start_failed(self, attempt, {errc::unavailable, where + " is unreachable (" + read_error(e, where).message + ")"});
          });
}

// Starts the replica (again): reach every rank's node, spawn and set up the workers, link them,
// all within start_timeout_s.
void start_attempt(self_ptr self) {
  auto& st = self->state;
  if (st.failed_for_good) return;
  ++st.attempt;
  st.attempt_deadline = clock_type::now() + std::chrono::seconds(st.opts.replica.start_timeout_s);
  st.ranks_set_up = 0;
  st.ranks.assign(st.opts.ranks.size(), rank_state{});
  for (std::int32_t r = 0; r < static_cast<std::int32_t>(st.ranks.size()); ++r) reach_rank(self, st.attempt, r);
}

// ---- serving

// A sampled token for `id`: stream it, and end the request if it is done.
void on_token(self_ptr self, const std::string& id, std::int32_t token) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end()) return;
  auto& r = it->second;
  auto* seq = st.scheduler->find(id);
  const auto now = clock_type::now();
  if (r.ttft_seconds < 0) {
    r.ttft_seconds = std::chrono::duration<double>(now - r.accepted).count();
    if (st.metrics) st.metrics->ttft.Observe(r.ttft_seconds);
  } else if (st.metrics) {
    st.metrics->inter_token.Observe(std::chrono::duration<double>(now - r.last_token).count());
  }
  r.last_token = now;
  if (st.metrics) st.metrics->generation_tokens.Increment();
  const std::int32_t index = seq ? seq->generated() - 1 : 0;
  const bool is_eos = std::find(st.eos_ids.begin(), st.eos_ids.end(), token) != st.eos_ids.end();
  const bool is_stop_id = std::find(r.req.stop_ids.begin(), r.req.stop_ids.end(), token) != r.req.stop_ids.end();
  if ((is_eos && !r.req.ignore_eos) || is_stop_id) {
    self->send(r.req.sink, token_chunk{id, {token}, {}, index, false});
    finish(self, id, is_stop_id ? "stop" : "eos");
    return;
  }
  bool stopped = false;
  std::string text = r.stops->push(r.decoder->push(token), stopped);
  self->send(r.req.sink, token_chunk{id, {token}, text, index, false});
  if (stopped) {
    finish(self, id, "stop");
  } else if (seq && (seq->generated() >= seq->max_tokens ||
                     static_cast<std::int64_t>(seq->tokens.size()) >= st.context_length)) {
    finish(self, id, "length");
  }
}

void on_step_done(self_ptr self) {
  auto& st = self->state;
  st.stepping = false;
  if (st.step_error || !st.step_silent.empty()) {
    // A rank's own failure explains the others' silence (they wait for it in a collective);
    // otherwise name every silent rank: the one that hangs is among them.
    refusal why;
    if (st.step_error) {
      why = *st.step_error;
    } else {
      std::string ranks;
      for (auto r : st.step_silent) ranks += (ranks.empty() ? "" : ", ") + rank_name(st, r);
      why = {errc::unavailable, ranks + " did not answer step " + std::to_string(st.step_id) + " within " +
                                    std::to_string(st.opts.replica.step_timeout_s) + " s (step_timeout_s)"};
    }
    st.step_error.reset();
    st.step_silent.clear();
    replica_down(self, why);
    return;
  }
  st.scheduler->complete(st.plan, st.rank0.sampled);
  std::size_t k = 0;
  for (std::size_t i = 0; i < st.plan.items.size(); ++i) {
    if (!st.plan.items[i].sample) continue;
    on_token(self, st.plan_ids[i], st.rank0.sampled[k++]);
  }
  st.plan = {};
  for (const auto& id : st.cancel_after_step) finish(self, id, "cancelled");
  st.cancel_after_step.clear();
  publish_stats(self);
  // Yield to the mailbox between steps so new requests join the next one.
  self->send(self, tick_atom::value);
}

void run_step(self_ptr self) {
  auto& st = self->state;
  if (st.stepping || !st.ready || !st.scheduler) return;
  st.plan = st.scheduler->schedule();
  if (st.plan.empty()) return;
  if (st.metrics && !st.plan.preempted.empty()) st.metrics->preemptions.Increment(static_cast<double>(st.plan.preempted.size()));
  step_request req;
  req.step = ++st.step_id;
  req.dropped = std::move(st.dropped);
  st.dropped.clear();
  st.plan_ids.clear();
  for (const auto& item : st.plan.items) {
    auto& seq = *item.seq;
    st.plan_ids.push_back(seq.id);
    auto& r = st.requests.at(seq.id);
    if (!r.announced) {
      seq_setup s;
      s.id = seq.id;
      s.prompt.assign(seq.tokens.begin(), seq.tokens.begin() + seq.prompt_len);
      s.sampling = r.req.sampling;
      req.added.push_back(std::move(s));
      r.announced = true;
    }
    if (r.queue_seconds < 0) {
      r.queue_seconds = seconds_since(r.accepted);
      if (st.metrics) st.metrics->queue_time.Observe(r.queue_seconds);
    }
    if (st.metrics && item.start < seq.prompt_len) {
      st.metrics->prompt_tokens.Increment(std::min(item.count, seq.prompt_len - item.start));
    }
    step_item it;
    it.id = seq.id;
    it.tokens.assign(seq.tokens.begin() + item.start, seq.tokens.begin() + item.start + item.count);
    it.start = item.start;
    it.blocks = seq.blocks;
    it.sample = item.sample;
    req.items.push_back(std::move(it));
  }
  st.stepping = true;
  st.pending = static_cast<int>(st.ranks.size());
  st.step_error.reset();
  st.step_silent.clear();
  st.rank0 = {};
  const auto step = req.step;
  // A rank that neither answers nor dies (a stopped process, a hung link) would hold the replica
  // and its requests forever: past step_timeout_s it counts as down.
  const auto timeout = std::chrono::seconds(st.opts.replica.step_timeout_s);
  for (std::size_t rank = 0; rank < st.ranks.size(); ++rank) {
    self->request(st.ranks[rank].worker, timeout, step_atom::value, req)
        .then(
            [=](const step_result& res) {
              auto& s = self->state;
              if (!s.stepping || s.step_id != step) return;
              if (rank == 0) s.rank0 = res;
              if (--s.pending == 0) on_step_done(self);
            },
            [=](caf::error& e) {
              auto& s = self->state;
              if (!s.stepping || s.step_id != step) return;
              if (e == caf::sec::request_timeout) {
                s.step_silent.push_back(rank);
              } else if (!s.step_error) {
                auto why = read_error(e, rank_name(s, rank));
                s.step_error = refusal{why.code, rank_name(s, rank) + ": " + why.message};
              }
              if (--s.pending == 0) on_step_done(self);
            });
  }
}

submit_result refuse(const std::string& id, errc code, const std::string& message) {
  submit_result r;
  r.accepted = false;
  r.id = id;
  r.error_code = to_string(code);
  r.error_message = message;
  return r;
}

submit_result accept(self_ptr self, generate_request req) {
  auto& st = self->state;
  if (!st.healthy) {
    const auto why = read_error(st.error ? st.error : make_error(errc::unavailable, st.detail));
    return refuse(req.id, why.code, "replica " + st.opts.replica.name + " is not ready: " + why.message);
  }
  std::vector<std::int32_t> ids;
  try {
    if (!req.prompt_ids.empty()) {
      for (auto id : req.prompt_ids) {
        if (id < 0 || id >= st.tok->vocab_size()) {
          return refuse(req.id, errc::invalid_argument, "prompt token id " + std::to_string(id) + " is outside the vocabulary");
        }
      }
      ids = req.prompt_ids;
    } else {
      const encode_options opts{req.add_special, req.parse_special};
      if (req.special_ranges.empty()) {
        ids = st.tok->encode(req.prompt, opts);
      } else {
        // A chat: only the template's own text may hold special tokens.
        std::vector<byte_range> ranges;
        for (std::size_t i = 0; i + 1 < req.special_ranges.size(); i += 2) {
          ranges.push_back({static_cast<std::size_t>(req.special_ranges[i]),
                            static_cast<std::size_t>(req.special_ranges[i + 1])});
        }
        ids = st.tok->encode(req.prompt, opts, ranges);
      }
    }
  } catch (const std::exception& e) {
    return refuse(req.id, errc::invalid_argument, std::string("cannot tokenize the prompt: ") + e.what());
  }
  if (ids.empty()) return refuse(req.id, errc::invalid_argument, "the prompt has no tokens");
  if (auto msg = req.sampling.validate(); !msg.empty()) return refuse(req.id, errc::invalid_argument, msg);
  if (req.max_tokens < 1) return refuse(req.id, errc::invalid_argument, "max_tokens must be at least 1");
  const auto n = static_cast<std::int64_t>(ids.size());
  if (n >= st.context_length) {
    return refuse(req.id, errc::out_of_range, "the prompt has " + std::to_string(n) + " tokens but the model's context holds " +
                                                  std::to_string(st.context_length));
  }
  if (n + req.max_tokens > st.context_length) {
    return refuse(req.id, errc::out_of_range, "prompt (" + std::to_string(n) + " tokens) + max_tokens (" +
                                                  std::to_string(req.max_tokens) + ") exceed the model's context of " +
                                                  std::to_string(st.context_length));
  }
  if (st.requests.count(req.id)) return refuse(req.id, errc::invalid_argument, "request id '" + req.id + "' is already in flight");
  auto seq = std::make_unique<sched::sequence>();
  seq->id = req.id;
  seq->priority = req.priority;
  seq->tokens = ids;
  seq->prompt_len = static_cast<std::int32_t>(n);
  seq->max_tokens = req.max_tokens;
  refusal why;
  if (!st.scheduler->add(std::move(seq), &why)) return refuse(req.id, why.code, why.message);
  request_state r;
  r.accepted = clock_type::now();
  r.prompt_tokens = static_cast<std::int32_t>(n);
  // Text skips special tokens, as generate() presents it.
  r.decoder = std::make_unique<stream_decoder>(*st.tok, ids, /*skip_special=*/true);
  r.stops = std::make_unique<stop_matcher>(req.stop);
  r.req = std::move(req);
  const std::string id = r.req.id;
  st.requests.emplace(id, std::move(r));
  submit_result res;
  res.accepted = true;
  res.id = id;
  res.replica = st.opts.replica.name;
  res.prompt_tokens = static_cast<std::int32_t>(n);
  publish_stats(self);
  self->send(self, tick_atom::value);
  return res;
}

batcher_actor::behavior_type batcher(self_ptr self, batcher_options opts) {
  auto& st = self->state;
  st.opts = std::move(opts);
  try {
    st.tok = load_model_tokenizer(st.opts.model.path);
    auto info = read_model_info(st.opts.model.path);
    st.context_length = info.context_length;
    st.eos_ids = info.eos_ids;
    sched::scheduler_options so;
    so.block_size = st.opts.replica.block_size;
    so.num_blocks = st.opts.replica.kv_cache_tokens / st.opts.replica.block_size;
    so.max_running = st.opts.replica.max_running;
    so.token_budget = st.opts.replica.token_budget;
    so.max_prefill_chunk = st.opts.replica.max_prefill_chunk;
    so.max_waiting = st.opts.replica.max_waiting;
    st.scheduler = std::make_unique<sched::scheduler>(so);
    if (st.opts.metrics) st.metrics = std::make_unique<serving_metrics>(*st.opts.metrics, st.opts.replica.model, st.opts.replica.name);
  } catch (const std::exception& e) {
    // The replica cannot serve this model at all (a missing tokenizer is not_found): final.
    st.failed_for_good = true;
    st.error = make_error(e);
    st.detail = e.what();
    log::error("replica {}: {}", st.opts.replica.name, st.detail);
  }
  publish_stats(self);
  start_attempt(self);
  self->set_down_handler([=](const caf::down_msg& dm) {
    auto& s = self->state;
    for (std::size_t r = 0; r < s.ranks.size(); ++r) {
      if (!s.ranks[r].worker || s.ranks[r].worker.address() != dm.source) continue;
      const refusal why{errc::unavailable,
                        "the shard worker of " + rank_name(s, r) + " is down (" + self->system().render(dm.reason) + ")"};
      if (s.ready) replica_down(self, why);
      else start_failed(self, s.attempt, why);
      return;
    }
  });
  return {
      [=](generate_atom, generate_request req) -> submit_result { return accept(self, std::move(req)); },
      [=](cancel_atom, const std::string& id) {
        auto& s = self->state;
        if (!s.requests.count(id)) return;
        const bool in_step = s.stepping && std::find(s.plan_ids.begin(), s.plan_ids.end(), id) != s.plan_ids.end();
        if (in_step) s.cancel_after_step.insert(id);
        else finish(self, id, "cancelled");
        publish_stats(self);
      },
      [=](status_atom) -> replica_stats { return make_stats(self->state); },
      [=](tick_atom) { run_step(self); },
      [=](restart_atom, std::uint64_t attempt) {
        // Only the latest failed attempt schedules a retry; a later start supersedes it.
        if (attempt == self->state.attempt && !self->state.ready) start_attempt(self);
      },
  };
}

}  // namespace

batcher_actor spawn_batcher(caf::actor_system& sys, batcher_options opts) { return sys.spawn(batcher, std::move(opts)); }

}  // namespace shoal::actors
