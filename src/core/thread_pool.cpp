#include "core/thread_pool.h"

#include <algorithm>
#include <cstdlib>
#include <memory>

namespace dsfuse {

namespace {
int g_global_threads = 0;
}

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
    const std::function<void(int64_t, int64_t, int)>* job;
    int64_t begin, end;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (index >= chunks_) continue;
      job = job_;
      begin = index * chunk_;
      end = std::min(n_, begin + chunk_);
    }
    (*job)(begin, end, index);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
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
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    n_ = n;
    chunk_ = chunk;
    chunks_ = chunks;
    pending_ = chunks - 1;
    ++generation_;
  }
  cv_.notify_all();
  fn(0, std::min(n, chunk), 0);
  std::unique_lock<std::mutex> lk(mu_);
  done_cv_.wait(lk, [&] { return pending_ == 0; });
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(g_global_threads);
  return pool;
}

void ThreadPool::set_global_threads(int threads) { g_global_threads = threads; }

}  // namespace dsfuse
