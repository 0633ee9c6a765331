#pragma once
// OpenAI request bodies (POST /v1/completions, POST /v1/chat/completions) as Shoal generation
// requests: JSON parsing, field validation, OpenAI's defaults, and the errors OpenAI's API would
// give. Plain C++: no kj, no actors (tests/server/openai_request_test.cpp).
//
// Unknown fields are ignored, as vLLM does (OpenAI's own API refuses them); a known field with a
// wrong type or value is refused naming it in `param`.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/messages.hpp"
#include "server/front_door.hpp"

namespace shoal::server {

/// A request a door answers with an error body instead of a generation, OpenAI-shaped.
struct request_error {
  unsigned status = 400;
  std::string type;     // OpenAI's error.type: invalid_request_error, authentication_error, ...
  std::string code;     // OpenAI's error.code: invalid_value, invalid_type, unsupported, ...
  std::string message;
  std::string param;    // the request field at fault, "" when none is
  std::string errc;     // Shoal's errc name for the same refusal (audit records, RPC)
};

/// 400 invalid_request_error; `code` is OpenAI's (invalid_value, invalid_type, invalid_json, ...).
request_error bad_request(const std::string& message, const std::string& param = "",
                          const std::string& code = "invalid_value");
/// A router or gateway refusal (an errc name) as the HTTP error OpenAI's API gives for it.
request_error from_errc(const std::string& errc, const std::string& message);
/// {"error": {"message", "type", "param", "code"}}.
nlohmann::ordered_json error_body(const request_error& e);

/// A generation request as the client wrote it, checked.
struct openai_request {
  bool chat = false;
  bool stream = false;
  bool include_usage = false;   // stream_options.include_usage
  std::string model;            // as named; "" = the cluster's default
  std::int64_t n = 1;           // choices per prompt
  actors::generate_request base;  // sampling, limits, stop strings, priority; no prompt, no who
  // Completions: one entry per prompt, text or token ids.
  struct prompt {
    std::string text;
    std::vector<std::int32_t> ids;
  };
  std::vector<prompt> prompts;
  // Chats: the messages as the template expects them (content as text, a list of text parts
  // joined; null for an assistant message that only calls tools), `tools` (null when absent).
  nlohmann::ordered_json messages;
  nlohmann::ordered_json tools;
  bool add_generation_prompt = true;
};

/// Parses and checks `body` against `limits` (max_n, max_prompt_bytes). Throws request_error.
openai_request parse_openai_request(std::string_view body, bool chat, const door_options& limits);

/// One generation request per choice, in choice order: each prompt n times (a chat: its rendered
/// prompt n times), choice i of a seeded request seeded with seed + i.
std::vector<actors::generate_request> choices(const openai_request& r, const rendered_chat* chat);

/// What finish_reason OpenAI clients expect: stop (a stop string or EOS) or length.
std::string openai_finish(const std::string& reason);

/// How deep JSON from a client may nest (HTTP bodies, RPC chat's messagesJson and toolsJson).
/// nlohmann parses any depth without recursing, but copying, rendering and dumping the tree
/// recurse once per level: a few hundred KB of '[' overflow the event loop thread's stack.
inline constexpr int max_json_depth = 64;

/// Whether `text` (JSON, valid or not) opens more than max_json_depth arrays or objects at once;
/// a linear scan that looks at no value, to run before parsing.
bool json_too_deep(std::string_view text);

/// Whether a door answers an error with this errc as a failure of its own (HTTP 500: internal,
/// corrupt_file, cancelled, or a code it does not know): the client then gets "internal error"
/// only, and what happened goes to the node log, masked.
bool internal_failure(const std::string& errc);

}  // namespace shoal::server
