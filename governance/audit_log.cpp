#include "governance/audit_log.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <regex>

#include "governance/auth.hpp"
#include "engine/common/error.hpp"

namespace shoal::governance {

namespace {

// Plain constants, no static std::string: a caller's static initializer may append before this
// file's globals would have been constructed.
constexpr std::string_view kRecordPrefix = "r/";
constexpr std::string_view kBlockPrefix = "b/";
constexpr std::string_view kZeroHash = "0000000000000000000000000000000000000000000000000000000000000000";

std::string block_key(const std::string& principal) { return std::string(kBlockPrefix) + principal; }
rocksdb::Slice record_prefix() { return {kRecordPrefix.data(), kRecordPrefix.size()}; }
rocksdb::Slice block_prefix() { return {kBlockPrefix.data(), kBlockPrefix.size()}; }

std::string record_key(std::uint64_t seq) {
  std::string k(kRecordPrefix);
  for (int shift = 56; shift >= 0; shift -= 8) k.push_back(static_cast<char>((seq >> shift) & 0xff));
  return k;
}

// The seq of a record key; false when the key is not "r/" + 8 bytes.
bool parse_record_key(const rocksdb::Slice& key, std::uint64_t& seq) {
  if (key.size() != kRecordPrefix.size() + 8 || !key.starts_with(record_prefix())) return false;
  seq = 0;
  for (std::size_t i = kRecordPrefix.size(); i < key.size(); ++i) {
    seq = (seq << 8) | static_cast<unsigned char>(key[i]);
  }
  return true;
}

// The canonical text: compact, keys sorted (nlohmann::json's std::map), invalid UTF-8 replaced so
// that what is stored always parses back to the same text.
std::string canonical(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string record_hash(const std::string& prev_hash, const nlohmann::json& record_without_hash) {
  return sha256_hex(prev_hash + canonical(record_without_hash));
}

std::string to_hex(const unsigned char* p, std::size_t n) {
  std::string hex(2 * n, '0');
  sodium_bin2hex(hex.data(), hex.size() + 1, p, n);
  return hex;
}

bool from_hex(const std::string& hex, unsigned char* out, std::size_t n) {
  std::size_t len = 0;
  return sodium_hex2bin(out, n, hex.data(), hex.size(), nullptr, &len, nullptr) == 0 && len == n &&
         hex.size() == 2 * n;
}

void check(const rocksdb::Status& s, const std::string& path, const char* what) {
  if (!s.ok()) throw error(errc::unavailable, "audit database " + path + ": " + what + ": " + s.ToString());
}

// "2026-11-29T12:00:00.123Z" or any leading part of it, with or without the Z.
const std::regex& iso_pattern() {
  static const std::regex re(R"(\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d{1,3})?)?)?)?)?)?Z?)");
  return re;
}

std::string normalize_time(const std::string& t, const char* name) {
  if (t.empty()) return t;
  if (!std::regex_match(t, iso_pattern())) {
    throw error(errc::invalid_argument, std::string("--") + name + " '" + t +
                                            "' is not a UTC ISO-8601 time such as 2026-11-29T12:00:00Z");
  }
  return t.back() == 'Z' ? t.substr(0, t.size() - 1) : t;
}

std::string field(const nlohmann::json& record, const char* outer, const char* inner) {
  auto o = record.find(outer);
  if (o == record.end()) return {};
  if (inner == nullptr) return o->is_string() ? o->get<std::string>() : std::string();
  if (!o->is_object()) return {};
  auto i = o->find(inner);
  return i != o->end() && i->is_string() ? i->get<std::string>() : std::string();
}

}  // namespace

std::string record_text(const nlohmann::json& record) { return canonical(record); }

std::string utc_now_iso() {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof out, "%s.%03dZ", buf, static_cast<int>(ms));
  return out;
}

audit_log::audit_log(std::string path, bool read_only, std::unique_ptr<rocksdb::DB> db)
    : path_(std::move(path)), read_only_(read_only), db_(std::move(db)), head_hash_(std::string(kZeroHash)) {}

audit_log::~audit_log() = default;

std::unique_ptr<audit_log> audit_log::open(const std::string& path, bool read_only) {
  rocksdb::Options options;
  options.create_if_missing = !read_only;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = read_only ? rocksdb::DB::OpenForReadOnly(options, path, &raw)
                                : rocksdb::DB::Open(options, path, &raw);
  if (!s.ok()) {
    const std::string msg = s.ToString();
    if (!read_only && s.IsIOError() && msg.find("lock") != std::string::npos) {
      throw error(errc::unavailable, "audit database " + path +
                                         " is locked by another process (a running node?): " + msg);
    }
    if (read_only && (s.IsNotFound() || s.IsPathNotFound() || msg.find("No such file") != std::string::npos)) {
      throw error(errc::not_found, "audit database " + path + " does not exist: " + msg);
    }
    throw error(errc::unavailable, "cannot open audit database " + path + ": " + msg);
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  std::unique_ptr<audit_log> log(new audit_log(path, read_only, std::move(db)));

  // The head: the record with the largest key. Records sort last ("r/" > "b/").
  std::unique_ptr<rocksdb::Iterator> it(log->db_->NewIterator(rocksdb::ReadOptions()));
  it->SeekForPrev(record_key(UINT64_MAX));
  std::uint64_t seq = 0;
  if (it->Valid() && parse_record_key(it->key(), seq)) {
    nlohmann::json last = nlohmann::json::parse(it->value().ToString(), nullptr, false);
    auto h = last.is_object() ? last.find("hash") : last.end();
    if (!last.is_object() || h == last.end() || !h->is_string()) {
      throw error(errc::corrupt_file, "audit database " + path + ": the last record (seq " + std::to_string(seq) +
                                          ") is unreadable; run `shoal audit verify --db " + path + "`");
    }
    log->head_seq_ = seq;
    log->head_hash_ = h->get<std::string>();
  }
  check(it->status(), path, "reading the head");
  return log;
}

void audit_log::require_writable(const char* what) const {
  if (read_only_) throw error(errc::invalid_argument, std::string("audit database ") + path_ + " is open read-only: cannot " + what);
}

nlohmann::json audit_log::append(nlohmann::json record) {
  return append_impl(std::move(record), nullptr, nullptr, false);
}

nlohmann::json audit_log::append_and_set_block(nlohmann::json record, const std::string& principal,
                                               const nlohmann::json& info) {
  return append_impl(std::move(record), &principal, &info, false);
}

nlohmann::json audit_log::append_and_clear_block(nlohmann::json record, const std::string& principal) {
  return append_impl(std::move(record), &principal, nullptr, true);
}

nlohmann::json audit_log::append_impl(nlohmann::json record, const std::string* block_principal,
                                      const nlohmann::json* block_info, bool clear) {
  require_writable("append");
  if (!record.is_object()) throw error(errc::invalid_argument, "an audit record must be a JSON object");
  std::lock_guard<std::mutex> lock(mutex_);
  const std::uint64_t seq = head_seq_ + 1;
  record.erase("hash");
  record["seq"] = seq;
  record["prev_hash"] = head_hash_;
  record["recorded"] = utc_now_iso();
  const std::string hash = record_hash(head_hash_, record);
  record["hash"] = hash;

  rocksdb::WriteBatch batch;
  batch.Put(record_key(seq), canonical(record));
  if (block_principal != nullptr) {
    if (clear) batch.Delete(block_key(*block_principal));
    else batch.Put(block_key(*block_principal), canonical(*block_info));
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;  // acknowledged means on disk: the WAL is fsynced before Write returns
  check(db_->Write(wo, &batch), path_, "appending a record");
  head_seq_ = seq;
  head_hash_ = hash;
  return record;
}

std::uint64_t audit_log::last_seq() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return head_seq_;
}

std::string audit_log::last_hash() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return head_hash_;
}

audit_verify_result audit_log::verify(const audit_checkpoint* cp, const std::string& trusted_public_key) const {
  audit_verify_result r;
  auto fail = [&r](std::uint64_t seq, std::string problem) {
    r.ok = false;
    r.first_bad_seq = seq;
    r.problem = std::move(problem);
    return r;
  };
  if (cp != nullptr) {
    if (sodium_init() < 0) throw error(errc::internal, "libsodium failed to initialize");
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    unsigned char sig[crypto_sign_BYTES];
    if (!from_hex(cp->public_key, pk, sizeof pk)) return fail(0, "the checkpoint's public key is not 32 bytes of hex");
    if (!from_hex(cp->signature, sig, sizeof sig)) return fail(0, "the checkpoint's signature is not 64 bytes of hex");
    const std::string msg = checkpoint_message(*cp);
    if (crypto_sign_verify_detached(sig, reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), pk) != 0) {
      return fail(0, "the checkpoint's signature does not verify (the checkpoint was forged or edited)");
    }
    if (!trusted_public_key.empty() && trusted_public_key != cp->public_key) {
      return fail(0, "the checkpoint is signed by " + cp->public_key + ", not by the trusted key " + trusted_public_key);
    }
  }

