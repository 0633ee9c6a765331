// The NCCL backend on a machine that cannot use it (no module, no driver or no GPU): runs
// everywhere. nccl_available says precisely what is missing, and making a communicator or a unique
// id is a shoal::error carrying that reason, never a crash. On a GPU machine it checks the id.

#include <boost/test/unit_test.hpp>

#include "engine/comm/nccl_communicator.hpp"
#include "engine/common/error.hpp"

BOOST_AUTO_TEST_SUITE(nccl_fallback)

BOOST_AUTO_TEST_CASE(unavailable_says_why_and_throws) {
  std::string why;
  if (shoal::nccl_available(why)) {
    BOOST_TEST(why.empty());
    BOOST_TEST(shoal::nccl_device_count() >= 1);
    const auto id = shoal::nccl_unique_id();
    BOOST_TEST(id.size() == 256u);
    BOOST_TEST_MESSAGE("NCCL is available here (" << shoal::nccl_device_count() << " device(s))");
    return;
  }
  BOOST_TEST_MESSAGE("NCCL unavailable: " << why);
  const bool names_it = why.find("module") != std::string::npos || why.find("driver") != std::string::npos ||
                        why.find("device") != std::string::npos;
  BOOST_TEST(names_it, "reason names the module, the driver or the device: " << why);
  BOOST_TEST(shoal::nccl_device_count() == 0);
  try {
    shoal::nccl_communicator c(0, 2, std::string(256, '0'));
    BOOST_FAIL("an NCCL communicator was made without NCCL");
  } catch (const shoal::error& e) {
    BOOST_TEST((e.code() == shoal::errc::unavailable));
    BOOST_TEST(std::string(e.what()).find(why) != std::string::npos, e.what());
  }
  BOOST_CHECK_THROW(shoal::nccl_unique_id(), shoal::error);
}

BOOST_AUTO_TEST_SUITE_END()
