#include "bench/probe.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "backend/cpu/kernels.h"
#include "core/arena.h"
#include "core/thread_pool.h"

namespace dsfuse::bench {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
// CPU time of the calling thread: the compute probes divide by it so that other processes sharing the
// cores (builds) do not lower the figure.
double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

}  // namespace

double measure_bandwidth_gbs(int threads, int64_t bytes, int passes) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int64_t n = bytes / 4;
  Buffer buf(static_cast<size_t>(bytes));
  float* p = static_cast<float*>(buf.data());
  const auto& k = cpu::kernels();
  double best = 0;
  std::vector<float> part(threads);
  // One plain thread per slice (not the pool, whose chunks a single thread may take alone): every
  // thread streams its own slice with 8 independent vector accumulators (software prefetch 2 KB ahead);
  // a barrier starts them together. Best of `passes`.
  for (int pass = -1; pass < passes; ++pass) {  // pass -1 writes (first touch) the buffer
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> th;
    for (int c = 0; c < threads; ++c)
      th.emplace_back([&, c] {
        const int64_t lo = n * c / threads, hi = n * (c + 1) / threads;
        if (pass < 0) {
          for (int64_t i = lo; i < hi; ++i) p[i] = static_cast<float>(i & 7) * 0.125f;
          return;
        }
        ready.fetch_add(1);
        while (!go.load()) std::this_thread::yield();
        part[c] = k.stream_sum(p + lo, hi - lo);
      });
    if (pass < 0) {
      for (auto& t : th) t.join();
      continue;
    }
    while (ready.load() != threads) std::this_thread::yield();
    const double t0 = now_s();
    go = true;
    for (auto& t : th) t.join();
    const double dt = now_s() - t0;
    best = std::max(best, static_cast<double>(bytes) / dt / 1e9);
  }
  volatile float sink = part[0];
  (void)sink;
  return best;
}

FmaPeak measure_fma_peak(int threads) {
  FmaPeak r;
  const auto& k = cpu::kernels();
  r.isa = cpu::isa_name(k.isa);
  // Clock: 16 dependent 1-cycle integer adds per iteration.
  double ghz = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const int64_t iters = 20'000'000;
    uint64_t x = 0;
    const double t0 = thread_cpu_s();
#if defined(__x86_64__)
    for (int64_t i = 0; i < iters; ++i)
      __asm__ volatile(
          "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
          "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
          "add $1, %0\n\tadd $1, %0\n\t"
          : "+r"(x));
#endif
    const double dt = thread_cpu_s() - t0;
    ghz = std::max(ghz, iters * 16.0 / dt / 1e9);
  }
  r.ghz = ghz;
  ThreadPool pool(threads);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const int T = pool.size();
    std::vector<double> rate(T);
    pool.parallel_for(T, [&](int64_t b, int64_t e, int) {
      for (int64_t c = b; c < e; ++c) {
        const double t0 = thread_cpu_s();
        const double fl = k.fma_probe(10'000'000);
        rate[c] = fl / (thread_cpu_s() - t0) / 1e9;
      }
    });
    double tot = 0;
    for (double f : rate) tot += f;
    best = std::max(best, tot);
  }
  r.measured_gflops = best;
  r.flops_per_cycle = ghz > 0 ? static_cast<int>(best / pool.size() / ghz + 0.5) : 0;
  return r;
}

double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

void reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (f) f << "5";
}

}  // namespace dsfuse::bench
