// Token choice on the device (Backend::sample_rows; semantics and host reference in ops/sample_rows.h): one
// block of 1024 threads per row. The top-k threshold and the top-p boundary are found by radix selection over
// the 32-bit order keys of x (4 rounds of 8 bits, histograms in shared memory: counts for top-k, fixed-point
// weights for top-p, so every sum is exact and the choice does not depend on the order of the atomics); the
// pick scans the row in id order (contiguous slices per thread, block-wide prefix sums).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "backend/cuda/common.cuh"
#include "ops/sample_rows.h"

namespace dsfuse::cuda {
namespace {

using sample_rows_detail::desc_key;
using sample_rows_detail::kQScale;
using sample_rows_detail::top_p_limit;

constexpr int kSampleThreads = 1024;

struct RowCtx {
  const float* l;
  int64_t V;
  float m, T;
  __device__ float x(int64_t i) const { return (l[i] - m) / T; }
  // Fixed-point weight of token i (0 for -inf logits).
  __device__ uint64_t q(int64_t i) const {
    const float li = l[i];
    if (li == -INFINITY) return 0;
    return static_cast<uint64_t>(__double2ll_rn(static_cast<double>(expf((li - m) / T)) * kQScale));
  }
};

// Smallest key K over the elements i with take(i, key, w) such that the total weight of keys <= K reaches
// `target` (only keys that occur); also the weight strictly below K. Every thread gets the result.
template <typename Take>
__device__ void radix_select(int64_t V, Take take, uint64_t target, uint32_t& K, uint64_t& below,
                             unsigned long long* s_hist, uint32_t* s_res, unsigned long long* s_below) {
  uint32_t prefix = 0, mask = 0;
  uint64_t acc_below = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) s_hist[d] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      uint32_t key;
      uint64_t w;
      if (take(i, key, w) && (key & mask) == prefix && w > 0)
        atomicAdd(&s_hist[(key >> shift) & 255u], static_cast<unsigned long long>(w));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t acc = acc_below;
      uint32_t pick = 255;
      for (uint32_t d = 0; d < 256; ++d) {
        if (s_hist[d] == 0) continue;
        pick = d;
        if (acc + s_hist[d] >= target) break;
        acc += s_hist[d];
      }
      *s_res = pick;
      *s_below = acc;
    }
    __syncthreads();
    prefix |= *s_res << shift;
    mask |= 255u << shift;
    acc_below = *s_below;
    __syncthreads();
  }
  K = prefix;
  below = acc_below;
}

