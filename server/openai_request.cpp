#include "server/openai_request.hpp"

#include <cmath>
#include <limits>

namespace shoal::server {

using json = nlohmann::ordered_json;
using actors::generate_request;

request_error bad_request(const std::string& message, const std::string& param, const std::string& code) {
  return request_error{400, "invalid_request_error", code, message, param, "invalid_argument"};
}

request_error from_errc(const std::string& errc, const std::string& message) {
  request_error e;
  e.message = message;
  e.code = errc;
  e.errc = errc;
  if (errc == "invalid_argument" || errc == "out_of_range" || errc == "unsupported") {
    e.status = 400;
    e.type = "invalid_request_error";
  } else if (errc == "unauthenticated") {
    e.status = 401;
    e.type = "authentication_error";
    e.code = "invalid_api_key";
  } else if (errc == "forbidden") {
    e.status = 403;
    e.type = "permission_error";
  } else if (errc == "not_found") {
    // Code `not_found`, as the errc: what is missing may be a file of a served model (its
    // tokenizer), not the model; the door answers an unknown model name itself as
    // model_not_found.
    e.status = 404;
    e.type = "invalid_request_error";
  } else if (errc == "rate_limited") {
    e.status = 429;
    e.type = "rate_limit_error";
    e.code = "rate_limit_exceeded";
  } else if (errc == "overloaded" || errc == "unavailable") {
    e.status = 503;
    e.type = "service_unavailable";
  } else {
    e.status = 500;
    e.type = "server_error";
  }
  return e;
}

json error_body(const request_error& e) {
  json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", e.code}};
  if (!e.param.empty()) err["param"] = e.param;
  return json{{"error", err}};
}

std::string openai_finish(const std::string& reason) {
  if (reason == "stop" || reason == "eos") return "stop";
  if (reason == "length") return "length";
  return reason;
}

bool json_too_deep(std::string_view s) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > max_json_depth) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

bool internal_failure(const std::string& errc) { return from_errc(errc, "").status == 500; }

namespace {

request_error unsupported(const std::string& what, const std::string& param) {
  return request_error{400, "invalid_request_error", "unsupported", what + " is not supported by this server", param,
                       "unsupported"};
}

// A field of the request body, or null when absent or JSON null (OpenAI treats both as "default").
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::int64_t get_int(const json& body, const char* name, std::int64_t fallback, std::int64_t lo, std::int64_t hi) {
  const auto* v = field(body, name);
  if (!v) return fallback;
  std::int64_t x = 0;
  if (v->is_number_integer()) x = v->get<std::int64_t>();
  else if (v->is_number_unsigned()) {
    auto u = v->get<std::uint64_t>();
    x = u > static_cast<std::uint64_t>(hi) ? hi + (hi < std::numeric_limits<std::int64_t>::max() ? 1 : 0)
                                           : static_cast<std::int64_t>(u);
  } else {
    throw bad_request(std::string("'") + name + "' must be an integer", name, "invalid_type");
  }
  if (x < lo || x > hi) {
    throw bad_request(std::string("'") + name + "' must be between " + std::to_string(lo) + " and " +
                          std::to_string(hi) + ", got " + v->dump(),
                      name);
  }
  return x;
}

double get_number(const json& body, const char* name, double fallback, double lo, double hi) {
  const auto* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number()) throw bad_request(std::string("'") + name + "' must be a number", name, "invalid_type");
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    throw bad_request(std::string("'") + name + "' must be between " + json(lo).dump() + " and " +
                          json(hi).dump() + ", got " + v->dump(),
                      name);
  }
  return x;
}

bool get_bool(const json& body, const char* name, bool fallback) {
  const auto* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) throw bad_request(std::string("'") + name + "' must be true or false", name, "invalid_type");
  return v->get<bool>();
}

std::string get_string(const json& body, const char* name, const std::string& fallback) {
  const auto* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_string()) throw bad_request(std::string("'") + name + "' must be a string", name, "invalid_type");
  return v->get<std::string>();
}

