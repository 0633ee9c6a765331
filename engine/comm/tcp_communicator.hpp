#pragma once
// Ring all-reduce over TCP between the tensor-parallel ranks of one replica, for CPU shard workers
// in separate processes (loopback or a real network). Rank r sends to rank r+1 and receives from
// rank r-1 on two connections; a sum all-reduce is a reduce-scatter then an all-gather, each
// world-1 steps of one chunk, so every rank moves 2 (world-1)/world of the buffer.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/runner/communicator.hpp"

namespace shoal {

class tcp_communicator final : public communicator {
 public:
  /// Opens a listening socket on `bind_host` (an ephemeral port); peers learn it from port().
  tcp_communicator(int rank, int world, const std::string& bind_host = "127.0.0.1");
  ~tcp_communicator() override;
  tcp_communicator(const tcp_communicator&) = delete;
  tcp_communicator& operator=(const tcp_communicator&) = delete;

  int port() const { return port_; }
  /// Connects the ring: `addresses[r]` is rank r's "host:port". Throws shoal::error
  /// (errc::unavailable) naming the peer if it cannot be reached within `timeout`.
  void connect(const std::vector<std::string>& addresses, std::chrono::milliseconds timeout);
  /// Every later collective fails after this long without progress (a dead or stuck peer).
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  /// Throws shoal::error (errc::unavailable) when a peer disconnects or stalls past the timeout.
  void all_reduce_sum(float* data, std::size_t n);
  /// Host tensors only (this communicator moves host memory).
  void all_reduce_sum(const kernels::tensor& t) override;

 private:
  void exchange(const std::uint8_t* send, std::size_t send_n, std::uint8_t* recv, std::size_t recv_n);

  int rank_, world_;
  int listen_fd_ = -1;
  int port_ = 0;
  int next_fd_ = -1;  // to rank + 1
  int prev_fd_ = -1;  // from rank - 1
  std::chrono::milliseconds timeout_{30000};
  std::vector<float> scratch_;
};

}  // namespace shoal
