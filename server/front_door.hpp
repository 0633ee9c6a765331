#pragma once
// What a front door other than Cap'n Proto (the OpenAI-compatible HTTP server) needs from the
// gateway's event loop: start generations and pull their tokens, ask the router for its status,
// render chats with the model's template. Implemented by the gateway (actors/gateway.cpp), so both
// doors share one loop thread, one bridge to the router and one chat renderer. Every call is made on
// the loop thread.

#include <kj/async.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/messages.hpp"

namespace shoal::actors {

struct gateway_options;

/// A router answer as the loop sees it: a value, or an errc name and a message.
template <class T>
struct outcome {
  std::optional<T> value;
  std::string code;
  std::string message;
};

/// What one next() call delivers: the chunks that arrived since the last call (possibly none) and,
/// at the end, the summary. After a summary the generation is gone.
struct pulled {
  std::vector<token_chunk> chunks;
  std::optional<generation_summary> summary;
};

class front_door {
 public:
  virtual ~front_door() noexcept(false) = default;  // kj members of implementations may throw

  virtual const gateway_options& options() const = 0;

  /// Sends `req` to the router; its tokens wait for next(key). The promise is the router's answer.
  struct started_pull {
    std::uint64_t key;
    kj::Promise<submit_result> submitted;
  };
  virtual started_pull start_pull(generate_request req) = 0;

  /// Resolves once chunks or the summary of an accepted generation are there. One call at a time
  /// per key; the caller's pace is the flow control (chunks coalesce meanwhile).
  virtual kj::Promise<pulled> next(std::uint64_t key) = 0;

  /// The caller no longer wants the result (gone, or failed): cancels the generation if it runs.
  virtual void abandon(std::uint64_t key) = 0;

  /// The router's view of the cluster (replicas, readiness, served models).
  virtual kj::Promise<outcome<cluster_status>> status() = 0;

  /// Renders a chat (a JSON array of messages; `tools` null or an array) with `model`'s chat
  /// template ("" = the default model). Throws shoal::error: not_found (unknown model),
  /// unsupported (no template, or no model paths), invalid_argument (bad messages), out_of_range.
  virtual std::string render_chat(const std::string& model, const nlohmann::ordered_json& messages,
                                  const nlohmann::ordered_json& tools, bool add_generation_prompt) = 0;

  /// The name of `model` as served ("" = the default), or nullopt when the gateway knows its
  /// models and this is not one (unknown models answer 404 before reaching the router).
  virtual std::optional<std::string> served_name(const std::string& model) const = 0;
};

}  // namespace shoal::actors
