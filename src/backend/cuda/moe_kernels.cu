// CUDA kernels of the device-side MoE: routing (top-k expert choice per token) and the routed experts as grouped
// GEMVs over a counting sort of the (token, slot) pairs. Launchers are declared in common.cuh.
#include <algorithm>
#include <climits>
#include <cmath>

#include "backend/cuda/common.cuh"
#include "ops/moe_routing.h"

namespace dsfuse::cuda {
namespace {

// ---- routing ----

// The serial reference: route_token on one thread per token (fallback for shapes the warp kernel does not take,
// and the path the warp kernel hands a token with non-finite logits / bias to).
__global__ void moe_route_kernel(int32_t* ids, int64_t ldi, float* wts, int64_t ldw, const float* logits, int64_t ldl,
                                 const float* bias, RouterParams p) {
  pdl_entry();
  extern __shared__ float scratch[];  // [3E + n_group]
  const int64_t t = blockIdx.x;
  if (threadIdx.x == 0) route_token(logits + t * ldl, bias, p, ids + t * ldi, wts + t * ldw, scratch);
}

constexpr int kRouteMaxK = 32;  // top_k limit of the warp kernel (one lane per chosen expert)

// One warp (= one block) per token; lane l holds experts l + 32 i, i < NP (E <= 32 NP). Same results as
// route_token: scores (softmax through warp max / sum, or sigmoid), choice = score + bias, the group mask
// (group score as route_token computes it, serially per group; a group is kept when its rank in (value desc,
// index asc) order is below topk_group, which is what route_topk selects), then top_k rounds of a warp argmax
// in (value desc, index asc) order (= route_topk's order and tie-breaking), then the weights in route_token's
// order of operations. The softmax sum is a tree sum here (route_token sums serially), so weights can differ
// in the last bits; a token with a non-finite logit or bias goes through route_token itself (lane 0).
// Dynamic shared memory: (3E + 2 n_group) floats.
template <int NP>
__global__ void __launch_bounds__(32) moe_route_warp_kernel(int32_t* ids, int64_t ldi, float* wts, int64_t ldw,
                                                            const float* logits, int64_t ldl, const float* bias,
                                                            RouterParams p) {
  extern __shared__ float sm[];
  pdl_entry();
  const int lane = threadIdx.x;
  const int64_t t = blockIdx.x;
  const int E = p.n_experts;
  const float* lr = logits + t * ldl;
  int32_t* idr = ids + t * ldi;
  float* wr = wts + t * ldw;
  float l[NP], bb[NP];
  bool bad = false;
#pragma unroll
  for (int i = 0; i < NP; ++i) {
    const int e = lane + 32 * i;
    l[i] = e < E ? lr[e] : 0.0f;
    bb[i] = bias && e < E ? bias[e] : 0.0f;
    bad = bad || !isfinite(l[i]) || !isfinite(bb[i]);
  }
  if (__any_sync(0xffffffffu, bad)) {
    if (lane == 0) route_token(lr, bias, p, idr, wr, sm);
    return;
  }
  // Scores and the selection values.
  float sc[NP], ch[NP];
  if (p.sigmoid) {
#pragma unroll
    for (int i = 0; i < NP; ++i) sc[i] = 1.0f / (1.0f + expf(-l[i]));
  } else {
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < NP; ++i)
      if (lane + 32 * i < E) mx = fmaxf(mx, l[i]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < NP; ++i) {
      sc[i] = lane + 32 * i < E ? expf(l[i] - mx) : 0.0f;
      sum += sc[i];
    }
    sum = warp_sum(sum);
#pragma unroll
    for (int i = 0; i < NP; ++i) sc[i] /= sum;
  }
#pragma unroll
  for (int i = 0; i < NP; ++i) ch[i] = sc[i] + (bias ? bb[i] : 0.0f);

