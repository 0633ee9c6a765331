#include "governance/answer_cache.hpp"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <sodium.h>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "governance/auth.hpp"
#include "engine/common/error.hpp"

namespace shoal::governance {

namespace {

// Layout: "e/<tenant>\0<key>" -> [8 expiry][8 order][1 sealed][payload]
//         "o/<8-byte big-endian order>" -> "e/..." key (insertion order, for eviction)
constexpr char kEntry[] = "e/";
constexpr char kOrder[] = "o/";
constexpr std::size_t kHeader = 17;

void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint64_t get_u64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

std::string entry_key(const std::string& tenant, const std::string& key) {
  std::string k = kEntry + tenant;
  k.push_back('\0');
  return k + key;
}

std::string order_key(std::uint64_t order) {
  std::string k = kOrder;
  put_u64(k, order);
  return k;
}

void check(const rocksdb::Status& s, const std::string& what) {
  if (!s.ok()) throw error(errc::internal, "answer cache: " + what + ": " + s.ToString());
}

std::optional<std::string> hex_key(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  if (text.size() != 2 * crypto_aead_xchacha20poly1305_ietf_KEYBYTES) return std::nullopt;
  std::string out(crypto_aead_xchacha20poly1305_ietf_KEYBYTES, '\0');
  std::size_t len = 0;
  if (sodium_hex2bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), text.data(), text.size(), nullptr,
                     &len, nullptr) != 0 ||
      len != out.size()) {
    return std::nullopt;
  }
  return out;
}

}  // namespace

struct answer_cache::impl {
  std::unique_ptr<rocksdb::DB> db;
  cache_spec spec;
  std::string path;
  std::string key;  // empty: no encryption key
  mutable std::mutex mutex;
  std::uint64_t next_order = 1;
  cache_counts counts;

  void remove(rocksdb::WriteBatch& b, const std::string& ekey, const std::string& value) {
    b.Delete(ekey);
    if (value.size() >= kHeader) b.Delete(order_key(get_u64(value.data() + 8)));
    counts.entries -= 1;
    counts.bytes -= static_cast<std::int64_t>(ekey.size() + value.size());
  }
};

answer_cache::answer_cache(const std::string& path, const cache_spec& spec) : impl_(std::make_unique<impl>()) {
  if (sodium_init() < 0) throw error(errc::internal, "libsodium failed to initialise");
  impl_->spec = spec;
  impl_->path = path;
  if (!spec.key_file.empty()) {
    std::ifstream in(spec.key_file, std::ios::binary);
    if (!in) throw error(errc::not_found, "cache key file '" + spec.key_file + "' cannot be read");
    std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (raw.size() == crypto_aead_xchacha20poly1305_ietf_KEYBYTES) {
      impl_->key = raw;
    } else if (auto k = hex_key(raw)) {
      impl_->key = *k;
    } else {
      throw error(errc::invalid_argument, "cache key file '" + spec.key_file + "' must hold 32 raw bytes or 64 hex digits");
    }
  } else if (!spec.key_env.empty()) {
    const char* v = std::getenv(spec.key_env.c_str());
    if (!v || !*v) throw error(errc::not_found, "cache key variable " + spec.key_env + " is not set");
    auto k = hex_key(v);
    if (!k) throw error(errc::invalid_argument, "cache key variable " + spec.key_env + " must hold 64 hex digits");
    impl_->key = *k;
  }
  std::filesystem::create_directories(path);
  rocksdb::Options opts;
  opts.create_if_missing = true;
  rocksdb::DB* db = nullptr;
  auto st = rocksdb::DB::Open(opts, path, &db);
  if (!st.ok()) throw error(errc::unavailable, "answer cache at '" + path + "' cannot be opened: " + st.ToString());
  impl_->db.reset(db);
  // Rebuild the counters and the next insertion number from what is stored.
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(kEntry); it->Valid() && it->key().starts_with(kEntry); it->Next()) {
    impl_->counts.entries += 1;
    impl_->counts.bytes += static_cast<std::int64_t>(it->key().size() + it->value().size());
    if (it->value().size() >= kHeader) {
      impl_->next_order = std::max(impl_->next_order, get_u64(it->value().data() + 8) + 1);
    }
  }
}

