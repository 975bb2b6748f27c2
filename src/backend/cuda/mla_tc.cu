// MLA decode attention (DeepSeek multi-head latent attention, absorbed form) on tensor cores.
//
// Per new token t with S cached keys and heads h < H:
//   q[h]      = [scale * W_UK[h]^T q_nope[h]  (C),  scale * q_pe[h]  (R)]          (mla_tc_absorb_kernel)
//   score[h,s] = q[h] . [latent[row(s)], k_pe[row(s)]]
//   o_lat[h]  = softmax_s(score[h, :]) . latent[rows]                              (mla_tc_kernel, per split)
//   out[t,h]  = W_UV[h] o_lat[h]                                                   (mla_tc_finish_kernel)
//
// mla_tc_kernel: one block of 4 warps per (token, key split, group of 16 heads). It streams the token's
// cache rows of its split in tiles of 32 keys (cp.async, 16 bytes, double-buffered, XOR-swizzled rows of C + R
// floats: latent then rope) and, per tile,
//   1. S[16 heads x 32 keys] = Q[16 x (C+R)] K^T with mma m16n8k8 tf32: each warp takes a quarter of the
//      C + R = 576 contraction dims (18 k-steps; its Q fragments stay in registers), the four partial S
//      tiles are summed in shared memory;
//   2. online softmax per head (8 threads per head, 4 keys each), P (tf32) and the rescale factor to smem;
//   3. O[16 x C] = O * corr + P V with the same mma (V = the latent part of the tile), each warp owning a
//      quarter of the C output dims (16 n-tiles of 8, accumulators in registers).
// The block writes its unnormalised O and (max, sum) per head; mla_tc_finish_kernel merges the splits and
// applies W_UV. Heads past H in the last group are zero queries whose results are dropped.
//
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 fragments (PTX ISA "Matrix Fragments for mma.m16n8k8",
// .tf32), g = lane >> 2 (groupID), c = lane & 3 (threadID_in_group):
//   A (16 x 8, row):  a0 = A[g][c]   a1 = A[g + 8][c]   a2 = A[g][c + 4]   a3 = A[g + 8][c + 4]
//   B (8 x 8, col):   b0 = B[k = c][n = g]              b1 = B[k = c + 4][n = g]
//   C/D (16 x 8):     c0 = D[g][2c]  c1 = D[g][2c + 1]  c2 = D[g + 8][2c]  c3 = D[g + 8][2c + 1]
// Scores: M = heads, N = keys, K = dims:  A[m][k] = Q[head m][dim k0 + k], B[k][n] = tile[key n0 + n][dim k0 + k].
// Output: M = heads, N = dims, K = keys:  A[m][k] = P[head m][key k0 + k], B[k][n] = tile[key k0 + k][dim n0 + n].
//
// Shared tile layout: row r (key) holds the C + R floats of the key in 4-float chunks; logical chunk q sits at
// physical chunk q ^ swz(r), swz(r) = ((r & 3) << 1) | ((r >> 2) & 1) (a permutation of 0..7, rows padded to a
// multiple of 32 floats so q ^ swz stays in the row). Bank of (r, x) = 4 * ((x / 4 ^ swz(r)) % 8) + x % 4
// (row stride = 0 mod 32 words). Score B loads: lanes read (r = n0 + g, x = k0 + c [+4]) with k0 % 8 == 0:
// chunk (2 k-step [+1]) ^ swz(g) takes 8 distinct values over g, + c -> 32 distinct banks. Output B loads:
// lanes read (r = k0 + c [+4], x = n0 + g), n0 % 8 == 0: chunk (n0 / 4 + (g >> 2)) ^ swz(c [+4]) with
// swz(c) = 2c, swz(c + 4) = 2c + 1, i.e. (n0 / 4 ^ (g >> 2) ^ 2c [^ 1]) % 8: 8 distinct values over (g >> 2, c),
// + g % 4 -> 32 distinct banks.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

#include "backend/cuda/mla_tc.cuh"

namespace dsfuse::cuda {
namespace {

constexpr int kTcHeads = 16;                   // heads per block (mma M)
constexpr int kTcNT = 32;                      // keys per tile
constexpr int kTcStages = 2;                   // shared tile buffers
constexpr int kTcWarps = 4;
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcMaxC = 512, kTcMaxR = 64;
constexpr int kTcMaxKs = (kTcMaxC + kTcMaxR) / 8 / kTcWarps;  // 18 score k-steps per warp
constexpr int kTcMaxNo = kTcMaxC / 8 / kTcWarps;              // 16 output n-tiles per warp
constexpr int kTcLdr = kTcNT + 8;              // row stride of the partial score tiles (float2 stores)
constexpr int kTcLdp = kTcNT + 4;              // row stride of P (A-fragment loads conflict-free)
static_assert(kTcNT == 32, "one lane per tile row in the cache-row lookup");
static_assert(kTcHeads * 8 == kTcThreads, "softmax: 8 threads per head");
static_assert(kTcNT == 8 * 4, "softmax: 4 keys per thread");
static_assert(kTcMaxKs * kTcWarps * 8 == kTcMaxC + kTcMaxR && kTcMaxNo * kTcWarps * 8 == kTcMaxC, "warp split");

__host__ __device__ constexpr int tc_ldt(int C, int R) { return (C + R + 31) / 32 * 32; }

size_t tc_smem_bytes(int C, int R) {
  return sizeof(float) * (size_t(kTcStages) * kTcNT * tc_ldt(C, R) + size_t(kTcWarps) * kTcHeads * kTcLdr +
                          size_t(kTcHeads) * kTcLdp + kTcHeads);
}

__device__ __forceinline__ int tc_swz(int r) { return ((r & 3) << 1) | ((r >> 2) & 1); }

__device__ __forceinline__ float tc_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The block's work, shared by both tensor-core kernels: head group h0 (kTcHeads heads), token t and its split of
// the keys, [s0, s1), in ntiles tiles of NT keys (whole tiles; the last split takes the remainder or nothing).
struct TcWork {
  int h0, split, ntiles;
  int64_t t, s0, s1;
  const int32_t* table;
};
template <int NT>
__device__ __forceinline__ TcWork tc_work(const SegMeta& m, int H, int nsplit) {
  TcWork w;
  const int G = (H + kTcHeads - 1) / kTcHeads;
  const int rest = int(blockIdx.x / unsigned(G));
  w.h0 = int(blockIdx.x % unsigned(G)) * kTcHeads;
  w.split = rest % nsplit;
  w.t = rest / nsplit;
  int64_t S;
  seg_of(m, w.t, S, w.table);
  const int64_t per = ((S + nsplit - 1) / nsplit + NT - 1) / NT * NT;
  w.s0 = w.split * per;
  w.s1 = S < w.s0 + per ? S : w.s0 + per;
  w.ntiles = w.s1 > w.s0 ? int((w.s1 - w.s0 + NT - 1) / NT) : 0;
  return w;
}

// One cache row (latent then rope key, CH 16-byte chunks, C4 of them latent) into a swizzled tile row.
__device__ __forceinline__ void tc_copy_row(float* drow, const float* lrow, const float* krow, int CH, int C4, int sw,
                                            bool valid, int lane) {
  for (int q = lane; q < CH; q += 32)
    cp_async16(drow + ((q ^ sw) << 2), q < C4 ? lrow + 4 * q : krow + 4 * (q - C4), valid);
}

// qcat keeps each query row in fragment order, already rounded to tf32: within each 8-dim k-step, dims c and c + 4
// side by side (position 2c and 2c + 1), so that a thread loads both of a k-step's A values with one float2.
__device__ __forceinline__ int tc_q_pos(int d) { return (d & ~7) + 2 * (d & 3) + ((d >> 2) & 1); }
__device__ __forceinline__ float tc_q_val(float v) { return __uint_as_float(to_tf32(v)); }

// Q fragments (tf32) of heads h0 + g and h0 + g + 8 for the warp's k-steps ks0 .. ks0 + nks (zero past them, and
// for heads past H).
template <int MaxKs>
__device__ __forceinline__ void tc_load_q(uint32_t (&qa)[MaxKs][4], const float* qcat, int64_t t, int H, int DQ,
                                          int h0, int g, int c, int ks0, int nks) {
  const int ha = h0 + g, hb = h0 + g + 8;
  const float* qra = qcat + (t * H + (ha < H ? ha : 0)) * DQ;
  const float* qrb = qcat + (t * H + (hb < H ? hb : 0)) * DQ;
#pragma unroll
  for (int j = 0; j < MaxKs; ++j) {
    const int p = (ks0 + j) * 8 + 2 * c;  // dims 8 ks + c and 8 ks + c + 4, side by side (tc_q_pos)
    const bool in = j < nks;
    const float2 va = in && ha < H ? *reinterpret_cast<const float2*>(qra + p) : make_float2(0.0f, 0.0f);
    const float2 vb = in && hb < H ? *reinterpret_cast<const float2*>(qrb + p) : make_float2(0.0f, 0.0f);
    qa[j][0] = __float_as_uint(va.x);
    qa[j][1] = __float_as_uint(vb.x);
    qa[j][2] = __float_as_uint(va.y);
    qa[j][3] = __float_as_uint(vb.y);
  }
}

// Start of the partial-result row of head h (C outputs, then the running max and sum).
__device__ __forceinline__ int64_t tc_part_row(int64_t t, int H, int h, int nsplit, int split, int C) {
  return ((t * H + h) * nsplit + split) * (C + 2);
}
// A split without keys: (max, sum) = (-inf, 0) for the block's heads; its outputs are not written (nor read).
__device__ __forceinline__ void tc_mark_empty(float* part, int64_t t, int H, int h0, int nsplit, int split, int C) {
  const int h = h0 + int(threadIdx.x);
  if (threadIdx.x < kTcHeads && h < H) {
    float* pr = part + tc_part_row(t, H, h, nsplit, split, C);
    pr[C] = -INFINITY;
    pr[C + 1] = 0.0f;
  }
}

// The warp's output n-tiles no0 .. no0 + nno of heads ha, hb (rows ia, ib; skipped past H) into the partial rows.
template <int MaxNo>
__device__ __forceinline__ void tc_store_out(float* part, const float (&o)[MaxNo][4], int64_t ia, int64_t ib,
                                             bool va, bool vb, int no0, int nno, int c) {
#pragma unroll
  for (int j = 0; j < MaxNo; ++j) {
    if (j < nno) {
      const int d = (no0 + j) * 8 + 2 * c;  // columns 2c, 2c + 1 of n-tile no0 + j
      if (va) *reinterpret_cast<float2*>(part + ia + d) = make_float2(o[j][0], o[j][1]);
      if (vb) *reinterpret_cast<float2*>(part + ib + d) = make_float2(o[j][2], o[j][3]);
    }
  }
}

// Eight consecutive weights W[row, c .. c + 8) as floats: one 16-byte load for bf16 rows that allow it, else
// element by element (f32, f16, FP8 with block scales).
__device__ __forceinline__ void mla_w8(const WDesc& w, bool vec, int64_t row, int c, float f[8]) {
  if (vec) {
    bf16x8_to_f32(ldg_stream(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w.w) + row * w.ld + c)), f);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = wload(w, row, c + e);
  }
}
__host__ __device__ inline bool mla_w8_vec(const WDesc& w) {
  return w.type == W_BF16 && w.ld % 8 == 0 && aligned16(w.w);
}

// qcat [T, H, C + R] = [scale * W_UK[h]^T q_nope[t, h], scale * q_pe[t, h]], in fragment order (tc_q_pos).
// One block per (head, 64 latent columns, kAbTok tokens), 8 warps: thread (row group rg = tid / 8, column group
// cg = tid % 8) sums rows d = rg, rg + 32, ... of its 8 columns (16-byte loads, all issued before the wait on
// the previous kernel: the weights are constant), the 32 row groups are then summed (shuffles within a warp,
// shared memory across warps). Enough blocks to stream W_UK over the whole GPU at decode (16 heads x 8 = 128).
constexpr int kAbTok = 8, kAbCols = 64, kAbRows = 4;  // kAbRows: rows per thread with loads in flight
__global__ void __launch_bounds__(256) mla_tc_absorb_kernel(float* qcat, const float* qn, int64_t lqn0, int64_t lqn1,
                                                            const float* qpe, int64_t lqp0, int64_t lqp1, WDesc w,
                                                            int64_t T, int H, int Dn, int Dv, int R, int C,
                                                            float scale) {
  extern __shared__ __align__(16) float s_qn[];  // [kAbTok][Dn]
  __shared__ float s_red[8][kAbTok][kAbCols];
  const int nct = (C + kAbCols - 1) / kAbCols;
  const int h = int(blockIdx.x % unsigned(H));
  const int ct = int((blockIdx.x / unsigned(H)) % unsigned(nct));
  const int64_t tb = int64_t(blockIdx.x / unsigned(H * nct)) * kAbTok;
  const int nt = int(T - tb < kAbTok ? T - tb : kAbTok);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, cg = threadIdx.x % 8, rg = threadIdx.x / 8;
  const int c = ct * kAbCols + cg * 8;
  const bool cv = c < C, vec = mla_w8_vec(w);
  const int64_t wrow0 = int64_t(h) * (Dn + Dv);
  float f[kAbRows][8];
#pragma unroll
  for (int i = 0; i < kAbRows; ++i)
    if (cv && rg + 32 * i < Dn) mla_w8(w, vec, wrow0 + rg + 32 * i, c, f[i]);
  pdl_entry();
  for (int i = threadIdx.x; i < kAbTok * Dn; i += blockDim.x) {
    const int tt = i / Dn, d = i % Dn;
    s_qn[i] = tt < nt ? qn[(tb + tt) * lqn0 + h * lqn1 + d] : 0.0f;
  }
  __syncthreads();
  float acc[kAbTok][8];
#pragma unroll
  for (int tt = 0; tt < kAbTok; ++tt)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[tt][e] = 0.0f;
  for (int d0 = rg; d0 < Dn; d0 += 32 * kAbRows) {
    if (d0 != rg) {
#pragma unroll
      for (int i = 0; i < kAbRows; ++i)
        if (cv && d0 + 32 * i < Dn) mla_w8(w, vec, wrow0 + d0 + 32 * i, c, f[i]);
    }
#pragma unroll
    for (int i = 0; i < kAbRows; ++i) {
      const int d = d0 + 32 * i;
      if (!cv || d >= Dn) break;
#pragma unroll
      for (int tt = 0; tt < kAbTok; ++tt) {
        if (tt >= nt) break;
        const float qv = s_qn[tt * Dn + d];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[tt][e] = fmaf(qv, f[i][e], acc[tt][e]);
      }
    }
  }
  // Sum the 4 row groups of the warp (lanes cg, cg + 8, cg + 16, cg + 24), then the 8 warps.
#pragma unroll
  for (int tt = 0; tt < kAbTok; ++tt) {
    if (tt >= nt) break;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float v = acc[tt][e];
      v += __shfl_xor_sync(0xffffffffu, v, 8);
      v += __shfl_xor_sync(0xffffffffu, v, 16);
      if (lane < 8) s_red[warp][tt][cg * 8 + e] = v;
    }
  }
  __syncthreads();
  const int DQ = C + R;
  for (int i = threadIdx.x; i < nt * kAbCols; i += blockDim.x) {
    const int tt = i / kAbCols, cc = i % kAbCols;
    if (ct * kAbCols + cc >= C) continue;
    float v = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) v += s_red[j][tt][cc];
    qcat[((tb + tt) * H + h) * DQ + tc_q_pos(ct * kAbCols + cc)] = tc_q_val(v * scale);
  }
  if (ct == 0)
    for (int i = threadIdx.x; i < nt * R; i += blockDim.x) {
      const int tt = i / R, e = i % R;
      qcat[((tb + tt) * H + h) * DQ + tc_q_pos(C + e)] = tc_q_val(qpe[(tb + tt) * lqp0 + h * lqp1 + e] * scale);
    }
}

