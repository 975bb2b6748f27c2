// Counters of the CPU backend, read by `dsfuse bench`: bytes of weights each op read and the
// multiply-adds of the matrix products (relaxed atomics, one add per op call).
#pragma once
#include <atomic>
#include <cstdint>

namespace dsfuse::cpu {

struct Stats {
  std::atomic<int64_t> weight_bytes{0};  // weights read (int8 scales and zero points included)
  std::atomic<int64_t> macs{0};          // multiply-adds of linear layers and attention
  void reset() {
    weight_bytes = 0;
    macs = 0;
  }
};
Stats& stats();

}  // namespace dsfuse::cpu
