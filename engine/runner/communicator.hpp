#pragma once
// Collective operations between the tensor-parallel ranks of one model replica. The runner calls
// all_reduce after each row-parallel matmul, on a backend tensor; backends of the communicator
// (loopback TCP, NCCL) live in engine/comm/.

#include <cstddef>

#include "kernels/backend.hpp"

namespace shoal {

class communicator {
 public:
  virtual ~communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// Element-wise sum of `t` (contiguous F32) across all ranks, in place, the result on every
  /// rank. Throws shoal::error (unsupported) for a tensor on a device this communicator cannot
  /// reach, (unavailable) when a peer is gone.
  virtual void all_reduce_sum(const kernels::tensor& t) = 0;
};

/// The host floats of `t` for communicators that move host memory; throws shoal::error naming
/// `who` when `t` is not a contiguous host F32 tensor.
float* host_floats(const kernels::tensor& t, const char* who);

}  // namespace shoal