// One block per (token, key split, group of kTcHeads heads); see the top of the file.
// part [T, H, nsplit, C + 2]: unnormalised latent output, then (max, sum).
__global__ void __launch_bounds__(kTcThreads, 1) mla_tc_kernel(float* part, const float* qcat, const float* lat,
                                                               int64_t ll0, const float* kpe, int64_t lk0, int H,
                                                               int R, int C, SegMeta m, int nsplit) {
  pdl_entry();
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) float tc_sm[];
  const int LDT = tc_ldt(C, R);
  float* s_kv = tc_sm;                                       // [kTcStages][kTcNT][LDT], swizzled rows
  float* s_red = s_kv + kTcStages * kTcNT * LDT;           // [kTcWarps][kTcHeads][kTcLdr] partial scores
  float* s_p = s_red + kTcWarps * kTcHeads * kTcLdr;       // [kTcHeads][kTcLdp] probabilities (tf32 bits)
  float* s_corr = s_p + kTcHeads * kTcLdp;                 // [kTcHeads] rescale of the running output
  const TcWork wk = tc_work<kTcNT>(m, H, nsplit);
  const int h0 = wk.h0, split = wk.split, ntiles = wk.ntiles;
  const int64_t t = wk.t, s0 = wk.s0, s1 = wk.s1;
  const int tid = threadIdx.x;
  if (ntiles == 0) {  // no keys in this split (short contexts): only its (max, sum) marker, which the finish skips
    tc_mark_empty(part, t, H, h0, nsplit, split, C);
    return;
  }
  const int32_t* table = wk.table;
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
  const int bs = m.block_size;
  const int DQ = C + R, KS = DQ / 8, NO = C / 8, CH = DQ / 4, C4 = C / 4;
  // This warp's score k-steps [ks0, ks0 + nks) and output n-tiles [no0, no0 + nno).
  const int ks0 = warp * KS / kTcWarps, nks = (warp + 1) * KS / kTcWarps - ks0;
  const int no0 = warp * NO / kTcWarps, nno = (warp + 1) * NO / kTcWarps - no0;

  // Stage tile k (keys s0 + k * kTcNT ...) into buffer k % kTcStages; rows past the split are zero-filled.
  auto issue = [&](int k) {
    float* buf = s_kv + (k % kTcStages) * kTcNT * LDT;
    const int64_t kb = s0 + int64_t(k) * kTcNT;
    const int n = s1 - kb < kTcNT ? int(s1 - kb) : kTcNT;
    long long prow = 0;  // cache row of key kb + lane
    if (lane < n) {
      const int64_t s = kb + lane;
      prow = table ? static_cast<long long>(table[s / bs]) * bs + s % bs : static_cast<long long>(s);
    }
    for (int r = warp; r < kTcNT; r += kTcWarps) {
      const long long pr = __shfl_sync(0xffffffffu, prow, r);
      const bool valid = r < n;
      const float* lrow = lat + (valid ? pr * ll0 : 0);
      const float* krow = kpe + (valid ? pr * lk0 : 0);
      const int sw = tc_swz(r);
      float* drow = buf + r * LDT;
      tc_copy_row(drow, lrow, krow, CH, C4, sw, valid, lane);
    }
  };

  // Prologue: the first kTcStages tiles in flight (one commit group per tile, empty groups past the end).
