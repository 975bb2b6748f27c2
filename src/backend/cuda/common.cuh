// Device helpers shared by the CUDA backend's translation units (header-only, inline).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "backend/backend.h"
#include "core/tensor.h"
#include "ops/sample_rows.h"

namespace dsfuse::cuda {

#define CUDA_CHECK(expr)                                                                     \
  do {                                                                                       \
    cudaError_t e_ = (expr);                                                                 \
    if (e_ != cudaSuccess) fail(cat("CUDA error ", cudaGetErrorString(e_), " at " #expr));   \
  } while (0)

enum WType : int { W_F32 = 0, W_BF16 = 1, W_F16 = 2, W_F8 = 3 };

// A weight as the kernels see it.
struct WDesc {
  const void* w;
  const float* scale;  // FP8 block scales [ceil(N/br), sc_cols]
  int type;
  int64_t ld;  // row stride in elements
  int br, bc, sc_cols;
};

__device__ __forceinline__ float bf16_bits_to_f32(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float round_bf16_dev(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(((u >> 16) | 0x40) << 16);
  u += 0x7fffu + ((u >> 16) & 1u);
  return __uint_as_float((u >> 16) << 16);
}
__device__ __forceinline__ float f8e4m3_to_f32_dev(uint8_t b) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3)));
}

__device__ __forceinline__ float wload(const WDesc& d, int64_t n, int64_t k) {
  switch (d.type) {
    case W_F32: return static_cast<const float*>(d.w)[n * d.ld + k];
    case W_BF16: return bf16_bits_to_f32(static_cast<const uint16_t*>(d.w)[n * d.ld + k]);
    case W_F16: return __half2float(static_cast<const __half*>(d.w)[n * d.ld + k]);
    default: {
      const uint8_t b = static_cast<const uint8_t*>(d.w)[n * d.ld + k];
      return round_bf16_dev(f8e4m3_to_f32_dev(b) * d.scale[(n / d.br) * d.sc_cols + k / d.bc]);
    }
  }
}

__device__ __forceinline__ float vload(const void* p, int type, int64_t i) {
  switch (type) {
    case W_F32: return static_cast<const float*>(p)[i];
    case W_BF16: return bf16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return __half2float(static_cast<const __half*>(p)[i]);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Sum of v over the block, returned to every thread (blockDim.x a multiple of 32, at most 1024).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float red[32];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float s = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.0f;
    s = warp_sum(s);
    if (threadIdx.x == 0) red[0] = s;
  }
  __syncthreads();
  return red[0];
}

// Split K over the S warps of a row (warps w .. w + S - 1 of 8, slice ks = warp % S): their warp sums a[t] (and
// b[t] with SILU) are added through red ([8][TT], or [8][2 TT] with SILU) in slice order 0 .. S - 1; slice 0 gets
// the totals. Every thread of the block passes one barrier.
template <int TT, int S, bool SILU>
__device__ __forceinline__ void splitk_sum(float (*red)[SILU ? 2 * TT : TT], int warp, int lane, int ks, float a[TT],
                                           float b[TT]) {
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      red[warp][t] = a[t];
      if (SILU) red[warp][TT + t] = b[t];
    }
  }
  __syncthreads();
  if (ks != 0) return;
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int j = 0; j < S; ++j) {
      s1 += red[warp + j][t];
      if (SILU) s2 += red[warp + j][TT + t];
    }
    a[t] = s1;
    b[t] = s2;
  }
}

// Cache row of key position s (32-bit division: positions < 2^31, the segment fields are int32; a 64-bit one is
// a long instruction sequence per key).
__device__ __forceinline__ int64_t phys_row(const int32_t* table, int bs, int64_t s) {
  if (!table) return s;
  const unsigned su = static_cast<unsigned>(s), ub = static_cast<unsigned>(bs);
  return int64_t(table[su / ub]) * bs + (su % ub);
}

// ---- dot products of one weight row with up to TT activation rows, one warp per row ----

