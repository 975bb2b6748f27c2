// Token choice on the device: the op semantics of Backend::sample_rows, shared by the host reference below and
// the CUDA kernel (src/backend/cuda/sample_kernels.cu).
//
// For one row of logits l[0, V) and its parameters:
//   temperature == 0: the argmax (lowest id on ties).
//   otherwise x = (l - max) / temperature (float), w = expf(x) (float), and the weights in fixed point
//   q = llrint(w * 2^40) (w <= 1, so the sums of a 2^24-token row fit in 64 bits: every sum below is exact and
//   independent of the order of addition, on any device); -inf logits and q == 0 are never kept. Then, as
//   sampling::Sampler (HF's warpers):
//   top_k  (0 < k < V): keep x >= the k-th largest x (ties at the k-th value kept);
//   top_p  (< 1): over the kept tokens in order (x descending, id ascending), keep a token iff the kept mass
//          before it is < top_p * (kept mass), computed as floor(top_p * 2^24) * mass / 2^24 in integers;
//   min_p  (> 0): keep x >= ln(min_p) among what is left (x = 0 is the max);
//   then the pick: target = floor(u * (kept mass)), and the first kept token in ascending id order whose
//   cumulative mass exceeds the target.
// The host Sampler draws in probability order instead, so for one seed the two paths choose different tokens;
// both draw from the same distribution (up to the 2^-40 quantisation of the weights).
#pragma once
#include <cstdint>

namespace dsfuse {

struct SampleRowParams {
  float temperature = 0.0f;  // 0: argmax
  int top_k = 0;             // 0 or -1 (or >= V): off
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]
  double u = 0.0;            // the row's uniform draw in [0, 1)
};

namespace sample_rows_detail {
constexpr double kQScale = 1099511627776.0;  // 2^40
constexpr uint64_t kTopPScale = 1u << 24;
// 32-bit key whose ascending order is x descending (x not NaN; -0 taken as +0).
#if defined(__CUDACC__)
__host__ __device__
#endif
inline uint32_t desc_key(float x) {
  const float v = x == 0.0f ? 0.0f : x;
#if defined(__CUDA_ARCH__)
  uint32_t u = __float_as_uint(v);
#else
  uint32_t u;
  __builtin_memcpy(&u, &v, sizeof(u));
#endif
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~u;
}
// The kept-mass limit of top_p over `mass` (fixed point), exact in integers.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline uint64_t top_p_limit(float top_p, uint64_t mass) {
  const uint64_t p = static_cast<uint64_t>(static_cast<double>(top_p) * kTopPScale);  // <= 2^24
  // mass < 2^64 / 2^24 is not guaranteed: split to avoid overflow.
  return (mass >> 24) * p + (((mass & (kTopPScale - 1)) * p) >> 24);
}
}  // namespace sample_rows_detail

// The op on a host row: the chosen id (the reference for the device kernels).
int32_t sample_row_reference(const float* logits, int64_t V, const SampleRowParams& p);

}  // namespace dsfuse