#pragma unroll
  for (int k = 0; k < kTcStages; ++k) {
    if (k < ntiles) issue(k);
    cp_async_commit();
  }

  // Q fragments of this warp's k-steps (tf32), heads h0 + g and h0 + g + 8.
  uint32_t qa[kTcMaxKs][4];
  tc_load_q(qa, qcat, t, H, DQ, h0, g, c, ks0, nks);
  float o[kTcMaxNo][4];
#pragma unroll
  for (int j = 0; j < kTcMaxNo; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  // Softmax role: head sh, keys 4 * sq .. 4 * sq + 3 of each tile; (m_run, l_run) of head sh, l_run partial
  // over this thread's keys (the 8 threads of a head hold the same m_run).
  const int sh = tid >> 3, sq = tid & 7;
  float m_run = -INFINITY, l_run = 0.0f;
  const int swg = tc_swz(g);                      // swizzle of score rows n0 + g
  const int swv0 = tc_swz(c), swv1 = tc_swz(c + 4);  // of output rows k0 + c, k0 + c + 4

  for (int it = 0; it < ntiles; ++it) {
    cp_async_wait<kTcStages - 1>();  // this thread's copies of tile `it` landed
    __syncthreads();                 // ... and everyone's
    const float* buf = s_kv + (it % kTcStages) * kTcNT * LDT;
    const int64_t kb = s0 + int64_t(it) * kTcNT;
    const int n = s1 - kb < kTcNT ? int(s1 - kb) : kTcNT;

    // 1. Partial scores over this warp's k-steps: sacc[nt] = S[heads][keys nt * 8 ..].
    float sacc[kTcNT / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTcNT / 8; ++nt) sacc[nt][0] = sacc[nt][1] = sacc[nt][2] = sacc[nt][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < kTcMaxKs; ++j) {
      if (j < nks) {
        const int q0 = 2 * (ks0 + j);  // logical chunk of dims 8 * (ks0 + j) + 0..3; q0 + 1: + 4..7
        const int x0 = ((q0 ^ swg) << 2) | c, x1 = (((q0 + 1) ^ swg) << 2) | c;
#pragma unroll
        for (int nt = 0; nt < kTcNT / 8; ++nt) {
          const float* row = buf + (nt * 8 + g) * LDT;  // key nt * 8 + g; swz(nt * 8 + g) == swz(g)
          mma_tf32(sacc[nt], qa[j][0], qa[j][1], qa[j][2], qa[j][3], to_tf32(row[x0]), to_tf32(row[x1]));
        }
      }
    }
    {
      float* red = s_red + warp * kTcHeads * kTcLdr;
#pragma unroll
      for (int nt = 0; nt < kTcNT / 8; ++nt) {
        *reinterpret_cast<float2*>(red + g * kTcLdr + nt * 8 + 2 * c) = make_float2(sacc[nt][0], sacc[nt][1]);
        *reinterpret_cast<float2*>(red + (g + 8) * kTcLdr + nt * 8 + 2 * c) = make_float2(sacc[nt][2], sacc[nt][3]);
      }
    }
    __syncthreads();

    // 2. Online softmax: head sh, keys 4 * sq + i.
    {
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int w = 0; w < kTcWarps; ++w) {
        const float4 v = *reinterpret_cast<const float4*>(s_red + (w * kTcHeads + sh) * kTcLdr + 4 * sq);
        s[0] += v.x, s[1] += v.y, s[2] += v.z, s[3] += v.w;
      }
      float mt = -INFINITY;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (4 * sq + i < n) mt = fmaxf(mt, s[i]);
        else s[i] = -INFINITY;
      }
      mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
      mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
      mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 4));
      const float mn = fmaxf(m_run, mt);  // finite: key kb (n >= 1) is valid
      const float corr = __expf(m_run - mn);  // 0 on the first tile
      float p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = __expf(s[i] - mn);  // 0 for masked keys
      l_run = l_run * corr + ((p[0] + p[1]) + (p[2] + p[3]));
      m_run = mn;
      *reinterpret_cast<uint4*>(s_p + sh * kTcLdp + 4 * sq) =
          make_uint4(to_tf32(p[0]), to_tf32(p[1]), to_tf32(p[2]), to_tf32(p[3]));
      if (sq == 0) s_corr[sh] = corr;
    }
    __syncthreads();

    // 3. O = O * corr + P V over this warp's output n-tiles.
    {
      const float ca = s_corr[g], cb = s_corr[g + 8];
#pragma unroll
      for (int j = 0; j < kTcMaxNo; ++j) o[j][0] *= ca, o[j][1] *= ca, o[j][2] *= cb, o[j][3] *= cb;
      const uint32_t* pp = reinterpret_cast<const uint32_t*>(s_p);
#pragma unroll
      for (int kk = 0; kk < kTcNT / 8; ++kk) {
        const uint32_t a0 = pp[g * kTcLdp + kk * 8 + c], a1 = pp[(g + 8) * kTcLdp + kk * 8 + c];
        const uint32_t a2 = pp[g * kTcLdp + kk * 8 + c + 4], a3 = pp[(g + 8) * kTcLdp + kk * 8 + c + 4];
        const float* v0 = buf + (kk * 8 + c) * LDT;      // key kk * 8 + c: swizzle swv0
        const float* v1 = buf + (kk * 8 + c + 4) * LDT;  // key kk * 8 + c + 4: swizzle swv1
#pragma unroll
        for (int j = 0; j < kTcMaxNo; ++j) {
          if (j < nno) {
            const int d = (no0 + j) * 8 + g;  // latent dim of column g of n-tile no0 + j
            const int q = d >> 2, e = d & 3;
            mma_tf32(o[j], a0, a1, a2, a3, to_tf32(v0[((q ^ swv0) << 2) | e]), to_tf32(v1[((q ^ swv1) << 2) | e]));
          }
        }
      }
    }
    __syncthreads();  // all warps are done with this buffer (and s_p, s_corr)
    if (it + kTcStages < ntiles) issue(it + kTcStages);
    cp_async_commit();
  }
  cp_async_wait<0>();

  // Partial results.
  const int ha = h0 + g, hb = h0 + g + 8;
  const int64_t ia = tc_part_row(t, H, ha, nsplit, split, C), ib = tc_part_row(t, H, hb, nsplit, split, C);
  tc_store_out(part, o, ia, ib, ha < H, hb < H, no0, nno, c);
  float l = l_run;
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  l += __shfl_xor_sync(0xffffffffu, l, 4);
  if (sq == 0 && h0 + sh < H) {
    float* pr = part + tc_part_row(t, H, h0 + sh, nsplit, split, C);
    pr[C] = m_run;
    pr[C + 1] = l;
  }