  std::uint64_t expected = 1;
  std::string prev(kZeroHash);
  bool reached_checkpoint = cp == nullptr || cp->seq == 0;
  if (cp != nullptr && cp->seq == 0 && cp->hash != kZeroHash) {
    return fail(0, "the checkpoint names seq 0 with a hash other than the empty log's");
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(record_prefix()); it->Valid() && it->key().starts_with(record_prefix()); it->Next()) {
    std::uint64_t key_seq = 0;
    if (!parse_record_key(it->key(), key_seq)) {
      return fail(expected, "a malformed record key follows seq " + std::to_string(expected - 1));
    }
    if (key_seq != expected) {
      return fail(expected, "record " + std::to_string(expected) + " is missing (deleted): the next stored record is " +
                                std::to_string(key_seq));
    }
    const std::string text = it->value().ToString();
    nlohmann::json rec = nlohmann::json::parse(text, nullptr, false);
    if (rec.is_discarded() || !rec.is_object()) return fail(expected, "the stored record is not a JSON object (edited)");
    if (canonical(rec) != text) return fail(expected, "the stored bytes are not the record's canonical form (edited)");
    auto s = rec.find("seq");
    if (s == rec.end() || !s->is_number_unsigned()) return fail(expected, "the record has no seq (edited)");
    if (s->get<std::uint64_t>() != expected) {
      return fail(expected, "the record stored under seq " + std::to_string(expected) + " says seq " +
                                std::to_string(s->get<std::uint64_t>()) + " (records moved or reordered)");
    }
    auto ph = rec.find("prev_hash");
    if (ph == rec.end() || !ph->is_string() || ph->get<std::string>() != prev) {
      return fail(expected, "prev_hash is not the hash of record " + std::to_string(expected - 1) +
                                " (the chain is broken here)");
    }
    auto h = rec.find("hash");
    if (h == rec.end() || !h->is_string()) return fail(expected, "the record has no hash (edited)");
    std::string stored_hash = h->get<std::string>();
    rec.erase("hash");
    if (record_hash(prev, rec) != stored_hash) {
      return fail(expected, "the record's hash does not match its contents (edited)");
    }
    if (cp != nullptr && expected == cp->seq) {
      if (stored_hash != cp->hash) {
        return fail(expected, "record " + std::to_string(expected) + " differs from the checkpoint's (history rewritten)");
      }
      reached_checkpoint = true;
    }
    prev = std::move(stored_hash);
    r.records = expected;
    ++expected;
  }
  check(it->status(), path_, "reading records");
  if (!reached_checkpoint) {
    return fail(expected, "the chain ends at seq " + std::to_string(expected - 1) + " but the checkpoint signed seq " +
                              std::to_string(cp->seq) + " (the tail was truncated)");
  }
  r.head_seq = expected - 1;
  r.head_hash = prev;
  return r;
}

