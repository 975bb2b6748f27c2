// Attention over the paged KV cache for llama / qwen2 layers (GQA / MHA), every segment of a step in one launch:
// the decode / prefill kernels (CUDA cores: one warp per key step; tensor cores: attention_gqa_tc_kernel), the
// last-block merge of key splits and the separate combine kernel. Launcher declared in common.cuh.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "backend/cuda/common.cuh"

namespace dsfuse::cuda {
namespace {

constexpr int kAttnPer = 8;  // D, Dv <= 256
__global__ void attention_segs_kernel(float* out, int64_t lo0, int64_t lo1, const float* q, int64_t lq0, int64_t lq1,
                                      const float* k, int64_t lk0, int64_t lk1, const float* v, int64_t lv0,
                                      int64_t lv1, int64_t T, int64_t Hq, int64_t group, int D, int Dv, float scale,
                                      SegMeta m) {
  pdl_entry();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t id = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (id >= T * Hq) return;
  const int64_t t = id / Hq, h = id % Hq, kh = h / group;
  int64_t S;
  const int32_t* table;
  seg_of(m, t, S, table);
  const int bs = m.block_size;
  float qr[kAttnPer], acc[kAttnPer];
  const float* qp = q + t * lq0 + h * lq1;
#pragma unroll
  for (int j = 0; j < kAttnPer; ++j) {
    const int d = lane + 32 * j;
    qr[j] = d < D ? qp[d] * scale : 0.0f;
    acc[j] = 0.0f;
  }
  float mx = -INFINITY, l = 0.0f;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t r = phys_row(table, bs, s);
    const float* kr = k + r * lk0 + kh * lk1;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kAttnPer; ++j) {
      const int d = lane + 32 * j;
      if (d < D) dot = fmaf(qr[j], kr[d], dot);
    }
    const float sc = warp_sum(dot);
    const float mn = fmaxf(mx, sc);
    const float corr = __expf(mx - mn), p = __expf(sc - mn);
    l = l * corr + p;
    const float* vr = v + r * lv0 + kh * lv1;
#pragma unroll
    for (int j = 0; j < kAttnPer; ++j) {
      const int d = lane + 32 * j;
      acc[j] = acc[j] * corr + (d < Dv ? p * vr[d] : 0.0f);
    }
    mx = mn;
  }
  float* o = out + t * lo0 + h * lo1;
#pragma unroll
  for (int j = 0; j < kAttnPer; ++j) {
    const int d = lane + 32 * j;
    if (d < Dv) o[d] = acc[j] / l;
  }
}

constexpr int kGqWarps = 4, kAttnMaxSplit = 32;  // the backend splits keys at most 32 ways
constexpr int kAttnMinKeys = 32;  // keys per split at least (one or two steps of every warp)

// Split-K over the keys (flash-decoding): token t's segment gives its S keys and block table; block y takes keys
// [s0, s1). Splits keep at least kAttnMinKeys keys, so a short context uses fewer of the launched nsplit (the grid is
// fixed when a decode step is recorded as a graph; the context grows at every replay): ns is the number in use, and
// blocks past them get false and return at once. (Without counters, i.e. with a separate combine kernel, every
// launched split writes its part.)
__device__ __forceinline__ bool key_split(const SegMeta& m, int64_t t, int nsplit, const int* counters,
                                          const int32_t*& table, int& ns, int64_t& s0, int64_t& s1) {
  int64_t S;
  seg_of(m, t, S, table);
  const int64_t want = (S + kAttnMinKeys - 1) / kAttnMinKeys;
  ns = !counters ? nsplit : want < 1 ? 1 : want < nsplit ? int(want) : nsplit;
  if (int(blockIdx.y) >= ns) return false;
  const int64_t per = (S + ns - 1) / ns;
  s0 = blockIdx.y * per;
  s1 = min(S, s0 + per);
  return true;
}

