#include "engine/comm/nccl_communicator.hpp"

#include <dlfcn.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "engine/comm/nccl_module.h"
#include "engine/common/error.hpp"

namespace shoal {

namespace {

constexpr const char* module_name = "libshoal_nccl.so";

// The module's C ABI, resolved once.
struct nccl_module {
  bool ok = false;
  std::string why;  // when !ok
  int device_count = 0;
  void* handle = nullptr;
  int (*abi_version)() = nullptr;
  int (*device_count_fn)(int*, char*, size_t) = nullptr;
  int (*get_unique_id)(unsigned char*, char*, size_t) = nullptr;
  int (*init)(const unsigned char*, int, int, int, shoal_nccl_comm**, char*, size_t) = nullptr;
  int (*all_reduce_sum_host)(shoal_nccl_comm*, float*, size_t, char*, size_t) = nullptr;
  void (*destroy)(shoal_nccl_comm*) = nullptr;
};

std::vector<std::filesystem::path> candidates() {
  std::vector<std::filesystem::path> out;
  if (const char* env = std::getenv("SHOAL_NCCL_MODULE"); env && *env) {
    out.emplace_back(env);
    return out;
  }
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    out.push_back(exe.parent_path().parent_path() / "lib" / module_name);
    out.push_back(exe.parent_path() / module_name);
  }
  return out;
}

template <class F>
bool resolve(nccl_module& m, F& fn, const char* name) {
  fn = reinterpret_cast<F>(dlsym(m.handle, name));
  if (!fn) m.why = std::string("the NCCL module lacks ") + name + " (a module from another Shoal version?)";
  return fn != nullptr;
}

nccl_module load() {
  nccl_module m;
  std::filesystem::path path;
  std::string looked;
  for (const auto& c : candidates()) {
    std::error_code ec;
    if (std::filesystem::exists(c, ec)) {
      path = c;
      break;
    }
    looked += (looked.empty() ? "" : ", ") + c.string();
  }
  if (path.empty()) {
    m.why = std::string("the NCCL module ") + module_name +
            " is not built or not installed (Shoal was configured without the CUDA toolkit and NCCL, "
            "or SHOAL_WITH_NCCL=OFF); looked for " + (looked.empty() ? std::string("it nowhere") : looked) +
            "; set SHOAL_NCCL_MODULE to its path";
    return m;
  }
  m.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!m.handle) {
    const char* e = dlerror();
    m.why = "cannot load the NCCL module " + path.string() + ": " + (e ? e : "unknown dlopen error") +
            " (are the NCCL libraries installed?)";
    return m;
  }
  if (!resolve(m, m.abi_version, "shoal_nccl_abi_version") ||
      !resolve(m, m.device_count_fn, "shoal_nccl_device_count") ||
      !resolve(m, m.get_unique_id, "shoal_nccl_get_unique_id") || !resolve(m, m.init, "shoal_nccl_init") ||
      !resolve(m, m.all_reduce_sum_host, "shoal_nccl_all_reduce_sum_host") ||
      !resolve(m, m.destroy, "shoal_nccl_destroy")) {
    return m;
  }
  if (m.abi_version() != SHOAL_NCCL_ABI_VERSION) {
    m.why = "the NCCL module " + path.string() + " has ABI version " + std::to_string(m.abi_version()) +
            ", this Shoal expects " + std::to_string(SHOAL_NCCL_ABI_VERSION);
    return m;
  }
  // The driver: the module links the CUDA runtime statically, which needs libcuda at run time.
  if (void* drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
    dlclose(drv);
  } else {
    const char* e = dlerror();
    m.why = std::string("the NVIDIA driver is not installed: libcuda.so.1 cannot be loaded (") +
            (e ? e : "unknown dlopen error") + ")";
    return m;
  }
  std::array<char, 512> err{};
  if (m.device_count_fn(&m.device_count, err.data(), err.size()) != 0) {
    m.why = std::string("no CUDA device answers: ") + err.data();
    return m;
  }
  m.ok = true;
  return m;
}

const nccl_module& module() {
  static const nccl_module m = load();
  return m;
}

const nccl_module& usable() {
  const auto& m = module();
  if (!m.ok) throw error(errc::unavailable, "NCCL is unavailable: " + m.why);
  return m;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool nccl_available(std::string& why) {
  const auto& m = module();
  why = m.ok ? std::string() : m.why;
  return m.ok;
}

int nccl_device_count() { return module().ok ? module().device_count : 0; }

std::string nccl_unique_id() {
  const auto& m = usable();
  std::array<unsigned char, SHOAL_NCCL_ID_BYTES> id{};
  std::array<char, 512> err{};
  if (m.get_unique_id(id.data(), err.data(), err.size()) != 0) {
    throw error(errc::unavailable, std::string("cannot make an NCCL unique id: ") + err.data());
  }
  static const char* digits = "0123456789abcdef";
  std::string hex;
  hex.reserve(id.size() * 2);
  for (unsigned char b : id) {
    hex.push_back(digits[b >> 4]);
    hex.push_back(digits[b & 15]);
  }
  return hex;
}

nccl_communicator::nccl_communicator(int rank, int world, const std::string& unique_id_hex, int device)
    : rank_(rank), world_(world), device_(device) {
  const auto& m = usable();
  if (world < 1 || rank < 0 || rank >= world) {
    throw error(errc::invalid_argument, "NCCL communicator: rank " + std::to_string(rank) + " is not in [0, " +
                                            std::to_string(world) + ")");
  }
  if (unique_id_hex.size() != 2 * SHOAL_NCCL_ID_BYTES) {
    throw error(errc::invalid_argument, "NCCL unique id must be " + std::to_string(2 * SHOAL_NCCL_ID_BYTES) +
                                            " hex digits, got " + std::to_string(unique_id_hex.size()));
  }
  std::array<unsigned char, SHOAL_NCCL_ID_BYTES> id{};
  for (std::size_t i = 0; i < id.size(); ++i) {
    const int hi = hex_digit(unique_id_hex[2 * i]), lo = hex_digit(unique_id_hex[2 * i + 1]);
    if (hi < 0 || lo < 0) throw error(errc::invalid_argument, "NCCL unique id is not hex");
    id[i] = static_cast<unsigned char>(hi * 16 + lo);
  }
  if (device_ < 0) device_ = rank % m.device_count;
  std::array<char, 512> err{};
  if (m.init(id.data(), rank, world, device_, &comm_, err.data(), err.size()) != 0) {
    throw error(errc::unavailable, "NCCL rank " + std::to_string(rank) + " of " + std::to_string(world) +
                                       " on device " + std::to_string(device_) + ": " + err.data());
  }
}

nccl_communicator::~nccl_communicator() {
  if (comm_) module().destroy(comm_);
}

void nccl_communicator::all_reduce_sum(const kernels::tensor& t) {
  all_reduce_sum(host_floats(t, "the NCCL communicator (until the CUDA backend)"), static_cast<std::size_t>(t.elements()));
}

void nccl_communicator::all_reduce_sum(float* data, std::size_t n) {
  std::array<char, 512> err{};
  if (module().all_reduce_sum_host(comm_, data, n, err.data(), err.size()) != 0) {
    throw error(errc::unavailable, "NCCL all-reduce on rank " + std::to_string(rank_) + ": " + err.data());
  }
}

}  // namespace shoal
