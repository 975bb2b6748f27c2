#include "core/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DSFUSE_PAUSE() _mm_pause()
#else
#define DSFUSE_PAUSE() ((void)0)
#endif

namespace dsfuse {

namespace {
int g_global_threads = 0;
constexpr int kSpin = 20000;  // pause iterations (~50-100 us) before sleeping / yielding
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) {
    if (const char* e = std::getenv("DSFUSE_THREADS")) threads = std::atoi(e);
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g = generation_.load(std::memory_order_acquire);
    for (int i = 0; g == seen && i < kSpin && !stop_.load(std::memory_order_relaxed); ++i) {
      DSFUSE_PAUSE();
      g = generation_.load(std::memory_order_acquire);
    }
    if (g == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_.load() || generation_.load(std::memory_order_acquire) != seen; });
      if (stop_) return;
      g = generation_.load(std::memory_order_acquire);
    }
    if (stop_) return;
    seen = g;
    // Job fields were published before generation_ (release/acquire) and stay unchanged until every
    // worker has counted down, so reading them here is race-free.
    if (index < chunks_) {
      const int64_t begin = index * chunk_, end = std::min(n_, begin + chunk_);
      (*job_)(begin, end, index);
    }
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t max_chunks = std::max<int64_t>(1, n / grain);
  int chunks = static_cast<int>(std::min<int64_t>(size(), max_chunks));
  if (chunks <= 1) {
    fn(0, n, 0);
    return;
  }
  int64_t chunk = (n + chunks - 1) / chunks;
  chunks = static_cast<int>((n + chunk - 1) / chunk);
  job_ = &fn;
  n_ = n;
  chunk_ = chunk;
  chunks_ = chunks;
  // Every worker sees each generation and counts down (those without a chunk at once).
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  { std::lock_guard<std::mutex> lk(mu_); }
  cv_.notify_all();
  fn(0, std::min(n, chunk), 0);
  for (int i = 0; pending_.load(std::memory_order_acquire) != 0; ++i) {
    if (i < kSpin) DSFUSE_PAUSE();
    else std::this_thread::yield();
  }
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(g_global_threads);
  return pool;
}

void ThreadPool::set_global_threads(int threads) { g_global_threads = threads; }

}  // namespace dsfuse