void audit_log::query(const audit_filter& f, const std::function<void(const nlohmann::json&)>& each) const {
  const std::string since = normalize_time(f.since, "since");
  const std::string until = normalize_time(f.until, "until");
  std::uint64_t n = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(record_prefix()); it->Valid() && it->key().starts_with(record_prefix()); it->Next()) {
    nlohmann::json rec = nlohmann::json::parse(it->value().ToString(), nullptr, false);
    if (rec.is_discarded() || !rec.is_object()) continue;  // verify() reports it; a query shows what it can read
    if (!f.tenant.empty() && field(rec, "who", "tenant") != f.tenant) continue;
    if (!f.principal.empty() && field(rec, "who", "principal") != f.principal) continue;
    if (!f.operation.empty() && field(rec, "what", "operation") != f.operation) continue;
    if (!f.kind.empty() && field(rec, "kind", nullptr) != f.kind) continue;
    const std::string at = field(rec, "recorded", nullptr);
    // Inclusive at the caller's precision: until "2026-11-29" takes the whole day.
    if (!since.empty() && at.substr(0, since.size()) < since) continue;
    if (!until.empty() && at.substr(0, until.size()) > until) continue;
    each(rec);
    if (f.limit != 0 && ++n >= f.limit) return;
  }
  check(it->status(), path_, "reading records");
}