// The end of a GQA attention block: its warps' (max, sum) per head in ml [kGqWarps][G] and unnormalised outputs
// in acc [kGqWarps][G][32 * DH] (shared, written before this call) are merged; with one split the normalised
// result goes to out, otherwise to the split's slot of part [T, Hq, nsplit, Dv + 2] (unnormalised output, then
// max and sum), and the last split block of this (token, kv head, chunk) to finish merges the splits.
template <int G, int DH>
__device__ __forceinline__ void gqa_block_out(const float (*sm_ml)[G][2], const float (*sm_acc)[G][32 * DH], int ng,
                                              int Dv, int64_t t, int64_t kh, int64_t group, int h0, int64_t Hkv,
                                              int ns, int nsplit, float* out, int64_t lo0, int64_t lo1, float* part,
                                              int* counters) {
  __syncthreads();
  for (int i = threadIdx.x; i < ng * Dv; i += blockDim.x) {
    const int g = i / Dv, d = i % Dv;
    float M = -INFINITY;
    for (int w = 0; w < kGqWarps; ++w) M = fmaxf(M, sm_ml[w][g][0]);
    float L = 0.0f, a = 0.0f;
    for (int w = 0; w < kGqWarps; ++w) {
      if (sm_ml[w][g][0] == -INFINITY) continue;
      const float f = __expf(sm_ml[w][g][0] - M);
      L += sm_ml[w][g][1] * f;
      a += sm_acc[w][g][d] * f;
    }
    const int64_t hq = kh * group + h0 + g;
    if (ns == 1) {
      out[t * lo0 + hq * lo1 + d] = a / L;
    } else {  // part [T, Hq, nsplit, Dv + 2]: unnormalised output, then (max, sum)
      const int64_t Hq = Hkv * group;
      float* pr = part + ((t * Hq + hq) * nsplit + blockIdx.y) * (Dv + 2);
      pr[d] = a;
      if (d == 0) pr[Dv] = M, pr[Dv + 1] = L;
    }
  }
  if (ns == 1 || !counters) return;
  // The last split block of this (token, kv head, chunk) to finish merges the splits (no combine launch):
  // partials are published with a fence before the counter increments; the counter is reset for the next use.
  __shared__ int s_last;
  __shared__ float s_f[G][kAttnMaxSplit];   // per head and split: max, then exp(m_j - M) / L
  __shared__ float s_sum[G][kAttnMaxSplit];  // per head and split: sum
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int prev = atomicAdd(&counters[blockIdx.x], 1);
    s_last = prev == ns - 1;
    if (s_last) counters[blockIdx.x] = 0;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const int64_t Hq = Hkv * group;
  // (max, sum) of every split first (independent loads), then one weight per split and head.
  for (int i = threadIdx.x; i < ng * ns; i += blockDim.x) {
    const int g = i / ns, j = i % ns;
    const float* pr = part + ((t * Hq + kh * group + h0 + g) * nsplit + j) * (Dv + 2);
    s_f[g][j] = __ldcg(pr + Dv);
    s_sum[g][j] = __ldcg(pr + Dv + 1);
  }
  __syncthreads();
  if (threadIdx.x < ng) {
    const int g = threadIdx.x;
    float M = -INFINITY;
    for (int j = 0; j < ns; ++j) M = fmaxf(M, s_f[g][j]);
    float L = 0.0f;
    for (int j = 0; j < ns; ++j) L += s_f[g][j] == -INFINITY ? 0.0f : s_sum[g][j] * __expf(s_f[g][j] - M);
    for (int j = 0; j < ns; ++j) s_f[g][j] = s_f[g][j] == -INFINITY ? 0.0f : __expf(s_f[g][j] - M) / L;
  }
  __syncthreads();
  // Two outputs per thread at a time and eight splits per round: 16 independent loads in flight.
  for (int i0 = threadIdx.x; i0 < ng * Dv; i0 += 2 * blockDim.x) {
    const int i1 = i0 + blockDim.x;
    const bool two = i1 < ng * Dv;
    const int g0 = i0 / Dv, d0 = i0 % Dv, g1 = two ? i1 / Dv : g0, d1 = two ? i1 % Dv : d0;
    const float* p0 = part + (t * Hq + kh * group + h0 + g0) * nsplit * (Dv + 2) + d0;
    const float* p1 = part + (t * Hq + kh * group + h0 + g1) * nsplit * (Dv + 2) + d1;
    float a0 = 0.0f, a1 = 0.0f;
    for (int j0 = 0; j0 < ns; j0 += 8) {
      float v0[8], v1[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const bool ok = j0 + u < ns;
        v0[u] = ok ? __ldcg(p0 + (j0 + u) * (Dv + 2)) : 0.0f;
        v1[u] = ok && two ? __ldcg(p1 + (j0 + u) * (Dv + 2)) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (j0 + u >= ns) break;
        a0 = fmaf(s_f[g0][j0 + u], v0[u], a0);
        a1 = fmaf(s_f[g1][j0 + u], v1[u], a1);
      }
    }
    out[t * lo0 + (kh * group + h0 + g0) * lo1 + d0] = a0;
    if (two) out[t * lo0 + (kh * group + h0 + g1) * lo1 + d1] = a1;
  }
}

