#define BOOST_TEST_MODULE shoal
#include <boost/test/unit_test.hpp>
