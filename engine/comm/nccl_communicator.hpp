#pragma once
// NCCL backend of the communicator, for GPU shard workers. The engine never links CUDA: it loads
// libshoal_nccl.so (engine/comm/nccl_module.h) with dlopen on first use, from $SHOAL_NCCL_MODULE,
// else <executable dir>/../lib, else next to the executable. Ranks join one NCCL communicator with
// a unique id that rank 0 makes (nccl_unique_id) and the others receive in actor messages.

#include <string>

#include "engine/runner/communicator.hpp"

struct shoal_nccl_comm;

namespace shoal {

/// True when the NCCL module loads, the CUDA driver is installed and a device answers; otherwise
/// false with `why` saying which of these is missing. Checked once per process.
bool nccl_available(std::string& why);

/// CUDA devices that answer (0 when nccl_available is false).
int nccl_device_count();

/// A fresh NCCL unique id as 256 hex digits (the module's 128 bytes), for rank 0 to hand to every
/// rank. Throws shoal::error (errc::unavailable) with nccl_available's reason when NCCL is unusable.
std::string nccl_unique_id();

class nccl_communicator final : public communicator {
 public:
  /// Joins the communicator named by `unique_id_hex` as `rank` of `world` on CUDA device `device`
  /// (-1: rank modulo the device count); blocks until every rank has joined. Throws shoal::error
  /// (errc::unavailable) when NCCL is unusable here or the init fails, with the reason.
  nccl_communicator(int rank, int world, const std::string& unique_id_hex, int device = -1);
  ~nccl_communicator() override;
  nccl_communicator(const nccl_communicator&) = delete;
  nccl_communicator& operator=(const nccl_communicator&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int device() const { return device_; }
  /// Host data: copied to a device buffer, ncclAllReduce (sum), copied back. Throws shoal::error
  /// (errc::unavailable) with the CUDA/NCCL error text.
  void all_reduce_sum(float* data, std::size_t n);
  /// A host tensor goes through the copying path above; device tensors need the CUDA backend
  /// (not built yet) and are refused (unsupported).
  void all_reduce_sum(const kernels::tensor& t) override;

 private:
  int rank_, world_, device_;
  shoal_nccl_comm* comm_ = nullptr;
};

}  // namespace shoal