// GQA attention, one block of kGqWarps warps per (token, kv head, chunk of up to G query heads, key split): the
// warps take KEYS consecutive keys in turn, load each key/value row once for the chunk's heads (online softmax
// per head in registers, D = Dh * 32 per lane), then their partial results are merged through shared memory
// and the splits by the last block to finish.
template <int G, int DH, int KEYS>
__global__ void __launch_bounds__(32 * kGqWarps) attention_gqa_kernel(
    float* out, int64_t lo0, int64_t lo1, const float* q, int64_t lq0, int64_t lq1, const float* k, int64_t lk0,
    int64_t lk1, const float* v, int64_t lv0, int64_t lv1, int64_t Hkv, int64_t group, int D, int Dv, float scale,
    SegMeta m, int nsplit, float* part, int* counters) {
  pdl_entry();
  const int nchunk = int((group + G - 1) / G);
  const int64_t t = blockIdx.x / (Hkv * nchunk);
  const int64_t kh = (blockIdx.x / nchunk) % Hkv;
  const int h0 = int(blockIdx.x % nchunk) * G;
  const int ng = group - h0 < G ? int(group - h0) : G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float qr[G][DH], acc[G][DH], mx[G], l[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const float* qp = q + t * lq0 + (kh * group + h0 + g) * lq1;
#pragma unroll
    for (int j = 0; j < DH; ++j) {
      const int d = lane + 32 * j;
      qr[g][j] = (g < ng && d < D) ? qp[d] * scale : 0.0f;
      acc[g][j] = 0.0f;
    }
    mx[g] = -INFINITY;
    l[g] = 0.0f;
  }
  const int32_t* table;  // after the query loads: both in flight together
  int ns;
  int64_t s0, s1;
  if (!key_split(m, t, nsplit, counters, table, ns, s0, s1)) return;
  const int bs = m.block_size;
  // KEYS keys per warp at a time (8 with one head per block, 4 with more): their rows are loaded together and
  // their G x KEYS dot products reduced together (independent shuffle chains), then one online-softmax update
  // per head for the group.
  for (int64_t sb = s0 + warp * KEYS; sb < s1; sb += kGqWarps * KEYS) {
    float kv[KEYS][DH], vv[KEYS][DH];
#pragma unroll
    for (int u = 0; u < KEYS; ++u) {
      const bool ok = sb + u < s1;
      const int64_t r = ok ? phys_row(table, bs, sb + u) : 0;
      const float* kr = k + r * lk0 + kh * lk1;
      const float* vr = v + r * lv0 + kh * lv1;
#pragma unroll
      for (int j = 0; j < DH; ++j) {
        const int d = lane + 32 * j;
        kv[u][j] = ok && d < D ? kr[d] : 0.0f;
        vv[u][j] = ok && d < Dv ? vr[d] : 0.0f;
      }
    }
    float sc[G][KEYS];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int u = 0; u < KEYS; ++u) {
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < DH; ++j) dot = fmaf(qr[g][j], kv[u][j], dot);
        sc[g][u] = dot;
      }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int u = 0; u < KEYS; ++u) sc[g][u] += __shfl_xor_sync(0xffffffffu, sc[g][u], o);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mn = mx[g];
#pragma unroll
      for (int u = 0; u < KEYS; ++u)
        if (sb + u < s1) mn = fmaxf(mn, sc[g][u]);
      const float corr = __expf(mx[g] - mn);
      float p[KEYS], ps = 0.0f;
#pragma unroll
      for (int u = 0; u < KEYS; ++u) {
        p[u] = sb + u < s1 ? __expf(sc[g][u] - mn) : 0.0f;
        ps += p[u];
      }
      l[g] = l[g] * corr + ps;
#pragma unroll
      for (int j = 0; j < DH; ++j) {
        float a = acc[g][j] * corr;
#pragma unroll
        for (int u = 0; u < KEYS; ++u) a = fmaf(p[u], vv[u][j], a);
        acc[g][j] = a;
      }
      mx[g] = mn;
    }
  }
  // Merge the warps: shared [kGqWarps][G] (m, l) and [kGqWarps][G][32 * DH] partial outputs.
  __shared__ float sm_ml[kGqWarps][G][2];
  __shared__ float sm_acc[kGqWarps][G][32 * DH];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) sm_ml[warp][g][0] = mx[g], sm_ml[warp][g][1] = l[g];