  // Group-limited selection: experts of groups outside the best topk_group get -inf.
  if (p.method != RouterParams::Method::Greedy && p.n_group > 1) {
    const int ng = p.n_group, per = E / ng;
    float* s_c = sm;                                        // [E] choice
    float* s_g = sm + E;                                    // [ng] group scores
    int* s_keep = reinterpret_cast<int*>(sm + E + ng);      // [ng]
#pragma unroll
    for (int i = 0; i < NP; ++i)
      if (lane + 32 * i < E) s_c[lane + 32 * i] = ch[i];
    __syncwarp();
    for (int g = lane; g < ng; g += 32)
      s_g[g] = route_group_score(s_c + g * per, per, p.method == RouterParams::Method::NoauxTc);
    __syncwarp();
    const int tg = p.topk_group < 256 ? p.topk_group : 256;
    for (int g = lane; g < ng; g += 32) {
      const float v = s_g[g];
      int rank = 0;
      for (int h = 0; h < ng; ++h) {
        const float u = s_g[h];
        rank += (u > v || (u == v && h < g)) ? 1 : 0;
      }
      s_keep[g] = rank < tg ? 1 : 0;
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < NP; ++i) {
      const int e = lane + 32 * i;
      if (e < ng * per && !s_keep[e / per]) ch[i] = -INFINITY;
    }
  }

  // Top-k: k rounds of a warp argmax over the experts not taken yet.
  unsigned taken = 0;  // bit i: slot i taken (or past E)
#pragma unroll
  for (int i = 0; i < NP; ++i)
    if (lane + 32 * i >= E) taken |= 1u << i;
  int my_id = 0;
  float my_sc = 0.0f;
  for (int j = 0; j < p.top_k; ++j) {
    float bv = -INFINITY, bs = 0.0f;
    int bi = INT_MAX;  // INT_MAX: none
#pragma unroll
    for (int i = 0; i < NP; ++i)  // ascending expert ids within the lane: strict > keeps the lowest on ties
      if (!((taken >> i) & 1u) && (bi == INT_MAX || ch[i] > bv)) bv = ch[i], bi = lane + 32 * i, bs = sc[i];
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      const float os = __shfl_xor_sync(0xffffffffu, bs, o);
      if (oi != INT_MAX && (bi == INT_MAX || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi, bs = os;
    }
    // bi is the same in every lane and valid (top_k <= E is checked by the launcher).
    if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
    if (lane == j) my_id = bi, my_sc = bs;
  }
  // Weights, in route_token's order of operations.
  float sum = 0.0f;
  for (int j = 0; j < p.top_k; ++j) sum += __shfl_sync(0xffffffffu, my_sc, j);
  const float w = route_weight(my_sc, sum, p);
  if (lane < p.top_k) {
    idr[lane] = my_id;
    wr[lane] = w;
  }
}

// ---- grouped experts ----

// Counting sort of (token, slot) pairs by expert, in one block (counts in shared memory, so no memset is
// needed): list[e * T + i] = pair t * K + j (any order), cnt[e] = pairs of e, cnt[E] = experts with pairs, listed
// in ascending order in active[0, cnt[E]). Dynamic shared memory: E ints.
__global__ void __launch_bounds__(1024) moe_count_kernel(const int32_t* ids, int64_t ldi, int64_t T, int K, int E,
                                                         int32_t* cnt, int32_t* list, int32_t* active) {
  extern __shared__ int32_t s_cnt[];
  pdl_entry();
  const int tid = threadIdx.x, nth = blockDim.x;
  for (int e = tid; e < E; e += nth) s_cnt[e] = 0;
  __syncthreads();
  for (int64_t p = tid; p < T * K; p += nth) {
    const int64_t t = p / K;
    const int e = ids[t * ldi + p % K];
    if (e < 0 || e >= E) continue;
    const int pos = atomicAdd(&s_cnt[e], 1);
    list[int64_t(e) * T + pos] = static_cast<int32_t>(p);
  }
  __syncthreads();
  for (int e = tid; e < E; e += nth) cnt[e] = s_cnt[e];
  if (tid < 32) {
    const int lane = tid;
    int run = 0;
    for (int base = 0; base < E; base += 32) {
      const int e = base + lane;
      const bool on = e < E && s_cnt[e] > 0;
      const unsigned m = __ballot_sync(0xffffffffu, on);
      if (on) active[run + __popc(m & ((1u << lane) - 1u))] = e;
      run += __popc(m);
    }
    if (lane == 0) cnt[E] = run;
  }
}

constexpr int kMoeU = 8;  // 16-byte weight loads in flight per lane (two rows of 4 for gate/up)

// Lane partials of the warp's K slice for one weight row n (bf16, vec_ok) against the pair inputs
// x + xr[t] * ldx, t < nt; with SILU also the up row (w2) against the same inputs, loaded together with the gate
// row. Split K: warp slice ks of S takes 16-byte columns ks * 32 + lane + 32 S m.
template <int TT, int S, bool SILU>
__device__ __forceinline__ void moe_vec_dot(const WDesc& w1, const WDesc& w2, int64_t n, int64_t Kd, const float* x,
                                            int64_t ldx, const int32_t* xr, int nt, int ks, int lane, float* a1,
                                            float* a2) {
  constexpr int U = SILU ? kMoeU / 2 : kMoeU;
  const int64_t K8 = Kd / 8, step = 32 * S;
  const uint4* wa = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w1.w) + n * w1.ld);
  const uint4* wb = SILU ? reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w2.w) + n * w2.ld) : wa;
  uint4 a[U], b[U];
  int64_t ib = ks * 32 + lane;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t i = ib + u * step;
    if (i < K8) {
      a[u] = ldg_stream(wa + i);
      if (SILU) b[u] = ldg_stream(wb + i);
    }
  }
  while (ib < K8) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = ib + u * step;
      if (i >= K8) break;
      float f[8], g[8];
      bf16x8_to_f32(a[u], f);
      if (SILU) bf16x8_to_f32(b[u], g);
      const int64_t in = i + U * step;  // refill this slot at once: kMoeU loads stay in flight
      if (in < K8) {
        a[u] = ldg_stream(wa + in);
        if (SILU) b[u] = ldg_stream(wb + in);
      }
