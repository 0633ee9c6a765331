#include "engine/model/gguf_writer.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>

#include "engine/common/error.hpp"

namespace shoal {

namespace {

class out_stream {
 public:
  explicit out_stream(const std::string& path)
      : path_(path), out_(path, std::ios::binary | std::ios::trunc) {
    if (!out_) throw error(errc::invalid_argument, path + ": cannot create");
  }

  template <class T>
  void put(T v) {
    bytes(&v, sizeof v);
  }
  void bytes(const void* p, std::size_t n) {
    out_.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
    pos_ += n;
  }
  void str(const std::string& s) {
    put<std::uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void pad_to(std::uint64_t alignment) {
    static const char zeros[64] = {};
    while (pos_ % alignment != 0)
      bytes(zeros, std::min<std::uint64_t>(alignment - pos_ % alignment, sizeof zeros));
  }
  std::uint64_t pos() const { return pos_; }
  void close() {
    out_.close();
    if (!out_) throw error(errc::invalid_argument, path_ + ": write failed (disk full?)");
  }

 private:
  std::string path_;
  std::ofstream out_;
  std::uint64_t pos_ = 0;
};

void put_scalar(out_stream& o, gguf_type t, double v) {
  switch (t) {
    case gguf_type::u8:
      o.put(static_cast<std::uint8_t>(v));
      break;
    case gguf_type::i8:
      o.put(static_cast<std::int8_t>(v));
      break;
    case gguf_type::boolean:
      o.put(static_cast<std::uint8_t>(v != 0));
      break;
    case gguf_type::u16:
      o.put(static_cast<std::uint16_t>(v));
      break;
    case gguf_type::i16:
      o.put(static_cast<std::int16_t>(v));
      break;
    case gguf_type::u32:
      o.put(static_cast<std::uint32_t>(v));
      break;
    case gguf_type::i32:
      o.put(static_cast<std::int32_t>(v));
      break;
    case gguf_type::f32:
      o.put(static_cast<float>(v));
      break;
    case gguf_type::u64:
      o.put(static_cast<std::uint64_t>(v));
      break;
    case gguf_type::i64:
      o.put(static_cast<std::int64_t>(v));
      break;
    case gguf_type::f64:
      o.put(v);
      break;
    default:
      throw error(errc::internal, "gguf writer: not a scalar type");
  }
}

std::uint64_t tensor_bytes(ggml_type type, const std::vector<std::int64_t>& shape,
                           const std::string& name) {
  std::int64_t count = 1;
  for (auto d : shape) count *= d;
  // Per row: ggml requires whole blocks in the innermost dimension.
  const auto nb = ggml_nbytes(type, count);
  if (!nb || shape.empty() || shape.back() % ggml_block_size(type) != 0) {
    throw error(errc::internal, "gguf writer: tensor '" + name + "' of type " + to_string(type) +
                                    " cannot have shape with " +
                                    std::to_string(shape.empty() ? 0 : shape.back()) + " columns");
  }
  return *nb;
}

}  // namespace

void gguf_writer::set(const std::string& key, gguf_value v) {
  for (auto& [k, old] : kv_) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  kv_.emplace_back(key, std::move(v));
}

void gguf_writer::set_string(const std::string& key, std::string v) {
  gguf_value g;
  g.type = gguf_type::string;
  g.str = std::move(v);
  set(key, std::move(g));
}

void gguf_writer::set_u32(const std::string& key, std::uint32_t v) {
  gguf_value g;
  g.type = gguf_type::u32;
  g.num = v;
  set(key, std::move(g));
}

void gguf_writer::set_i32(const std::string& key, std::int32_t v) {
  gguf_value g;
  g.type = gguf_type::i32;
  g.num = v;
  set(key, std::move(g));
}

void gguf_writer::set_f32(const std::string& key, float v) {
  gguf_value g;
  g.type = gguf_type::f32;
  g.num = v;
  set(key, std::move(g));
}

void gguf_writer::set_bool(const std::string& key, bool v) {
  gguf_value g;
  g.type = gguf_type::boolean;
  g.num = v ? 1 : 0;
  set(key, std::move(g));
}

void gguf_writer::set_strings(const std::string& key, std::vector<std::string> v) {
  gguf_value g;
  g.type = gguf_type::array;
  g.elem = gguf_type::string;
  g.strs = std::move(v);
  set(key, std::move(g));
}

void gguf_writer::set_f32s(const std::string& key, const std::vector<float>& v) {
  gguf_value g;
  g.type = gguf_type::array;
  g.elem = gguf_type::f32;
  g.nums.assign(v.begin(), v.end());
  set(key, std::move(g));
}

void gguf_writer::set_i32s(const std::string& key, const std::vector<std::int32_t>& v) {
  gguf_value g;
  g.type = gguf_type::array;
  g.elem = gguf_type::i32;
  g.nums.assign(v.begin(), v.end());
  set(key, std::move(g));
}

void gguf_writer::erase(const std::string& key) {
  for (auto it = kv_.begin(); it != kv_.end(); ++it) {
    if (it->first == key) {
      kv_.erase(it);
      return;
    }
  }
}

bool gguf_writer::has(const std::string& key) const {
  for (auto& [k, v] : kv_) {
    if (k == key) return true;
  }
  return false;
}

void gguf_writer::add_tensor(std::string name, ggml_type type, std::vector<std::int64_t> shape) {
  const auto nbytes = tensor_bytes(type, shape, name);
  tensors_.push_back({std::move(name), type, std::move(shape), nbytes});
}

void gguf_writer::write(
    const std::string& path,
    const std::function<void(std::size_t, std::vector<std::uint8_t>&)>& fill) const {
  out_stream o(path);
  o.bytes("GGUF", 4);
  o.put<std::uint32_t>(3);
  o.put<std::uint64_t>(tensors_.size());
  // general.alignment is always written (first), so readers never have to assume it.
  std::vector<std::pair<std::string, gguf_value>> kv;
  {
    gguf_value a;
    a.type = gguf_type::u32;
    a.num = static_cast<double>(alignment);
    kv.emplace_back("general.alignment", a);
  }
  for (auto& e : kv_) {
    if (e.first != "general.alignment") kv.push_back(e);
  }
  o.put<std::uint64_t>(kv.size());
  for (auto& [key, v] : kv) {
    o.str(key);
    o.put(static_cast<std::uint32_t>(v.type));
    if (v.type == gguf_type::string) {
      o.str(v.str);
    } else if (v.type == gguf_type::array) {
      o.put(static_cast<std::uint32_t>(v.elem));
      o.put<std::uint64_t>(v.array_size());
      if (v.elem == gguf_type::string) {
        for (auto& s : v.strs) o.str(s);
      } else {
        for (double x : v.nums) put_scalar(o, v.elem, x);
      }
    } else {
      put_scalar(o, v.type, v.num);
    }
  }
  std::uint64_t offset = 0;
  for (auto& t : tensors_) {
    o.str(t.name);
    o.put<std::uint32_t>(static_cast<std::uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it)
      o.put<std::uint64_t>(static_cast<std::uint64_t>(*it));
    o.put(static_cast<std::uint32_t>(t.type));
    o.put<std::uint64_t>(offset);
    offset += (t.nbytes + alignment - 1) / alignment * alignment;
  }
  o.pad_to(alignment);
  std::vector<std::uint8_t> buf;
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    buf.clear();
    fill(i, buf);
    if (buf.size() != tensors_[i].nbytes) {
      throw error(errc::internal, "gguf writer: tensor '" + tensors_[i].name + "' got " +
                                      std::to_string(buf.size()) + " bytes, declared " +
                                      std::to_string(tensors_[i].nbytes));
    }
    o.bytes(buf.data(), buf.size());
    o.pad_to(alignment);
  }
  o.close();
}

}  // namespace shoal