// The completions `prompt`: a string, a list of strings, a list of token ids, or a list of those.
std::vector<openai_request::prompt> completion_prompts(const json& body) {
  const auto* p = field(body, "prompt");
  if (!p) throw bad_request("'prompt' is required", "prompt", "missing_required_parameter");
  auto is_ids = [](const json& a) {
    if (!a.is_array() || a.empty()) return false;
    for (const auto& x : a) {
      if (!x.is_number_integer() && !x.is_number_unsigned()) return false;
      const auto v = x.get<std::int64_t>();
      if (v < 0 || v > std::numeric_limits<std::int32_t>::max()) return false;
    }
    return true;
  };
  auto one = [](const json& x) {
    openai_request::prompt out;
    if (x.is_string()) out.text = x.get<std::string>();
    else out.ids = x.get<std::vector<std::int32_t>>();
    return out;
  };
  const char* shape = "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists";
  if (p->is_string()) return {one(*p)};
  if (!p->is_array() || p->empty()) throw bad_request(shape, "prompt", "invalid_type");
  if (is_ids(*p)) return {one(*p)};
  std::vector<openai_request::prompt> out;
  for (const auto& x : *p) {
    if (!x.is_string() && !is_ids(x)) throw bad_request(shape, "prompt", "invalid_type");
    out.push_back(one(x));
  }
  return out;
}

// Chat messages as the template expects them: content as text (a list of text parts is joined).
// An assistant message that calls tools keeps content null (OpenAI sends null or omits it), as
// templates test for it (DeepSeek-V3's renders tool calls only when content is none).
json chat_messages(const json& body) {
  const auto* msgs = field(body, "messages");
  if (!msgs) throw bad_request("'messages' is required", "messages", "missing_required_parameter");
  if (!msgs->is_array() || msgs->empty()) {
    throw bad_request("'messages' must be a non-empty list of messages", "messages", "invalid_type");
  }
  json messages = json::array();
  for (const auto& m : *msgs) {
    if (!m.is_object()) throw bad_request("every message must be an object", "messages", "invalid_type");
    json out = m;
    const auto* role = field(m, "role");
    if (!role || !role->is_string()) throw bad_request("every message needs a string 'role'", "messages", "invalid_type");
    const auto* content = field(m, "content");
    if (!content) {
      const auto* calls = field(m, "tool_calls");
      out["content"] = calls && calls->is_array() && !calls->empty() ? json(nullptr) : json("");
    } else if (content->is_array()) {
      std::string joined;
      for (const auto& part : *content) {
        if (!part.is_object() || get_string(part, "type", "") != "text" || !field(part, "text") ||
            !part["text"].is_string()) {
          auto e = unsupported("a content part other than {\"type\": \"text\", \"text\": ...}", "messages");
          e.message = "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported";
          throw e;
        }
        joined += part["text"].get<std::string>();
      }
      out["content"] = joined;
    } else if (!content->is_string()) {
      throw bad_request("a message's 'content' must be a string or a list of text parts", "messages", "invalid_type");
    }
    messages.push_back(std::move(out));
  }
  return messages;
}

}  // namespace

