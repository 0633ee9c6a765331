#include "actors/batcher.hpp"

#include <chrono>
#include <map>
#include <set>

#include "telemetry/metrics.hpp"
#include "engine/common/error.hpp"
#include "engine/model/model_info.hpp"
#include "engine/runner/generate.hpp"
#include "engine/sampling/sampler.hpp"
#include "engine/sched/scheduler.hpp"

namespace shoal::actors {

using telemetry::serving_metrics;

namespace {

using clock_type = std::chrono::steady_clock;

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

struct batcher_state {
  batcher_options opts;
  std::unique_ptr<tokenizer> tok;
  std::int64_t context_length = 0;
  std::vector<std::int32_t> eos_ids;
  std::unique_ptr<sched::scheduler> scheduler;
  std::vector<shard_worker_actor> workers;
  bool ready = false;
  bool healthy = false;
  std::string detail = "starting";
  std::map<std::string, request_state> requests;
  // The step in flight.
  bool stepping = false;
  std::uint64_t step_id = 0;
  sched::step_plan plan;
  std::vector<std::string> plan_ids;  // ids of plan items, in order
  int pending = 0;
  step_result rank0;
  std::string step_error;
  std::set<std::string> cancel_after_step;
  std::vector<std::string> dropped;  // sequences the workers should forget at the next step
  std::unique_ptr<serving_metrics> metrics;
  static inline const char* name = "batcher";
};

using self_ptr = batcher_actor::stateful_pointer<batcher_state>;

replica_stats make_stats(const batcher_state& st) {
  replica_stats s;
  s.name = st.opts.replica.name;
  s.model = st.opts.replica.model;
  s.kind = st.opts.replica.kind;
  s.healthy = st.healthy;
  s.detail = st.detail;
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
void finish(self_ptr self, const std::string& id, const std::string& reason, const std::string& code = {},
            const std::string& message = {}) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end()) return;
  auto& r = it->second;
  generation_summary sum;
  sum.id = id;
  sum.finish_reason = reason;
  sum.error_code = code;
  sum.error_message = message;
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

void fail_replica(self_ptr self, const std::string& why) {
  auto& st = self->state;
  st.healthy = false;
  st.ready = false;
  st.detail = why;
  std::vector<std::string> ids;
  for (auto& [id, _] : st.requests) ids.push_back(id);
  for (auto& id : ids) finish(self, id, "error", "unavailable", "replica " + st.opts.replica.name + " failed: " + why);
  st.stepping = false;
  publish_stats(self);
}

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

void run_step(self_ptr self);

void on_step_done(self_ptr self) {
  auto& st = self->state;
  st.stepping = false;
  if (!st.step_error.empty()) {
    fail_replica(self, st.step_error);
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
  st.pending = static_cast<int>(st.workers.size());
  st.step_error.clear();
  st.rank0 = {};
  const auto step = req.step;
  for (std::size_t rank = 0; rank < st.workers.size(); ++rank) {
    self->request(st.workers[rank], caf::infinite, step_atom::value, req)
        .then(
            [=](const step_result& res) {
              auto& s = self->state;
              if (!s.stepping || s.step_id != step) return;
              if (!res.error.empty() && s.step_error.empty()) {
                s.step_error = "rank " + std::to_string(rank) + ": " + res.error;
              }
              if (rank == 0) s.rank0 = res;
              if (--s.pending == 0) on_step_done(self);
            },
            [=](caf::error& e) {
              auto& s = self->state;
              if (!s.stepping || s.step_id != step) return;
              if (s.step_error.empty()) s.step_error = "rank " + std::to_string(rank) + ": " + self->system().render(e);
              if (--s.pending == 0) on_step_done(self);
            });
  }
}

// Every rank is linked: the replica takes requests.
void on_linked(self_ptr self) {
  auto& st = self->state;
  st.ready = true;
  st.healthy = true;
  st.detail = "ready";
  publish_stats(self);
  self->send(self, tick_atom::value);
}

// communicator nccl: rank 0 makes the NCCL unique id, and it travels to every rank in actor
// messages (no side channel); each rank then joins the communicator (blocking until all have).
void link_nccl(self_ptr self, std::int32_t world) {
  self->request(self->state.workers[0], std::chrono::seconds(60), nccl_id_atom::value)
      .then(
          [=](const std::string& id) {
            auto joined = std::make_shared<int>(world);
            for (std::int32_t r = 0; r < world; ++r) {
              self->request(self->state.workers[r], caf::infinite, nccl_join_atom::value, id)
                  .then(
                      [=](bool) {
                        if (--*joined == 0) on_linked(self);
                      },
                      [=](caf::error& e) { fail_replica(self, "rank " + std::to_string(r) + " NCCL join: " + self->system().render(e)); });
            }
          },
          [=](caf::error& e) { fail_replica(self, "rank 0 NCCL unique id: " + self->system().render(e)); });
}

// Spawns the shard workers on their nodes, loads the slices, connects the ring (tcp) or joins the
// NCCL communicator (nccl).
void start_workers(self_ptr self) {
  auto& st = self->state;
  const auto world = static_cast<std::int32_t>(st.opts.nodes.size());
  auto ports = std::make_shared<std::vector<std::int32_t>>(world, 0);
  auto left = std::make_shared<int>(world);
  st.workers.resize(world);
  const std::int32_t num_blocks = st.opts.replica.kv_cache_tokens / st.opts.replica.block_size;
  for (std::int32_t rank = 0; rank < world; ++rank) {
    self->request(st.opts.nodes[rank], std::chrono::seconds(30), spawn_atom::value)
        .then(
            [=](const shard_worker_actor& w) {
              auto& s = self->state;
              s.workers[rank] = w;
              self->monitor(w);
              shard_setup setup;
              setup.model_path = s.opts.model.path;
              setup.replica = s.opts.replica.name;
              setup.rank = rank;
              setup.world = world;
              setup.block_size = s.opts.replica.block_size;
              setup.num_blocks = num_blocks;
              setup.threads = s.opts.node_threads[rank];
              setup.bind_host = s.opts.node_hosts[rank];
              setup.parallel = s.opts.replica.parallel;
              setup.communicator = s.opts.replica.communicator;
              self->request(w, caf::infinite, setup_atom::value, setup)
                  .then(
                      [=](std::int32_t port) {
                        (*ports)[rank] = port;
                        if (--*left > 0) return;
                        auto& s2 = self->state;
                        if (s2.opts.replica.communicator == "nccl" && world > 1) {
                          link_nccl(self, world);
                          return;
                        }
                        std::vector<std::string> addrs;
                        for (std::int32_t r = 0; r < world; ++r) addrs.push_back(s2.opts.node_hosts[r] + ":" + std::to_string((*ports)[r]));
                        auto connected = std::make_shared<int>(world);
                        for (std::int32_t r = 0; r < world; ++r) {
                          self->request(s2.workers[r], caf::infinite, connect_atom::value, addrs)
                              .then(
                                  [=](bool) {
                                    if (--*connected == 0) on_linked(self);
                                  },
                                  [=](caf::error& e) { fail_replica(self, "rank " + std::to_string(r) + " link: " + self->system().render(e)); });
                        }
                      },
                      [=](caf::error& e) { fail_replica(self, "rank " + std::to_string(rank) + " setup: " + self->system().render(e)); });
            },
            [=](caf::error& e) { fail_replica(self, "rank " + std::to_string(rank) + " spawn: " + self->system().render(e)); });
  }
}

sampling_params to_params(const sampling_spec& s) {
  sampling_params p;
  p.temperature = s.temperature;
  p.top_k = s.top_k;
  p.top_p = s.top_p;
  p.min_p = s.min_p;
  p.repetition_penalty = s.repetition_penalty;
  p.presence_penalty = s.presence_penalty;
  p.frequency_penalty = s.frequency_penalty;
  return p;
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
  if (!st.healthy) return refuse(req.id, errc::unavailable, "replica " + st.opts.replica.name + " is not ready: " + st.detail);
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
  if (auto msg = to_params(req.sampling).validate(); !msg.empty()) return refuse(req.id, errc::invalid_argument, msg);
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
  std::string why;
  if (!st.scheduler->add(std::move(seq), &why)) {
    const bool full = why.find("queue is full") != std::string::npos;
    return refuse(req.id, full ? errc::overloaded : errc::out_of_range, why);
  }
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
    start_workers(self);
  } catch (const std::exception& e) {
    st.detail = e.what();
    publish_stats(self);
  }
  self->set_down_handler([=](const caf::down_msg& dm) {
    auto& s = self->state;
    for (std::size_t r = 0; r < s.workers.size(); ++r) {
      if (s.workers[r] && s.workers[r].address() == dm.source) {
        fail_replica(self, "shard worker rank " + std::to_string(r) + " is down (" + self->system().render(dm.reason) + ")");
        return;
      }
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
  };
}

}  // namespace

batcher_actor spawn_batcher(caf::actor_system& sys, batcher_options opts) { return sys.spawn(batcher, std::move(opts)); }

}  // namespace shoal::actors