answer_cache::~answer_cache() = default;

bool answer_cache::has_key() const { return !impl_->key.empty(); }

std::optional<cached_answer> answer_cache::get(const std::string& tenant, const std::string& key, std::int64_t now_s) {
  std::lock_guard lock(impl_->mutex);
  const auto ekey = entry_key(tenant, key);
  std::string value;
  auto st = impl_->db->Get(rocksdb::ReadOptions(), ekey, &value);
  if (st.IsNotFound()) return std::nullopt;
  check(st, "read");
  if (value.size() < kHeader) return std::nullopt;
  if (static_cast<std::int64_t>(get_u64(value.data())) <= now_s) {
    rocksdb::WriteBatch b;
    impl_->remove(b, ekey, value);
    check(impl_->db->Write(rocksdb::WriteOptions(), &b), "expire");
    return std::nullopt;
  }
  std::string payload;
  if (value[16]) {
    if (impl_->key.empty()) throw error(errc::internal, "answer cache: a sealed entry but no cache key configured");
    const auto nonce_len = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
    if (value.size() < kHeader + nonce_len + crypto_aead_xchacha20poly1305_ietf_ABYTES) {
      throw error(errc::internal, "answer cache: a sealed entry is truncated");
    }
    const auto* nonce = reinterpret_cast<const unsigned char*>(value.data() + kHeader);
    const auto* c = nonce + nonce_len;
    const auto clen = value.size() - kHeader - nonce_len;
    payload.resize(clen - crypto_aead_xchacha20poly1305_ietf_ABYTES);
    unsigned long long plen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(
            reinterpret_cast<unsigned char*>(payload.data()), &plen, nullptr, c, clen,
            reinterpret_cast<const unsigned char*>(ekey.data()), ekey.size(), nonce,
            reinterpret_cast<const unsigned char*>(impl_->key.data())) != 0) {
      throw error(errc::internal, "answer cache: a sealed entry does not open (wrong key or tampering)");
    }
    payload.resize(plen);
  } else {
    payload = value.substr(kHeader);
  }
  auto a = cached_answer_from_json(payload);
  if (!a) throw error(errc::internal, "answer cache: an entry is not a valid answer");
  return a;
}

std::int64_t answer_cache::put(const std::string& tenant, const std::string& key, const cached_answer& answer,
                               bool encrypt, std::int64_t now_s) {
  std::lock_guard lock(impl_->mutex);
  if (encrypt && impl_->key.empty()) {
    throw error(errc::invalid_argument, "answer cache: an encrypted entry needs a cache key (cache.key_file or cache.key_env)");
  }
  const std::string payload = to_json_text(answer);
  const auto ekey = entry_key(tenant, key);
  const std::uint64_t order = impl_->next_order++;
  std::string value;
  put_u64(value, static_cast<std::uint64_t>(now_s + impl_->spec.ttl_seconds));
  put_u64(value, order);
  value.push_back(encrypt ? 1 : 0);
  if (encrypt) {
    unsigned char nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
    randombytes_buf(nonce, sizeof nonce);
    value.append(reinterpret_cast<const char*>(nonce), sizeof nonce);
    std::string c(payload.size() + crypto_aead_xchacha20poly1305_ietf_ABYTES, '\0');
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(reinterpret_cast<unsigned char*>(c.data()), &clen,
                                               reinterpret_cast<const unsigned char*>(payload.data()), payload.size(),
                                               reinterpret_cast<const unsigned char*>(ekey.data()), ekey.size(),
                                               nullptr, nonce, reinterpret_cast<const unsigned char*>(impl_->key.data()));
    value.append(c.data(), clen);
  } else {
    value += payload;
  }
  rocksdb::WriteBatch b;
  std::string old;
  if (impl_->db->Get(rocksdb::ReadOptions(), ekey, &old).ok()) impl_->remove(b, ekey, old);
  b.Put(ekey, value);
  b.Put(order_key(order), ekey);
  impl_->counts.entries += 1;
  impl_->counts.bytes += static_cast<std::int64_t>(ekey.size() + value.size());
  check(impl_->db->Write(rocksdb::WriteOptions(), &b), "write");
  // Over the size limit: drop the oldest entries (expired ones are among them first).
  std::int64_t evicted = 0;
  if (impl_->counts.bytes > impl_->spec.max_bytes) {
    rocksdb::WriteBatch e;
    std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(kOrder); it->Valid() && it->key().starts_with(kOrder) && impl_->counts.bytes > impl_->spec.max_bytes;
         it->Next()) {
      const std::string victim = it->value().ToString();
      if (victim == ekey) continue;  // never the entry just written
      std::string v;
      if (impl_->db->Get(rocksdb::ReadOptions(), victim, &v).ok()) {
        impl_->remove(e, victim, v);
        ++evicted;
      } else {
        e.Delete(it->key());
      }
    }
    check(impl_->db->Write(rocksdb::WriteOptions(), &e), "evict");
  }
  return evicted;
}