// A 16-byte weight load that does not allocate in L1: a decode step reads each weight once, and in L1 it would
// evict the activation rows that every warp of the SM rereads for each weight chunk.
__device__ __forceinline__ uint4 ldg_stream(const uint4* p) {
  uint4 v;
  // volatile: the load must stay under the bounds check that guards it (a plain asm may be hoisted out of it).
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}
// 16 bytes global -> shared; zero fill when !valid (src is then not read).
template <typename D, typename S>
__device__ __forceinline__ void cp_async16(D* dst, const S* src, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void bf16x8_to_f32(const uint4& v, float f[8]) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

// ag[t] += f . x[t][EPL i ...] (and au[t] += g . the same with SILU) for t < T: one chunk's products, in order
// (x rows of ldx floats, 16-byte aligned; global or shared memory).
template <int TT, bool SILU, int EPL>
__device__ __forceinline__ void gemv_chunk_fma(const float* x, int64_t ldx, int T, int64_t i, const float f[EPL],
                                               const float g[EPL], float ag[TT], float au[TT]) {
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    if (t >= T) break;
    const float4* xp = reinterpret_cast<const float4*>(x + t * ldx) + (EPL / 4) * i;
    float s = ag[t], r = au[t];
#pragma unroll
    for (int q = 0; q < EPL / 4; ++q) {
      const float4 p = xp[q];
      s = fmaf(f[4 * q], p.x, s); s = fmaf(f[4 * q + 1], p.y, s);
      s = fmaf(f[4 * q + 2], p.z, s); s = fmaf(f[4 * q + 3], p.w, s);
      if (SILU) {
        r = fmaf(g[4 * q], p.x, r); r = fmaf(g[4 * q + 1], p.y, r);
        r = fmaf(g[4 * q + 2], p.z, r); r = fmaf(g[4 * q + 3], p.w, r);
      }
    }
    ag[t] = s;
    au[t] = r;
  }
}

// One token's dot products of a lane streamed through its own cp.async ring (the one-token GEMV and MoE expert
// kernels): `ring` is this lane's slot 0 of a [NS][R][256] array of 16-byte slots in shared memory (R = 2 with
// SILU: gate row wa and up row wb, both already offset to the lane's first chunk), chunk c at wa + c step, nc
// chunks. ring_fill issues the first NS (one commit group each, empty past nc; constant weights, so it may run
// before pdl_wait); ring_dot consumes all nc, refilling each slot with chunk c + NS as soon as it is read, adds
// the products with x (chunk c at 16-byte column i0 + c step) to *a1 (*a2: the up row), and returns with every
// copy complete, so the ring can be reused.
constexpr int kRingBytes = 128;  // per lane in flight
template <bool SILU>
__device__ __forceinline__ void ring_fill(uint4* ring, const uint4* wa, const uint4* wb, int64_t nc, int64_t step) {
  constexpr int R = SILU ? 2 : 1, NS = kRingBytes / 16 / R;
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    if (s < nc) {
      cp_async16(ring + s * R * 256, wa + s * step, true);
      if (SILU) cp_async16(ring + (s * R + 1) * 256, wb + s * step, true);
    }
    cp_async_commit();
  }
}
template <bool SILU>
__device__ __forceinline__ void ring_dot(uint4* ring, const uint4* wa, const uint4* wb, int64_t nc, int64_t step,
                                         const float* x, int64_t i0, float* a1, float* a2) {
  constexpr int R = SILU ? 2 : 1, NS = kRingBytes / 16 / R;
  float s1 = *a1, s2 = *a2;
  int s = 0;
  for (int64_t c = 0; c < nc; ++c) {
    cp_async_wait<NS - 1>();  // group c (chunk c) has landed: NS + c groups committed so far
    const uint4 va = ring[s * R * 256];
    uint4 vb = va;
    if (SILU) vb = ring[(s * R + 1) * 256];
    float f[8], g[8];
    bf16x8_to_f32(va, f);
    if (SILU) bf16x8_to_f32(vb, g);
    if (c + NS < nc) {  // refill the slot just read (this lane's own) with chunk c + NS
      cp_async16(ring + s * R * 256, wa + (c + NS) * step, true);
      if (SILU) cp_async16(ring + (s * R + 1) * 256, wb + (c + NS) * step, true);
    }
    cp_async_commit();
    gemv_chunk_fma<1, SILU, 8>(x, 0, 1, i0 + c * step, f, g, &s1, &s2);
    s = s + 1 == NS ? 0 : s + 1;
  }
  cp_async_wait<0>();
  *a1 = s1;
  *a2 = s2;
}

