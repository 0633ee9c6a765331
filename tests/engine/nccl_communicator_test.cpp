// NCCL all-reduce on real GPUs (CTest label `gpu`): one rank per device, each in its own thread,
// sums of several sizes match the sum computed here. NCCL refuses two ranks on one device, so with
// one GPU this is a world of 1 (the full module path: id, init, copies, ncclAllReduce, destroy).
// Without a usable GPU every case is skipped with the reason (nccl_available), and CTest reports it
// as skipped.

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <memory>
#include <random>
#include <thread>

#include "engine/comm/nccl_communicator.hpp"
#include "engine/common/error.hpp"
#include "tests/support/compare.hpp"

namespace {

// Boost.Test precondition: the case is skipped, saying why, without a GPU NCCL can use.
struct needs_gpu {
  boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
    std::string why;
    boost::test_tools::assertion_result r(shoal::nccl_available(why));
    if (!r) r.message() << "no GPU for NCCL here: " << why;
    return r;
  }
};

std::vector<std::unique_ptr<shoal::nccl_communicator>> make_world(int world) {
  const std::string id = shoal::nccl_unique_id();  // rank 0 makes it; the others receive it
  std::vector<std::unique_ptr<shoal::nccl_communicator>> comms(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> ts;
  for (int r = 0; r < world; ++r) {
    ts.emplace_back([&, r] {
      try {
        comms[r] = std::make_unique<shoal::nccl_communicator>(r, world, id, r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ts) t.join();
  for (int r = 0; r < world; ++r) BOOST_REQUIRE_MESSAGE(errors[r].empty(), errors[r]);
  return comms;
}

void check_sums(int world) {
  auto comms = make_world(world);
  for (std::size_t n : {std::size_t{1}, std::size_t{3}, std::size_t{64}, std::size_t{4097}, std::size_t{1000003}}) {
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
    std::vector<std::string> errors(world);
    std::vector<std::thread> ts;
    for (int r = 0; r < world; ++r) {
      ts.emplace_back([&, r] {
        try {
          comms[r]->all_reduce_sum(data[r].data(), n);
        } catch (const std::exception& e) {
          errors[r] = e.what();
        }
      });
    }
    for (auto& t : ts) t.join();
    for (int r = 0; r < world; ++r) BOOST_REQUIRE_MESSAGE(errors[r].empty(), errors[r]);
    double worst = 0;
    for (int r = 0; r < world; ++r) {
      for (std::size_t i = 0; i < n; ++i) worst = shoal::test::worse(worst, data[r][i] - want[i]);
    }
    BOOST_TEST_MESSAGE("world " << world << " n " << n << " max |error| " << worst);
    BOOST_TEST(worst < 1e-5 * world);
    for (int r = 1; r < world; ++r) BOOST_TEST(data[r] == data[0]);  // every rank holds the same sum
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nccl_communicator)

BOOST_AUTO_TEST_CASE(sums_match_one_rank_per_device, *boost::unit_test::precondition(needs_gpu{})) {
  const int world = std::min(4, shoal::nccl_device_count());
  BOOST_TEST_MESSAGE("NCCL world of " << world << " rank(s), one per device");
  check_sums(world);
}

BOOST_AUTO_TEST_CASE(bad_unique_id_is_an_error, *boost::unit_test::precondition(needs_gpu{})) {
  BOOST_CHECK_THROW(shoal::nccl_communicator(0, 1, "not-hex"), shoal::error);
  BOOST_CHECK_THROW(shoal::nccl_communicator(2, 2, shoal::nccl_unique_id()), shoal::error);
}

BOOST_AUTO_TEST_SUITE_END()
