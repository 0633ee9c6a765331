#pragma once
// What the front doors (the Cap'n Proto RPC service, server/rpc_service.hpp, and the
// OpenAI-compatible HTTP API, server/http_gateway.hpp) need from the cluster: check a caller,
// start generations and pull their tokens, ask the router, audit what a door refuses, render chats.
// Implemented by the gateway bridge (actors/gateway.cpp), so both doors share one event loop
// thread, one bridge to the router and one chat renderer. Every call is made on the loop thread.

#include <kj/async.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/messages.hpp"
#include "server/door_telemetry.hpp"

namespace shoal::server {

/// Limits both doors enforce. Every field says its default.
struct door_options {
  std::uint64_t max_message_words = 8 << 20;  // Cap'n Proto traversal limit, in 8-byte words. Default: 64 MiB
  std::int32_t max_nesting = 64;              // Cap'n Proto nesting limit. Default: 64
  std::int32_t max_prompt_bytes = 1 << 20;    // Default: 1 MiB
  std::int64_t max_body_bytes = 4 << 20;      // HTTP request bodies above this answer 413. Default: 4 MiB
  std::int32_t max_n = 16;                    // most choices (`n`) one HTTP request may ask for. Default: 16
  // HTTP: how long a request body may take to arrive once its headers are in (kj-http bounds the
  // headers themselves: 15 s); a slower one answers 408. Default: 30 s
  std::int32_t body_timeout_ms = 30000;
  // Open connections per door (RPC and HTTP each); one more is closed at once (HTTP: after a 503).
  // Default: 256
  std::int32_t max_connections = 256;
};

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
  std::vector<actors::token_chunk> chunks;
  std::optional<actors::generation_summary> summary;
};

/// A chat rendered for a generation: the prompt, and where special tokens may be parsed in it
/// (generate_request::special_ranges: the template's own text; false parse_special: nowhere).
struct rendered_chat {
  std::string prompt;
  std::vector<std::int32_t> special_ranges;
  bool parse_special = true;
};

class front_door {
 public:
  virtual ~front_door() noexcept(false) = default;  // kj members of implementations may throw

  virtual const door_options& options() const = 0;
  virtual door_telemetry& telemetry() = 0;

  /// Asks the router whether `caller`'s key (or its absence) may call at all; a refusal is audited
  /// there. Doors ask before anything else they do with a request that carries a key.
  virtual kj::Promise<outcome<actors::auth_result>> authenticate(actors::door_caller caller) = 0;
  /// Audits a request this door refused itself (one record, like the router's refusals).
  virtual void refused(actors::door_refusal refusal) = 0;

  /// Sends `req` to the router; its tokens wait for next(key). The promise is the router's answer.
  struct started_pull {
    std::uint64_t key;
    kj::Promise<actors::submit_result> submitted;
  };
  virtual started_pull start(actors::generate_request req) = 0;

  /// Resolves once chunks or the summary of an accepted generation are there. One call at a time
  /// per key; the caller's pace is the flow control (chunks coalesce meanwhile).
  virtual kj::Promise<pulled> next(std::uint64_t key) = 0;

  /// Stops the generation; its "cancelled" summary still comes through next().
  virtual void cancel(std::uint64_t key) = 0;

  /// The caller no longer wants the result (gone, or failed): cancels the generation if it runs.
  virtual void abandon(std::uint64_t key) = 0;

  /// The router's view of the cluster (replicas, readiness, served models).
  virtual kj::Promise<outcome<actors::cluster_status>> status() = 0;
  virtual kj::Promise<outcome<std::vector<std::int32_t>>> tokenize(actors::tokenize_request req) = 0;
  virtual kj::Promise<outcome<actors::admin_result>> admin(actors::admin_request req) = 0;

  /// Renders a chat (a JSON array of messages; `tools` null or an array) with `model`'s chat
  /// template ("" = the default model). Both come from a client and nest at most max_json_depth
  /// levels (server/openai_request.hpp; doors check before parsing): rendering copies and dumps
  /// them recursively on the loop's thread. Message contents stay text: special tokens are parsed only
  /// in the template's own text. Throws shoal::error: not_found (unknown model), unsupported (no
  /// template, or no model paths), invalid_argument (bad messages, or contents holding special-token
  /// strings where the template transforms contents), out_of_range (too long).
  virtual rendered_chat render_chat(const std::string& model, const nlohmann::ordered_json& messages,
                                    const nlohmann::ordered_json& tools, bool add_generation_prompt) = 0;

  /// The name of `model` as served ("" = the default), or nullopt when the gateway knows its
  /// models and this is not one (unknown models are refused before reaching the router).
  virtual std::optional<std::string> served_name(const std::string& model) const = 0;
  /// Why `model` is refused ("unknown model 'x' (served: ...)"), or nullopt when it is served or
  /// the gateway does not know the served models.
  virtual std::optional<std::string> unknown_model(const std::string& model) const = 0;
};

}  // namespace shoal::server