#else
  __trap();
#endif
}

// ---- mla_tc2_kernel (DSFUSE_CUDA_MLA=tc2): 8 warps, 16-key tiles, a 5-stage cp.async ring, 2 barriers per tile ----
//
// One block of 8 warps per (token, key split, group of 16 heads), 1 block per SM. Per 16-key tile:
//   B1  __syncthreads: tile `it` landed for everyone and every warp is done with tile it - 1 (its buffer is
//       refilled with tile it + kT2Stages - 1 right after, so kT2Stages - 1 tiles stay in flight).
//   1. Scores: warp w computes the partial S[16 heads x keys 8 nh .. 8 nh + 7] over the k-quarter kq of the
//      C + R contraction dims (nh = w & 1, kq = w >> 1: 18 k-steps, Q fragments in registers: 72 regs, two
//      accumulator chains), stored to s_sp[head][key][slot] (slot = kq ^ ((head >> 1) & 3): 2-way store
//      conflicts instead of 8-way; readers sum the 4 slots in any order).
//   B2  __syncthreads.
//   2. Softmax, redundantly in every warp and in registers: lane (g, c) reads (one float4 per value, the 4
//      partials) exactly the P entries of its mma A fragments: heads g, g + 8 x keys c, c + 4, 8 + c, 12 + c;
//      the tile max per head is a max over the 4 lanes of a group (shfl xor 1, 2), so every warp computes the
//      same running max m and the same rescale corr; l is kept per lane over its keys (summed at the end).
//   3. O[16 x 64 dims of this warp] = O * corr + P V (8 n-tiles, 2 k-steps of 8 keys; 32 accumulator regs).
// No partial-score reduction pass, no P round trip through shared memory, no per-head softmax threads.
//
// Budget (H200: 132 SMs, ~4.5 TB/s, ~1.98 GHz): at 80% of HBM each SM streams 4.5e12 * 0.8 / 132 = 27 GB/s
// = ~14 bytes/cycle, i.e. one 16-key tile (16 x 576 floats = 36,864 bytes) every ~2,700 cycles. Little's law
// with ~1 us of loaded DRAM latency needs ~27 KB in flight per SM; the ring keeps up to 4 tiles = 147 KB in
// flight. Shared memory: 5 x 36,864 (tiles) + 16 x 20 x 4 x 4 (partial scores) = 189,440 bytes -> 1 block
// (8 warps) per SM; registers ~150-170 per thread (< 255, 256 threads x 1 block). Work per tile and warp:
// 18 + 16 mma, ~70 shared loads, 8 exp; ~2,100 instructions per tile for the SM's 4 schedulers (~530 issue
// cycles) and a critical path (B1 -> 9 dependent score mma -> B2 -> softmax -> 2 dependent PV mma) of
// roughly 700-900 cycles: both well under the 2,700-cycle budget. Shared-memory wavefronts per tile:
// ~36 (cp.async) + 36 (score B) + 16 (S stores) + 32 (S loads) + 32 (PV B) per warp = ~1,220 of 2,700.
constexpr int kT2NT = 16;      // keys per tile
constexpr int kT2Stages = 5;   // tile buffers (kT2Stages - 1 tiles in flight)
constexpr int kT2Warps = 8;
constexpr int kT2Threads = 32 * kT2Warps;
constexpr int kT2KQ = 4;       // k-quarters of the score contraction (warp >> 1)
constexpr int kT2MaxKs = (kTcMaxC + kTcMaxR) / 8 / kT2KQ;  // 18 score k-steps per warp
constexpr int kT2MaxNo = kTcMaxC / 8 / kT2Warps;           // 8 output n-tiles per warp
constexpr int kT2Spld = 20;    // key slots per head row of s_sp (float4 each): 20 = 4 mod 8 -> conflict-free float4 loads
static_assert(kT2NT == 16 && kT2Warps == 2 * kT2KQ, "warp roles: nh = warp & 1 (8 keys), kq = warp >> 1");
static_assert(kT2NT % kT2Warps == 0, "cache rows per warp in the copy");
static_assert(kT2MaxKs * kT2KQ * 8 == kTcMaxC + kTcMaxR && kT2MaxNo * kT2Warps * 8 == kTcMaxC, "warp split");