// acc[t] += sum_k W[row, k] * xr[t][k] for t < nt (lane-partial sums; the caller reduces the warp).
// Vectorised when the weight is bf16 with K % 8 == 0 and 16-byte aligned rows and inputs.
template <int TT>
__device__ __forceinline__ void row_dot(const WDesc& w, int64_t row, int64_t K, const float* const* xr, int nt,
                                        bool vec, float acc[TT]) {
  const int lane = threadIdx.x % 32;
  if (vec) {
    const uint4* wr = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w.w) + row * w.ld);
    const int64_t K8 = K / 8;
    for (int64_t i0 = lane; i0 < K8; i0 += 32 * 4) {
      uint4 wv[4];
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (i0 + 32 * u < K8) wv[u] = __ldg(wr + i0 + 32 * u);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int64_t i = i0 + 32 * u;
        if (i >= K8) break;
        float f[8];
        bf16x8_to_f32(wv[u], f);
#pragma unroll
        for (int t = 0; t < TT; ++t) {
          if (t >= nt) break;
          const float4 a = reinterpret_cast<const float4*>(xr[t])[2 * i];
          const float4 b = reinterpret_cast<const float4*>(xr[t])[2 * i + 1];
          float s = acc[t];
          s = fmaf(f[0], a.x, s);
          s = fmaf(f[1], a.y, s);
          s = fmaf(f[2], a.z, s);
          s = fmaf(f[3], a.w, s);
          s = fmaf(f[4], b.x, s);
          s = fmaf(f[5], b.y, s);
          s = fmaf(f[6], b.z, s);
          s = fmaf(f[7], b.w, s);
          acc[t] = s;
        }
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      const float wv = wload(w, row, k);
#pragma unroll
      for (int t = 0; t < TT; ++t)
        if (t < nt) acc[t] = fmaf(wv, xr[t][k], acc[t]);
    }
  }
}

__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
// Whether row_dot may take its vectorised path for weight `w` and inputs x (row stride ldx) of K columns.
__host__ __device__ inline bool vec_ok(const WDesc& w, int64_t K, const float* x, int64_t ldx) {
  return w.type == W_BF16 && K % 8 == 0 && w.ld % 8 == 0 && ldx % 4 == 0 && aligned16(w.w) && aligned16(x);
}

// Warps per weight row (split K) for the vectorised GEMVs: enough warps in all to fill the GPU (about 32 per SM).
int gemv_split(int64_t rows);

inline void check_launch() { CUDA_CHECK(cudaGetLastError()); }

inline unsigned blocks(int64_t n, int per = 256) { return static_cast<unsigned>((n + per - 1) / per); }

// ---- programmatic dependent launch (PDL, sm_90+) ----
// Kernels are launched with cuda::launch(...), which lets the next kernel on the stream start while this one
// drains (its blocks wait in pdl_wait() until the previous grid has completed and its writes are visible).
// Rule for every kernel launched this way: call pdl_wait() before touching memory that earlier work writes
// or reads (only constant weights may be read before it); pdl_trigger() right after it lets the following
// kernel be scheduled. The usual prologue is the two together: pdl_entry(). On older GPUs, or with
// DSFUSE_CUDA_PDL=0, these are no-ops and launches are ordinary.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_entry() {
  pdl_wait();
  pdl_trigger();
}
// Whether launches carry the PDL attribute (compute capability >= 9.0 and DSFUSE_CUDA_PDL != 0; set by the
// backend at start-up for the whole process).
bool pdl_enabled();
void set_pdl_enabled(bool on);
// Decode GEMV load pipelining: rolling refill of each load slot (default) or refill after each round of kGvU
// loads (DSFUSE_CUDA_GEMV_ROLL=0; kept for A/B measurement).
void set_gemv_roll(bool on);
// Warps per row of the decode GEMV forced to 1, 2 or 4 (0: chosen by the row count; DSFUSE_CUDA_GEMV_SPLIT).
void set_gemv_split(int s);
// L1-bypassing weight loads in the decode GEMV: -1 by weight size (default), 0 never, 1 always
// (DSFUSE_CUDA_GEMV_STREAM).
void set_gemv_stream(int s);
// One-token decode GEMVs of bf16 weights under the TMA size through a per-lane cp.async ring (default on;
// DSFUSE_CUDA_GEMV_ASYNC=0: the register-held kernel).
void set_gemv_async(bool on);
// One-token decode GEMVs of bf16 weights of at least min_bytes (-1: keep the 24 MB default) through bulk copies
// (TMA) into per-warp shared-memory rings (sm_90 only; DSFUSE_CUDA_GEMV_TMA=0 off, DSFUSE_CUDA_GEMV_TMA_MIN_MB).
void set_gemv_tma(bool on, int64_t min_bytes = -1);
// One-token MoE expert GEMVs of bf16 experts through per-lane cp.async rings (default on; DSFUSE_CUDA_MOE_RING=0:
// register-held loads).
void set_moe_ring(bool on);
// Opts `kernel` in to `bytes` of dynamic shared memory (over the default 48 KB) on the current device, once per
// device: the attribute belongs to the device, and tensor-parallel ranks launch the same kernels on several GPUs.
// opted: one bit per device (devices 64+ set it on every call).
template <typename... KArgs>
void smem_opt_in(void (*kernel)(KArgs...), size_t bytes, std::atomic<uint64_t>& opted) {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = dev < 64 ? uint64_t(1) << dev : 0;
  if (bit && (opted.load() & bit)) return;
  CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(bytes)));
  opted.fetch_or(bit);
}
// kernel<<<grid, block, shm, st>>>(args...) with the PDL attribute when enabled; checks the launch.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shm, cudaStream_t st, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = shm;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  if (pdl_enabled()) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
}