void audit_log::set_block(const std::string& principal, const nlohmann::json& info) {
  require_writable("set a block");
  rocksdb::WriteOptions wo;
  wo.sync = true;
  check(db_->Put(wo, block_key(principal), canonical(info)), path_, "writing a block");
}

void audit_log::clear_block(const std::string& principal) {
  require_writable("clear a block");
  rocksdb::WriteOptions wo;
  wo.sync = true;
  check(db_->Delete(wo, block_key(principal)), path_, "clearing a block");
}

std::map<std::string, nlohmann::json> audit_log::blocks() const {
  std::map<std::string, nlohmann::json> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(block_prefix()); it->Valid() && it->key().starts_with(block_prefix()); it->Next()) {
    out[it->key().ToString().substr(kBlockPrefix.size())] =
        nlohmann::json::parse(it->value().ToString(), nullptr, false);
  }
  check(it->status(), path_, "reading blocks");
  return out;
}

void audit_log::compact() {
  require_writable("compact");
  check(db_->Flush(rocksdb::FlushOptions()), path_, "flushing");
  rocksdb::CompactRangeOptions co;
  co.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  check(db_->CompactRange(co, nullptr, nullptr), path_, "compacting");
}

// --- checkpoints -------------------------------------------------------------------------------

std::string checkpoint_message(const audit_checkpoint& cp) {
  return "shoal-audit-checkpoint/1\nseq=" + std::to_string(cp.seq) + "\nhash=" + cp.hash +
         "\ncreated=" + cp.created + "\n";
}

