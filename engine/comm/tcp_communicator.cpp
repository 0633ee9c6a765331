#include "engine/comm/tcp_communicator.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "engine/common/error.hpp"

namespace shoal {

namespace {

using clock_type = std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& what) { throw error(errc::unavailable, "tensor-parallel link: " + what); }

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

std::pair<std::string, int> split_address(const std::string& a) {
  auto colon = a.rfind(':');
  if (colon == std::string::npos) fail("address '" + a + "' lacks a port");
  return {a.substr(0, colon), std::stoi(a.substr(colon + 1))};
}

}  // namespace

tcp_communicator::tcp_communicator(int rank, int world, const std::string& bind_host) : rank_(rank), world_(world) {
  if (world < 1 || rank < 0 || rank >= world) throw error(errc::invalid_argument, "invalid rank/world for tcp_communicator");
  if (world == 1) return;
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  if (::inet_pton(AF_INET, bind_host.c_str(), &addr.sin_addr) != 1) fail("bind host '" + bind_host + "' is not an IPv4 address");
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 4) != 0) {
    fail(std::string("cannot listen on ") + bind_host + ": " + std::strerror(errno));
  }
  socklen_t len = sizeof addr;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
}

tcp_communicator::~tcp_communicator() {
  for (int fd : {listen_fd_, next_fd_, prev_fd_}) {
    if (fd >= 0) ::close(fd);
  }
}

void tcp_communicator::connect(const std::vector<std::string>& addresses, std::chrono::milliseconds timeout) {
  if (world_ == 1) return;
  if (static_cast<int>(addresses.size()) != world_) fail("expected " + std::to_string(world_) + " addresses");
  const auto deadline = clock_type::now() + timeout;
  const int next = (rank_ + 1) % world_;
  auto [host, port] = split_address(addresses[next]);
  // Connect to the next rank (retrying while it starts listening), then accept the previous one.
  for (;;) {
    next_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
    if (::connect(next_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
    ::close(next_fd_);
    next_fd_ = -1;
    if (clock_type::now() > deadline) fail("rank " + std::to_string(next) + " at " + addresses[next] + " did not accept a connection");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Tell the peer who we are so a stray connection cannot take the slot.
  std::int32_t me = rank_;
  if (::send(next_fd_, &me, 4, MSG_NOSIGNAL) != 4) fail("handshake with rank " + std::to_string(next) + " failed");
  pollfd p{listen_fd_, POLLIN, 0};
  const int prev = (rank_ + world_ - 1) % world_;
  while (prev_fd_ < 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now()).count();
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) fail("rank " + std::to_string(prev) + " did not connect");
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::int32_t who = -1;
    if (::recv(fd, &who, 4, MSG_WAITALL) == 4 && who == prev) {
      prev_fd_ = fd;
    } else {
      ::close(fd);
    }
  }
  for (int fd : {next_fd_, prev_fd_}) {
    set_nodelay(fd);
    set_nonblocking(fd);
  }
}

void tcp_communicator::exchange(const std::uint8_t* send, std::size_t send_n, std::uint8_t* recv, std::size_t recv_n) {
  std::size_t sent = 0, got = 0;
  auto last_progress = clock_type::now();
  while (sent < send_n || got < recv_n) {
    pollfd fds[2];
    int n = 0;
    if (sent < send_n) fds[n++] = {next_fd_, POLLOUT, 0};
    if (got < recv_n) fds[n++] = {prev_fd_, POLLIN, 0};
    const int r = ::poll(fds, n, 100);
    if (r < 0 && errno != EINTR) fail(std::string("poll failed: ") + std::strerror(errno));
    bool progress = false;
    for (int i = 0; i < n; ++i) {
      if (fds[i].revents & (POLLERR | POLLNVAL)) {
        fail(fds[i].fd == next_fd_ ? "rank " + std::to_string((rank_ + 1) % world_) + " disconnected"
                                   : "rank " + std::to_string((rank_ + world_ - 1) % world_) + " disconnected");
      }
      if (fds[i].fd == next_fd_ && (fds[i].revents & (POLLOUT | POLLHUP))) {
        ssize_t k = ::send(next_fd_, send + sent, send_n - sent, MSG_NOSIGNAL);
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
          fail("rank " + std::to_string((rank_ + 1) % world_) + " disconnected (" + std::strerror(errno) + ")");
        }
        if (k > 0) {
          sent += static_cast<std::size_t>(k);
          progress = true;
        }
      }
      if (fds[i].fd == prev_fd_ && (fds[i].revents & (POLLIN | POLLHUP))) {
        ssize_t k = ::recv(prev_fd_, recv + got, recv_n - got, 0);
        if (k == 0) fail("rank " + std::to_string((rank_ + world_ - 1) % world_) + " disconnected");
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
          fail("rank " + std::to_string((rank_ + world_ - 1) % world_) + " disconnected (" + std::strerror(errno) + ")");
        }
        if (k > 0) {
          got += static_cast<std::size_t>(k);
          progress = true;
        }
      }
    }
    if (progress) {
      last_progress = clock_type::now();
    } else if (clock_type::now() - last_progress > timeout_) {
      fail("no progress for " + std::to_string(timeout_.count()) + " ms (a peer is stuck or gone)");
    }
  }
}

void tcp_communicator::all_reduce_sum(const kernels::tensor& t) {
  all_reduce_sum(host_floats(t, "the TCP communicator"), static_cast<std::size_t>(t.elements()));
}

void tcp_communicator::all_reduce_sum(float* data, std::size_t n) {
  if (world_ == 1 || n == 0) return;
  const std::size_t w = static_cast<std::size_t>(world_);
  auto chunk_begin = [&](std::size_t c) { return n * c / w; };
  auto chunk_size = [&](std::size_t c) { return chunk_begin(c + 1) - chunk_begin(c); };
  scratch_.resize(n / w + 1);
  const std::size_t r = static_cast<std::size_t>(rank_);
  // Reduce-scatter: after world-1 steps rank r holds the full sum of chunk (r + 1) % world.
  for (std::size_t step = 0; step + 1 < w; ++step) {
    const std::size_t send_c = (r + w - step) % w;
    const std::size_t recv_c = (r + w - step - 1) % w;
    exchange(reinterpret_cast<const std::uint8_t*>(data + chunk_begin(send_c)), chunk_size(send_c) * 4,
             reinterpret_cast<std::uint8_t*>(scratch_.data()), chunk_size(recv_c) * 4);
    float* dst = data + chunk_begin(recv_c);
    for (std::size_t i = 0; i < chunk_size(recv_c); ++i) dst[i] += scratch_[i];
  }
  // All-gather: pass the finished chunks around the ring.
  for (std::size_t step = 0; step + 1 < w; ++step) {
    const std::size_t send_c = (r + 1 + w - step) % w;
    const std::size_t recv_c = (r + w - step) % w;
    exchange(reinterpret_cast<const std::uint8_t*>(data + chunk_begin(send_c)), chunk_size(send_c) * 4,
             reinterpret_cast<std::uint8_t*>(data + chunk_begin(recv_c)), chunk_size(recv_c) * 4);
  }
}

}  // namespace shoal