#pragma unroll
      for (int t = 0; t < TT; ++t) {
        if (t >= nt) break;
        const float4* xp = reinterpret_cast<const float4*>(x + int64_t(xr[t]) * ldx);
        const float4 p = xp[2 * i];
        const float4 q = xp[2 * i + 1];
        float s = a1[t];
        s = fmaf(f[0], p.x, s); s = fmaf(f[1], p.y, s); s = fmaf(f[2], p.z, s); s = fmaf(f[3], p.w, s);
        s = fmaf(f[4], q.x, s); s = fmaf(f[5], q.y, s); s = fmaf(f[6], q.z, s); s = fmaf(f[7], q.w, s);
        a1[t] = s;
        if (SILU) {
          float r = a2[t];
          r = fmaf(g[0], p.x, r); r = fmaf(g[1], p.y, r); r = fmaf(g[2], p.z, r); r = fmaf(g[3], p.w, r);
          r = fmaf(g[4], q.x, r); r = fmaf(g[5], q.y, r); r = fmaf(g[6], q.z, r); r = fmaf(g[7], q.w, r);
          a2[t] = r;
        }
      }
    }
    ib += U * step;
  }
}

// The same dot for one pair (T = 1, bf16, vec_ok) through this lane's cp.async ring of kRingBytes / 16 slots in
// dynamic shared memory (ring_fill / ring_dot, as the dense one-token GEMV: loads in flight without registers
// holding them). Returns with every copy complete, so the next pass can reuse the ring.
template <int S, bool SILU>
__device__ __forceinline__ void moe_ring_dot(const WDesc& w1, const WDesc& w2, int64_t n, int64_t Kd,
                                             const float* xrow, int ks, int lane, float* a1, float* a2) {
  extern __shared__ uint4 moe_ring[];  // [NS][R][256]
  const int64_t K8 = Kd / 8, step = 32 * S, i0 = ks * 32 + lane;
  const int64_t nc = i0 < K8 ? (K8 - i0 + step - 1) / step : 0;
  const uint4* wa = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w1.w) + n * w1.ld) + i0;
  const uint4* wb = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w2.w) + n * w2.ld) + i0;
  uint4* ring = moe_ring + threadIdx.x;
  ring_fill<SILU>(ring, wa, wb, nc, step);
  ring_dot<SILU>(ring, wa, wb, nc, step, xrow, i0, a1, a2);
}

