#pragma once
// A fixed set of worker threads that split loops with the calling thread. Decode runs a few hundred
// parallel loops per token, so waking workers must cost microseconds: they spin briefly on a
// generation counter before sleeping on a condition variable.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace shoal::kernels::cpu {

class thread_pool {
 public:
  /// `threads` counts the caller: 1 means no workers at all.
  explicit thread_pool(int threads);
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  /// Calls fn(thread_index, begin, end) on contiguous chunks covering [0, n) exactly once, each
  /// chunk start a multiple of `granule`, the threads taking chunks as they finish the previous one;
  /// returns when all are done. Not reentrant: one loop at a time.
  void parallel_for(std::int64_t n, std::int64_t granule,
                    const std::function<void(int, std::int64_t, std::int64_t)>& fn);
  /// Lets idle workers sleep now instead of spinning: call when no loop will follow soon (the end of
  /// a forward pass), so a server's other threads get the cores between steps.
  void park();

 private:
  void worker_main(int index);
  void run_slice(int index);

  std::vector<std::thread> workers_;
  const std::function<void(int, std::int64_t, std::int64_t)>* job_ = nullptr;
  std::int64_t n_ = 0;
  std::int64_t granule_ = 1;
  std::int64_t chunk_ = 1;
  std::atomic<std::int64_t> next_{0};
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> parked_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
};

}  // namespace shoal::kernels::cpu
