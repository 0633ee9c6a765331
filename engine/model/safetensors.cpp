#include "engine/model/safetensors.hpp"

#include <cstring>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"

namespace shoal {

std::size_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

safetensors_file::safetensors_file(const std::string& path) : map_(path) {
  auto fail = [&](const std::string& what) { throw error(errc::corrupt_file, path + ": " + what); };
  if (map_.size() < 8) fail("too short for a safetensors header (" + std::to_string(map_.size()) + " bytes)");
  std::uint64_t header_len;
  std::memcpy(&header_len, map_.data(), 8);
  if (header_len > map_.size() - 8) {
    fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
         std::to_string(map_.size()) + " bytes): truncated or not safetensors");
  }
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(map_.data() + 8, map_.data() + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail("header is not a JSON object");
  const std::uint64_t data_start = 8 + header_len;
  const std::uint64_t data_len = map_.size() - data_start;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (info.is_object()) {
        for (auto& [k, v] : info.items()) {
          if (v.is_string()) metadata_[k] = v.get<std::string>();
        }
      }
      continue;
    }
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets") || !info["dtype"].is_string() || !info["shape"].is_array() ||
        !info["data_offsets"].is_array() || info["data_offsets"].size() != 2) {
      fail("tensor '" + name + "' has a malformed entry (needs dtype, shape, data_offsets[2])");
    }
    safetensors_tensor t;
    t.name = name;
    t.dtype = info["dtype"].get<std::string>();
    std::uint64_t count = 1;
    for (auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) fail("tensor '" + name + "' has a non-integer dimension");
      auto v = d.get<std::uint64_t>();
      if (v > (std::uint64_t{1} << 40) || (v != 0 && count > (std::uint64_t{1} << 42) / v)) {
        fail("tensor '" + name + "' has an impossible shape");
      }
      t.shape.push_back(static_cast<std::int64_t>(v));
      count *= v;
    }
    auto& off = info["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      fail("tensor '" + name + "' has non-integer data_offsets");
    }
    auto begin = off[0].get<std::uint64_t>(), end = off[1].get<std::uint64_t>();
    if (begin > end || end > data_len) {
      fail("tensor '" + name + "' data_offsets [" + std::to_string(begin) + ", " +
           std::to_string(end) + ") exceed the data section (" + std::to_string(data_len) +
           " bytes): truncated?");
    }
    auto elem = safetensors_dtype_size(t.dtype);
    if (elem != 0 && count * elem != end - begin) {
      fail("tensor '" + name + "' holds " + std::to_string(end - begin) + " bytes but its shape and " +
           t.dtype + " need " + std::to_string(count * elem));
    }
    t.data = map_.data() + data_start + begin;
    t.nbytes = end - begin;
    tensors_.emplace(name, std::move(t));
  }
}

}  // namespace shoal

#include <fstream>

namespace shoal {

void safetensors_writer::add(std::string name, std::string dtype, std::vector<std::int64_t> shape) {
  std::uint64_t n = safetensors_dtype_size(dtype);
  if (n == 0) throw error(errc::invalid_argument, "safetensors dtype '" + dtype + "' is unknown");
  for (auto d : shape) n *= static_cast<std::uint64_t>(d);
  entries_.push_back({std::move(name), std::move(dtype), std::move(shape), n});
}

void safetensors_writer::write(
    const std::string& path,
    const std::function<void(std::size_t, std::vector<std::uint8_t>&)>& fill) const {
  nlohmann::ordered_json header;
  if (!metadata_.empty()) {
    auto& md = header["__metadata__"];
    for (auto& [k, v] : metadata_) md[k] = v;
  }
  std::uint64_t offset = 0;
  for (auto& e : entries_) {
    header[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.nbytes}}};
    offset += e.nbytes;
  }
  std::string h = header.dump();
  // Pad the header so the data section starts 8-byte aligned (readers may map tensors in place).
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw error(errc::invalid_argument, path + ": cannot create");
  std::uint64_t len = h.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  std::vector<std::uint8_t> buf;
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    buf.clear();
    fill(i, buf);
    if (buf.size() != entries_[i].nbytes) {
      throw error(errc::internal, "safetensors writer: tensor '" + entries_[i].name + "' got " +
                                      std::to_string(buf.size()) + " bytes, declared " +
                                      std::to_string(entries_[i].nbytes));
    }
    out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  }
  out.close();
  if (!out) throw error(errc::invalid_argument, path + ": write failed (disk full?)");
}

}  // namespace shoal