#pragma unroll
    for (int j = 0; j < DH; ++j) sm_acc[warp][g][lane + 32 * j] = acc[g][j];
  }
  gqa_block_out<G, DH>(sm_ml, sm_acc, ng, Dv, t, kh, group, h0, Hkv, ns, nsplit, out, lo0, lo1, part, counters);
}

// GQA attention on tensor cores (head dim 128, 2-8 query heads per kv head; batched decode and prefill): one
// block of kGqWarps warps per (token, kv head, key split). Each warp takes 8 keys at a time:
//   S [heads x 8 keys] = Q K^T         16 mma m16n8k8 tf32 (the group's heads are rows 0-7, rows 8-15 unused)
//   O [heads x 128]    = O corr + P V  16 mma, P straight from S's accumulators (no shuffle, see below)
// with its own online softmax (a head's row max over its quad of lanes: 2 shuffles). Each warp streams its keys
// through its own kTcStages-deep shared-memory ring (cp.async, 8 keys' K and V rows per stage; the loads in
// flight hold no registers; 2 blocks per SM, 16 KB in flight per warp). Fragments: the contraction
// order of Q K^T is free, so lane (g, c) takes dims 16i + 4c .. +3 of one key for k-steps 2i and 2i + 1 (Q's
// fragments in the same order), and score column n is key pi(n) = n / 2 + 4 (n % 2), which leaves lane (g, c)'s
// accumulators on keys c and c + 4 of head g: its A fragment of P for P V (keys as the contraction). For P V,
// lane (g, c) reads dims 32i + 4g .. +3 of keys c and c + 4; n-tile j = 4i + r takes dim 32i + 4g + r as its
// column g, so the accumulators end on dims 32i + 8c + [0, 8) of head g. Ring rows are rotated (16-byte chunk
// q of key row r at (q + r) % 32 for K, (q + 2r) % 32 for V) so each quarter-warp's 16-byte reads hit 8
// distinct bank groups. K and V pass as raw f32 bits (the tensor core truncates them to tf32), Q and P are
// rounded.
constexpr int kTcD = 128;
constexpr int kTcStages = 3;                        // ring stages per warp (two in flight while one is read)
constexpr int kTcStageFloats = 2 * 8 * kTcD;        // K then V rows of 8 keys
constexpr size_t kTcSmem = sizeof(float) * kGqWarps * kTcStages * kTcStageFloats;  // 96 KB: 2 blocks per SM
__device__ __forceinline__ void mma_tf32_rows8(float& d0, float& d1, uint32_t a0, uint32_t a2, float b0, float b1) {
  [[maybe_unused]] float z0, z1;  // rows 8-15 (A rows zero): discarded
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %5}, {%7, %8}, "
      "{%0, %1, %9, %9};"
      : "+f"(d0), "+f"(d1), "=f"(z0), "=f"(z1)
      : "r"(a0), "r"(0u), "r"(a2), "r"(__float_as_uint(b0)), "r"(__float_as_uint(b1)), "f"(0.0f));
}
__global__ void __launch_bounds__(32 * kGqWarps) attention_gqa_tc_kernel(
    float* out, int64_t lo0, int64_t lo1, const float* q, int64_t lq0, int64_t lq1, const float* k, int64_t lk0,
    int64_t lk1, const float* v, int64_t lv0, int64_t lv1, int64_t Hkv, int64_t group, float scale, SegMeta m,
    int nsplit, float* part, int* counters) {
  constexpr int G = 8, NI = kTcD / 16, NJ = kTcD / 8, NC = kTcD / 4;  // heads, k-step pairs, n-tiles, row chunks
  extern __shared__ __align__(16) float tc_ring[];  // [kGqWarps][kTcStages][K 8 x 128 | V 8 x 128]
  pdl_entry();
  const int64_t t = blockIdx.x / Hkv, kh = blockIdx.x % Hkv;
  const int ng = static_cast<int>(group);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, c = lane & 3;
  uint32_t qa[NI][4];  // tf32(scale * q[head g][16i + 4c + e])
  {
    const float4* qp = reinterpret_cast<const float4*>(q + t * lq0 + (kh * group + g) * lq1) + c;
#pragma unroll
    for (int i = 0; i < NI; ++i) {
      const float4 x = g < ng ? qp[4 * i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      qa[i][0] = to_tf32(x.x * scale), qa[i][1] = to_tf32(x.y * scale);
      qa[i][2] = to_tf32(x.z * scale), qa[i][3] = to_tf32(x.w * scale);
    }
  }
  const int32_t* table;
  int ns;
  int64_t s0, s1;
  if (!key_split(m, t, nsplit, counters, table, ns, s0, s1)) return;
  const int bs = m.block_size;
  // This warp's steps: keys s0 + 8 (warp + kGqWarps i) .. +7 for i < nsteps.
  const int64_t first = s0 + 8 * warp;
  const int nsteps = first < s1 ? static_cast<int>((s1 - first + 8 * kGqWarps - 1) / (8 * kGqWarps)) : 0;
  float* ring = tc_ring + warp * kTcStages * kTcStageFloats;
  // Cache rows of the next step to issue, looked up one step ahead so that issue() does not wait on the block
  // table: lane j < 8 holds key j's row (-1 past the split).
  long long pf = -1;
  auto fetch = [&](int i) {
    const int64_t s = first + int64_t(8) * kGqWarps * i + (lane & 7);
    pf = i < nsteps && s < s1 ? phys_row(table, bs, s) : -1;
  };
  // Step i into stage i % kTcStages: lane l copies 16-byte chunk l of each key's K and V rows (keys past the
  // split are zero-filled), rotated as described above; then the rows of step i + 1 are looked up.
  auto issue = [&](int i) {
    if (i < nsteps) {
      float4* st = reinterpret_cast<float4*>(ring + (i % kTcStages) * kTcStageFloats);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const long long r = __shfl_sync(0xffffffffu, pf, j);
        const bool ok = r >= 0;
        const int64_t rr = ok ? r : 0;
        cp_async16(st + j * NC + ((lane + j) & (NC - 1)), k + rr * lk0 + kh * lk1 + 4 * lane, ok);
        cp_async16(st + 8 * NC + j * NC + ((lane + 2 * j) & (NC - 1)), v + rr * lv0 + kh * lv1 + 4 * lane, ok);
      }
      fetch(i + 1);
    }
    cp_async_commit();  // empty groups past the end keep the wait counts uniform
  };
  fetch(0);
#pragma unroll
  for (int i = 0; i < kTcStages - 1; ++i) issue(i);
  const int kk = (g >> 1) + 4 * (g & 1);  // this lane's key (of the 8) in the score B fragment
  float o[NJ][2];
#pragma unroll
  for (int j = 0; j < NJ; ++j) o[j][0] = o[j][1] = 0.0f;
  float mrun = -INFINITY, lrun = 0.0f;  // head g's running max (same on its quad) and this lane's part of the sum
  for (int i = 0; i < nsteps; ++i) {
    cp_async_wait<kTcStages - 2>();  // this lane's copies of step i landed
    __syncwarp();                    // ... and every lane's; all are done reading step i - 1's stage
    issue(i + kTcStages - 1);        // into step i - 1's stage
    const float4* st = reinterpret_cast<const float4*>(ring + (i % kTcStages) * kTcStageFloats);
    const int64_t sb = first + int64_t(8) * kGqWarps * i;
    float sa0 = 0.0f, sa1 = 0.0f, sb0 = 0.0f, sb1 = 0.0f;  // two chains: [0] key c, [1] key c + 4 of head g
#pragma unroll
    for (int ip = 0; ip < NI; ++ip) {
      const float4 kb = st[kk * NC + ((4 * ip + c + kk) & (NC - 1))];
      mma_tf32_rows8(sa0, sa1, qa[ip][0], qa[ip][1], kb.x, kb.y);
      mma_tf32_rows8(sb0, sb1, qa[ip][2], qa[ip][3], kb.z, kb.w);
    }
    const bool ok0 = sb + c < s1, ok1 = sb + c + 4 < s1;
    const float x0 = ok0 ? sa0 + sb0 : -INFINITY, x1 = ok1 ? sa1 + sb1 : -INFINITY;
    float mx = fmaxf(x0, x1);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mn = fmaxf(mrun, mx);  // finite: key sb (lane c = 0's key 0) is in range
    const float corr = __expf(mrun - mn), p0 = __expf(x0 - mn), p1 = __expf(x1 - mn);
    lrun = lrun * corr + p0 + p1;
    mrun = mn;
    const uint32_t pa0 = to_tf32(p0), pa2 = to_tf32(p1);
    const float4* vr = st + 8 * NC;
#pragma unroll
    for (int ip = 0; ip < NI / 2; ++ip) {
      const float4 va = vr[c * NC + ((8 * ip + g + 2 * c) & (NC - 1))];
      const float4 vb = vr[(c + 4) * NC + ((8 * ip + g + 2 * c + 8) & (NC - 1))];
      const float b0[4] = {va.x, va.y, va.z, va.w}, b1[4] = {vb.x, vb.y, vb.z, vb.w};
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        float& d0 = o[4 * ip + r][0];
        float& d1 = o[4 * ip + r][1];
        d0 *= corr;
        d1 *= corr;
        mma_tf32_rows8(d0, d1, pa0, pa2, b0[r], b1[r]);
      }
    }
  }
  lrun += __shfl_xor_sync(0xffffffffu, lrun, 1);
  lrun += __shfl_xor_sync(0xffffffffu, lrun, 2);
  // The warps' outputs go to the start of the ring once every warp is done with it: [kGqWarps][G][kTcD] floats
  // (16 KB; keeps the block at ~99 KB of shared memory, 2 per SM).
  cp_async_wait<0>();
  __syncthreads();
  __shared__ float sm_ml[kGqWarps][G][2];
  auto sm_acc = reinterpret_cast<float (*)[G][kTcD]>(tc_ring);
  static_assert(sizeof(float) * kGqWarps * G * kTcD <= kTcSmem, "outputs fit the ring");
  if (g < ng) {
    if (c == 0) sm_ml[warp][g][0] = mrun, sm_ml[warp][g][1] = lrun;
#pragma unroll
    for (int ip = 0; ip < NI / 2; ++ip) {
      float4* dst = reinterpret_cast<float4*>(&sm_acc[warp][g][32 * ip + 8 * c]);
      dst[0] = make_float4(o[4 * ip][0], o[4 * ip + 1][0], o[4 * ip + 2][0], o[4 * ip + 3][0]);
      dst[1] = make_float4(o[4 * ip][1], o[4 * ip + 1][1], o[4 * ip + 2][1], o[4 * ip + 3][1]);
    }
  }
  gqa_block_out<G, kTcD / 32>(sm_ml, sm_acc, ng, kTcD, t, kh, group, 0, Hkv, ns, nsplit, out, lo0, lo1, part,
                              counters);
}