// Grouped expert GEMV over the pairs routed to each active expert; grid (min(E, T K), ceil(N / (8 / S))), 256
// threads: block x takes active expert active[x] (blocks past cnt[E] exit), warp w row y (8 / S) + w / S and K
// slice w % S (split K, summed through shared memory in a fixed order). Pairs go TT at a time (a loop when an
// expert has more).
//   SILU (gate/up): y = hbuf [pair, I], x = layer input (row of pair p: token p / K), N = I, Kd = H;
//                   hbuf[p, n] = silu(x Wg[e][n]) * (x Wu[e][n]).
//   !SILU (down):   y = ybuf [pair, H], x = hbuf (row p), N = H, Kd = I; ybuf[p, n] = hbuf[p] . Wd[e][n].
// bf16 experts with aligned rows take moe_vec_dot (gate and up rows loaded together, kMoeU loads in flight
// per lane); other weights go through row_dot in the warps of K slice 0.
template <int TT, int S, bool SILU, bool RING>
__global__ void __launch_bounds__(256, RING ? (SILU ? 3 : 4) : TT <= 4 ? 2 : 1) moe_expert_kernel(float* y, int64_t ldy, const float* x, int64_t ldx,
                                                         const ExpertDesc* experts, const int32_t* cnt,
                                                         const int32_t* list, const int32_t* active, int E,
                                                         int64_t T, int K, int64_t N, int64_t Kd) {
  __shared__ float red[8][SILU ? 2 * TT : TT];
  pdl_entry();
  if (int(blockIdx.x) >= cnt[E]) return;  // grid.x covers at most min(E, T * K) active experts
  const int e = active[blockIdx.x];
  const int n_e = cnt[e];
  const WDesc w1 = SILU ? experts[e].gate : experts[e].down;
  const WDesc w2 = SILU ? experts[e].up : experts[e].down;
  if (n_e == 0 || w1.w == nullptr) return;  // block-uniform
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.y) * (8 / S) + warp / S;
  const int ks = warp % S;
  const bool live = n < N;
  const bool v1 = vec_ok(w1, Kd, x, ldx), v2 = SILU ? vec_ok(w2, Kd, x, ldx) : v1;
  const bool vec = v1 && v2;  // block-uniform
  const int32_t* pl = list + int64_t(e) * T;
  for (int c0 = 0; c0 < n_e; c0 += TT) {
    const int nt = min(TT, n_e - c0);
    int32_t pr[TT], xr[TT];
#pragma unroll
    for (int j = 0; j < TT; ++j) {
      pr[j] = pl[c0 + (j < nt ? j : 0)];
      xr[j] = SILU ? pr[j] / K : pr[j];
    }
    float a1[TT], a2[TT];
#pragma unroll
    for (int j = 0; j < TT; ++j) a1[j] = a2[j] = 0.0f;
    if (vec) {  // RING (TT = 1) keeps the register-held moe_vec_dot out of the kernel: 32 KB of slots instead
      if constexpr (RING) {  // of 128 registers per thread
        if (live) moe_ring_dot<S, SILU>(w1, w2, n, Kd, x + int64_t(xr[0]) * ldx, ks, lane, a1, a2);
      } else {
        if (live) moe_vec_dot<TT, S, SILU>(w1, w2, n, Kd, x, ldx, xr, nt, ks, lane, a1, a2);
      }
    } else if (live && ks == 0) {
      const float* xp[TT];
#pragma unroll
      for (int j = 0; j < TT; ++j) xp[j] = x + int64_t(xr[j]) * ldx;
      row_dot<TT>(w1, n, Kd, xp, nt, v1, a1);
      if (SILU) row_dot<TT>(w2, n, Kd, xp, nt, v2, a2);
    }
#pragma unroll
    for (int j = 0; j < TT; ++j) {
      if (j >= nt) break;
      a1[j] = warp_sum(a1[j]);
      if (SILU) a2[j] = warp_sum(a2[j]);
    }
    if (S > 1 && vec) {  // sum the K slices in order 0 .. S - 1
      splitk_sum<TT, S, SILU>(red, warp, lane, ks, a1, a2);
      __syncthreads();  // red is rewritten by the next chunk
    }
    if (live && ks == 0 && lane == 0) {
#pragma unroll
      for (int j = 0; j < TT; ++j) {
        if (j >= nt) break;
        const float g = a1[j];
        y[int64_t(pr[j]) * ldy + n] = SILU ? g / (1.0f + __expf(-g)) * a2[j] : g;
      }
    }
  }
}

