// Backend-neutral pieces of kernels/backend.hpp: tensor and matrix views, buffers and the scratch
// arena (which reach device memory only through a backend's allocate/deallocate), and the host
// dequantization of one weight row.

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/common/error.hpp"
#include "kernels/backend.hpp"
#include "kernels/cpu/matmul_kernels.hpp"

namespace shoal::kernels {

const char* to_string(device_kind d) {
  switch (d) {
    case device_kind::host: return "host";
    case device_kind::cuda: return "cuda";
  }
  return "?";
}

// ---- tensor

tensor tensor::rows_view(std::int64_t begin, std::int64_t count) const {
  tensor t = *this;
  t.data = static_cast<std::uint8_t*>(data) + dtype_bytes(type, begin * row_stride);
  t.rows = count;
  return t;
}

tensor tensor::cols_view(std::int64_t begin, std::int64_t count) const {
  tensor t = *this;
  t.data = static_cast<std::uint8_t*>(data) + dtype_bytes(type, begin);
  t.cols = count;
  return t;
}

tensor tensor::reshaped(std::int64_t r, std::int64_t c) const {
  if (!contiguous() || r * c != rows * cols) {
    throw error(errc::internal, "cannot view a [" + std::to_string(rows) + ", " + std::to_string(cols) +
                                    "] tensor (row stride " + std::to_string(row_stride) + ") as [" +
                                    std::to_string(r) + ", " + std::to_string(c) + "]");
  }
  tensor t = *this;
  t.rows = r;
  t.cols = c;
  t.row_stride = c;
  return t;
}

// ---- matrix

matrix matrix::row_slice(std::int64_t begin, std::int64_t count) const {
  matrix m = *this;
  if (interleave > 0) {
    const std::int64_t grouped = rows / interleave * interleave;  // rows held in whole groups
    if (begin >= grouped) {
      m.interleave = 0;  // only plain rows
    } else if (begin % interleave != 0 || (count % interleave != 0 && begin + count < grouped)) {
      // Groups are indivisible, and a slice's plain rows must follow its last group.
      throw error(errc::internal, "rows [" + std::to_string(begin) + ", " + std::to_string(begin + count) +
                                      ") split a group of a matrix interleaved by " + std::to_string(interleave));
    }
  }
  m.data = row(begin);
  m.rows = count;
  if (scales) m.scales = scales + begin * scale_stride;
  return m;
}

matrix matrix::col_slice(std::int64_t begin, std::int64_t count) const {
  const std::int64_t granule =
      (type == dtype::i4 || type == dtype::f8_e4m3) ? group_size : dtype_block_size(type);
  // A window starts on a block and ends on one, or at the last column (a partial last block).
  if (begin % granule != 0 || (count % granule != 0 && begin + count != cols)) {
    throw std::invalid_argument(std::string("column window [") + std::to_string(begin) + ", " +
                                std::to_string(begin + count) + ") of a " + to_string(type) +
                                " matrix does not fall on its " + std::to_string(granule) +
                                "-element blocks");
  }
  if (interleave > 0) {
    throw error(errc::internal, "a column window of a matrix interleaved by " + std::to_string(interleave) +
                                    " (register the window, not the whole matrix)");
  }
  matrix m = *this;
  m.data = static_cast<const std::uint8_t*>(data) + dtype_bytes(type, begin);
  m.cols = count;
  if (type == dtype::i4 || type == dtype::f8_e4m3) m.scales = scales + begin / group_size;
  return m;
}

std::int64_t matrix::bytes() const {
  std::int64_t b = rows * dtype_bytes(type, cols);
  if (type == dtype::i8) b += rows * 4;
  if (type == dtype::i4) b += rows * (cols / group_size) * 4;
  if (type == dtype::f8_e4m3) b += rows * ((cols + group_size - 1) / group_size) * 4;
  return b;
}

void dequantize_row(const matrix& w, std::int64_t r, float* out) {
  if (w.device != device_kind::host) {
    throw error(errc::internal, "dequantize_row reads host matrices only");
  }
  if (w.interleave > 0 && r < w.rows / w.interleave * w.interleave) {
    // The row's bytes gathered out of its group, then read as a plain one-row matrix.
    std::vector<std::uint8_t> plain(static_cast<std::size_t>(dtype_bytes(w.type, w.cols)));
    cpu::deinterleave_row(w, r, plain.data());
    matrix one = w;
    one.data = plain.data();
    one.rows = 1;
    one.interleave = 0;
    if (one.scales) one.scales = w.scales + r * w.scale_stride;
    dequantize_row(one, 0, out);
    return;
  }
  const std::uint8_t* base = w.row(r);
  switch (w.type) {
    case dtype::f32:
      std::memcpy(out, base, w.cols * sizeof(float));
      return;
    case dtype::f16:
      for (std::int64_t c = 0; c < w.cols; ++c) {
        std::uint16_t h;
        std::memcpy(&h, base + 2 * c, 2);
        out[c] = f16_to_f32(h);
      }
      return;
    case dtype::bf16:
      for (std::int64_t c = 0; c < w.cols; ++c) {
        std::uint16_t h;
        std::memcpy(&h, base + 2 * c, 2);
        out[c] = bf16_to_f32(h);
      }
      return;
    default:
      cpu::dequantize_quantized_row(w, r, out);
      return;
  }
}

// ---- tensor_buffer

tensor_buffer::tensor_buffer(backend& be, dtype type, std::int64_t rows, std::int64_t cols) : be_(&be) {
  t_.type = type;
  t_.rows = rows;
  t_.cols = cols;
  t_.row_stride = cols;
  t_.device = be.device();
  t_.data = be.allocate(std::max<std::int64_t>(dtype_bytes(type, rows * cols), 1));
}

tensor_buffer::~tensor_buffer() {
  if (be_ && t_.data) be_->deallocate(t_.data);
}

tensor_buffer::tensor_buffer(tensor_buffer&& o) noexcept : be_(o.be_), t_(o.t_) {
  o.be_ = nullptr;
  o.t_ = {};
}

tensor_buffer& tensor_buffer::operator=(tensor_buffer&& o) noexcept {
  if (this != &o) {
    if (be_ && t_.data) be_->deallocate(t_.data);
    be_ = o.be_;
    t_ = o.t_;
    o.be_ = nullptr;
    o.t_ = {};
  }
  return *this;
}

// ---- scratch_arena

namespace {

constexpr std::int64_t kAlign = 64;
constexpr std::int64_t kMinBlock = std::int64_t{1} << 20;

std::int64_t aligned(std::int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

scratch_arena::~scratch_arena() {
  for (auto& b : blocks_) be_.deallocate(b.data);
}

tensor scratch_arena::take(dtype type, std::int64_t rows, std::int64_t cols) {
  const std::int64_t bytes = aligned(std::max<std::int64_t>(dtype_bytes(type, rows * cols), 1));
  if (blocks_.empty() || used_ + bytes > blocks_.back().bytes) {
    // A new block for this and what follows; reset() merges them once the step is over.
    const std::int64_t size = std::max({bytes, kMinBlock, blocks_.empty() ? 0 : blocks_.back().bytes});
    blocks_.push_back(block{be_.allocate(size), size});
    used_ = 0;
  }
  tensor t;
  t.data = static_cast<std::uint8_t*>(blocks_.back().data) + used_;
  t.type = type;
  t.rows = rows;
  t.cols = cols;
  t.row_stride = cols;
  t.device = be_.device();
  used_ += bytes;
  wanted_ += bytes;
  return t;
}

void scratch_arena::reset() {
  if (blocks_.size() > 1) {
    // Last step spilled into several blocks: keep one that holds everything it took.
    for (auto& b : blocks_) be_.deallocate(b.data);
    blocks_.clear();
    const std::int64_t size = std::max(aligned(wanted_), kMinBlock);
    blocks_.push_back(block{be_.allocate(size), size});
  }
  used_ = 0;
  wanted_ = 0;
}

std::int64_t scratch_arena::reserved() const {
  std::int64_t n = 0;
  for (const auto& b : blocks_) n += b.bytes;
  return n;
}

}  // namespace shoal::kernels
