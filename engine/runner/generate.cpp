#include "engine/runner/generate.hpp"

#include <algorithm>
#include <chrono>
#include <utility>

#include "engine/common/error.hpp"

namespace shoal {

const char* to_string(finish_reason r) {
  switch (r) {
    case finish_reason::length: return "length";
    case finish_reason::stop: return "stop";
    case finish_reason::eos: return "eos";
  }
  return "?";
}

stop_matcher::stop_matcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

std::string stop_matcher::push(std::string_view text, bool& stopped) {
  pending_.append(text);
  stopped = false;
  std::size_t first = std::string::npos;
  for (auto& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Keep the longest tail that is a proper prefix of some stop string.
  std::size_t hold = 0;
  for (auto& s : stops_) {
    for (std::size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string stop_matcher::flush() { return std::exchange(pending_, {}); }

generation_result generate(model_runner& runner, std::span<const std::int32_t> prompt_ids,
                           const generation_options& opts, const text_callback& on_text,
                           const logits_callback& on_logits) {
  using clock = std::chrono::steady_clock;
  const model& m = runner.get_model();
  const auto& cfg = m.config();
  if (auto msg = opts.sampling.validate(); !msg.empty()) throw error(errc::invalid_argument, msg);
  if (opts.max_tokens < 0) throw error(errc::invalid_argument, "max_tokens must be >= 0");
  if (prompt_ids.empty()) throw error(errc::invalid_argument, "the prompt has no tokens");
  const auto n_prompt = static_cast<std::int64_t>(prompt_ids.size());
  if (n_prompt >= cfg.max_positions) {
    throw error(errc::out_of_range, "the prompt has " + std::to_string(n_prompt) +
                                        " tokens but the model's context holds " +
                                        std::to_string(cfg.max_positions) +
                                        " (and at least one must be left to generate)");
  }
  for (auto id : prompt_ids) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw error(errc::out_of_range, "prompt token id " + std::to_string(id) + " is outside the vocabulary");
    }
  }
  const std::int64_t max_new = std::min<std::int64_t>(opts.max_tokens, cfg.max_positions - n_prompt);
  const std::int32_t bs = runner.block_size();
  const std::int64_t need_blocks = (n_prompt + max_new + bs - 1) / bs;
  block_pool pool(runner.cache().num_blocks());
  std::vector<std::int32_t> table;
  if (!pool.allocate(static_cast<std::int32_t>(need_blocks), table)) {
    throw error(errc::out_of_range, "the KV cache holds " + std::to_string(pool.total() * bs) +
                                        " tokens; this request needs " + std::to_string(n_prompt + max_new));
  }

  generation_result res;
  res.prompt_ids.assign(prompt_ids.begin(), prompt_ids.end());
  const tokenizer& tok = m.tok();
  sampler smp(opts.sampling, std::min<std::int64_t>(cfg.vocab_size, tok.vocab_size()));
  for (auto id : prompt_ids) smp.observe(id, false);
  // Text skips special tokens (BOS, EOS, ...), as Hugging Face and vLLM present it by default.
  stream_decoder dec(tok, prompt_ids, /*skip_special=*/true);
  stop_matcher stops(opts.stop);

  std::vector<float> logits;
  forward_batch batch;
  auto t0 = clock::now();
  for (std::int64_t start = 0; start < n_prompt; start += opts.prefill_chunk) {
    const std::int64_t end = std::min<std::int64_t>(n_prompt, start + opts.prefill_chunk);
    batch = {};
    for (std::int64_t i = start; i < end; ++i) {
      batch.add(prompt_ids[i], static_cast<std::int32_t>(i), table, i == n_prompt - 1);
    }
    runner.forward(batch, logits);
  }
  auto t1 = clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  std::int32_t pos = static_cast<std::int32_t>(n_prompt - 1);
  std::int32_t last = prompt_ids.back();
  std::string generated;
  bool stopped = false;
  res.reason = finish_reason::length;
  for (std::int64_t step = 0; step < max_new; ++step) {
    if (step > 0) {
      batch = {};
      batch.add(last, pos, table, true);
      runner.forward(batch, logits);
    }
    if (on_logits) on_logits(pos, last, logits);
    const std::int32_t next = smp.sample(logits);
    res.generated_ids.push_back(next);
    smp.observe(next, true);
    last = next;
    ++pos;
    const bool is_eos = std::find(cfg.eos_ids.begin(), cfg.eos_ids.end(), next) != cfg.eos_ids.end();
    const bool is_stop_id =
        std::find(opts.stop_token_ids.begin(), opts.stop_token_ids.end(), next) != opts.stop_token_ids.end();
    if ((is_eos && !opts.ignore_eos) || is_stop_id) {
      res.reason = is_stop_id ? finish_reason::stop : finish_reason::eos;
      break;
    }
    std::string out = stops.push(dec.push(next), stopped);
    generated += out;
    if (on_text && !out.empty()) on_text(out);
    if (stopped) {
      res.reason = finish_reason::stop;
      break;
    }
  }
  if (!stopped) {
    std::string tail = stops.push(dec.finish(), stopped);
    if (!stopped) tail += stops.flush();
    else res.reason = finish_reason::stop;
    generated += tail;
    if (on_text && !tail.empty()) on_text(tail);
  }
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  res.generated_text = generated;
  res.text = tok.decode(prompt_ids, /*skip_special=*/true) + generated;
  return res;
}

}  // namespace shoal