// Step metadata in device memory (see CudaBackend::begin_step): per token its segment and cache row; per
// segment {t0, n, past, table offset or -1}; the block tables.
struct SegMeta {
  const int32_t* tok_seg = nullptr;  // [T]
  const int32_t* slot = nullptr;     // [T] physical cache row of each new token
  const int32_t* seg = nullptr;      // [nseg, 4]
  const int32_t* tables = nullptr;   // block tables, concatenated
  int block_size = 0;
};
// Token t's keys: S (cached + new up to and including t) and its block table (nullptr: contiguous rows).
__device__ __forceinline__ void seg_of(const SegMeta& m, int64_t t, int64_t& S, const int32_t*& table) {
  const int32_t* sg = m.seg + 4 * m.tok_seg[t];
  S = int64_t(sg[2]) + (t - sg[0]) + 1;  // past + index in the segment + 1
  table = sg[3] >= 0 ? m.tables + sg[3] : nullptr;
}

// d += A B, mma.sync m16n8k8 with tf32 inputs and f32 accumulators. Fragments (PTX ISA "Matrix Fragments for
// mma.m16n8k8", .tf32), g = lane >> 2, c = lane & 3:
//   A (16 x 8, row): a0 = A[g][c]  a1 = A[g + 8][c]  a2 = A[g][c + 4]  a3 = A[g + 8][c + 4]
//   B (8 x 8, col):  b0 = B[k = c][n = g]            b1 = B[k = c + 4][n = g]
//   C/D (16 x 8):    c0 = D[g][2c]  c1 = D[g][2c + 1]  c2 = D[g + 8][2c]  c3 = D[g + 8][2c + 1]
// f32 bits passed as tf32 are truncated to 10 mantissa bits by the tensor core; to_tf32 rounds to nearest.
__device__ __forceinline__ void mma_tf32(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// SMs of the current process's GPU type (kernels.cu).
int gemv_sms();

// y [T, N] = x [T, K] W^T (+ b); T <= 8. bf16 weights with 16-byte aligned rows take a vectorised path.
void gemv(cudaStream_t st, float* y, int64_t ldy, const float* x, int64_t ldx, int64_t T, const WDesc& w, int64_t N,
          int64_t K, const void* bias, int btype);
constexpr int kGemvMaxT = 8;
// y [T, I] = silu(x Wg^T) * (x Wu^T) for W = [Wg; Wu] ([2I, K]); T <= 8.
void gemv_silu(cudaStream_t st, float* y, int64_t ldy, const float* x, int64_t ldx, int64_t T, const WDesc& w,
               int64_t I, int64_t K);
// One token through the TMA / cp.async-ring GEMVs with a fold-in: nw set: y = rms_norm(x, nw) W^T (+ b), or with
// silu the SwiGLU of it over the stacked gate/up ([2N, K], no bias); res: y += x W^T (+ b). False (nothing launched)
// when the weight, alignment or K is not one they take or both kernels are off.
bool gemv_fused(cudaStream_t st, float* y, const float* x, const WDesc& w, int64_t N, int64_t K, const void* bias,
                int btype, bool silu, const void* nw, int nwtype, float eps, bool res);
// y [T, N] = Y2[0:T] + Y2[T:2T] (+ b): sums the hi/lo halves of a split-activation GEMM.
void combine_halves(cudaStream_t st, float* y, int64_t ldy, const float* y2, int64_t T, int64_t N, const void* bias,
                    int btype);
// Batched attention ops over the step's segments.
void copy_rows_segs(cudaStream_t st, float* dst, int64_t ldd, const float* src, int64_t lds, int64_t T, int64_t D,
                    const SegMeta& m);
void attention_segs(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* q, int64_t lq0, int64_t lq1,
                    const float* k, int64_t lk0, int64_t lk1, const float* v, int64_t lv0, int64_t lv1, int64_t T,
                    int64_t Hq, int64_t group, int D, int Dv, float scale, const SegMeta& m, float* part,
                    int64_t target_blocks, int max_split, int* counters);
// GQA steps with more query heads than SMs, head dim 128 and 2-8 heads per kv head run on tensor cores (TF32:
// K and V truncated, Q and P rounded; ~1e-3 relative) unless set_attn_tc(false) (the exact-f32 mode, or
// DSFUSE_CUDA_ATTN_TC=0).
void set_attn_tc(bool on);
// target_blocks: the key splits aim at this many blocks in all (the backend: blocks per SM x SMs).
// counters: kAttnCounters zeroed ints owned by the caller (left zeroed after each launch), or nullptr: with
// them the key splits are merged by the last block of each group instead of a second kernel.
constexpr int kAttnCounters = 4096;
// Partial-result scratch (floats) attention_segs needs for up to `max_split` key splits.
inline int64_t attention_part_floats(int64_t T, int64_t Hq, int Dv, int max_split) {
  return T * Hq * max_split * (Dv + 2);
}
void mla_segs(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
              const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0, const float* kpe,
              int64_t lk0, const WDesc& w, int64_t T, int64_t H, int Dn, int Dv, int R, int C, float scale,
              const SegMeta& m, float* part, int nsplit);  // part: [T * H, nsplit, C + 2] floats when nsplit > 1
// The same with all heads of a token per block (opt-in, DSFUSE_CUDA_MLA_HEADS=1; see kernels.cu): part
// [T * H, nsplit, C + 2], qlat [T, H, C], qpe_s [T, H, R] floats of scratch.
bool mla_heads_supported(int64_t H, int R, int C);
void mla_heads(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
               const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0, const float* kpe,
               int64_t lk0, const WDesc& w, int64_t T, int64_t H, int Dn, int Dv, int R, int C, float scale,
               const SegMeta& m, float* part, int nsplit, float* qlat, float* qpe_s);
// MoE on the device (no host synchronisation): routing, and the routed experts as grouped GEMVs.
struct ExpertDesc {
  WDesc gate, up, down;  // gate.w == nullptr: expert not on this rank
};
void moe_route(cudaStream_t st, int32_t* ids, int64_t ldi, float* wts, int64_t ldw, const float* logits,
               int64_t ldl, const float* bias, int64_t T, const RouterParams& p);
void moe_experts_grouped(cudaStream_t st, float* out, int64_t ldo, const float* x, int64_t ldx, const int32_t* ids,
                         int64_t ldi, const float* wts, int64_t ldw, int64_t T, int K, int64_t H, int64_t I,
                         const ExpertDesc* experts, int E, int32_t* cnt, int32_t* list, float* hbuf, float* ybuf);
// cnt: 2E + 1 ints of scratch; list: E * T ints.
// GEMM path (large steps): the pairs sorted by expert, stably (see moe_sort_kernel): meta [2E + 1] (counts,
// first rows, total), pair / tok [T K] (pair id and token of each sorted row).
void moe_sort_pairs(cudaStream_t st, const int32_t* ids, int64_t ldi, int64_t T, int K, int E, int32_t* meta,
                    int32_t* pair, int32_t* tok);
// dst[idx[r], :] = src[r, :] for r < n.
void moe_scatter_rows(cudaStream_t st, float* dst, int64_t ldd, const float* src, int64_t lds, const int32_t* idx,
                      int64_t n, int64_t H);
// out[t] = sum_j wts[t, j] ybuf[t K + j] over the slots whose expert is on this rank (fixed order j = 0..K-1).
void moe_combine(cudaStream_t st, float* out, int64_t ldo, const float* ybuf, const float* wts, int64_t ldw,
                 const int32_t* ids, int64_t ldi, const ExpertDesc* experts, int E, int64_t T, int K, int64_t H);
// ids[r] = the token chosen from logits row r with params[r] (device array), as ops/sample_rows.h defines.
void sample_rows(cudaStream_t st, int32_t* ids, const float* logits, int64_t ld, int64_t R, int64_t V,
                 const SampleRowParams* params);
// ids[r] = argmax x[r, :] (lowest index on ties)
// scratch: argmax_scratch_bytes(R)
void argmax_rows(cudaStream_t st, int32_t* ids, const float* x, int64_t ldx, int64_t R, int64_t V, void* scratch);
inline size_t argmax_scratch_bytes(int64_t R) { return static_cast<size_t>(R) * 64 * (sizeof(float) + 8); }
// Occupies the stream for `seconds` (profiling: the host queues a whole step meanwhile, so per-op GPU times
// are not stretched by launch latency).
void gpu_spin(cudaStream_t st, double seconds);
// GB/s of a streaming read of `bytes` of device memory (best of `passes`).
double read_bandwidth_gbs(cudaStream_t st, size_t bytes, int passes);

}  // namespace dsfuse::cuda