size_t tc2_smem_bytes(int C, int R) {
  return sizeof(float) * (size_t(kT2Stages) * kT2NT * tc_ldt(C, R) + size_t(kTcHeads) * kT2Spld * 4);
}

__global__ void __launch_bounds__(kT2Threads, 1) mla_tc2_kernel(float* part, const float* qcat, const float* lat,
                                                                int64_t ll0, const float* kpe, int64_t lk0, int H,
                                                                int R, int C, SegMeta m, int nsplit) {
  pdl_entry();
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) float t2_sm[];
  const int LDT = tc_ldt(C, R);
  float* s_kv = t2_sm;                                  // [kT2Stages][kT2NT][LDT], swizzled rows
  float* s_sp = s_kv + kT2Stages * kT2NT * LDT;         // [kTcHeads][kT2Spld][4] partial scores
  const TcWork wk = tc_work<kT2NT>(m, H, nsplit);
  const int h0 = wk.h0, split = wk.split, ntiles = wk.ntiles;
  const int64_t t = wk.t, s0 = wk.s0, s1 = wk.s1;
  if (ntiles == 0) {  // see mla_tc_kernel
    tc_mark_empty(part, t, H, h0, nsplit, split, C);
    return;
  }
  const int32_t* table = wk.table;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
  const int bs = m.block_size;
  const int DQ = C + R, KS = DQ / 8, NO = C / 8, CH = DQ / 4, C4 = C / 4;
  const int nh = warp & 1, kq = warp >> 1;
  const int ks0 = kq * KS / kT2KQ, nks = (kq + 1) * KS / kT2KQ - ks0;
  const int no0 = warp * NO / kT2Warps, nno = (warp + 1) * NO / kT2Warps - no0;

  // Stage tile k (keys s0 + k * kT2NT ...) into buffer k % kT2Stages; rows past the split are zero-filled.
  // Warp w copies rows 2w, 2w + 1 (CH 16-byte chunks each, lanes along the row: coalesced). Their cache rows
  // are looked up one tile ahead (fetch) so that the block-table load is not waited for at the issue; 32-bit
  // division (key positions < 2^31: int32 segment fields).
  constexpr int kRows = kT2NT / kT2Warps;
  long long pf[kRows];  // cache rows of this warp's keys of the next tile to issue; -1: past the split
  auto fetch = [&](int k) {
    const int64_t kb = s0 + int64_t(k) * kT2NT;
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) {
      const int64_t s = kb + warp * kRows + rr;
      long long pr = -1;
      if (k < ntiles && s < s1) {
        const unsigned su = static_cast<unsigned>(s), ub = static_cast<unsigned>(bs);
        pr = table ? static_cast<long long>(table[su / ub]) * bs + (su % ub) : static_cast<long long>(s);
      }
      pf[rr] = pr;
    }
  };
  auto issue = [&](int k) {
    float* buf = s_kv + (k % kT2Stages) * kT2NT * LDT;
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) {
      const int r = warp * kRows + rr;
      const bool valid = pf[rr] >= 0;
      const long long pr = valid ? pf[rr] : 0;
      const float* lrow = lat + pr * ll0;
      const float* krow = kpe + pr * lk0;
      const int sw = tc_swz(r);
      float* drow = buf + r * LDT;
      tc_copy_row(drow, lrow, krow, CH, C4, sw, valid, lane);
    }
  };

  // Prologue: tiles 0 .. kT2Stages - 2 in flight (one commit group per tile, empty groups past the end).
#pragma unroll
  for (int k = 0; k < kT2Stages - 1; ++k) {
    if (k < ntiles) {
      fetch(k);
      issue(k);
    }
    cp_async_commit();
  }
  fetch(kT2Stages - 1);

  // Q fragments of this warp's k-quarter (tf32), heads h0 + g and h0 + g + 8.
  uint32_t qa[kT2MaxKs][4];
  tc_load_q(qa, qcat, t, H, DQ, h0, g, c, ks0, nks);
  float o[kT2MaxNo][4];
