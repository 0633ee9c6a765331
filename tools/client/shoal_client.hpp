#pragma once
// A synchronous C++ client for Shoal's Cap'n Proto API (schemas/shoal.capnp), for other C++
// services and the `shoal client` commands. It hides Cap'n Proto and kj: each call runs the RPC on
// an event loop of the calling thread and returns when the answer is in.
//
// Threads: a client belongs to the thread that created it (its connection lives on that thread's
// kj event loop, shared by the thread's clients); use one client per thread for concurrency. Only
// cancel() may be called from another thread. A thread that already runs its own kj event loop
// cannot use this class.
//
// Errors: a refused request (the RPC `error` field), a generation that ends in error, or a lost
// connection throw shoal::error with the code the gateway named (engine/common/error.hpp). After
// a lost connection the next call connects again.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/common/error.hpp"

namespace shoal::client {

struct sampling_options {
  float temperature = 1.0f;  // 0 = greedy. Default: 1
  std::int32_t top_k = 0;    // 0 = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<std::uint64_t> seed;
};

struct generate_params {
  std::string model;   // "" = the cluster's default model
  std::string prompt;  // used when prompt_ids is empty
  std::vector<std::int32_t> prompt_ids;
  sampling_options sampling;
  std::int32_t max_tokens = 128;  // Default: 128
  bool ignore_eos = false;
  std::vector<std::string> stop;  // the text ends before the first match
  std::vector<std::int32_t> stop_ids;
  std::int32_t priority = 0;      // higher is scheduled first
  std::string kind = "generate";  // generate | score | embed
  bool add_special = true;        // add BOS as the tokenizer says
  bool specials_as_text = false;  // special-token strings in the prompt stay text
  std::string request_id;         // "" = the gateway assigns one
  std::string api_key;            // "" = the client's default (client_options::api_key)
  bool no_cache = false;          // neither answer from nor fill the answer cache
};

struct chat_message {
  std::string role;
  std::string content;
};

struct chat_params {
  std::vector<chat_message> messages;
  std::string messages_json;  // instead of `messages`: a JSON array of message objects
  std::string tools_json;     // optional JSON array of tool definitions
  bool add_generation_prompt = true;
  generate_params generation;  // its prompt fields are ignored
};

struct chunk {
  std::vector<std::int32_t> ids;
  std::string text;        // complete UTF-8
  std::int32_t index = 0;  // position of ids[0] in the generation
  bool cached = false;
};

struct summary {
  std::string request_id;
  std::string finish_reason;  // length | stop | eos | cancelled
  std::int32_t prompt_tokens = 0;
  std::int32_t completion_tokens = 0;
  double queue_seconds = 0;  // as the server measured them
  double ttft_seconds = 0;
  double total_seconds = 0;
  std::string replica;
  bool cached = false;
};

struct completion {
  std::string request_id;
  std::vector<std::int32_t> ids;
  std::string text;
  summary info;
};

struct model_info {
  std::string name;
  std::int32_t context_length = 0;
  std::int32_t replicas = 0;
  std::int32_t healthy_replicas = 0;
};

struct replica_health {
  std::string name;
  std::string model;
  bool healthy = false;
  std::string detail;
  double kv_usage = 0;
  std::int32_t waiting = 0;
  std::int32_t running = 0;
};

struct health_info {
  bool live = false;
  bool ready = false;
  std::string detail;
  std::vector<replica_health> replicas;
};

struct admin_params {
  std::string op;  // query | export | blocks | unblock | purge_cache
  std::string tenant, principal, operation, since, until;
  std::uint64_t limit = 0;
  std::string api_key;
};

struct client_options {
  std::uint64_t max_message_words = 8
                                    << 20;  // largest answer read, in 8-byte words. Default: 64 MiB
  std::int32_t connect_timeout_ms = 10000;  // Default: 10 s
  // How long health, models, tokenize and admin wait for their answer (generations are not
  // limited: they take as long as they take); 0 waits forever. Default: 30 s
  std::int32_t call_timeout_ms = 30000;
  std::string api_key;                      // sent with every request that names none. Default: $SHOAL_API_KEY
};

/// Receives each chunk as it arrives; return false to cancel the generation.
using chunk_callback = std::function<bool(const chunk&)>;

class client {
 public:
  /// Connects to a gateway; throws shoal::error (errc::unavailable) when it cannot.
  client(std::string host, std::int32_t port, client_options opts = {});
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// Streams a generation to `on_chunk` (may be empty) and returns its summary; a cancelled one
  /// returns with finish_reason "cancelled".
  summary generate(const generate_params& params, const chunk_callback& on_chunk = {});
  /// As generate(), for a chat the gateway renders with the model's chat template.
  summary chat(const chat_params& params, const chunk_callback& on_chunk = {});
  /// The whole generation in one answer.
  completion complete(const generate_params& params);
  std::vector<std::int32_t> tokenize(const std::string& text, const std::string& model = "",
                                     bool add_special = true);
  std::vector<model_info> models();
  health_info health();
  /// An administrative operation (see schemas/shoal.capnp AdminRequest): its JSON lines, or
  /// shoal::error with the router's code (unauthenticated, forbidden, ...). The request's api_key
  /// defaults to the client's.
  std::vector<std::string> admin(const admin_params& params);
  /// Cancels the generate() or chat() running on this client, if any. Callable from any thread.
  void cancel();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// "HOST:PORT" or "[IPv6]:PORT" -> host and port; throws shoal::error (invalid_argument).
std::pair<std::string, std::int32_t> parse_endpoint(const std::string& endpoint);

/// The errc an error code string names ("not_found" -> errc::not_found); errc::internal if none.
errc errc_from_string(const std::string& code);

}  // namespace shoal::client