// out[t, h] = merge of the nsplit partial softmax results of attention_gqa_kernel.
__global__ void attention_combine_kernel(float* out, int64_t lo0, int64_t lo1, const float* part, int64_t T,
                                         int64_t Hq, int Dv, int nsplit) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * Hq * Dv) return;
  const int64_t th = i / Dv;
  const int d = int(i % Dv);
  const float* pr = part + th * nsplit * (Dv + 2);
  float M = -INFINITY;
  for (int j = 0; j < nsplit; ++j) M = fmaxf(M, pr[j * (Dv + 2) + Dv]);
  float L = 0.0f, a = 0.0f;
  for (int j = 0; j < nsplit; ++j) {
    const float mj = pr[j * (Dv + 2) + Dv];
    if (mj == -INFINITY) continue;
    const float f = __expf(mj - M);
    L += pr[j * (Dv + 2) + Dv + 1] * f;
    a += pr[j * (Dv + 2) + d] * f;
  }
  out[(th / Hq) * lo0 + (th % Hq) * lo1 + d] = a / L;
}

}  // namespace

bool g_attn_tc = true;
void set_attn_tc(bool on) { g_attn_tc = on; }

void attention_segs(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* q, int64_t lq0, int64_t lq1,
                    const float* k, int64_t lk0, int64_t lk1, const float* v, int64_t lv0, int64_t lv1, int64_t T,
                    int64_t Hq, int64_t group, int D, int Dv, float scale, const SegMeta& m, float* part,
                    int64_t target_blocks, int max_split, int* counters) {
  DSFUSE_CHECK(D <= 32 * kAttnPer && Dv <= 32 * kAttnPer, "CUDA attention: head dim ", D, "/", Dv, " above ",
               32 * kAttnPer);
  const int64_t Hkv = Hq / group;
  const int maxd = std::max(D, Dv);
  // Launches `kernel` over nb (token, kv head, chunk) blocks x ns key splits; splits are merged by each group's
  // last block when the counters cover the grid, else by a combine kernel.
  auto run_split = [&](auto kernel, int64_t nb, int ns, size_t shm, auto&&... args) {
    const bool merge = counters && nb <= kAttnCounters && ns <= kAttnMaxSplit;
    launch(kernel, dim3(static_cast<unsigned>(nb), ns), 32 * kGqWarps, shm, st, args..., ns, part,
           merge ? counters : nullptr);
    if (ns > 1 && !merge)
      launch(attention_combine_kernel, blocks(T * Hq * Dv), 256, 0, st, out, lo0, lo1, part, T, Hq, Dv, ns);
  };
  auto run_gqa = [&](auto gtag, auto dtag) {
    constexpr int G = decltype(gtag)::value, DH = decltype(dtag)::value, KEYS = G == 1 ? 8 : 4;
    const int64_t nchunk = (group + G - 1) / G;
    // Enough blocks to fill the GPU: split the keys when (tokens x kv heads) alone would not.
    const int64_t nb = T * Hkv * nchunk;
    const int ns = part ? static_cast<int>(std::clamp<int64_t>((target_blocks + nb - 1) / nb, 1, max_split)) : 1;
    run_split(attention_gqa_kernel<G, DH, KEYS>, nb, ns, 0, out, lo0, lo1, q, lq0, lq1, k, lk0, lk1, v, lv0, lv1,
              Hkv, group, D, Dv, scale, m);
  };
  // One query head per block when the step has few query heads (decode of a few sequences): G heads per block
  // share the key/value loads but walk the keys one after another per head, and at decode the GPU is short of
  // blocks, not of bandwidth (R1-Distill-Qwen-1.5B, 12 heads / 2 kv heads: 17.6 us per layer with 8 per block).
  const bool few = T * Hq <= gemv_sms();
  // Tensor cores for head dim 128 and 2-8 query heads per kv head in steps of many tokens (batched decode,
  // prefill); 16-byte aligned rows.
  const bool tc_shape = g_attn_tc && D == kTcD && Dv == kTcD && group >= 2 && group <= 8;
  const bool tc_rows = aligned16(q) && aligned16(k) && aligned16(v) && lq0 % 4 == 0 && lq1 % 4 == 0 &&
                       lk0 % 4 == 0 && lk1 % 4 == 0 && lv0 % 4 == 0 && lv1 % 4 == 0;
  if (tc_shape && tc_rows && !few) {
    static std::atomic<uint64_t> opted{0};
    smem_opt_in(attention_gqa_tc_kernel, kTcSmem, opted);
    // Key splits up to one wave of resident blocks, never past it (2 per SM on an H200, by shared memory): at
    // batch 64 of Qwen-7B (256 blocks) one split instead of two took 58 -> 48 us per layer (run 35).
    static const int resident = [] {
      int n = 0;
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attention_gqa_tc_kernel, 32 * kGqWarps, kTcSmem);
      return n > 0 ? n : 1;
    }();
    const int64_t nb = T * Hkv, wave = int64_t(resident) * gemv_sms();
    const int ns = part ? static_cast<int>(std::clamp<int64_t>(wave / nb, 1, max_split)) : 1;
    run_split(attention_gqa_tc_kernel, nb, ns, kTcSmem, out, lo0, lo1, q, lq0, lq1, k, lk0, lk1, v, lv0, lv1, Hkv,
              group, scale, m);
    check_launch();
    return;
  }
  using I1 = std::integral_constant<int, 1>;
  using I2 = std::integral_constant<int, 2>;
  using I4 = std::integral_constant<int, 4>;
  using I8 = std::integral_constant<int, 8>;
  if (maxd <= 128) {
    if (group == 1 || few) run_gqa(I1{}, I4{});
    else if (group <= 2) run_gqa(I2{}, I4{});
    else if (group <= 4) run_gqa(I4{}, I4{});
    else run_gqa(I8{}, I4{});
  } else if (maxd <= 256 && (group == 1 || few)) {
    run_gqa(I1{}, I8{});
  } else {
    const int wpb = 4;
    launch(attention_segs_kernel, blocks(T * Hq, wpb), 32 * wpb, 0, st, out, lo0, lo1, q, lq0, lq1, k, lk0, lk1, v, lv0,
                                                                     lv1, T, Hq, group, D, Dv, scale, m);
  }
  check_launch();
}

}  // namespace dsfuse::cuda
