// A fixed pool of worker threads sized to the cores; every heavy CPU op splits its work through
// parallel_for. The calling thread takes part, so a pool of N threads uses N-1 workers.
//
// Hand-off is built for many short jobs (a decode step runs ~200 of them) on machines shared with other
// processes: a job is cut into up to 4 chunks per thread that threads claim from an atomic counter
// (tagged with the job's generation, so a worker that wakes late can never claim a stale chunk). The
// caller works too and then waits only for chunks already claimed, so a descheduled worker delays
// nothing. Idle workers spin briefly (~50 us) on the generation, then sleep on a condition variable.
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

  // Calls fn(begin, end, thread_index) over [0, n) split into contiguous chunks of at least `grain`
  // items (a thread may get several). Blocks until all chunks are done. Not re-entrant.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain = 1);

  static ThreadPool& global();
  static void set_global_threads(int threads);  // before first use of global()

 private:
  void worker(int index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  void run_chunks(uint32_t gen, int index);

  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t n_ = 0, chunk_ = 0;
  int chunks_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> next_{0};  // (generation << 32) | next unclaimed chunk
  std::atomic<int> done_{0};       // chunks finished in the current job
  std::atomic<bool> stop_{false};
};

}  // namespace dsfuse
