#include "engine/sched/scheduler.hpp"

#include <algorithm>

#include "engine/common/error.hpp"

namespace shoal::sched {

scheduler::scheduler(scheduler_options opts) : opts_(opts), pool_(opts.num_blocks) {
  if (opts.block_size <= 0 || opts.num_blocks <= 0 || opts.token_budget <= 0 || opts.max_running <= 0 ||
      opts.max_prefill_chunk <= 0) {
    throw error(errc::invalid_argument, "scheduler options must be positive");
  }
}

bool scheduler::before(const sequence& a, const sequence& b) const {
  if (a.priority != b.priority) return a.priority > b.priority;
  return a.arrival < b.arrival;
}

bool scheduler::add(std::unique_ptr<sequence> s, std::string* why) {
  refusal r;
  const bool ok = add(std::move(s), &r);
  if (!ok && why) *why = std::move(r.message);
  return ok;
}

bool scheduler::add(std::unique_ptr<sequence> s, refusal* why) {
  const std::int64_t need = (static_cast<std::int64_t>(s->tokens.size()) + s->max_tokens + opts_.block_size - 1) /
                            opts_.block_size;
  if (need > pool_.total()) {
    if (why) {
      *why = {errc::out_of_range, "the request needs " + std::to_string(need * opts_.block_size) +
                                      " KV slots but the replica has " +
                                      std::to_string(static_cast<std::int64_t>(pool_.total()) * opts_.block_size)};
    }
    return false;
  }
  if (static_cast<std::int32_t>(waiting_.size()) >= opts_.max_waiting) {
    if (why) *why = {errc::overloaded, "the replica's queue is full (" + std::to_string(opts_.max_waiting) + " waiting)"};
    return false;
  }
  if (all_.count(s->id)) {
    if (why) *why = {errc::invalid_argument, "request id '" + s->id + "' is already in flight"};
    return false;
  }
  s->arrival = next_arrival_++;
  s->state = seq_state::waiting;
  sequence* raw = s.get();
  all_.emplace(s->id, std::move(s));
  // Keep waiting_ ordered by (priority desc, arrival asc).
  auto it = std::find_if(waiting_.begin(), waiting_.end(), [&](sequence* w) { return before(*raw, *w); });
  waiting_.insert(it, raw);
  return true;
}

bool scheduler::grow(sequence& s, std::int32_t upto_tokens) {
  const std::int32_t need = (upto_tokens + opts_.block_size - 1) / opts_.block_size -
                            static_cast<std::int32_t>(s.blocks.size());
  if (need <= 0) return true;
  return pool_.allocate(need, s.blocks);
}

void scheduler::preempt(sequence& s) {
  // Recompute preemption: drop the cache, keep the tokens; the sequence re-prefills later.
  pool_.release(s.blocks);
  s.blocks.clear();
  s.computed = 0;
  s.state = seq_state::waiting;
  ++s.preemptions;
  ++preemptions_;
  running_.erase(std::remove(running_.begin(), running_.end(), &s), running_.end());
  auto it = std::find_if(waiting_.begin(), waiting_.end(), [&](sequence* w) { return before(s, *w); });
  waiting_.insert(it, &s);
}

step_plan scheduler::schedule() {
  step_plan plan;
  std::int32_t budget = opts_.token_budget;
  // 1. Running sequences, highest priority first; preempt from the back when blocks run out.
  std::sort(running_.begin(), running_.end(), [&](sequence* a, sequence* b) { return before(*a, *b); });
  for (std::size_t i = 0; i < running_.size() && budget > 0;) {
    sequence& s = *running_[i];
    const std::int32_t remaining = static_cast<std::int32_t>(s.tokens.size()) - s.computed;
    const std::int32_t count = std::min({remaining, budget, opts_.max_prefill_chunk});
    if (count <= 0) {
      ++i;
      continue;
    }
    bool ok = grow(s, s.computed + count);
    while (!ok) {
      sequence* victim = running_.back();
      plan.preempted.push_back(victim->id);
      preempt(*victim);
      if (victim == &s) break;
      ok = grow(s, s.computed + count);
    }
    if (!ok) continue;  // s itself was preempted; running_[i] is now the next sequence
    plan.items.push_back({&s, s.computed, count, s.computed + count == static_cast<std::int32_t>(s.tokens.size())});
    budget -= count;
    ++i;
  }
  // 2. Waiting sequences in order; stop at the first that does not fit (no overtaking).
  while (!waiting_.empty() && budget > 0 && static_cast<std::int32_t>(running_.size()) < opts_.max_running) {
    sequence& s = *waiting_.front();
    const std::int32_t remaining = static_cast<std::int32_t>(s.tokens.size()) - s.computed;
    const std::int32_t count = std::min({remaining, budget, opts_.max_prefill_chunk});
    // Admit only if the blocks for this chunk are free; preempted work is not undone for newcomers.
    if (!grow(s, s.computed + count)) break;
    waiting_.pop_front();
    s.state = seq_state::running;
    running_.push_back(&s);
    plan.items.push_back({&s, s.computed, count, s.computed + count == static_cast<std::int32_t>(s.tokens.size())});
    budget -= count;
  }
  plan.tokens = opts_.token_budget - budget;
  return plan;
}

void scheduler::complete(const step_plan& plan, const std::vector<std::int32_t>& sampled) {
  // The batcher defers remove() until the step it is part of completes, so every item's sequence
  // is alive here.
  std::size_t k = 0;
  for (const auto& item : plan.items) {
    sequence& s = *item.seq;
    std::int32_t token = -1;
    if (item.sample) {
      if (k >= sampled.size()) throw error(errc::internal, "step result has fewer sampled tokens than planned");
      token = sampled[k++];
    }
    if (s.state != seq_state::running) continue;
    s.computed = std::max(s.computed, item.start + item.count);
    if (item.sample) s.tokens.push_back(token);
  }
}

std::unique_ptr<sequence> scheduler::remove(const std::string& id) {
  auto it = all_.find(id);
  if (it == all_.end()) return nullptr;
  std::unique_ptr<sequence> s = std::move(it->second);
  all_.erase(it);
  pool_.release(s->blocks);
  s->blocks.clear();
  running_.erase(std::remove(running_.begin(), running_.end(), s.get()), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s.get()), waiting_.end());
  s->state = seq_state::finished;
  return s;
}

sequence* scheduler::find(const std::string& id) {
  auto it = all_.find(id);
  return it == all_.end() ? nullptr : it->second.get();
}

double scheduler::kv_usage() const {
  return pool_.total() == 0 ? 0.0 : 1.0 - static_cast<double>(pool_.free_count()) / pool_.total();
}

}  // namespace shoal::sched