std::int64_t answer_cache::purge_tenant(const std::string& tenant) {
  std::lock_guard lock(impl_->mutex);
  std::string prefix = kEntry + tenant;
  prefix.push_back('\0');
  rocksdb::WriteBatch b;
  std::int64_t n = 0;
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    impl_->remove(b, it->key().ToString(), it->value().ToString());
    ++n;
  }
  check(impl_->db->Write(rocksdb::WriteOptions(), &b), "purge");
  return n;
}

cache_counts answer_cache::counts() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->counts;
}

void answer_cache::compact() {
  std::lock_guard lock(impl_->mutex);
  check(impl_->db->Flush(rocksdb::FlushOptions()), "flush");
  check(impl_->db->CompactRange(rocksdb::CompactRangeOptions(), nullptr, nullptr), "compact");
}

std::string to_json_text(const cached_answer& a) {
  return nlohmann::json{{"ids", a.ids},
                        {"text", a.text},
                        {"finish_reason", a.finish_reason},
                        {"prompt_tokens", a.prompt_tokens},
                        {"completion_tokens", a.completion_tokens}}
      .dump();
}

std::optional<cached_answer> cached_answer_from_json(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  try {
    cached_answer a;
    a.ids = j.value("ids", std::vector<std::int32_t>{});
    a.text = j.value("text", std::string());
    a.finish_reason = j.value("finish_reason", std::string());
    a.prompt_tokens = j.value("prompt_tokens", 0);
    a.completion_tokens = j.value("completion_tokens", 0);
    return a;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;  // a field of the wrong type
  }
}

namespace {

void field(std::string& out, const std::string& s) {
  out += std::to_string(s.size());
  out.push_back(':');
  out += s;
}

}  // namespace

std::string cache_key(const cache_key_fields& f) {
  std::string buf;
  field(buf, "shoal-cache-v1");
  field(buf, f.tenant);
  field(buf, f.domain);
  field(buf, f.model);
  field(buf, f.model_version);
  field(buf, f.kind);
  field(buf, f.masked_prompt);
  std::string ids;
  for (auto id : f.prompt_ids) ids += std::to_string(id) + ",";
  field(buf, ids);
  field(buf, std::string(f.add_special ? "1" : "0") + (f.parse_special ? "1" : "0") + (f.ignore_eos ? "1" : "0"));
  field(buf, std::to_string(f.max_tokens));
  field(buf, std::to_string(f.stop.size()));
  for (const auto& s : f.stop) field(buf, s);
  std::string sids;
  for (auto id : f.stop_ids) sids += std::to_string(id) + ",";
  field(buf, sids);
  field(buf, f.sampling);
  return sha256_hex(buf);
}

}  // namespace shoal::governance
