#include "engine/runner/communicator.hpp"

#include <string>

#include "engine/common/error.hpp"

namespace shoal {

float* host_floats(const kernels::tensor& t, const char* who) {
  if (t.device != kernels::device_kind::host) {
    throw error(errc::unsupported, std::string(who) + " sums host tensors; this one is on a " +
                                       kernels::to_string(t.device) + " device");
  }
  if (t.type != dtype::f32 || !t.contiguous()) {
    throw error(errc::internal, std::string(who) + " sums contiguous F32 tensors");
  }
  return static_cast<float*>(t.data);
}

}  // namespace shoal