#pragma unroll
  for (int j = 0; j < kT2MaxNo; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  // Running max of heads g (a) and g + 8 (b): identical in the 4 lanes of a group and in all warps; running
  // sums over this lane's keys (c, c + 4, 8 + c, 12 + c of every tile).
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
  const int swg = tc_swz(g);                         // swizzle of score rows 8 nh + g
  const int swv0 = tc_swz(c), swv1 = tc_swz(c + 4);  // of output rows 8 kk + c, 8 kk + c + 4
  const int wslot = kq ^ ((g >> 1) & 3);             // s_sp slot of this warp's partials (heads g, g + 8)

  for (int it = 0; it < ntiles; ++it) {
    cp_async_wait<kT2Stages - 2>();  // this thread's copies of tile `it` landed
    __syncthreads();                 // B1: ... and everyone's; everyone is done with tile it - 1 and s_sp
    if (it + kT2Stages - 1 < ntiles) {
      issue(it + kT2Stages - 1);  // into the buffer of tile it - 1
      fetch(it + kT2Stages);
    }
    cp_async_commit();
    const float* buf = s_kv + (it % kT2Stages) * kT2NT * LDT;
    const int64_t kb = s0 + int64_t(it) * kT2NT;
    const int n = s1 - kb < kT2NT ? int(s1 - kb) : kT2NT;

    // 1. Partial scores S[heads][keys 8 nh ..] over this warp's k-quarter; two chains (even / odd k-steps).
    {
      float sa[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sb[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const float* row = buf + (nh * 8 + g) * LDT;  // key 8 nh + g; swz(8 nh + g) == swz(g)
#pragma unroll
      for (int j = 0; j < kT2MaxKs; ++j) {
        if (j < nks) {
          const int q0 = 2 * (ks0 + j);  // logical chunk of dims 8 (ks0 + j) + 0..3; q0 + 1: + 4..7
          const uint32_t b0 = to_tf32(row[((q0 ^ swg) << 2) | c]), b1 = to_tf32(row[(((q0 + 1) ^ swg) << 2) | c]);
          if (j & 1) mma_tf32(sb, qa[j][0], qa[j][1], qa[j][2], qa[j][3], b0, b1);
          else mma_tf32(sa, qa[j][0], qa[j][1], qa[j][2], qa[j][3], b0, b1);
        }
      }
      // c0 = S[g][2c], c1 = S[g][2c + 1], c2 = S[g + 8][2c], c3 = S[g + 8][2c + 1] (keys relative to 8 nh).
      float* w0 = s_sp + (g * kT2Spld + nh * 8 + 2 * c) * 4 + wslot;
      float* w1 = w0 + 8 * kT2Spld * 4;  // head g + 8: same slot ((g + 8) >> 1) & 3 == (g >> 1) & 3
      w0[0] = sa[0] + sb[0];
      w0[4] = sa[1] + sb[1];
      w1[0] = sa[2] + sb[2];
      w1[4] = sa[3] + sb[3];
    }
    __syncthreads();  // B2: all partial scores of the tile are in s_sp

    // 2. Online softmax in registers. x[kk][i]: A fragment element i of k-step kk: i = 2 * half + (head g + 8),
    // key 8 kk + c + 4 half.
    uint32_t pa[2][4];
    float ca, cb;
    {
      float x[2][4];
      float mt_a = -INFINITY, mt_b = -INFINITY;
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int key = kk * 8 + c + 4 * half;
          const float4 va = *reinterpret_cast<const float4*>(s_sp + (g * kT2Spld + key) * 4);
          const float4 vb = *reinterpret_cast<const float4*>(s_sp + ((g + 8) * kT2Spld + key) * 4);
          float xa = (va.x + va.y) + (va.z + va.w), xb = (vb.x + vb.y) + (vb.z + vb.w);
          if (key >= n) xa = xb = -INFINITY;  // zero-filled rows past the split
          x[kk][2 * half] = xa;
          x[kk][2 * half + 1] = xb;
          mt_a = fmaxf(mt_a, xa);
          mt_b = fmaxf(mt_b, xb);
        }
      }
      mt_a = fmaxf(mt_a, __shfl_xor_sync(0xffffffffu, mt_a, 1));
      mt_b = fmaxf(mt_b, __shfl_xor_sync(0xffffffffu, mt_b, 1));
      mt_a = fmaxf(mt_a, __shfl_xor_sync(0xffffffffu, mt_a, 2));
      mt_b = fmaxf(mt_b, __shfl_xor_sync(0xffffffffu, mt_b, 2));
      const float mna = fmaxf(m_a, mt_a), mnb = fmaxf(m_b, mt_b);  // finite: key 0 of the tile is valid
      ca = __expf(m_a - mna);  // 0 on the first tile
      cb = __expf(m_b - mnb);
      m_a = mna;
      m_b = mnb;
      float sa = 0.0f, sb = 0.0f;
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float e = __expf(x[kk][i] - ((i & 1) ? mnb : mna));  // 0 for masked keys
          if (i & 1) sb += e;
          else sa += e;
          pa[kk][i] = to_tf32(e);
        }
      }
      l_a = l_a * ca + sa;
      l_b = l_b * cb + sb;
    }

    // 3. O = O * corr + P V over this warp's output n-tiles.
#pragma unroll
    for (int j = 0; j < kT2MaxNo; ++j) o[j][0] *= ca, o[j][1] *= ca, o[j][2] *= cb, o[j][3] *= cb;
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      const float* v0 = buf + (kk * 8 + c) * LDT;      // key 8 kk + c: swizzle swv0
      const float* v1 = buf + (kk * 8 + c + 4) * LDT;  // key 8 kk + c + 4: swizzle swv1
#pragma unroll
      for (int j = 0; j < kT2MaxNo; ++j) {
        if (j < nno) {
          const int d = (no0 + j) * 8 + g;  // latent dim of column g of n-tile no0 + j
          const int q = d >> 2, e = d & 3;
          mma_tf32(o[j], pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3], to_tf32(v0[((q ^ swv0) << 2) | e]),
                   to_tf32(v1[((q ^ swv1) << 2) | e]));
        }
      }
    }
  }
  cp_async_wait<0>();

  // Partial results: every warp its n-tiles; warp 0 the (max, sum) of the 16 heads.
  const int ha = h0 + g, hb = h0 + g + 8;
  const int64_t ia = tc_part_row(t, H, ha, nsplit, split, C), ib = tc_part_row(t, H, hb, nsplit, split, C);
  tc_store_out(part, o, ia, ib, ha < H, hb < H, no0, nno, c);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  if (warp == 0 && c == 0) {
    if (ha < H) part[ia + C] = m_a, part[ia + C + 1] = l_a;
    if (hb < H) part[ib + C] = m_b, part[ib + C + 1] = l_b;
  }
