// Machine probes for `dsfuse bench`: streaming-read bandwidth, FMA peak, peak RSS.
#pragma once
#include <cstdint>
#include <string>

namespace dsfuse::bench {

// GB/s of a multi-threaded streaming read (independent SIMD accumulators per thread) over a buffer
// of `bytes` (>> L3); best of `passes`.
double measure_bandwidth_gbs(int threads, int64_t bytes = int64_t{1} << 29, int passes = 6);

struct FmaPeak {
  // Sum over threads of flops per thread CPU-second of independent FMA chains of the dispatched ISA
  // (CPU time, so other processes sharing the cores do not lower it).
  double measured_gflops = 0;
  double ghz = 0;               // effective clock measured with a dependent add chain
  int flops_per_cycle = 0;      // per core, for the dispatched ISA on this micro-architecture (measured)
  std::string isa;
};
FmaPeak measure_fma_peak(int threads);

double peak_rss_mb();    // VmHWM of this process
void reset_peak_rss();  // writes 5 to /proc/self/clear_refs (Linux >= 4.0), best effort

}  // namespace dsfuse::bench
