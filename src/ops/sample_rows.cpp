#include "ops/sample_rows.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace dsfuse {

int32_t sample_row_reference(const float* l, int64_t V, const SampleRowParams& p) {
  using namespace sample_rows_detail;
  if (V <= 0) return -1;
  const int64_t amax = std::max_element(l, l + V) - l;  // lowest id on ties, as Backend::argmax_rows
  const float m = l[amax];
  if (p.temperature == 0.0f || m == -std::numeric_limits<float>::infinity()) return static_cast<int32_t>(amax);
  std::vector<float> x(static_cast<size_t>(V));
  std::vector<uint64_t> q(static_cast<size_t>(V));
  std::vector<char> keep(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) {
    x[i] = (l[i] - m) / p.temperature;
    const float w = std::exp(x[i]);
    q[i] = l[i] == -std::numeric_limits<float>::infinity() ? 0 : static_cast<uint64_t>(std::llrint(double(w) * kQScale));
    keep[i] = q[i] > 0;
  }
  if (p.top_k > 0 && p.top_k < V) {
    std::vector<uint32_t> keys(static_cast<size_t>(V));
    for (int64_t i = 0; i < V; ++i) keys[i] = desc_key(x[i]);
    std::nth_element(keys.begin(), keys.begin() + (p.top_k - 1), keys.end());
    const uint32_t kk = keys[static_cast<size_t>(p.top_k - 1)];
    for (int64_t i = 0; i < V; ++i) keep[i] = keep[i] && desc_key(x[i]) <= kk;
  }
  if (p.top_p < 1.0f) {
    std::vector<int64_t> order;
    uint64_t mass = 0;
    for (int64_t i = 0; i < V; ++i)
      if (keep[i]) order.push_back(i), mass += q[i];
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return desc_key(x[a]) < desc_key(x[b]); });
    const uint64_t limit = top_p_limit(p.top_p, mass);
    uint64_t before = 0;
    for (size_t j = 0; j < order.size(); ++j) {
      if (!(before < limit) && j > 0) keep[order[j]] = 0;
      before += q[order[j]];
    }
  }
  if (p.min_p > 0.0f) {
    const float lthr = std::log(p.min_p);
    for (int64_t i = 0; i < V; ++i) keep[i] = keep[i] && x[i] >= lthr;
  }
  uint64_t W = 0;
  for (int64_t i = 0; i < V; ++i)
    if (keep[i]) W += q[i];
  if (W == 0) return static_cast<int32_t>(amax);
  const uint64_t target = std::min<uint64_t>(static_cast<uint64_t>(p.u * static_cast<double>(W)), W - 1);
  uint64_t acc = 0;
  int64_t last = amax;
  for (int64_t i = 0; i < V; ++i)
    if (keep[i]) {
      acc += q[i];
      last = i;
      if (acc > target) return static_cast<int32_t>(i);
    }
  return static_cast<int32_t>(last);
}

}  // namespace dsfuse