#else
  __trap();
#endif
}

// out[t, h] = W_UV[h] merge(o_lat splits). One block per (head, kFinRows output rows, kFinTok tokens), 8 warps:
// the block merges the head's splits into shared memory (splits without keys skipped), then each warp takes
// kFinRows / 8 rows of W_UV[h] (16-byte loads issued before the wait on the previous kernel) against the merged
// latent outputs. Dv / kFinRows x H blocks (8 x 16 = 128 for DeepSeek-V2-Lite) at decode.
constexpr int kFinTok = 8;  // <= 32: lane tt stores token tt
constexpr int kFinRows = 16, kFinRowsPerWarp = kFinRows / 8, kFinChunks = kTcMaxC / 8 / 32;  // 2 chunks per lane
__global__ void __launch_bounds__(256) mla_tc_finish_kernel(float* out, int64_t lo0, int64_t lo1, const float* part,
                                                            WDesc w, int64_t T, int H, int Dn, int Dv, int C,
                                                            int nsplit) {
  extern __shared__ __align__(16) float fin_sm[];
  float* s_o = fin_sm;                 // [kFinTok][C] merged latent outputs
  float* s_f = fin_sm + kFinTok * C;   // [kFinTok][nsplit] splits with keys: max, then exp(m_j - M) / L
  float* s_l = s_f + kFinTok * nsplit;  // [kFinTok][nsplit] their sums
  int* s_i = reinterpret_cast<int*>(s_l + kFinTok * nsplit);  // [kFinTok][nsplit] their indices
  __shared__ int s_na[kFinTok];
  const int nrt = (Dv + kFinRows - 1) / kFinRows;
  const int h = int(blockIdx.x % unsigned(H));
  const int rt = int((blockIdx.x / unsigned(H)) % unsigned(nrt));
  const int64_t tb = int64_t(blockIdx.x / unsigned(H * nrt)) * kFinTok;
  const int nt = int(T - tb < kFinTok ? T - tb : kFinTok);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool vec = mla_w8_vec(w);
  const int64_t wrow0 = int64_t(h) * (Dn + Dv) + Dn;
  // This warp's rows of W_UV[h]: lane holds columns 8 (lane + 32 j) .. + 8.
  float f[kFinRowsPerWarp][kFinChunks][8];
#pragma unroll
  for (int r = 0; r < kFinRowsPerWarp; ++r) {
    const int d = rt * kFinRows + warp * kFinRowsPerWarp + r;
#pragma unroll
    for (int j = 0; j < kFinChunks; ++j) {
      const int c = 8 * (lane + 32 * j);
      if (d < Dv && c < C) mla_w8(w, vec, wrow0 + d, c, f[r][j]);
    }
  }
  pdl_entry();
  const int64_t PS = C + 2;
  // Warp tt: the token's splits with keys, compacted (index, weight exp(m_j - M) / L) into shared memory; every
  // (max, sum) pair is loaded once.
  for (int tt = warp; tt < nt; tt += 8) {
    const float* pr = part + ((tb + tt) * H + h) * nsplit * PS;
    int na = 0;
    for (int j0 = 0; j0 < nsplit; j0 += 32) {
      const int j = j0 + lane;
      const float mj = j < nsplit ? pr[j * PS + C] : -INFINITY, lj = j < nsplit ? pr[j * PS + C + 1] : 0.0f;
      const unsigned act = __ballot_sync(0xffffffffu, mj != -INFINITY);
      if (mj != -INFINITY) {
        const int k = na + __popc(act & ((1u << lane) - 1u));
        s_i[tt * nsplit + k] = j;
        s_f[tt * nsplit + k] = mj;
        s_l[tt * nsplit + k] = lj;
      }
      na += __popc(act);
    }
    __syncwarp();
    float M = -INFINITY;
    for (int k = lane; k < na; k += 32) M = fmaxf(M, s_f[tt * nsplit + k]);
    M = tc_warp_max(M);
    float L = 0.0f;
    for (int k = lane; k < na; k += 32) L += s_l[tt * nsplit + k] * __expf(s_f[tt * nsplit + k] - M);
    L = warp_sum(L);
    __syncwarp();
    for (int k = lane; k < na; k += 32) s_f[tt * nsplit + k] = __expf(s_f[tt * nsplit + k] - M) / L;
    if (lane == 0) s_na[tt] = na;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kFinTok * C; i += blockDim.x) {
    const int tt = i / C, c = i % C;
    float a = 0.0f;
    if (tt < nt) {
      const float* pr = part + ((tb + tt) * H + h) * nsplit * PS + c;
      const float* sf = s_f + tt * nsplit;
      const int* si = s_i + tt * nsplit;
      const int na = s_na[tt];
      for (int k0 = 0; k0 < na; k0 += 4) {  // four independent loads in flight
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = k0 + u < na ? pr[si[k0 + u] * PS] : 0.0f;
#pragma unroll
        for (int u = 0; u < 4; ++u)
          if (k0 + u < na) a = fmaf(v[u], sf[k0 + u], a);
      }
    }
    s_o[i] = a;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kFinRowsPerWarp; ++r) {
    const int d = rt * kFinRows + warp * kFinRowsPerWarp + r;
    if (d >= Dv) break;
    float acc[kFinTok], unused[kFinTok];
#pragma unroll
    for (int tt = 0; tt < kFinTok; ++tt) acc[tt] = unused[tt] = 0.0f;
#pragma unroll
    for (int j = 0; j < kFinChunks; ++j) {
      if (8 * (lane + 32 * j) >= C) break;
      gemv_chunk_fma<kFinTok, false, 8>(s_o, C, nt, lane + 32 * j, f[r][j], f[r][j], acc, unused);
    }
#pragma unroll
    for (int tt = 0; tt < kFinTok; ++tt) {
      if (tt >= nt) break;
      acc[tt] = warp_sum(acc[tt]);
    }
    float mine = 0.0f;  // lane tt stores token tt
#pragma unroll
    for (int tt = 0; tt < kFinTok; ++tt)
      if (lane == tt) mine = acc[tt];
    if (lane < nt) out[(tb + lane) * lo0 + h * lo1 + d] = mine;
  }
}

