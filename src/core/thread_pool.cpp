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
constexpr int kSpin = 4000;  // pause iterations (~50 us on Zen) before sleeping / yielding
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

void ThreadPool::run_chunks(uint32_t gen, int index) {
  for (;;) {
    uint64_t cur = next_.load(std::memory_order_acquire);
    int c;
    for (;;) {
      if (static_cast<uint32_t>(cur >> 32) != gen) return;  // a later job: nothing of ours is left
      c = static_cast<int>(cur & 0xffffffffu);
      if (c >= chunks_) return;
      if (next_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
    }
    // Claimed chunk c of job `gen`: the job's fields stay valid until it is marked done.
    const int64_t begin = c * chunk_, end = std::min(n_, begin + chunk_);
    (*job_)(begin, end, index);
    done_.fetch_add(1, std::memory_order_acq_rel);
  }
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
    run_chunks(static_cast<uint32_t>(g), index);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t max_chunks = std::max<int64_t>(1, n / grain);
  int chunks = static_cast<int>(std::min<int64_t>(size() == 1 ? 1 : 4 * size(), max_chunks));
  if (chunks <= 1) {
    fn(0, n, 0);
    return;
  }
  const int64_t chunk = (n + chunks - 1) / chunks;
  chunks = static_cast<int>((n + chunk - 1) / chunk);
  // Publish the job. First close the chunk counter under the new tag: a worker still in run_chunks() of the
  // previous job holds that job's counter value, and without this its claim could succeed against the old
  // counter after the fields below were overwritten -- running one of this job's chunks twice and counting it
  // in done_, so the wait below never ended (seen as a rare hang under load). Then the fields, then the open
  // counter, then the generation (release).
  const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
  next_.store(((gen & 0xffffffffu) << 32) | 0x7fffffffu, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  job_ = &fn;
  n_ = n;
  chunk_ = chunk;
  chunks_ = chunks;
  done_.store(0, std::memory_order_relaxed);
  next_.store((gen & 0xffffffffu) << 32, std::memory_order_release);
  generation_.store(gen, std::memory_order_release);
  { std::lock_guard<std::mutex> lk(mu_); }
  cv_.notify_all();
  run_chunks(static_cast<uint32_t>(gen), 0);
  for (int i = 0; done_.load(std::memory_order_acquire) != chunks; ++i) {
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