__global__ void __launch_bounds__(kSampleThreads) sample_rows_kernel(int32_t* ids, const float* logits, int64_t ld,
                                                                     int64_t V, const SampleRowParams* params) {
  using Reduce = cub::BlockReduce<unsigned long long, kSampleThreads>;
  using Scan = cub::BlockScan<unsigned long long, kSampleThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ unsigned long long s_hist[256];
  __shared__ uint32_t s_res;
  __shared__ unsigned long long s_below;
  __shared__ float s_m;
  __shared__ int64_t s_amax;
  __shared__ unsigned long long s_total;
  pdl_entry();
  const int64_t row = blockIdx.x;
  const SampleRowParams p = params[row];
  const float* l = logits + row * ld;
  const int tid = threadIdx.x;

  // Max and its lowest index.
  float bm = -INFINITY;
  int64_t bi = V;
  for (int64_t i = tid; i < V; i += blockDim.x)
    if (l[i] > bm || (l[i] == bm && i < bi)) bm = l[i], bi = i;
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, bm, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (om > bm || (om == bm && oi < bi)) bm = om, bi = oi;
  }
  __shared__ float s_wm[32];
  __shared__ int64_t s_wi[32];
  if (tid % 32 == 0) s_wm[tid / 32] = bm, s_wi[tid / 32] = bi;
  __syncthreads();
  if (tid == 0) {
    float m = s_wm[0];
    int64_t a = s_wi[0];
    for (int w = 1; w < kSampleThreads / 32; ++w)
      if (s_wm[w] > m || (s_wm[w] == m && s_wi[w] < a)) m = s_wm[w], a = s_wi[w];
    if (a >= V) a = 0;  // every logit -inf (or NaN): token 0, as the host argmax
    s_m = m;
    s_amax = a;
  }
  __syncthreads();
  const float m = s_m;
  const int64_t amax = s_amax;
  if (p.temperature == 0.0f || m == -INFINITY) {
    if (tid == 0) ids[row] = static_cast<int32_t>(amax);
    return;
  }
  const RowCtx c{l, V, m, p.temperature};

  // top-k: the k-th smallest order key over all tokens (-inf included, as the host Sampler counts them).
  const bool use_k = p.top_k > 0 && p.top_k < V;
  uint32_t kk = 0xffffffffu;
  if (use_k) {
    uint64_t below;
    radix_select(
        V, [&](int64_t i, uint32_t& key, uint64_t& w) { key = desc_key(c.x(i)); w = 1; return true; },
        static_cast<uint64_t>(p.top_k), kk, below, s_hist, &s_res, &s_below);
  }
  auto kept_k = [&](int64_t i, uint32_t& key, uint64_t& w) {
    key = desc_key(c.x(i));
    w = c.q(i);
    return w > 0 && key <= kk;
  };

  // top-p: the boundary class (order key) and how many of its ties (in id order) stay.
  const bool use_p = p.top_p < 1.0f;
  uint32_t kp = 0xffffffffu;
  uint64_t ties_keep = ~0ull;
  if (use_p) {
    unsigned long long part = 0;
    for (int64_t i = tid; i < V; i += blockDim.x) {
      uint32_t key;
      uint64_t w;
      if (kept_k(i, key, w)) part += w;
    }
    const unsigned long long mass = Reduce(tmp.reduce).Sum(part);
    if (tid == 0) s_total = mass;
    __syncthreads();
    const uint64_t limit = top_p_limit(p.top_p, s_total);
    uint64_t above;
    radix_select(V, kept_k, limit, kp, above, s_hist, &s_res, &s_below);
    // Every token of class kp has the same weight: the one of the first such token.
    __shared__ unsigned long long s_qt;
    if (tid == 0) s_qt = 0;
    __syncthreads();
    for (int64_t i = tid; i < V; i += blockDim.x) {
      uint32_t key;
      uint64_t w;
      if (kept_k(i, key, w) && key == kp) {
        s_qt = w;  // identical values: any writer will do
        break;
      }
    }
    __syncthreads();
    const uint64_t qt = s_qt;
    ties_keep = limit > above && qt > 0 ? (limit - above + qt - 1) / qt : 0;
    if (above == 0 && ties_keep == 0) ties_keep = 1;  // the first token always stays
  }
  const float lthr = p.min_p > 0.0f ? logf(p.min_p) : -INFINITY;

  // The pick, in id order: thread t takes ids [t * C, (t + 1) * C).
  const int64_t C = (V + kSampleThreads - 1) / kSampleThreads;
  const int64_t i0 = tid * C, i1 = min(V, i0 + C);
  unsigned long long ties_here = 0;
  if (use_p)
    for (int64_t i = i0; i < i1; ++i) {
      uint32_t key;
      uint64_t w;
      if (kept_k(i, key, w) && key == kp) ++ties_here;
    }
  unsigned long long tie0 = 0;
  if (use_p) {
    Scan(tmp.scan).ExclusiveSum(ties_here, tie0);
    __syncthreads();
  }
  auto keep = [&](int64_t i, uint64_t& w, unsigned long long& tie) {
    uint32_t key;
    if (!kept_k(i, key, w)) return false;
    if (use_p) {
      if (key > kp) return false;
      if (key == kp && tie++ >= ties_keep) return false;
    }
    return !(c.x(i) < lthr);
  };
  unsigned long long mine = 0, tie = tie0;
  for (int64_t i = i0; i < i1; ++i) {
    uint64_t w;
    if (keep(i, w, tie)) mine += w;
  }
  unsigned long long before = 0, total = 0;
  Scan(tmp.scan).ExclusiveSum(mine, before, total);
  if (total == 0) {
    if (tid == 0) ids[row] = static_cast<int32_t>(amax);
    return;
  }
  unsigned long long target = static_cast<unsigned long long>(p.u * static_cast<double>(total));
  if (target >= total) target = total - 1;
  if (tid == 0) ids[row] = static_cast<int32_t>(amax);  // replaced below by the slice holding the target
  __syncthreads();
  if (target >= before && target < before + mine) {
    unsigned long long acc = before;
    tie = tie0;
    for (int64_t i = i0; i < i1; ++i) {
      uint64_t w;
      if (keep(i, w, tie)) {
        acc += w;
        if (acc > target) {
          ids[row] = static_cast<int32_t>(i);
          break;
        }
      }
    }
  }
}

}  // namespace

void sample_rows(cudaStream_t st, int32_t* ids, const float* logits, int64_t ld, int64_t R, int64_t V,
                 const SampleRowParams* params) {
  if (R <= 0) return;
  launch(sample_rows_kernel, static_cast<unsigned>(R), kSampleThreads, 0, st, ids, logits, ld, V, params);
  check_launch();
}

}  // namespace dsfuse::cuda