openai_request parse_openai_request(std::string_view text, bool chat, const door_options& o) {
  if (json_too_deep(text)) {
    throw bad_request("the JSON body nests deeper than " + std::to_string(max_json_depth) + " levels", "",
                      "invalid_json");
  }
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {
    throw bad_request(std::string("the body is not valid JSON: ") + e.what(), "", "invalid_json");
  }
  if (!body.is_object()) throw bad_request("the body must be a JSON object", "", "invalid_json");
  openai_request r;
  r.chat = chat;
  r.model = get_string(body, "model", "");
  r.stream = get_bool(body, "stream", false);
  if (const auto* so = field(body, "stream_options")) {
    if (!so->is_object()) throw bad_request("'stream_options' must be an object", "stream_options", "invalid_type");
    r.include_usage = get_bool(*so, "include_usage", false);
  }

  auto& base = r.base;
  base.model = r.model;
  base.api_method = chat ? "http.chat.completions" : "http.completions";
  auto& s = base.sampling;
  s.temperature = static_cast<float>(get_number(body, "temperature", 1.0, 0.0, 2.0));
  s.top_p = static_cast<float>(get_number(body, "top_p", 1.0, 0.0, 1.0));
  if (s.top_p <= 0.0f) throw bad_request("'top_p' must be above 0", "top_p");
  s.presence_penalty = static_cast<float>(get_number(body, "presence_penalty", 0.0, -2.0, 2.0));
  s.frequency_penalty = static_cast<float>(get_number(body, "frequency_penalty", 0.0, -2.0, 2.0));
  // vLLM's extensions, same names.
  s.top_k = static_cast<std::int32_t>(get_int(body, "top_k", 0, -1, 1 << 20));
  if (s.top_k < 0) s.top_k = 0;
  s.min_p = static_cast<float>(get_number(body, "min_p", 0.0, 0.0, 1.0));
  s.repetition_penalty = static_cast<float>(get_number(body, "repetition_penalty", 1.0, 0.01, 100.0));
  if (field(body, "seed")) {
    s.seed = static_cast<std::uint64_t>(
        get_int(body, "seed", 0, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()));
  }
  base.ignore_eos = get_bool(body, "ignore_eos", false);
  base.priority = static_cast<std::int32_t>(get_int(body, "priority", 0, -1000, 1000));
  const std::int64_t max_tokens_cap = 1 << 20;
  const char* max_name = chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  base.max_tokens = static_cast<std::int32_t>(get_int(body, max_name, chat ? 256 : 16, 1, max_tokens_cap));
  if (const auto* stop = field(body, "stop")) {
    if (stop->is_string()) {
      base.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const auto& x : *stop) {
        if (!x.is_string()) throw bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type");
        base.stop.push_back(x.get<std::string>());
      }
    } else {
      throw bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type");
    }
    if (base.stop.size() > 16) throw bad_request("'stop' takes at most 16 strings", "stop");
    for (const auto& x : base.stop) {
      if (x.empty()) throw bad_request("'stop' strings must not be empty", "stop");
    }
  }
  r.n = get_int(body, "n", 1, 1, o.max_n);
  if (field(body, "logit_bias") && !(*field(body, "logit_bias")).empty()) throw unsupported("'logit_bias'", "logit_bias");

  std::size_t prompt_count = 1;
  if (chat) {
    if (get_bool(body, "logprobs", false)) throw unsupported("'logprobs'", "logprobs");
    if (const auto* rf = field(body, "response_format")) {
      if (!rf->is_object() || get_string(*rf, "type", "text") != "text") {
        throw unsupported("'response_format' other than text", "response_format");
      }
    }
    r.messages = chat_messages(body);
    r.tools = nullptr;
    if (const auto* t = field(body, "tools")) {
      if (!t->is_array()) throw bad_request("'tools' must be a list", "tools", "invalid_type");
      r.tools = *t;
    }
    r.add_generation_prompt = get_bool(body, "add_generation_prompt", true);
  } else {
    if (field(body, "logprobs")) throw unsupported("'logprobs'", "logprobs");
    if (get_bool(body, "echo", false)) throw unsupported("'echo'", "echo");
    if (field(body, "suffix")) throw unsupported("'suffix'", "suffix");
    if (get_int(body, "best_of", r.n, 1, o.max_n) != r.n) throw unsupported("'best_of' other than n", "best_of");
    r.prompts = completion_prompts(body);
    prompt_count = r.prompts.size();
  }
  // Choices are prompts x n: a list of prompts too long on its own is the prompt's fault, else
  // n is the field to lower.
  const auto max_n = static_cast<std::size_t>(o.max_n);
  if (prompt_count > max_n) {
    throw bad_request("'prompt' lists " + std::to_string(prompt_count) + " prompts; this server runs at most " +
                          std::to_string(max_n) + " choices per request",
                      "prompt");
  }
  if (prompt_count * static_cast<std::size_t>(r.n) > max_n) {
    throw bad_request("prompts x n is " + std::to_string(prompt_count * static_cast<std::size_t>(r.n)) +
                          "; this server runs at most " + std::to_string(max_n) + " choices per request",
                      "n");
  }
  for (const auto& p : r.prompts) {
    if (p.text.size() > static_cast<std::size_t>(o.max_prompt_bytes)) {
      auto e = bad_request("the prompt is " + std::to_string(p.text.size()) + " bytes; this server accepts at most " +
                               std::to_string(o.max_prompt_bytes),
                           "prompt");
      e.errc = "out_of_range";
      throw e;
    }
  }
  return r;
}

std::vector<generate_request> choices(const openai_request& r, const rendered_chat* chat) {
  std::vector<generate_request> prompts;
  if (chat) {
    generate_request g = r.base;
    g.prompt = chat->prompt;
    g.special_ranges = chat->special_ranges;
    g.add_special = false;  // the template writes BOS itself
    g.parse_special = chat->parse_special;
    prompts.push_back(std::move(g));
  } else {
    for (const auto& p : r.prompts) {
      generate_request g = r.base;
      g.prompt = p.text;
      g.prompt_ids = p.ids;
      prompts.push_back(std::move(g));
    }
  }
  std::vector<generate_request> out;
  for (const auto& p : prompts) {
    for (std::int64_t i = 0; i < r.n; ++i) {
      generate_request g = p;
      // Different choices of one seeded request differ, and stay reproducible.
      if (g.sampling.seed) *g.sampling.seed += static_cast<std::uint64_t>(i);
      out.push_back(std::move(g));
    }
  }
  return out;
}

}  // namespace shoal::server