struct TcDevice {
  int major = 0, optin = 0;
};
const TcDevice& tc_device() {
  static const TcDevice d = [] {
    TcDevice r;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return r;
    if (cudaDeviceGetAttribute(&r.major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) r.major = 0;
    if (cudaDeviceGetAttribute(&r.optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) r.optin = 0;
    return r;
  }();
  return d;
}

// The two decode kernels differ in their block shape, shared memory and split rule; the rest is shared.
struct TcVariant {
  decltype(&mla_tc_kernel) kernel;
  int threads;
  size_t (*smem)(int C, int R);
  int tile_keys, tiles_per_split, max_splits;  // a split covers >= tiles_per_split tiles when the context is known
  std::atomic<uint64_t>* opted;                // devices whose shared-memory opt-in is done (bit per device)
  const char* name;
};
std::atomic<uint64_t> g_opted_tc{0}, g_opted_tc2{0};
const TcVariant kTc{mla_tc_kernel, kTcThreads, tc_smem_bytes, kTcNT, 1, 64, &g_opted_tc, "tensor cores"};
const TcVariant kTc2{mla_tc2_kernel, kT2Threads, tc2_smem_bytes, kT2NT, 8, 128, &g_opted_tc2, "tensor cores, tc2"};

bool variant_supported(const TcVariant& v, int64_t H, int R, int C) {
  if (H < 1 || C < 8 || C > kTcMaxC || C % 8 != 0 || R < 8 || R > kTcMaxR || R % 8 != 0) return false;
  const TcDevice& d = tc_device();
  return d.major >= 8 && size_t(d.optin) >= v.smem(kTcMaxC, kTcMaxR);  // the launcher opts in to this
}

int variant_splits(const TcVariant& v, int64_t T, int64_t H, int64_t max_keys, int R, int C, int sms) {
  const int64_t G = (H + kTcHeads - 1) / kTcHeads, base = T * G;
  // Resident blocks per SM: 228 KiB of shared memory per SM, 1 KiB reserved per block (sm_80 / sm_90).
  const int64_t per_sm = std::max<int64_t>(1, (228 * 1024) / int64_t(v.smem(C, R) + 1024));
  const int64_t wave = std::max<int64_t>(1, int64_t(sms) * per_sm);
  // At most max_splits, and (when the longest context is known) >= tiles_per_split tiles of keys per split, so
  // that the pipeline fill, the Q fragments and the merge stay small next to the streaming.
  const int64_t tiles =
      max_keys > 0 ? std::max<int64_t>(1, (max_keys + v.tile_keys - 1) / v.tile_keys / v.tiles_per_split)
                   : v.max_splits;
  const int64_t max_ns =
      std::min<int64_t>({int64_t(v.max_splits), tiles, std::max<int64_t>(1, (2 * wave + base - 1) / base)});
  // Fewest splits whose blocks fill >= 90% of the waves they occupy; else the best filling.
  int64_t best = 1;
  double best_eff = 0.0;
  for (int64_t ns = 1; ns <= max_ns; ++ns) {
    const int64_t nb = base * ns;
    const double eff = double(nb) / double((nb + wave - 1) / wave * wave);
    if (eff >= 0.9) return int(ns);
    if (eff > best_eff + 1e-9) best = ns, best_eff = eff;
  }
  return int(best);
}

void variant_run(const TcVariant& v, cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* qn,
                 int64_t lqn0, int64_t lqn1, const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat,
                 int64_t ll0, const float* kpe, int64_t lk0, const WDesc& w, int64_t T, int64_t H, int Dn, int Dv,
                 int R, int C, float scale, const SegMeta& m, float* part, int nsplit, float* qcat) {
  DSFUSE_CHECK(variant_supported(v, H, R, C), "CUDA MLA (", v.name, "): unsupported H ", H, ", R ", R, ", C ", C);
  DSFUSE_CHECK(mla_tc_aligned(lat, ll0, kpe, lk0), "CUDA MLA (tensor cores): cache rows not 16-byte aligned");
  DSFUSE_CHECK(nsplit >= 1, "CUDA MLA (tensor cores): nsplit ", nsplit);
  if (T <= 0) return;
  const int Hi = static_cast<int>(H);
  const unsigned tchunks = static_cast<unsigned>((T + kAbTok - 1) / kAbTok);
  const unsigned ctiles = static_cast<unsigned>((C + kAbCols - 1) / kAbCols);
  launch(mla_tc_absorb_kernel, dim3(tchunks * ctiles * unsigned(Hi)), 256, sizeof(float) * kAbTok * Dn, st, qcat, qn,
         lqn0, lqn1, qpe, lqp0, lqp1, w, T, Hi, Dn, Dv, R, C, scale);
  smem_opt_in(v.kernel, v.smem(kTcMaxC, kTcMaxR), *v.opted);  // the largest any supported shape needs
  const int64_t G = (H + kTcHeads - 1) / kTcHeads;
  launch(v.kernel, dim3(static_cast<unsigned>(T * G * nsplit)), v.threads, v.smem(C, R), st, part,
         static_cast<const float*>(qcat), lat, ll0, kpe, lk0, Hi, R, C, m, nsplit);
  const unsigned fchunks = static_cast<unsigned>((T + kFinTok - 1) / kFinTok);
  const unsigned rtiles = static_cast<unsigned>((Dv + kFinRows - 1) / kFinRows);
  launch(mla_tc_finish_kernel, dim3(fchunks * rtiles * unsigned(Hi)), 256, sizeof(float) * kFinTok * (C + 3 * nsplit),
         st, out, lo0, lo1, static_cast<const float*>(part), w, T, Hi, Dn, Dv, C, nsplit);
}

}  // namespace

bool mla_tc_supported(int64_t H, int R, int C) { return variant_supported(kTc, H, R, C); }
bool mla_tc2_supported(int64_t H, int R, int C) { return variant_supported(kTc2, H, R, C); }

int mla_tc_splits(int64_t T, int64_t H, int64_t max_keys, int R, int C, int sms) {
  return variant_splits(kTc, T, H, max_keys, R, C, sms);
}
int mla_tc2_splits(int64_t T, int64_t H, int64_t max_keys, int R, int C, int sms) {
  return variant_splits(kTc2, T, H, max_keys, R, C, sms);
}

void mla_tc(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
            const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0, const float* kpe,
            int64_t lk0, const WDesc& w, int64_t T, int64_t H, int Dn, int Dv, int R, int C, float scale,
            const SegMeta& m, float* part, int nsplit, float* qcat) {
  variant_run(kTc, st, out, lo0, lo1, qn, lqn0, lqn1, qpe, lqp0, lqp1, lat, ll0, kpe, lk0, w, T, H, Dn, Dv, R, C,
              scale, m, part, nsplit, qcat);
}
void mla_tc2(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
             const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0, const float* kpe,
             int64_t lk0, const WDesc& w, int64_t T, int64_t H, int Dn, int Dv, int R, int C, float scale,
             const SegMeta& m, float* part, int nsplit, float* qcat) {
  variant_run(kTc2, st, out, lo0, lo1, qn, lqn0, lqn1, qpe, lqp0, lqp1, lat, ll0, kpe, lk0, w, T, H, Dn, Dv, R, C,
              scale, m, part, nsplit, qcat);
}

}  // namespace dsfuse::cuda