// out[t] = sum_j w[t, j] ybuf[t * K + j] over the pairs whose expert is on this rank (the others are never
// written, so ybuf needs no zeroing).
__global__ void moe_combine_kernel(float* out, int64_t ldo, const float* ybuf, const float* wts, int64_t ldw,
                                   const int32_t* ids, int64_t ldi, const ExpertDesc* experts, int E, int64_t T,
                                   int K, int64_t H) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * H) return;
  const int64_t t = i / H, d = i % H;
  float a = 0.0f;
  for (int j = 0; j < K; ++j) {
    const int e = ids[t * ldi + j];
    if (e < 0 || e >= E || experts[e].down.w == nullptr) continue;
    a = fmaf(wts[t * ldw + j], ybuf[(t * K + j) * H + d], a);
  }
  out[t * ldo + d] = a;
}

// Stable sort of the (token, slot) pairs by expert for the GEMM path, in one block of 1024 threads: meta[e] =
// pairs of expert e, meta[E + e] = their first row (exclusive prefix), meta[2E] = rows in all; row r of the
// sorted order holds pair[r] = t * K + j and tok[r] = t, in ascending pair order within each expert (so the
// GEMM rows, and the results, do not depend on thread timing). Pairs are ranked a tile of 1024 at a time: within a
// warp by __match_any_sync, across the tile's warps by per-warp counts in shared memory.
// Dynamic shared memory: (3 E + 1 + 32 E) ints.
__global__ void __launch_bounds__(1024) moe_sort_kernel(const int32_t* ids, int64_t ldi, int64_t T, int K, int E,
                                                        int32_t* meta, int32_t* pair, int32_t* tok) {
  extern __shared__ int32_t s_sort[];
  int32_t* s_cnt = s_sort;              // [E]
  int32_t* s_off = s_sort + E;          // [E + 1]
  int32_t* s_cur = s_sort + 2 * E + 1;  // [E]
  int32_t* s_w = s_sort + 3 * E + 1;    // [32][E] pairs per warp in the current tile
  pdl_entry();
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t P = T * K;
  for (int e = tid; e < E; e += blockDim.x) s_cnt[e] = 0, s_cur[e] = 0;
  __syncthreads();
  for (int64_t p = tid; p < P; p += blockDim.x) {
    const int e = ids[(p / K) * ldi + p % K];
    if (e >= 0 && e < E) atomicAdd(&s_cnt[e], 1);
  }
  __syncthreads();
  if (tid == 0) {
    int a = 0;
    for (int e = 0; e < E; ++e) s_off[e] = a, a += s_cnt[e];
    s_off[E] = a;
  }
  __syncthreads();
  for (int e = tid; e < E; e += blockDim.x) meta[e] = s_cnt[e], meta[E + e] = s_off[e];
  if (tid == 0) meta[2 * E] = s_off[E];
  for (int64_t base = 0; base < P; base += blockDim.x) {
    for (int i = tid; i < 32 * E; i += blockDim.x) s_w[i] = 0;
    __syncthreads();
    const int64_t p = base + tid;
    int e = -1;
    if (p < P) {
      e = ids[(p / K) * ldi + p % K];
      if (e < 0 || e >= E) e = -1;
    }
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int rank_w = __popc(peers & ((1u << lane) - 1u));
    if (e >= 0 && rank_w == 0) s_w[warp * E + e] = __popc(peers);
    __syncthreads();
    if (e >= 0) {
      int r = s_off[e] + s_cur[e] + rank_w;
      for (int w = 0; w < warp; ++w) r += s_w[w * E + e];
      pair[r] = static_cast<int32_t>(p);
      tok[r] = static_cast<int32_t>(p / K);
    }
    __syncthreads();
    for (int f = tid; f < E; f += blockDim.x) {
      int a = 0;
      for (int w = 0; w < 32; ++w) a += s_w[w * E + f];
      s_cur[f] += a;
    }
    __syncthreads();
  }
}