namespace {

// The 64-byte Ed25519 secret key in `key_file` (hex), created with mode 0600 when absent.
void load_or_create_key(const std::string& key_file, unsigned char sk[crypto_sign_SECRETKEYBYTES], bool create) {
  if (sodium_init() < 0) throw error(errc::internal, "libsodium failed to initialize");
  if (create) {
    int fd = ::open(key_file.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
      unsigned char pk[crypto_sign_PUBLICKEYBYTES];
      crypto_sign_keypair(pk, sk);
      std::string hex = to_hex(sk, crypto_sign_SECRETKEYBYTES) + "\n";
      bool ok = ::write(fd, hex.data(), hex.size()) == static_cast<ssize_t>(hex.size()) && ::fsync(fd) == 0;
      ::close(fd);
      sodium_memzero(hex.data(), hex.size());
      if (!ok) throw error(errc::unavailable, "cannot write the checkpoint key " + key_file + ": " + std::strerror(errno));
      return;
    }
    if (errno != EEXIST) {
      throw error(errc::unavailable, "cannot create the checkpoint key " + key_file + ": " + std::strerror(errno));
    }
  }
  std::ifstream in(key_file);
  if (!in) throw error(errc::not_found, "cannot read the checkpoint key " + key_file);
  std::string hex;
  in >> hex;
  if (!from_hex(hex, sk, crypto_sign_SECRETKEYBYTES)) {
    sodium_memzero(hex.data(), hex.size());
    throw error(errc::corrupt_file, "checkpoint key " + key_file + " is not a 64-byte Ed25519 secret key in hex");
  }
  sodium_memzero(hex.data(), hex.size());
}

}  // namespace

audit_checkpoint make_checkpoint(const audit_log& log, const std::string& key_file) {
  unsigned char sk[crypto_sign_SECRETKEYBYTES];
  load_or_create_key(key_file, sk, true);
  audit_checkpoint cp;
  {
    // Sign only a head the chain verifies to; verify() reads one consistent snapshot, so seq and hash
    // belong together even while a writer appends.
    auto verified = log.verify();
    if (!verified.ok) {
      sodium_memzero(sk, sizeof sk);
      throw error(errc::corrupt_file, "audit database " + log.path() + " does not verify (seq " +
                                          std::to_string(verified.first_bad_seq) + ": " + verified.problem +
                                          "); refusing to sign its head");
    }
    cp.seq = verified.head_seq;
    cp.hash = verified.head_hash;
  }
  cp.created = utc_now_iso();
  unsigned char pk[crypto_sign_PUBLICKEYBYTES];
  crypto_sign_ed25519_sk_to_pk(pk, sk);
  cp.public_key = to_hex(pk, sizeof pk);
  const std::string msg = checkpoint_message(cp);
  unsigned char sig[crypto_sign_BYTES];
  crypto_sign_detached(sig, nullptr, reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), sk);
  sodium_memzero(sk, sizeof sk);
  cp.signature = to_hex(sig, sizeof sig);
  return cp;
}

std::string checkpoint_public_key(const std::string& key_file) {
  unsigned char sk[crypto_sign_SECRETKEYBYTES];
  load_or_create_key(key_file, sk, false);
  unsigned char pk[crypto_sign_PUBLICKEYBYTES];
  crypto_sign_ed25519_sk_to_pk(pk, sk);
  sodium_memzero(sk, sizeof sk);
  return to_hex(pk, sizeof pk);
}

nlohmann::json to_json(const audit_checkpoint& cp) {
  return {{"format", "shoal-audit-checkpoint/1"}, {"seq", cp.seq},         {"hash", cp.hash},
          {"public_key", cp.public_key},          {"signature", cp.signature}, {"created", cp.created}};
}

audit_checkpoint checkpoint_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw error(errc::invalid_argument, "an audit checkpoint must be a JSON object");
  auto str = [&j](const char* name) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_string()) {
      throw error(errc::invalid_argument, std::string("audit checkpoint: \"") + name + "\" is missing or not a string");
    }
    return it->get<std::string>();
  };
  audit_checkpoint cp;
  auto s = j.find("seq");
  if (s == j.end() || !s->is_number_unsigned()) {
    throw error(errc::invalid_argument, "audit checkpoint: \"seq\" is missing or not an unsigned integer");
  }
  cp.seq = s->get<std::uint64_t>();
  cp.hash = str("hash");
  cp.public_key = str("public_key");
  cp.signature = str("signature");
  cp.created = str("created");
  return cp;
}

}  // namespace shoal::governance
