#pragma once
// The tamper-evident audit store: an append-only, hash-chained log of requests and administrative
// actions in its own RocksDB, plus the persisted principal blocks. Plain C++ (no actors): the
// auditor actor owns one audit_log and is its only writer in a node; `shoal audit` opens the same
// database from the command line.
//
// Layout of the database (bytewise-ordered keys):
//   "r/" + 8-byte big-endian seq  ->  the record, canonical JSON text (nlohmann dump(), sorted keys)
//   "b/" + principal              ->  the block's details, JSON (outside the chain)
//
// A record is a JSON object the caller fills; by convention
//   { "kind": "request" | "admin" | "block",
//     "who":   {"tenant", "principal", "role"},
//     "what":  {"operation", "model", "model_version", "weights_sha256", ...},
//     "when":  {"start", "end"},                      UTC ISO-8601
//     "where": {"node", "client"},
//     "how":   {"method", "sampling": {...}},
//     "outcome": {"status": "ok" | "error" | "cancelled" | "blocked" | "cached", "error": ...},
//     "digests": {"input_sha256", "output_sha256"} }
// and append() adds "seq", "prev_hash", "recorded" and "hash". Queries filter on who.tenant,
// who.principal, what.operation, kind and recorded.
//
// hash = SHA-256 hex of (prev_hash + canonical JSON of the record without "hash"). Editing,
// deleting or reordering a stored record breaks the chain at that record; removing the tail leaves
// a valid shorter chain, which only a signed checkpoint of an earlier head can reveal.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

namespace rocksdb {
class DB;
}

namespace shoal::governance {

/// Which records query() returns; every empty field matches everything.
struct audit_filter {
  std::string tenant;     // who.tenant
  std::string principal;  // who.principal
  std::string operation;  // what.operation
  std::string kind;       // kind
  // Bounds on "recorded", UTC ISO-8601 ("2026-11-29", "2026-11-29T12:00", "...:00.123Z"),
  // inclusive at the precision given; "" = open. Other forms throw shoal::error.
  std::string since, until;
  std::uint64_t limit = 0;  // at most this many records; 0: all. Default: 0
};

/// A signed head: whoever keeps one can later prove that the chain still reaches it.
struct audit_checkpoint {
  std::uint64_t seq = 0;   // the head's seq (0: empty log)
  std::string hash;        // the head's hash (64 zeros: empty log)
  std::string public_key;  // hex Ed25519 public key that signed
  std::string signature;   // hex Ed25519 signature of checkpoint_message()
  std::string created;     // UTC ISO-8601, signed too
};

struct audit_verify_result {
  bool ok = true;
  std::uint64_t records = 0;        // records walked (all of them when ok)
  std::uint64_t first_bad_seq = 0;  // 0 with !ok: the checkpoint itself is bad
  std::string problem;              // names what is wrong at first_bad_seq
  std::uint64_t head_seq = 0;       // the last record's seq (when ok)
  std::string head_hash;            // the last record's hash (when ok; 64 zeros for an empty log)
};

class audit_log {
 public:
  /// Opens (creating it when !read_only) the RocksDB at `path`. Read-only opens take no lock, so
  /// they work while a node holds the database; they see the records acknowledged before the open.
  /// Throws shoal::error naming the path (errc::unavailable when another process holds the lock).
  static std::unique_ptr<audit_log> open(const std::string& path, bool read_only = false);
  ~audit_log();
  audit_log(const audit_log&) = delete;
  audit_log& operator=(const audit_log&) = delete;

  /// Appends one record (a JSON object; see the convention above). Sets "seq" (last + 1, from 1),
  /// "prev_hash", "recorded" (UTC, ms) and "hash", and writes with sync (WAL fsynced) before it
  /// returns, so an acknowledged record survives kill -9 and power loss. Thread-safe. Returns the
  /// stored record. Throws shoal::error when the write fails or the log is read-only.
  nlohmann::json append(nlohmann::json record);
  /// append() and, in the same atomic write, persist (info) or lift (no info) the block of
  /// `principal`: the chain and the block state never disagree after a crash.
  nlohmann::json append_and_set_block(nlohmann::json record, const std::string& principal,
                                      const nlohmann::json& info);
  nlohmann::json append_and_clear_block(nlohmann::json record, const std::string& principal);

  std::uint64_t last_seq() const;
  std::string last_hash() const;

  /// Walks the chain from seq 1 and reports the first bad record: unreadable or non-canonical
  /// text, a seq that differs from its key (moved), a missing seq (deleted), a prev_hash that is
  /// not the previous record's hash, a hash that does not recompute. With a checkpoint, its
  /// signature must verify (and, when `trusted_public_key` is given, be by that key), and the chain
  /// must reach checkpoint.seq with checkpoint.hash (else the tail was truncated or rewritten).
  audit_verify_result verify(const audit_checkpoint* cp = nullptr,
                             const std::string& trusted_public_key = "") const;

  /// Calls `each` for every record matching `f`, in seq order.
  void query(const audit_filter& f, const std::function<void(const nlohmann::json&)>& each) const;

  /// Persistent principal blocks, outside the chain (the caller appends the audit records; prefer
  /// append_and_set_block / append_and_clear_block, which do both atomically).
  void set_block(const std::string& principal, const nlohmann::json& info);
  void clear_block(const std::string& principal);
  std::map<std::string, nlohmann::json> blocks() const;

  /// Flushes the memtables and compacts every level (tests inspect the files afterwards).
  void compact();

  const std::string& path() const { return path_; }
  bool read_only() const { return read_only_; }

 private:
  audit_log(std::string path, bool read_only, std::unique_ptr<rocksdb::DB> db);
  nlohmann::json append_impl(nlohmann::json record, const std::string* block_principal,
                             const nlohmann::json* block_info, bool clear);
  void require_writable(const char* what) const;

  std::string path_;
  bool read_only_;
  std::unique_ptr<rocksdb::DB> db_;
  // The chain head. Only append_impl() mutates it, under mutex_, after the write succeeded.
  mutable std::mutex mutex_;
  std::uint64_t head_seq_ = 0;
  std::string head_hash_;
};

/// The bytes a checkpoint's signature covers.
std::string checkpoint_message(const audit_checkpoint& cp);

/// Signs the current head of `log` with the Ed25519 secret key in `key_file` (hex, created with
/// mode 0600 when absent). Throws shoal::error naming the key file when it cannot be read.
audit_checkpoint make_checkpoint(const audit_log& log, const std::string& key_file);

/// The hex public key of the secret key in `key_file` (which must exist), for pinning in verify().
std::string checkpoint_public_key(const std::string& key_file);

nlohmann::json to_json(const audit_checkpoint& cp);
/// Throws shoal::error (invalid_argument) naming the missing or mistyped field.
audit_checkpoint checkpoint_from_json(const nlohmann::json& j);

/// Now, UTC, ISO-8601 with milliseconds: "2026-11-29T12:00:00.123Z".
std::string utc_now_iso();

/// A record as text for append(). Clients choose request ids, model names and prompts: bytes that
/// are not UTF-8 become U+FFFD instead of stopping the record from being written (nlohmann::json
/// refuses to serialise them).
std::string record_text(const nlohmann::json& record);

}  // namespace shoal::governance
