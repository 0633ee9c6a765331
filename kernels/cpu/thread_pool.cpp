#include "kernels/cpu/thread_pool.hpp"

#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace shoal::kernels::cpu {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// How long an idle worker spins before sleeping: long enough to bridge the single-threaded gaps
// between a token's matmuls, short enough not to burn a core while the server idles.
constexpr auto kSpin = std::chrono::microseconds(2000);

}  // namespace

thread_pool::thread_pool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_main(i); });
}

thread_pool::~thread_pool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void thread_pool::run_slice(int index) {
  // Threads take chunks from a shared counter instead of fixed halves: on a shared machine one core
  // is often slower for a while, and fixed slices leave the other spinning (measured ~5% of decode).
  for (;;) {
    const std::int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
    if (begin >= n_) return;
    (*job_)(index, begin, std::min(n_, begin + chunk_));
  }
}

void thread_pool::parallel_for(std::int64_t n, std::int64_t granule,
                               const std::function<void(int, std::int64_t, std::int64_t)>& fn) {
  if (workers_.empty() || n <= granule) {
    if (n > 0) fn(0, 0, n);
    return;
  }
  parked_.store(false, std::memory_order_relaxed);
  job_ = &fn;
  n_ = n;
  granule_ = std::max<std::int64_t>(granule, 1);
  // About 8 chunks per thread: small enough to balance, large enough that each thread still reads
  // long sequential runs of rows.
  const std::int64_t units = (n + granule_ - 1) / granule_;
  chunk_ = std::max<std::int64_t>(1, units / (8 * size())) * granule_;
  next_.store(0, std::memory_order_relaxed);
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    // The lock pairs with a sleeping worker's predicate check so no wake-up is lost.
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  run_slice(0);
  // Spin briefly, then yield: on a machine with as many busy threads as cores a descheduled worker
  // only gets its core back if the waiting thread gives it up (measured: 4 ms stalls otherwise).
  for (int polls = 0; pending_.load(std::memory_order_acquire) != 0; ++polls) {
    if (polls < 4096) cpu_relax();
    else std::this_thread::yield();
  }
  job_ = nullptr;
}

void thread_pool::park() { parked_.store(true, std::memory_order_relaxed); }

void thread_pool::worker_main(int index) {
  std::uint64_t seen = 0;
  for (;;) {
    auto spin_until = std::chrono::steady_clock::now() + kSpin;
    std::uint64_t g;
    int polls = 0;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      cpu_relax();
      if (++polls % 256 == 0) std::this_thread::yield();
      if (polls % 256 == 0 && (parked_.load(std::memory_order_relaxed) || std::chrono::steady_clock::now() > spin_until)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
    }
    seen = g;
    if (stop_.load()) return;
    run_slice(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace shoal::kernels::cpu
