#pragma once
// Collective operations between the tensor-parallel ranks of one model replica. The runner calls
// all_reduce after each row-parallel matmul; backends (loopback TCP, Gloo, NCCL) live elsewhere.

#include <cstddef>

namespace shoal {

class communicator {
 public:
  virtual ~communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// Element-wise sum of `data` across all ranks, result on every rank.
  virtual void all_reduce_sum(float* data, std::size_t n) = 0;
};

}  // namespace shoal
