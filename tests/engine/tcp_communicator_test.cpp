// Ring all-reduce over loopback TCP: sums match a plain sum for several world sizes and odd
// lengths, every rank ends with identical bits, and a vanished peer is an error, not a hang.

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <random>
#include <thread>

#include "engine/comm/tcp_communicator.hpp"
#include "engine/common/error.hpp"
#include "tests/support/compare.hpp"

namespace {

std::vector<std::unique_ptr<shoal::tcp_communicator>> make_ring(int world) {
  std::vector<std::unique_ptr<shoal::tcp_communicator>> comms;
  std::vector<std::string> addrs;
  for (int r = 0; r < world; ++r) {
    comms.push_back(std::make_unique<shoal::tcp_communicator>(r, world));
    addrs.push_back("127.0.0.1:" + std::to_string(comms.back()->port()));
  }
  std::vector<std::thread> ts;
  for (int r = 0; r < world; ++r) ts.emplace_back([&, r] { comms[r]->connect(addrs, std::chrono::seconds(10)); });
  for (auto& t : ts) t.join();
  return comms;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(tcp_communicator)

BOOST_AUTO_TEST_CASE(sums_match_for_world_sizes) {
  for (int world : {1, 2, 3, 4}) {
    auto comms = make_ring(world);
    for (std::size_t n : {std::size_t{1}, std::size_t{3}, std::size_t{64}, std::size_t{1000003}}) {
      std::vector<std::vector<float>> data(world, std::vector<float>(n));
      std::mt19937 rng(static_cast<unsigned>(n + world));
      std::uniform_real_distribution<float> d(-1, 1);
      std::vector<double> want(n, 0.0);
      for (int r = 0; r < world; ++r) {
        for (std::size_t i = 0; i < n; ++i) {
          data[r][i] = d(rng);
          want[i] += data[r][i];
        }
      }
      std::vector<std::thread> ts;
      for (int r = 0; r < world; ++r) ts.emplace_back([&, r] { comms[r]->all_reduce_sum(data[r].data(), n); });
      for (auto& t : ts) t.join();
      float worst = 0;
      for (std::size_t i = 0; i < n; ++i) worst = shoal::test::worse(worst, data[0][i] - want[i]);
      BOOST_TEST(worst <= 1e-5f, "world " << world << " n " << n);
      for (int r = 1; r < world; ++r) BOOST_TEST((data[r] == data[0]), "rank " << r << " differs from rank 0");
    }
  }
}

BOOST_AUTO_TEST_CASE(vanished_peer_is_an_error) {
  auto comms = make_ring(2);
  comms[0]->set_timeout(std::chrono::seconds(5));
  comms[1].reset();  // the other process died: its sockets close
  std::vector<float> x(1000, 1.0f);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    comms[0]->all_reduce_sum(x.data(), x.size());
    BOOST_ERROR("all_reduce with a dead peer returned");
  } catch (const shoal::error& e) {
    BOOST_TEST((e.code() == shoal::errc::unavailable));
    BOOST_TEST(std::string(e.what()).find("rank 1") != std::string::npos, e.what());
  }
  BOOST_TEST((std::chrono::steady_clock::now() - t0 < std::chrono::seconds(6)));
}

BOOST_AUTO_TEST_CASE(unreachable_peer_is_named) {
  shoal::tcp_communicator c(0, 2);
  try {
    c.connect({"127.0.0.1:" + std::to_string(c.port()), "127.0.0.1:1"}, std::chrono::milliseconds(300));
    BOOST_ERROR("connected to nothing");
  } catch (const shoal::error& e) {
    BOOST_TEST(std::string(e.what()).find("127.0.0.1:1") != std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_SUITE_END()