// dst[idx[r], :] = src[r, :] (H columns; rows of dst with stride ldd).
__global__ void scatter_rows_kernel(float* dst, int64_t ldd, const float* src, int64_t lds, const int32_t* idx,
                                    int64_t n, int64_t H) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * H) return;
  dst[int64_t(idx[i / H]) * ldd + i % H] = src[(i / H) * lds + i % H];
}

bool g_moe_ring = true;

template <int TT, bool SILU>
void moe_expert_launch(cudaStream_t st, unsigned na, int S, float* y, int64_t ldy, const float* x, int64_t ldx,
                       const ExpertDesc* experts, const int32_t* cnt, const int32_t* list, const int32_t* active,
                       int E, int64_t T, int K, int64_t N, int64_t Kd) {
  // One token: the bf16 experts' rows stream through each lane's cp.async ring (32 KB of dynamic shared memory).
  if (TT == 1 && g_moe_ring) {
    constexpr size_t shm = size_t(kRingBytes) * 256;
    switch (S) {
      case 1:
        launch(moe_expert_kernel<1, 1, SILU, true>, dim3(na, blocks(N, 8)), 256, shm, st, y, ldy, x, ldx, experts,
               cnt, list, active, E, T, K, N, Kd);
        break;
      case 2:
        launch(moe_expert_kernel<1, 2, SILU, true>, dim3(na, blocks(N, 4)), 256, shm, st, y, ldy, x, ldx, experts,
               cnt, list, active, E, T, K, N, Kd);
        break;
      default:
        launch(moe_expert_kernel<1, 4, SILU, true>, dim3(na, blocks(N, 2)), 256, shm, st, y, ldy, x, ldx, experts,
               cnt, list, active, E, T, K, N, Kd);
        break;
    }
    check_launch();
    return;
  }
  switch (S) {
    case 1:
      launch(moe_expert_kernel<TT, 1, SILU, false>, dim3(na, blocks(N, 8)), 256, 0, st, y, ldy, x, ldx, experts, cnt,
             list, active, E, T, K, N, Kd);
      break;
    case 2:
      launch(moe_expert_kernel<TT, 2, SILU, false>, dim3(na, blocks(N, 4)), 256, 0, st, y, ldy, x, ldx, experts, cnt,
             list, active, E, T, K, N, Kd);
      break;
    default:
      launch(moe_expert_kernel<TT, 4, SILU, false>, dim3(na, blocks(N, 2)), 256, 0, st, y, ldy, x, ldx, experts, cnt,
             list, active, E, T, K, N, Kd);
      break;
  }
  check_launch();
}
// Pair slots per pass: an expert gets at most T pairs when each token's experts are distinct (route_topk's
// are); more pairs (repeated ids) just take more passes.
template <bool SILU>
void moe_expert_gemv(cudaStream_t st, unsigned na, float* y, int64_t ldy, const float* x, int64_t ldx,
                     const ExpertDesc* experts, const int32_t* cnt, const int32_t* list, const int32_t* active, int E,
                     int64_t T, int K, int64_t N, int64_t Kd) {
  const int S = gemv_split(int64_t(na) * N);
  if (T <= 1) moe_expert_launch<1, SILU>(st, na, S, y, ldy, x, ldx, experts, cnt, list, active, E, T, K, N, Kd);
  else if (T <= 2) moe_expert_launch<2, SILU>(st, na, S, y, ldy, x, ldx, experts, cnt, list, active, E, T, K, N, Kd);
  else if (T <= 4) moe_expert_launch<4, SILU>(st, na, S, y, ldy, x, ldx, experts, cnt, list, active, E, T, K, N, Kd);
  else moe_expert_launch<8, SILU>(st, na, S, y, ldy, x, ldx, experts, cnt, list, active, E, T, K, N, Kd);
}

}  // namespace

void set_moe_ring(bool on) { g_moe_ring = on; }

