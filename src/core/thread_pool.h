// A fixed pool of worker threads sized to the cores; every heavy CPU op splits its work through
// parallel_for. The calling thread takes part, so a pool of N threads uses N-1 workers.
//
// Hand-off is built for many short jobs (a decode step runs ~200 of them): a job is published through
// an atomic generation counter that idle workers spin on for a short while (~50 us) before sleeping on
// a condition variable, and the caller spins (then yields) on an atomic count of unfinished chunks.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dsfuse {

class ThreadPool {
 public:
  explicit ThreadPool(int threads = 0);  // 0 = hardware concurrency (or $DSFUSE_THREADS)
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end, thread_index) over [0, n) split into contiguous chunks, at most one chunk per
  // thread, each at least `grain` items. Blocks until all chunks are done. Not re-entrant.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain = 1);

  static ThreadPool& global();
  static void set_global_threads(int threads);  // before first use of global()

 private:
  void worker(int index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t n_ = 0, chunk_ = 0;
  int chunks_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace dsfuse
