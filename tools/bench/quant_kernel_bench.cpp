// Quantized matmul kernel benchmark: GB/s of weight bytes streamed by y = W x through the fast CPU
// backend (weights registered with it first, as the runner does), for a [rows, cols] matrix
// (default 2048 x 5632, TinyLlama's ffn_down) and n tokens.
// Enough distinct copies of the matrix are cycled through that they never fit in the caches, as in
// decode, where every weight comes from DRAM once per token. Prints, for comparison, a STREAM-style
// read of a buffer much larger than the caches with the same thread count.
//
//   shoal_quant_bench [--rows R] [--cols C] [--n N] [--threads T] [--types q8_0,q4_0,i8,...]
//                     [--group G] [--seconds S] [--hot] [--no-stream]
// SHOAL_ISA=portable|avx2 caps the instruction level.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/backend.hpp"
#include "kernels/host.hpp"

using namespace shoal;
using namespace shoal::kernels;
using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

struct quant_matrix {
  std::vector<std::uint8_t> data;
  std::vector<float> scales;
  matrix m;
};

quant_matrix make(dtype t, std::int64_t rows, std::int64_t cols, std::int64_t group,
                  std::mt19937_64& rng) {
  quant_matrix q;
  q.data.resize(static_cast<std::size_t>(rows * dtype_bytes(t, cols)));
  for (auto& b : q.data) b = static_cast<std::uint8_t>(rng());
  // Sane F16 block scales so the arithmetic stays finite.
  const std::int64_t bb = dtype_block_bytes(t), nb = q.data.size() / bb;
  const std::uint16_t h = f32_to_f16(0.01f);
  for (std::int64_t b = 0; b < nb; ++b) {
    std::uint8_t* blk = q.data.data() + b * bb;
    if (t == dtype::q8_0 || t == dtype::q4_0) std::memcpy(blk, &h, 2);
    if (t == dtype::q4_k) {
      std::memcpy(blk, &h, 2);
      std::memcpy(blk + 2, &h, 2);
    }
    if (t == dtype::q6_k) std::memcpy(blk + 208, &h, 2);
  }
  q.m = matrix{q.data.data(), t, rows, cols, cols};
  if (t == dtype::i8) {
    q.scales.assign(rows, 0.01f);
    q.m.scale_stride = 1;
  } else if (t == dtype::i4) {
    q.scales.assign(rows * (cols / group), 0.01f);
    q.m.scale_stride = cols / group;
    q.m.group_size = group;
  } else if (t == dtype::f16 || t == dtype::bf16) {
    for (std::size_t i = 0; i + 1 < q.data.size(); i += 2) std::memcpy(q.data.data() + i, &h, 2);
  }
  q.m.scales = q.scales.empty() ? nullptr : q.scales.data();
  return q;
}

dtype parse_type(const std::string& s) {
  if (s == "q8_0") return dtype::q8_0;
  if (s == "q4_0") return dtype::q4_0;
  if (s == "q4_k") return dtype::q4_k;
  if (s == "q6_k") return dtype::q6_k;
  if (s == "i8") return dtype::i8;
  if (s == "i4") return dtype::i4;
  if (s == "f16") return dtype::f16;
  if (s == "bf16") return dtype::bf16;
  std::fprintf(stderr, "unknown type %s\n", s.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t rows = 2048, cols = 5632, n = 1, group = 64;
  int threads = 1;
  double secs = 2.0;
  std::string types = "q8_0,q4_0,i8,i4,q4_k,q6_k";
  bool stream = true;
  bool hot = false;  // one copy, cache resident: the kernels' arithmetic speed
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--rows")
      rows = std::stoll(next());
    else if (a == "--cols")
      cols = std::stoll(next());
    else if (a == "--n")
      n = std::stoll(next());
    else if (a == "--threads")
      threads = std::stoi(next());
    else if (a == "--types")
      types = next();
    else if (a == "--group")
      group = std::stoll(next());
    else if (a == "--seconds")
      secs = std::stod(next());
    else if (a == "--no-stream")
      stream = false;
    else if (a == "--hot")
      hot = true;
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  auto be = make_cpu_backend(threads);
  std::printf("cpu: %s, backend %s, matrix %lld x %lld, n %lld\n", describe_host_cpu().c_str(), be->name(),
              static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(n));
  if (stream) std::printf("stream read: %.1f GB/s\n", measure_host_read_bandwidth(threads).best_gb_per_s);
  std::mt19937_64 rng(1);
  std::vector<float> x(static_cast<std::size_t>(n * cols)), y(static_cast<std::size_t>(n * rows));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  std::size_t pos = 0;
  while (pos < types.size()) {
    std::size_t comma = types.find(',', pos);
    if (comma == std::string::npos) comma = types.size();
    const dtype t = parse_type(types.substr(pos, comma - pos));
    pos = comma + 1;
    // Copies totalling >= 512 MiB so each pass streams from DRAM.
    std::vector<quant_matrix> ms;
    const std::int64_t one = rows * dtype_bytes(t, cols);
    const std::int64_t copies =
        hot ? 1 : std::max<std::int64_t>(2, (std::int64_t{512} << 20) / one + 1);
    for (std::int64_t k = 0; k < copies; ++k) ms.push_back(make(t, rows, cols, group, rng));
    // As the runner does: the backend may repack (interleaved layouts) and run its copy.
    for (auto& m : ms) m.m = be->register_weight(m.m);
    const std::int64_t bytes = ms[0].m.bytes();
    for (auto& m : ms) be->matmul(m.m, host_tensor(x.data(), n, m.m.cols), host_tensor(y.data(), n, m.m.rows));  // warm-up
    // Best pass over all copies: the machine is shared, and interference only ever slows a pass.
    double per_call = 1e30;
    auto t0 = clock_type::now();
    while (seconds_since(t0) < secs) {
      auto p0 = clock_type::now();
      for (auto& m : ms) be->matmul(m.m, host_tensor(x.data(), n, m.m.cols), host_tensor(y.data(), n, m.m.rows));
      per_call = std::min(per_call, seconds_since(p0) / static_cast<double>(ms.size()));
    }
    std::printf("%-5s %8.3f ms/matmul  %6.2f GB/s of weights  %7.1f GMAC/s\n", to_string(t),
                per_call * 1e3, bytes / per_call / 1e9,
                static_cast<double>(rows) * cols * n / per_call / 1e9);
  }
  return 0;
}
