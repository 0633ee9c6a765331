#pragma once
// Iteration-level (continuous) batching, as in vLLM v1: every step the scheduler decides which
// sequences compute how many tokens, within a token budget, with the KV blocks they need.
//
//   capacity check -> keep running sequences going (decode 1 token, or the next prefill chunk)
//   -> preempt (recompute) the lowest-priority running sequence when blocks run out
//   -> admit waiting sequences by priority, then arrival (FCFS), chunking long prompts
//   -> the step plan; after the step, update() appends sampled tokens.
//
// The scheduler sees KV blocks only through the block_pool it owns (the batcher's KV manager):
// physical block contents live in the shard workers. Plain C++, no actors: the batcher drives it.

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/common/error.hpp"
#include "engine/kv/kv_cache.hpp"

namespace shoal::sched {

struct scheduler_options {
  std::int32_t block_size = 16;        // tokens per KV block. Default: 16
  std::int32_t num_blocks = 0;         // KV blocks in the pool (required)
  std::int32_t max_running = 64;       // sequences in one step. Default: 64
  std::int32_t token_budget = 256;     // tokens computed per step, all sequences together. Default: 256
  std::int32_t max_prefill_chunk = 128;  // prompt tokens of one sequence per step. Default: 128
  std::int32_t max_waiting = 1024;     // queued sequences before add() refuses (overloaded). Default: 1024
};

enum class seq_state : std::uint8_t { waiting, running, finished };

struct sequence {
  std::string id;
  std::int32_t priority = 0;        // higher runs first. Default: 0
  std::uint64_t arrival = 0;        // set by add(): FCFS order among equal priorities
  std::vector<std::int32_t> tokens; // prompt followed by generated tokens
  std::int32_t prompt_len = 0;
  std::int32_t max_tokens = 0;      // generated tokens allowed
  std::int32_t computed = 0;        // leading tokens whose K/V are in the cache
  std::vector<std::int32_t> blocks; // block table, owned here
  seq_state state = seq_state::waiting;
  std::int32_t preemptions = 0;

  std::int32_t generated() const { return static_cast<std::int32_t>(tokens.size()) - prompt_len; }
};

/// One sequence's share of a step: compute tokens [start, start + count) of seq->tokens; when that
/// reaches the end of its tokens, the step samples one new token for it.
struct step_item {
  sequence* seq = nullptr;
  std::int32_t start = 0;
  std::int32_t count = 0;
  bool sample = false;
};

struct step_plan {
  std::vector<step_item> items;
  std::vector<std::string> preempted;  // sequences whose cache was dropped this step (recompute later)
  std::int32_t tokens = 0;
  bool empty() const { return items.empty(); }
};

class scheduler {
 public:
  explicit scheduler(scheduler_options opts);

  /// Queues a sequence. Returns false (and keeps nothing) when the waiting queue is full or the
  /// sequence can never fit the pool (its prompt + max_tokens need more blocks than exist).
  bool add(std::unique_ptr<sequence> s, std::string* why = nullptr);
  /// As above, saying why as a code the batcher passes on: out_of_range (can never fit),
  /// overloaded (queue full) or invalid_argument (the id is already queued or running).
  bool add(std::unique_ptr<sequence> s, refusal* why);
  /// Plans the next step. May preempt running sequences to make room.
  step_plan schedule();
  /// Records a finished step: `sampled[i]` is the token sampled for the i-th item with sample=true.
  void complete(const step_plan& plan, const std::vector<std::int32_t>& sampled);
  /// Removes a sequence (finished, cancelled or failed) and returns its blocks to the pool.
  /// Returns the sequence (null when unknown).
  std::unique_ptr<sequence> remove(const std::string& id);

  sequence* find(const std::string& id);
  std::int32_t waiting() const { return static_cast<std::int32_t>(waiting_.size()); }
  std::int32_t running() const { return static_cast<std::int32_t>(running_.size()); }
  std::int32_t free_blocks() const { return pool_.free_count(); }
  std::int32_t total_blocks() const { return pool_.total(); }
  /// Fraction of KV blocks in use, 0..1.
  double kv_usage() const;
  std::int64_t preemptions() const { return preemptions_; }
  const scheduler_options& options() const { return opts_; }

 private:
  bool grow(sequence& s, std::int32_t upto_tokens);
  void preempt(sequence& s);
  bool before(const sequence& a, const sequence& b) const;

  scheduler_options opts_;
  block_pool pool_;
  std::map<std::string, std::unique_ptr<sequence>> all_;
  std::vector<sequence*> running_;
  std::deque<sequence*> waiting_;
  std::uint64_t next_arrival_ = 0;
  std::int64_t preemptions_ = 0;
};

}  // namespace shoal::sched
