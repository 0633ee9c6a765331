#include "engine/model/gguf.hpp"

#include <algorithm>
#include <cstring>

#include "engine/common/error.hpp"

namespace shoal {

namespace {

// Sequential reader over the mapping that refuses to step past its end.
class cursor {
 public:
  cursor(const mapped_file& f) : file_(f) {}

  template <class T>
  T read() {
    need(sizeof(T), "a value");
    T v;
    std::memcpy(&v, file_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const char* what) {
    auto n = read<std::uint64_t>();
    need(n, what);
    std::string s(reinterpret_cast<const char*>(file_.data() + pos_), n);
    pos_ += n;
    return s;
  }

  void need(std::uint64_t n, const char* what) const {
    if (n > file_.size() || pos_ > file_.size() - n) {
      throw error(errc::corrupt_file, "reading " + std::string(what) + " at byte " +
                                          std::to_string(pos_) + " runs past the end of the file (" +
                                          std::to_string(file_.size()) + " bytes)");
    }
  }

  std::uint64_t pos() const { return pos_; }
  void seek(std::uint64_t p) { pos_ = p; }

 private:
  const mapped_file& file_;
  std::uint64_t pos_ = 0;
};

std::size_t scalar_size(gguf_type t) {
  switch (t) {
    case gguf_type::u8: case gguf_type::i8: case gguf_type::boolean: return 1;
    case gguf_type::u16: case gguf_type::i16: return 2;
    case gguf_type::u32: case gguf_type::i32: case gguf_type::f32: return 4;
    case gguf_type::u64: case gguf_type::i64: case gguf_type::f64: return 8;
    default: return 0;
  }
}

double read_scalar(cursor& c, gguf_type t) {
  switch (t) {
    case gguf_type::u8: return c.read<std::uint8_t>();
    case gguf_type::i8: return c.read<std::int8_t>();
    case gguf_type::boolean: return c.read<std::uint8_t>() != 0;
    case gguf_type::u16: return c.read<std::uint16_t>();
    case gguf_type::i16: return c.read<std::int16_t>();
    case gguf_type::u32: return c.read<std::uint32_t>();
    case gguf_type::i32: return c.read<std::int32_t>();
    case gguf_type::f32: return c.read<float>();
    case gguf_type::u64: return static_cast<double>(c.read<std::uint64_t>());
    case gguf_type::i64: return static_cast<double>(c.read<std::int64_t>());
    case gguf_type::f64: return c.read<double>();
    default: throw error(errc::corrupt_file, "unknown metadata value type " +
                                                 std::to_string(static_cast<std::uint32_t>(t)));
  }
}

gguf_value read_value(cursor& c, gguf_type t, const std::string& key) {
  gguf_value v;
  v.type = t;
  if (t == gguf_type::string) {
    v.str = c.read_string("a string value");
  } else if (t == gguf_type::array) {
    v.elem = static_cast<gguf_type>(c.read<std::uint32_t>());
    auto n = c.read<std::uint64_t>();
    if (v.elem == gguf_type::string) {
      // Each string takes at least its 8-byte length: bound n before reserving.
      c.need(n * 8, "an array of strings");
      v.strs.reserve(n);
      for (std::uint64_t i = 0; i < n; ++i) v.strs.push_back(c.read_string("an array string"));
    } else if (v.elem == gguf_type::array) {
      throw error(errc::unsupported, "metadata key '" + key + "' holds nested arrays");
    } else {
      auto sz = scalar_size(v.elem);
      if (sz == 0) {
        throw error(errc::corrupt_file, "metadata key '" + key + "' has unknown element type " +
                                            std::to_string(static_cast<std::uint32_t>(v.elem)));
      }
      c.need(n * sz, "an array");
      v.nums.reserve(n);
      for (std::uint64_t i = 0; i < n; ++i) v.nums.push_back(read_scalar(c, v.elem));
    }
  } else {
    v.num = read_scalar(c, t);
  }
  return v;
}

}  // namespace

const char* to_string(ggml_type t) {
  switch (t) {
    case ggml_type::f32: return "F32";
    case ggml_type::f16: return "F16";
    case ggml_type::q4_0: return "Q4_0";
    case ggml_type::q4_1: return "Q4_1";
    case ggml_type::q5_0: return "Q5_0";
    case ggml_type::q5_1: return "Q5_1";
    case ggml_type::q8_0: return "Q8_0";
    case ggml_type::q8_1: return "Q8_1";
    case ggml_type::q2_k: return "Q2_K";
    case ggml_type::q3_k: return "Q3_K";
    case ggml_type::q4_k: return "Q4_K";
    case ggml_type::q5_k: return "Q5_K";
    case ggml_type::q6_k: return "Q6_K";
    case ggml_type::q8_k: return "Q8_K";
    case ggml_type::iq2_xxs: return "IQ2_XXS";
    case ggml_type::iq2_xs: return "IQ2_XS";
    case ggml_type::iq3_xxs: return "IQ3_XXS";
    case ggml_type::iq1_s: return "IQ1_S";
    case ggml_type::iq4_nl: return "IQ4_NL";
    case ggml_type::iq3_s: return "IQ3_S";
    case ggml_type::iq2_s: return "IQ2_S";
    case ggml_type::iq4_xs: return "IQ4_XS";
    case ggml_type::i8: return "I8";
    case ggml_type::i16: return "I16";
    case ggml_type::i32: return "I32";
    case ggml_type::i64: return "I64";
    case ggml_type::f64: return "F64";
    case ggml_type::iq1_m: return "IQ1_M";
    case ggml_type::bf16: return "BF16";
    case ggml_type::tq1_0: return "TQ1_0";
    case ggml_type::tq2_0: return "TQ2_0";
    case ggml_type::mxfp4: return "MXFP4";
  }
  return "unknown";
}

std::int64_t ggml_block_size(ggml_type t) {
  switch (t) {
    case ggml_type::f32: case ggml_type::f16: case ggml_type::bf16: return 1;
    case ggml_type::q4_0: case ggml_type::q4_1: case ggml_type::q5_0: case ggml_type::q5_1:
    case ggml_type::q8_0: case ggml_type::q8_1: return 32;
    case ggml_type::q2_k: case ggml_type::q3_k: case ggml_type::q4_k: case ggml_type::q5_k:
    case ggml_type::q6_k: case ggml_type::q8_k: return 256;
    default: return 0;
  }
}

std::optional<std::uint64_t> ggml_nbytes(ggml_type t, std::int64_t n) {
  std::uint64_t per_block;
  switch (t) {
    case ggml_type::f32: per_block = 4; break;
    case ggml_type::f16: case ggml_type::bf16: per_block = 2; break;
    case ggml_type::q4_0: per_block = 18; break;
    case ggml_type::q4_1: per_block = 20; break;
    case ggml_type::q5_0: per_block = 22; break;
    case ggml_type::q5_1: per_block = 24; break;
    case ggml_type::q8_0: per_block = 34; break;
    case ggml_type::q8_1: per_block = 36; break;
    case ggml_type::q2_k: per_block = 84; break;
    case ggml_type::q3_k: per_block = 110; break;
    case ggml_type::q4_k: per_block = 144; break;
    case ggml_type::q5_k: per_block = 176; break;
    case ggml_type::q6_k: per_block = 210; break;
    case ggml_type::q8_k: per_block = 292; break;
    default: return std::nullopt;
  }
  auto bs = ggml_block_size(t);
  if (n < 0 || n % bs != 0) return std::nullopt;
  return static_cast<std::uint64_t>(n / bs) * per_block;
}

gguf_file::gguf_file(const std::string& path) : map_(path) {
  try {
    cursor c(map_);
    c.need(4, "the magic");
    if (std::memcmp(map_.data(), "GGUF", 4) != 0) {
      throw error(errc::corrupt_file, "not a GGUF file (bad magic)");
    }
    c.seek(4);
    version_ = c.read<std::uint32_t>();
    if (version_ < 2 || version_ > 3) {
      throw error(errc::unsupported, "GGUF version " + std::to_string(version_) +
                                         " is not supported (2 and 3 are)");
    }
    auto n_tensors = c.read<std::uint64_t>();
    auto n_kv = c.read<std::uint64_t>();
    // Every entry takes bytes; a count beyond the file size is corrupt, not a huge allocation.
    if (n_tensors > map_.size() || n_kv > map_.size()) {
      throw error(errc::corrupt_file, "header counts (" + std::to_string(n_tensors) + " tensors, " +
                                          std::to_string(n_kv) + " keys) exceed the file size");
    }
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      auto key = c.read_string("a metadata key");
      auto type = static_cast<gguf_type>(c.read<std::uint32_t>());
      kv_[key] = read_value(c, type, key);
    }
    std::uint64_t alignment = 32;
    if (auto* a = find("general.alignment")) {
      alignment = static_cast<std::uint64_t>(a->num);
      if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
        throw error(errc::corrupt_file, "general.alignment " + std::to_string(alignment) +
                                            " is not a power of two");
      }
    }
    tensors_.reserve(n_tensors);
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      gguf_tensor_info t;
      t.name = c.read_string("a tensor name");
      auto n_dims = c.read<std::uint32_t>();
      if (n_dims == 0 || n_dims > 4) {
        throw error(errc::corrupt_file, "tensor '" + t.name + "' has " + std::to_string(n_dims) +
                                            " dimensions (1 to 4 allowed)");
      }
      std::int64_t count = 1;
      for (std::uint32_t d = 0; d < n_dims; ++d) {
        auto ne = c.read<std::uint64_t>();
        if (ne == 0 || ne > (std::uint64_t{1} << 40) || count > (std::int64_t{1} << 42) / std::int64_t(ne)) {
          throw error(errc::corrupt_file, "tensor '" + t.name + "' has an impossible dimension " +
                                              std::to_string(ne));
        }
        t.ne.push_back(static_cast<std::int64_t>(ne));
        count *= static_cast<std::int64_t>(ne);
      }
      t.type = static_cast<ggml_type>(c.read<std::uint32_t>());
      t.offset = c.read<std::uint64_t>();
      auto nb = ggml_nbytes(t.type, count);
      if (!nb) {
        // Keep the tensor: the loader decides whether it needs it and names the type then.
        t.nbytes = 0;
      } else {
        t.nbytes = *nb;
      }
      const std::int64_t block = ggml_block_size(t.type);
      if (block > 0 && t.ne[0] % block != 0) {
        throw error(errc::corrupt_file, "tensor '" + t.name + "' of type " + to_string(t.type) +
                                            " has a row of " + std::to_string(t.ne[0]) +
                                            " elements, not a multiple of its block size");
      }
      tensor_index_[t.name] = tensors_.size();
      tensors_.push_back(std::move(t));
    }
    std::uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
    for (auto& t : tensors_) {
      if (t.offset % alignment != 0) {
        throw error(errc::corrupt_file, "tensor '" + t.name + "' offset " + std::to_string(t.offset) +
                                            " is not aligned to " + std::to_string(alignment));
      }
      if (data_start > map_.size() || t.offset > map_.size() - data_start ||
          t.nbytes > map_.size() - data_start - t.offset) {
        throw error(errc::corrupt_file,
                    "tensor '" + t.name + "' (bytes " + std::to_string(data_start + t.offset) + " to " +
                        std::to_string(data_start + t.offset + t.nbytes) +
                        ") lies past the end of the file (" + std::to_string(map_.size()) +
                        " bytes): truncated?");
      }
      t.data = map_.data() + data_start + t.offset;
    }
    // Tensors must not overlap: one whose blocks run into the next tensor's bytes has fewer bytes
    // than its shape needs (a block count that does not match the shape).
    std::vector<const gguf_tensor_info*> by_offset;
    for (auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (std::size_t i = 0; i + 1 < by_offset.size(); ++i) {
      const auto& a = *by_offset[i];
      const auto& b = *by_offset[i + 1];
      if (a.offset + a.nbytes > b.offset) {
        const auto block = ggml_block_size(a.type);
        std::int64_t count = 1;
        for (auto d : a.ne) count *= d;
        throw error(errc::corrupt_file,
                    "tensor '" + a.name + "' of type " + to_string(a.type) + " needs " + std::to_string(a.nbytes) +
                        " bytes (" + std::to_string(block > 0 ? count / block : count) +
                        " blocks for its shape) but only " + std::to_string(b.offset - a.offset) +
                        " lie before tensor '" + b.name + "'");
      }
    }
  } catch (const error& e) {
    throw error(e.code(), path + ": " + e.what());
  }
}

const gguf_value* gguf_file::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const gguf_tensor_info* gguf_file::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::string gguf_file::get_string(const std::string& key) const {
  auto v = get_string_opt(key);
  if (!v) throw error(errc::corrupt_file, path() + ": metadata key '" + key + "' is missing");
  return *v;
}

std::optional<std::string> gguf_file::get_string_opt(const std::string& key) const {
  auto* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != gguf_type::string) {
    throw error(errc::corrupt_file, path() + ": metadata key '" + key + "' is not a string");
  }
  return v->str;
}

double gguf_file::get_number(const std::string& key) const {
  auto v = get_number_opt(key);
  if (!v) throw error(errc::corrupt_file, path() + ": metadata key '" + key + "' is missing");
  return *v;
}

std::optional<double> gguf_file::get_number_opt(const std::string& key) const {
  auto* v = find(key);
  if (!v) return std::nullopt;
  if (v->type == gguf_type::string || v->type == gguf_type::array) {
    throw error(errc::corrupt_file, path() + ": metadata key '" + key + "' is not a number");
  }
  return v->num;
}

}  // namespace shoal
