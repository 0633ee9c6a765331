#pragma once
// Error accumulation for numeric comparisons that cannot lose a NaN: std::max(worst, NaN) keeps
// `worst` (every comparison with NaN is false), so a kernel writing NaN would pass a max-error
// check. Here a non-finite difference makes the worst error infinite.

#include <cmath>
#include <limits>

namespace shoal::test {

/// The larger of `worst` and |diff|; +infinity when diff is NaN or infinite.
template <class T, class U>
T worse(T worst, U diff) {
  if (!std::isfinite(diff)) return std::numeric_limits<T>::infinity();
  const T d = static_cast<T>(std::fabs(diff));
  return d > worst ? d : worst;
}

}  // namespace shoal::test
