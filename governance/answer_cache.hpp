#pragma once
// The answer cache's store: exact-match answers to deterministic requests in RocksDB, keyed by a
// hash the router computes (tenant, domain, model version, masked normalised prompt, every
// sampling field that changes output). Entries expire after a TTL; when the store grows past its
// size limit the oldest entries go first. Values of encrypting domains are sealed with
// XChaCha20-Poly1305 (libsodium), the entry's key as associated data. Plain C++ (no actors);
// thread-safe.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "governance/settings.hpp"

namespace shoal::governance {

struct cached_answer {
  std::vector<std::int32_t> ids;
  std::string text;
  std::string finish_reason;
  std::int32_t prompt_tokens = 0;
  std::int32_t completion_tokens = 0;
};

/// An answer as JSON text ({ids, text, finish_reason, prompt_tokens, completion_tokens}): how it is
/// stored and how it travels between the cache actor and the router.
std::string to_json_text(const cached_answer& a);
/// The answer in `text`, or nothing when it is not such a JSON object.
std::optional<cached_answer> cached_answer_from_json(const std::string& text);

struct cache_counts {
  std::int64_t entries = 0;
  std::int64_t bytes = 0;
};

class answer_cache {
 public:
  /// Opens (creating) the store at `path`. The key comes from spec.key_file or spec.key_env when
  /// either is set; throws shoal::error naming the path, file or variable when it cannot.
  answer_cache(const std::string& path, const cache_spec& spec);
  ~answer_cache();
  answer_cache(const answer_cache&) = delete;
  answer_cache& operator=(const answer_cache&) = delete;

  bool has_key() const;

  /// The answer under (tenant, key) if present and not expired. Expired entries are removed.
  /// Throws shoal::error when a sealed value does not open (wrong key or tampering).
  std::optional<cached_answer> get(const std::string& tenant, const std::string& key, std::int64_t now_s);
  /// Stores an answer; `encrypt` seals it (requires a key). Returns how many entries were evicted
  /// to stay under the size limit.
  std::int64_t put(const std::string& tenant, const std::string& key, const cached_answer& answer, bool encrypt,
                   std::int64_t now_s);
  /// Removes every entry of `tenant`; returns how many.
  std::int64_t purge_tenant(const std::string& tenant);
  cache_counts counts() const;
  /// Flushes and compacts (tests inspect the files afterwards).
  void compact();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// What makes two requests' answers the same.
struct cache_key_fields {
  std::string tenant;
  std::string domain;
  std::string model;
  std::string model_version;
  std::string kind;
  std::string masked_prompt;  // exactly as the model gets it (whitespace changes the tokens, so it stays)
  std::vector<std::int32_t> prompt_ids;
  bool add_special = true;
  bool parse_special = true;
  std::int32_t max_tokens = 0;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  std::vector<std::int32_t> stop_ids;
  std::string sampling;  // every sampling field, serialised by the caller
};

/// Lowercase hex SHA-256 over every field (length-prefixed, so fields cannot run into each other).
std::string cache_key(const cache_key_fields& f);

}  // namespace shoal::governance