void moe_route(cudaStream_t st, int32_t* ids, int64_t ldi, float* wts, int64_t ldw, const float* logits,
               int64_t ldl, const float* bias, int64_t T, const RouterParams& p) {
  DSFUSE_CHECK(p.n_group <= 256, "CUDA MoE routing: n_group ", p.n_group, " above 256");
  if (T <= 0) return;
  const int E = p.n_experts;
  const unsigned g = static_cast<unsigned>(T);
  if (E >= 1 && E <= 256 && p.top_k >= 1 && p.top_k <= kRouteMaxK && p.top_k <= E && p.n_group >= 1) {
    const size_t shm = sizeof(float) * (3 * size_t(E) + 2 * size_t(p.n_group));
    if (E <= 32) launch(moe_route_warp_kernel<1>, g, 32, shm, st, ids, ldi, wts, ldw, logits, ldl, bias, p);
    else if (E <= 64) launch(moe_route_warp_kernel<2>, g, 32, shm, st, ids, ldi, wts, ldw, logits, ldl, bias, p);
    else if (E <= 128) launch(moe_route_warp_kernel<4>, g, 32, shm, st, ids, ldi, wts, ldw, logits, ldl, bias, p);
    else launch(moe_route_warp_kernel<8>, g, 32, shm, st, ids, ldi, wts, ldw, logits, ldl, bias, p);
  } else {
    const size_t shm = sizeof(float) * (3 * p.n_experts + p.n_group);
    launch(moe_route_kernel, g, 32, shm, st, ids, ldi, wts, ldw, logits, ldl, bias, p);
  }
  check_launch();
}

void moe_experts_grouped(cudaStream_t st, float* out, int64_t ldo, const float* x, int64_t ldx, const int32_t* ids,
                         int64_t ldi, const float* wts, int64_t ldw, int64_t T, int K, int64_t H, int64_t I,
                         const ExpertDesc* experts, int E, int32_t* cnt, int32_t* list, float* hbuf, float* ybuf) {
  if (T <= 0) return;
  // cnt: [E + 1] counts then the number of active experts; active: [E] ids.
  int32_t* active = cnt + E + 1;
  const int64_t pairs = T * K;
  const int nth = static_cast<int>(std::clamp<int64_t>((std::max<int64_t>(pairs, E) + 31) / 32 * 32, 32, 1024));
  launch(moe_count_kernel, 1, nth, sizeof(int32_t) * size_t(E), st, ids, ldi, T, K, E, cnt, list, active);
  check_launch();
  if (pairs > 0 && E > 0) {
    const unsigned na = static_cast<unsigned>(std::min<int64_t>(E, pairs));  // blocks past cnt[E] exit at once
    moe_expert_gemv<true>(st, na, hbuf, I, x, ldx, experts, cnt, list, active, E, T, K, I, H);
    moe_expert_gemv<false>(st, na, ybuf, H, hbuf, I, experts, cnt, list, active, E, T, K, H, I);
  }
  launch(moe_combine_kernel, blocks(T * H), 256, 0, st, out, ldo, ybuf, wts, ldw, ids, ldi, experts, E, T, K, H);
  check_launch();
}

void moe_sort_pairs(cudaStream_t st, const int32_t* ids, int64_t ldi, int64_t T, int K, int E, int32_t* meta,
                    int32_t* pair, int32_t* tok) {
  launch(moe_sort_kernel, 1, 1024, sizeof(int32_t) * size_t(35 * E + 1), st, ids, ldi, T, K, E, meta, pair, tok);
  check_launch();
}

void moe_scatter_rows(cudaStream_t st, float* dst, int64_t ldd, const float* src, int64_t lds, const int32_t* idx,
                      int64_t n, int64_t H) {
  if (n <= 0) return;
  launch(scatter_rows_kernel, blocks(n * H), 256, 0, st, dst, ldd, src, lds, idx, n, H);
  check_launch();
}

void moe_combine(cudaStream_t st, float* out, int64_t ldo, const float* ybuf, const float* wts, int64_t ldw,
                 const int32_t* ids, int64_t ldi, const ExpertDesc* experts, int E, int64_t T, int K, int64_t H) {
  launch(moe_combine_kernel, blocks(T * H), 256, 0, st, out, ldo, ybuf, wts, ldw, ids, ldi, experts, E, T, K, H);
  check_launch();
}

}  // namespace dsfuse::cuda
