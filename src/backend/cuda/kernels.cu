// CUDA kernels of the fast paths: vectorised decode GEMV, cache writes over the step's segments, the FP32 MLA
// kernels (exact mode and fallback; the tensor-core one is mla_tc.cu), argmax and the HBM read probe (MoE:
// moe_kernels.cu; GQA attention: attention.cu). Launchers are declared in common.cuh; cuda_backend.cu decides
// when each is used.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "backend/cuda/common.cuh"

namespace dsfuse::cuda {
namespace {

template <int TT>
__global__ void __launch_bounds__(256) gemv_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, WDesc w,
                                                   int64_t N, int64_t K, int T, const void* bias, int btype,
                                                   bool vec) {
  pdl_entry();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (n >= N) return;
  const float* xr[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) xr[t] = x + t * ldx;
  float acc[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) acc[t] = 0.0f;
  row_dot<TT>(w, n, K, xr, T, vec, acc);
  const float b = bias ? vload(bias, btype, n) : 0.0f;
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    if (t >= T) break;
    const float s = warp_sum(acc[t]);
    if (lane == 0) y[t * ldy + n] = s + b;
  }
}

// y[t, n] = silu(x[t] . W[n]) * (x[t] . W[n + I]) for a stacked gate/up weight [2I, K]; T <= 8.
template <int TT>
__global__ void __launch_bounds__(256) gemv_silu_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, WDesc w,
                                                        int64_t I, int64_t K, int T, bool vec) {
  pdl_entry();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (n >= I) return;
  const float* xr[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) xr[t] = x + t * ldx;
  float g[TT], u[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) g[t] = u[t] = 0.0f;
  row_dot<TT>(w, n, K, xr, T, vec, g);
  row_dot<TT>(w, n + I, K, xr, T, vec, u);
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    if (t >= T) break;
    const float gs = warp_sum(g[t]), us = warp_sum(u[t]);
    if (lane == 0) y[t * ldy + n] = gs / (1.0f + expf(-gs)) * us;
  }
}

// Vectorised decode GEMV: y[t, n] = x[t] . W[n] (+ b), or with SILU y[t, n] = silu(x[t] . W[n]) * (x[t] . W[n + up])
// over a stacked gate/up weight. bf16 weights (vec_ok): 8 per 16-byte load; F8: FP8 (e4m3) codes with block
// scales (f8_vec_ok: K % 16 == 0, 16-byte aligned rows, bc % 16 == 0 so a load never straddles two scale
// blocks), 16 per load, dequantised exactly as the reference does (code x block scale, rounded to bf16).
// Eight warps per block; S warps share a row (split K, summed through shared memory) so that small layers still
// put enough loads in flight; each lane keeps kGvU 16-byte weight loads in flight. The first batch of weight
// loads is issued before pdl_wait(): the weights are constant, so a kernel launched behind the previous one
// streams its weights while that one drains.
constexpr int kGvU = 8;
__device__ __forceinline__ void f8x16_to_f32(const uint4& v, float s, float f[16]) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int b = 0; b < 4; ++b)
      f[4 * i + b] = round_bf16_dev(f8e4m3_to_f32_dev(static_cast<uint8_t>(u[i] >> (8 * b))) * s);
  }
}
// The weights of one 16-byte chunk (a: the row, b: the up row with SILU) as floats: 8 bf16, or 16 FP8 codes times
// their block scale (sa, sb).
template <bool SILU, bool F8>
__device__ __forceinline__ void gemv_chunk_to_f32(const uint4& a, const uint4& b, float sa, float sb,
                                                  float f[F8 ? 16 : 8], float g[F8 ? 16 : 8]) {
  if constexpr (F8) {
    f8x16_to_f32(a, sa, f);
    if (SILU) f8x16_to_f32(b, sb, g);
  } else {
    bf16x8_to_f32(a, f);
    if (SILU) bf16x8_to_f32(b, g);
  }
}
// A GEMV output: silu(gate) * up, or the dot product plus the bias value.
template <bool SILU>
__device__ __forceinline__ float gemv_out(float dot, float up, float bias) {
  return SILU ? dot / (1.0f + expf(-dot)) * up : dot + bias;
}

template <bool STREAM>
__device__ __forceinline__ uint4 gemv_load(const uint4* p) {
  return STREAM ? ldg_stream(p) : __ldg(p);
}

template <int TT, int S, bool SILU, bool F8, bool STREAM>
__global__ void __launch_bounds__(256) gemv_vec_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, WDesc w,
                                                       int64_t N, int64_t K, int T, const void* bias, int btype,
                                                       int64_t up, bool roll) {
  constexpr int U = SILU ? kGvU / 2 : kGvU;  // loads per row in flight (two rows with SILU)
  constexpr int EPL = F8 ? 16 : 8;           // weights per 16-byte load
  __shared__ float red[8][SILU ? 2 * TT : TT];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * (8 / S) + warp / S;
  const int ks = warp % S;
  const bool live = n < N;
  const int64_t KV = K / EPL, step = 32 * S;
  const int64_t ng = live ? n : 0, nu = ng + (SILU ? up : 0);
  const char* W = static_cast<const char*>(w.w);
  const uint4* wg = reinterpret_cast<const uint4*>(W + ng * w.ld * (F8 ? 1 : 2));
  const uint4* wu = reinterpret_cast<const uint4*>(W + nu * w.ld * (F8 ? 1 : 2));
  const float* sg = F8 ? w.scale + (ng / w.br) * w.sc_cols : nullptr;
  const float* su = F8 ? w.scale + (nu / w.br) * w.sc_cols : nullptr;
  uint4 a[U], b[U];
  int64_t ib = ks * 32 + lane;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t i = ib + u * step;
    if (live && i < KV) {
      a[u] = gemv_load<STREAM>(wg + i);
      if (SILU) b[u] = gemv_load<STREAM>(wu + i);
    }
  }
  pdl_entry();
  float ag[TT], au[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) ag[t] = au[t] = 0.0f;
  while (live && ib < KV) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = ib + u * step;
      if (i >= KV) break;
      float f[EPL], g[EPL];
      gemv_chunk_to_f32<SILU, F8>(a[u], b[u], F8 ? __ldg(sg + (16 * i) / w.bc) : 0.0f,
                                  F8 && SILU ? __ldg(su + (16 * i) / w.bc) : 0.0f, f, g);
      // Rolling refill: slot u's next load is issued as soon as its data is in registers, so about U loads
      // stay in flight the whole time (instead of U, then none while the round is summed).
      if (roll) {
        const int64_t j = i + U * step;
        if (j < KV) {
          a[u] = gemv_load<STREAM>(wg + j);
          if (SILU) b[u] = gemv_load<STREAM>(wu + j);
        }
      }
      gemv_chunk_fma<TT, SILU, EPL>(x, ldx, T, i, f, g, ag, au);
    }
    ib += U * step;
    if (roll) continue;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = ib + u * step;
      if (i < KV) {
        a[u] = gemv_load<STREAM>(wg + i);
        if (SILU) b[u] = gemv_load<STREAM>(wu + i);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    ag[t] = warp_sum(ag[t]);
    if (SILU) au[t] = warp_sum(au[t]);
  }
  if (S > 1) {
    splitk_sum<TT, S, SILU>(red, warp, lane, ks, ag, au);
    if (ks != 0) return;
  }
  if (!live || lane != 0) return;
  const float bv = !SILU && bias ? vload(bias, btype, n) : 0.0f;
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    if (t >= T) break;
    y[t * ldy + n] = gemv_out<SILU>(ag[t], au[t], bv);
  }
}

// What the one-token GEMVs below fold in. NORM: the input is rms_norm(x) * nw, computed by each block into xs
// (K floats of shared memory) before its dot products; the dots use x * nw and are scaled by 1 / rms at the end.
// RES: the output is added to y (the residual stream) instead of stored.
struct GemvFuse {
  const void* nw = nullptr;  // norm weight [K] (NORM)
  int nwtype = 0;
  float eps = 0.0f;
};
// xs[k] = x[k] * nw[k] for k < K; returns 1 / rms(x) (every thread of the block; block_sum's barriers also make
// xs visible). K % 4 == 0; the loads go out 4 float4 (and their 16 norm weights) at a time, so a row of up to
// 4096 costs one memory round trip.
__device__ __forceinline__ float gemv_norm_prologue(const float* x, int64_t K, const GemvFuse& fz, float* xs) {
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float4* xs4 = reinterpret_cast<float4*>(xs);
  const int64_t K4 = K / 4, step = blockDim.x;
  float ss = 0.0f;
  for (int64_t i0 = threadIdx.x; i0 < K4; i0 += 4 * step) {
    float4 v[4];
    float g[16];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t i = i0 + j * step;
      if (i < K4) {
        v[j] = x4[i];
#pragma unroll
        for (int q = 0; q < 4; ++q) g[4 * j + q] = vload(fz.nw, fz.nwtype, 4 * i + q);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t i = i0 + j * step;
      if (i >= K4) break;
      ss = fmaf(v[j].x, v[j].x, ss); ss = fmaf(v[j].y, v[j].y, ss);
      ss = fmaf(v[j].z, v[j].z, ss); ss = fmaf(v[j].w, v[j].w, ss);
      xs4[i] = make_float4(v[j].x * g[4 * j], v[j].y * g[4 * j + 1], v[j].z * g[4 * j + 2], v[j].w * g[4 * j + 3]);
    }
  }
  return 1.0f / sqrtf(block_sum(ss) / float(K) + fz.eps);  // as the norm kernels
}

// The one-token GEMV for bf16 weights under the TMA kernel's size (g_gemv_tma_min) over a cp.async ring: each
// lane streams its 16-byte chunks of the row through kRingBytes / 16 slots of shared memory that it alone
// writes and reads (no barriers), so the loads in flight are not held in registers: 32 registers instead of the
// register-held kernel's 83 (2 blocks per SM there, ncu). cp.async.cg caches in L2 only, so the activations keep
// L1 to themselves. kbench gemv --graph on an H200 (runs 28, 30): 1536x1536 4.24 -> 2.78 us, 576x2048 2.82 ->
// 1.92, 3072x2048 7.25 -> 5.16, 1536x8960 15.2 -> 11.2 (2048x1536 4.58 -> 4.72: the one shape measured slower).
template <int S, bool SILU, bool NORM, bool RES>
__global__ void __launch_bounds__(256) gemv_async_kernel(float* y, const float* x, WDesc w, int64_t N, int64_t K,
                                                         const void* bias, int btype, int64_t up, GemvFuse fz) {
  constexpr int R = SILU ? 2 : 1;              // weight rows streamed per lane (gate and up)
  constexpr int NS = kRingBytes / 16 / R;      // ring slots per lane
  extern __shared__ uint4 gv_ring[];           // [NS][R][256]: ring_fill / ring_dot (NORM: then xs [K])
  __shared__ float red[8][SILU ? 2 : 1];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t n = int64_t(blockIdx.x) * (8 / S) + warp / S;
  const int ks = warp % S;
  const bool live = n < N;
  const int64_t KV = K / 8, step = 32 * S, i0 = ks * 32 + lane;
  const int64_t nc = live && i0 < KV ? (KV - i0 + step - 1) / step : 0;  // this lane's chunks of the row
  const int64_t ng = live ? n : 0, nu = ng + (SILU ? up : 0);
  const uint4* wg = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w.w) + ng * w.ld) + i0;
  const uint4* wu = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w.w) + nu * w.ld) + i0;
  uint4* ring = gv_ring + tid;
  ring_fill<SILU>(ring, wg, wu, nc, step);
  pdl_entry();
  const float yres = RES && live && ks == 0 && lane == 0 ? y[n] : 0.0f;  // loaded now, used at the end
  float rs = 1.0f;
  const float* xin = x;
  if (NORM) {
    float* xs = reinterpret_cast<float*>(gv_ring + NS * R * 256);
    rs = gemv_norm_prologue(x, K, fz, xs);
    xin = xs;
  }
  float ag = 0.0f, au = 0.0f;
  ring_dot<SILU>(ring, wg, wu, nc, step, xin, i0, &ag, &au);
  ag = warp_sum(ag);
  if (SILU) au = warp_sum(au);
  if (S > 1) {
    splitk_sum<1, S, SILU>(red, warp, lane, ks, &ag, &au);
    if (ks != 0) return;
  }
  if (!live || lane != 0) return;
  const float out = gemv_out<SILU>(ag * rs, au * rs, !SILU && bias ? vload(bias, btype, n) : 0.0f);
  y[n] = RES ? yres + out : out;
}

// ---- decode GEMV at one token through the Tensor Memory Accelerator (sm_90) ----
// cuBLAS's batch-1 kernels on an H200 (ncu: nvjet ..._splitK, one 384-thread block per SM with 164 KB of shared
// memory in flight) beat the register-held GEMV above by 10-20 % on the 7B shapes; the per-lane cp.async ring
// (gemv_async_kernel) did not close the gap. Here each warp streams its own rows through its own ring of
// kTmaStages x kTmaSeg bytes with 1D bulk copies (cp.async.bulk, one instruction per piece of a row, completion
// on an mbarrier), one 256-thread block per SM: 160 KB in flight per SM without registers holding it. Block b
// owns rows [N b / G, N (b + 1) / G); a warp group of S warps takes every (8 / S)-th of them, its S warps one
// contiguous part of K each (S > 1 when a block has < 32 rows; parts summed through shared memory at the end).
// Run 29: 12288x4096 32.5 -> 26.5 us (torch's cuBLAS: 26.5), 4096x11008 31.3 -> 28.1, 3584x18944 43.2 -> 36.7,
// lm_head 102400x4096 208 -> 196; 8-layer decode Qwen-7B 1.08x, LLM-7B 1.14x, 1.5B 1.12x.
constexpr int kTmaStages = 5;
constexpr int kTmaSeg = 4096;  // bytes of one ring slot (one piece of a row; gate + up halves with SILU)
constexpr int kTmaMaxRowsSplit = 32;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
// Arms the barrier's phase for `bytes` of bulk copies (this thread's arrival included).
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n\t.reg .pred p;\n"
      "WAIT:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t"
      "@!p bra WAIT;\n}" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
#endif
}
// bytes (multiple of 16, 16-byte aligned ends) global -> shared, completing on bar.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
#endif
}

template <bool SILU, bool NORM, bool RES>
__global__ void __launch_bounds__(256, 1) gemv_tma_kernel(float* y, const float* x, WDesc w, int64_t N, int64_t K,
                                                          int S, const void* bias, int btype, int64_t up, GemvFuse fz) {
  extern __shared__ __align__(128) unsigned char tma_ring[];  // [8 warps][kTmaStages][kTmaSeg] (NORM: then xs [K])
  __shared__ __align__(8) uint64_t bar[8][kTmaStages];
  __shared__ float part[kTmaMaxRowsSplit][8][SILU ? 2 : 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r0 = N * blockIdx.x / gridDim.x, r1 = N * (blockIdx.x + 1) / gridDim.x;
  const int groups = 8 / S, g = warp / S, ks = warp % S;
  const int64_t partlen = ((K + S - 1) / S + 7) / 8 * 8;
  const int64_t k0 = min(K, ks * partlen), k1 = min(K, k0 + partlen);
  constexpr int64_t PE = kTmaSeg / 2 / (SILU ? 2 : 1);  // weights per row per piece
  const int64_t np = (k1 - k0 + PE - 1) / PE;          // pieces of each of this warp's rows
  unsigned char* ring = tma_ring + warp * kTmaStages * kTmaSeg;
  uint64_t* wbar = bar[warp];
  const uint16_t* W = static_cast<const uint16_t*>(w.w);
  if (lane == 0) {
    for (int s = 0; s < kTmaStages; ++s) mbar_init(wbar + s, 1);
    mbar_init_fence();
  }
  __syncwarp();
  // Producer (lane 0): the next piece to load, kTmaStages pieces ahead of the consumer.
  int64_t prow = r0 + g, pp = 0;
  auto issue = [&](int slot) {
    if (np == 0 || prow >= r1) return;
    const int64_t kb = k0 + pp * PE;
    const uint32_t bytes = static_cast<uint32_t>(min(PE, k1 - kb) * 2);
    mbar_expect_tx(wbar + slot, SILU ? 2 * bytes : bytes);
    bulk_copy(ring + slot * kTmaSeg, W + prow * w.ld + kb, bytes, wbar + slot);
    if (SILU) bulk_copy(ring + slot * kTmaSeg + kTmaSeg / 2, W + (prow + up) * w.ld + kb, bytes, wbar + slot);
    if (++pp == np) {
      pp = 0;
      prow += groups;
    }
  };
  if (lane == 0)
    for (int s = 0; s < kTmaStages; ++s) issue(s);
  pdl_entry();
  float rs = 1.0f;
  const float* xin = x;
  if (NORM) {
    float* xs = reinterpret_cast<float*>(tma_ring + size_t(8) * kTmaStages * kTmaSeg);
    rs = gemv_norm_prologue(x, K, fz, xs);
    xin = xs;
  }
  int slot = 0;
  uint32_t phase = 0;
  for (int64_t row = r0 + g; row < r1; row += groups) {
    const float yres = RES && S == 1 && lane == 0 ? y[row] : 0.0f;  // loaded now, used after the row's dots
    float a = 0.0f, u = 0.0f;
    for (int64_t p = 0; p < np; ++p) {
      mbar_wait(wbar + slot, phase);
      const int64_t kb = k0 + p * PE;
      const int nc = static_cast<int>(min(PE, k1 - kb) / 8);
      const uint4* src = reinterpret_cast<const uint4*>(ring + slot * kTmaSeg);
      for (int c = lane; c < nc; c += 32) {
        const uint4 v = src[c];
        const uint4 vu = SILU ? src[kTmaSeg / 32 + c] : v;
        float f[8], gu[8];
        gemv_chunk_to_f32<SILU, false>(v, vu, 0.0f, 0.0f, f, gu);
        gemv_chunk_fma<1, SILU, 8>(xin, 0, 1, kb / 8 + c, f, gu, &a, &u);
      }
      __syncwarp();  // every lane has read the slot before it is refilled
      if (lane == 0) issue(slot);
      if (++slot == kTmaStages) {
        slot = 0;
        phase ^= 1;
      }
    }
    a = warp_sum(a);
    if (SILU) u = warp_sum(u);
    if (lane != 0) continue;
    if (S == 1) {
      const float out = gemv_out<SILU>(a * rs, u * rs, !SILU && bias ? vload(bias, btype, row) : 0.0f);
      y[row] = RES ? yres + out : out;
    } else {
      part[row - r0][ks][0] = a;
      if (SILU) part[row - r0][ks][SILU ? 1 : 0] = u;
    }
  }
  if (S == 1) return;
  __syncthreads();
  for (int64_t t = threadIdx.x; t < r1 - r0; t += blockDim.x) {
    float a = 0.0f, u = 0.0f;
    for (int j = 0; j < S; ++j) {
      a += part[t][j][0];
      if (SILU) u += part[t][j][SILU ? 1 : 0];
    }
    const float out = gemv_out<SILU>(a * rs, u * rs, !SILU && bias ? vload(bias, btype, r0 + t) : 0.0f);
    y[r0 + t] = RES ? y[r0 + t] + out : out;
  }
}

__global__ void combine_halves_kernel(float* y, int64_t ldy, const float* y2, int64_t T, int64_t N, const void* bias,
                                      int btype) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * N) return;
  const int64_t t = i / N, n = i % N;
  y[t * ldy + n] = y2[i] + y2[T * N + i] + (bias ? vload(bias, btype, n) : 0.0f);
}

// ---- batched attention over the step's segments ----

__global__ void copy_rows_segs_kernel(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t T, int64_t D,
                                      SegMeta m) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * D) return;
  const int64_t t = i / D, d = i % D;
  dst[int64_t(m.slot[t]) * ldd + d] = src[t * lds + d];
}

// Absorbed MLA, one block (kMlaWarps warps) per (token, head). C <= 32 * kMlaPer.
constexpr int kMlaWarps = 4, kMlaPer = 16;
__global__ void mla_segs_kernel(float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
                                const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0,
                                const float* kpe, int64_t lk0, WDesc w, int64_t H, int Dn, int Dv, int R, int C,
                                float scale, SegMeta m, int nsplit, float* part) {
  pdl_entry();
  extern __shared__ float sm[];
  float* q_lat = sm;                   // [C]
  float* o_part = sm + C;              // [kMlaWarps, C]
  float* ml = o_part + kMlaWarps * C;  // [kMlaWarps, 2]
  const int64_t t = blockIdx.x / H, h = blockIdx.x % H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t S;
  const int32_t* table;
  seg_of(m, t, S, table);
  const int bs = m.block_size;
  const float* qnr = qn + t * lqn0 + h * lqn1;
  const float* qpr = qpe + t * lqp0 + h * lqp1;
  const int64_t wrow0 = h * int64_t(Dn + Dv);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float a = 0.0f;
    for (int d = 0; d < Dn; ++d) a = fmaf(qnr[d], wload(w, wrow0 + d, c), a);
    q_lat[c] = a * scale;
  }
  __syncthreads();
  float acc[kMlaPer];
#pragma unroll
  for (int j = 0; j < kMlaPer; ++j) acc[j] = 0.0f;
  float mx = -INFINITY, l = 0.0f;
  const int64_t per = (S + nsplit - 1) / nsplit, s0 = blockIdx.y * per, s1 = min(S, s0 + per);  // key split
  for (int64_t s = s0 + warp; s < s1; s += kMlaWarps) {
    const int64_t r = phys_row(table, bs, s);
    const float* lr = lat + r * ll0;
    const float* kr = kpe + r * lk0;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kMlaPer; ++j) {
      const int c = lane + 32 * j;
      if (c < C) dot = fmaf(q_lat[c], lr[c], dot);
    }
    float dpe = 0.0f;
    for (int e = lane; e < R; e += 32) dpe = fmaf(qpr[e], kr[e], dpe);
    const float sc = warp_sum(dot) + warp_sum(dpe) * scale;
    const float mn = fmaxf(mx, sc);
    const float corr = __expf(mx - mn), p = __expf(sc - mn);
    l = l * corr + p;
#pragma unroll
    for (int j = 0; j < kMlaPer; ++j) {
      const int c = lane + 32 * j;
      acc[j] = acc[j] * corr + (c < C ? p * lr[c] : 0.0f);
    }
    mx = mn;
  }
#pragma unroll
  for (int j = 0; j < kMlaPer; ++j) {
    const int c = lane + 32 * j;
    if (c < C) o_part[warp * C + c] = acc[j];
  }
  if (lane == 0) ml[2 * warp] = mx, ml[2 * warp + 1] = l;
  __syncthreads();
  float M = -INFINITY;
  for (int i = 0; i < kMlaWarps; ++i) M = fmaxf(M, ml[2 * i]);
  float L = 0.0f;
  for (int i = 0; i < kMlaWarps; ++i) L += ml[2 * i] == -INFINITY ? 0.0f : ml[2 * i + 1] * __expf(ml[2 * i] - M);
  __syncthreads();
  if (nsplit > 1) {  // part [T * H, nsplit, C + 2]: unnormalised latent output, then (max, sum)
    float* pr = part + (int64_t(blockIdx.x) * nsplit + blockIdx.y) * (C + 2);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      float a = 0.0f;
      for (int i = 0; i < kMlaWarps; ++i)
        if (ml[2 * i] != -INFINITY) a += o_part[i * C + c] * __expf(ml[2 * i] - M);
      pr[c] = a;
    }
    if (threadIdx.x == 0) pr[C] = M, pr[C + 1] = L;
    return;
  }
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float a = 0.0f;
    for (int i = 0; i < kMlaWarps; ++i)
      if (ml[2 * i] != -INFINITY) a += o_part[i * C + c] * __expf(ml[2 * i] - M);
    q_lat[c] = a / L;
  }
  __syncthreads();
  float* o = out + t * lo0 + h * lo1;
  for (int d = warp; d < Dv; d += kMlaWarps) {
    float a = 0.0f;
    for (int c = lane; c < C; c += 32) a = fmaf(q_lat[c], wload(w, wrow0 + Dn + d, c), a);
    a = warp_sum(a);
    if (lane == 0) o[d] = a;
  }
}

// Merges the key splits of mla_segs_kernel and projects the latent output: out[h] = W_UV[h] o_lat.
__global__ void mla_finish_kernel(float* out, int64_t lo0, int64_t lo1, const float* part, WDesc w, int64_t H, int Dn,
                                  int Dv, int C, int nsplit) {
  pdl_entry();
  extern __shared__ float o_lat[];  // [C]
  const int64_t t = blockIdx.x / H, h = blockIdx.x % H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* pr = part + int64_t(blockIdx.x) * nsplit * (C + 2);
  float M = -INFINITY;
  for (int j = 0; j < nsplit; ++j) M = fmaxf(M, pr[j * (C + 2) + C]);
  float L = 0.0f;
  for (int j = 0; j < nsplit; ++j)
    if (pr[j * (C + 2) + C] != -INFINITY) L += pr[j * (C + 2) + C + 1] * __expf(pr[j * (C + 2) + C] - M);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float a = 0.0f;
    for (int j = 0; j < nsplit; ++j)
      if (pr[j * (C + 2) + C] != -INFINITY) a += pr[j * (C + 2) + c] * __expf(pr[j * (C + 2) + C] - M);
    o_lat[c] = a / L;
  }
  __syncthreads();
  const int64_t wrow0 = h * int64_t(Dn + Dv);
  float* o = out + t * lo0 + h * lo1;
  const int nw = blockDim.x / 32;
  for (int d = warp; d < Dv; d += nw) {
    float a = 0.0f;
    for (int c = lane; c < C; c += 32) a = fmaf(o_lat[c], wload(w, wrow0 + Dn + d, c), a);
    a = warp_sum(a);
    if (lane == 0) o[d] = a;
  }
}

// ---- MLA decode with all heads of a token per block (opt-in: DSFUSE_CUDA_MLA_HEADS=1) ----
// The per-(token, head) kernel above reads a sequence's latent cache once per head. Here one block per (token,
// key split) stages tiles of kMhKT cache rows in shared memory once and scores them against every head's
// absorbed query (mla_absorb_kernel), keeping the heads' latent outputs in registers; mla_finish_kernel merges
// the splits and applies W_UV. Limits: H <= 16, C <= 512, R <= 64 (DeepSeek-V2-Lite's 16 heads; V3's 128
// heads per GPU need the tensor-core version).
constexpr int kMhThreads = 256, kMhKT = 16, kMhH = 16, kMhAcc = kMhH * 512 / kMhThreads;  // 32 per thread

__global__ void mla_absorb_kernel(float* qlat, float* qpe_s, const float* qn, int64_t lqn0, int64_t lqn1,
                                  const float* qpe, int64_t lqp0, int64_t lqp1, WDesc w, int64_t H, int Dn, int Dv,
                                  int R, int C, float scale) {
  pdl_entry();
  const int64_t t = blockIdx.x / H, h = blockIdx.x % H;
  const float* qnr = qn + t * lqn0 + h * lqn1;
  const int64_t wrow0 = h * int64_t(Dn + Dv);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float a = 0.0f;
    for (int d = 0; d < Dn; ++d) a = fmaf(qnr[d], wload(w, wrow0 + d, c), a);
    qlat[int64_t(blockIdx.x) * C + c] = a * scale;
  }
  for (int e = threadIdx.x; e < R; e += blockDim.x) qpe_s[int64_t(blockIdx.x) * R + e] = qpe[t * lqp0 + h * lqp1 + e] * scale;
}

__global__ void __launch_bounds__(kMhThreads) mla_heads_kernel(float* part, const float* qlat, const float* qpe_s,
                                                               const float* lat, int64_t ll0, const float* kpe,
                                                               int64_t lk0, int H, int R, int C, SegMeta m,
                                                               int nsplit) {
  pdl_entry();
  extern __shared__ float sm[];
  const int LC = C + 1;                 // padded row: the score loop reads one column of 16 rows per warp
  float* s_lat = sm;                    // [kMhKT][LC]
  float* s_kpe = s_lat + kMhKT * LC;    // [kMhKT][R]
  float* s_p = s_kpe + kMhKT * R;       // [H][kMhKT] scores, then probabilities
  float* s_m = s_p + kMhH * kMhKT;      // [H] running max
  float* s_l = s_m + kMhH;              // [H] running sum
  float* s_corr = s_l + kMhH;           // [H] rescale of this tile
  const int64_t t = blockIdx.x;
  const int tid = threadIdx.x;
  int64_t S;
  const int32_t* table;
  seg_of(m, t, S, table);
  const int bs = m.block_size;
  const int64_t per = (S + nsplit - 1) / nsplit, s0 = blockIdx.y * per, s1 = min(S, s0 + per);
  const float* ql = qlat + t * H * C;
  const float* qp = qpe_s + t * H * R;
  float acc[kMhAcc];
#pragma unroll
  for (int i = 0; i < kMhAcc; ++i) acc[i] = 0.0f;
  if (tid < H) s_m[tid] = -INFINITY, s_l[tid] = 0.0f;
  __syncthreads();
  for (int64_t kb = s0; kb < s1; kb += kMhKT) {
    const int n = s1 - kb < kMhKT ? int(s1 - kb) : kMhKT;
    for (int i = tid; i < n * C; i += kMhThreads) {
      const int j = i / C, c = i % C;
      s_lat[j * LC + c] = lat[phys_row(table, bs, kb + j) * ll0 + c];
    }
    for (int i = tid; i < n * R; i += kMhThreads) {
      const int j = i / R, e = i % R;
      s_kpe[j * R + e] = kpe[phys_row(table, bs, kb + j) * lk0 + e];
    }
    __syncthreads();
    for (int pr = tid; pr < H * kMhKT; pr += kMhThreads) {
      const int h = pr / kMhKT, j = pr % kMhKT;
      float dot = -INFINITY;
      if (j < n) {
        const float* q = ql + h * C;
        const float* lr = s_lat + j * LC;
        float a = 0.0f;
        for (int c = 0; c < C; ++c) a = fmaf(q[c], lr[c], a);
        const float* pe = qp + h * R;
        for (int e = 0; e < R; ++e) a = fmaf(pe[e], s_kpe[j * R + e], a);
        dot = a;
      }
      s_p[h * kMhKT + j] = dot;
    }
    __syncthreads();
    if (tid < H) {
      float mx = s_m[tid];
      for (int j = 0; j < n; ++j) mx = fmaxf(mx, s_p[tid * kMhKT + j]);
      const float corr = __expf(s_m[tid] - mx);  // 0 on the first tile (max was -inf)
      float sum = 0.0f;
      for (int j = 0; j < kMhKT; ++j) {
        const float p = j < n ? __expf(s_p[tid * kMhKT + j] - mx) : 0.0f;
        s_p[tid * kMhKT + j] = p;
        sum += p;
      }
      s_l[tid] = s_l[tid] * corr + sum;
      s_m[tid] = mx;
      s_corr[tid] = corr;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kMhAcc; ++i) {
      const int e = tid + kMhThreads * i;
      if (e >= H * C) break;
      const int h = e / C, c = e % C;
      float a = acc[i] * s_corr[h];
      for (int j = 0; j < n; ++j) a = fmaf(s_p[h * kMhKT + j], s_lat[j * LC + c], a);
      acc[i] = a;
    }
    __syncthreads();  // the next tile overwrites s_lat / s_p
  }
  // Partial results in mla_finish_kernel's layout: [(t * H + h) * nsplit + split][C + 2].
#pragma unroll
  for (int i = 0; i < kMhAcc; ++i) {
    const int e = tid + kMhThreads * i;
    if (e >= H * C) break;
    const int h = e / C, c = e % C;
    part[((t * H + h) * nsplit + blockIdx.y) * (C + 2) + c] = acc[i];
  }
  if (tid < H) {
    float* pr = part + ((t * H + tid) * nsplit + blockIdx.y) * (C + 2);
    pr[C] = s_m[tid];
    pr[C + 1] = s_l[tid];
  }
}

// ---- greedy choice ----
__device__ __forceinline__ void argmax_merge(float& best, int64_t& bi, float ov, int64_t oi) {
  if (ov > best || (ov == best && oi < bi)) best = ov, bi = oi;
}
// Block reduction of (value, index) pairs; the result is valid in thread 0.
__device__ void argmax_block(float& best, int64_t& bi, int64_t none) {
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  for (int o = 16; o > 0; o >>= 1)
    argmax_merge(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sv[w] = best, si[w] = bi;
  __syncthreads();
  if (w == 0) {
    const int nw = blockDim.x / 32;
    best = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : none;
    for (int o = 16; o > 0; o >>= 1)
      argmax_merge(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
  }
}
// Stage 1: block (r, p) takes columns [p * per, (p + 1) * per) of row r.
constexpr int kArgParts = 64;
__global__ void argmax_part_kernel(float* pv, int64_t* pi, const float* x, int64_t ldx, int64_t V) {
  pdl_entry();
  const int64_t r = blockIdx.x, per = (V + kArgParts - 1) / kArgParts;
  const int64_t j0 = blockIdx.y * per, j1 = min(V, j0 + per);
  const float* row = x + r * ldx;
  float best = -INFINITY;
  int64_t bi = V;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) argmax_merge(best, bi, row[j], j);
  argmax_block(best, bi, V);
  if (threadIdx.x == 0) pv[r * kArgParts + blockIdx.y] = best, pi[r * kArgParts + blockIdx.y] = bi;
}
__global__ void argmax_final_kernel(int32_t* ids, const float* pv, const int64_t* pi, int64_t V) {
  pdl_entry();
  const int64_t r = blockIdx.x;
  float best = -INFINITY;
  int64_t bi = V;
  for (int j = threadIdx.x; j < kArgParts; j += blockDim.x) argmax_merge(best, bi, pv[r * kArgParts + j], pi[r * kArgParts + j]);
  argmax_block(best, bi, V);
  if (threadIdx.x == 0) ids[r] = static_cast<int32_t>(bi < V ? bi : 0);  // NaN-only rows pick 0
}

// ---- profiling aid: hold the stream for a while so the host can queue a whole step ahead ----
__global__ void spin_kernel(uint64_t ns) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

// ---- HBM read probe ----
__global__ void read_probe_kernel(const uint4* p, int64_t n, uint32_t* sink) {
  pdl_entry();
  uint32_t acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;  // keeps the loads alive
}

bool g_pdl = false;
bool g_gemv_roll = true;

}  // namespace

bool pdl_enabled() { return g_pdl; }
void set_gemv_roll(bool on) { g_gemv_roll = on; }
void set_pdl_enabled(bool on) { g_pdl = on; }

// SMs of the device first asked about (the process uses one GPU type).
int gemv_sms() {
  static int sms = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n > 0 ? n : 132;
  }();
  return sms;
}

int g_gemv_split = 0;    // 0: by shape (below); 1, 2, 4, 8 forced (DSFUSE_CUDA_GEMV_SPLIT, for measurements)
bool g_gemv_tma = false;                      // one-token bf16 GEMVs through gemv_tma_kernel (sm_90)
// ... of at least these many weight bytes (24 MB; kbench gemv --graph, H200, run 30: the cp.async ring is ahead
// below, e.g. 5632x2048 SwiGLU 7.41 vs 9.29 us, 3072x2048 5.16 vs 6.96; TMA above, 3584x3584 10.9 vs 12.2,
// 2048x10944 16.1 vs 19.6; between 24 and 34 MB either wins by <= 5 %)
int64_t g_gemv_tma_min = int64_t(24) << 20;
bool g_gemv_async = true;  // one-token bf16 GEMVs below the TMA size through gemv_async_kernel
int g_gemv_stream = -1;  // -1: by weight bytes; 0 / 1 forced (DSFUSE_CUDA_GEMV_STREAM)
constexpr int64_t kGemvStreamBytes = int64_t(40) << 20;
// Long rows (K >= kGemvLongK) of weights that keep the L1-allocating loads: all 8 warps of a block on one row
// (kbench gemv --graph, H200: 3584x18944 61 -> 70 % of the probe, Qwen-7B decode +4.8 % on an 8-layer cut; but
// 4096x11008 65 -> 60 %, hence the threshold).
constexpr int64_t kGemvLongK = 16384;
void set_gemv_split(int s) { g_gemv_split = s == 1 || s == 2 || s == 4 || s == 8 ? s : 0; }
void set_gemv_stream(int s) { g_gemv_stream = s == 0 || s == 1 ? s : -1; }
void set_gemv_tma(bool on, int64_t min_bytes) {
  g_gemv_tma = on;
  if (min_bytes >= 0) g_gemv_tma_min = min_bytes;
}
void set_gemv_async(bool on) { g_gemv_async = on; }

int gemv_split(int64_t rows) {
  if (g_gemv_split) return g_gemv_split;
  const int sms = gemv_sms();
  return rows >= 32LL * sms ? 1 : rows >= 16LL * sms ? 2 : 4;
}

namespace {
// The largest K the NORM forms take (xs in shared memory beside the rings).
constexpr int64_t kGemvNormMaxK = 12288;

template <int S, bool SILU, bool NORM, bool RES>
void gemv_async_launch_s(cudaStream_t st, float* y, const float* x, const WDesc& w, int64_t N, int64_t K,
                         const void* bias, int btype, int64_t up, const GemvFuse& fz) {
  constexpr size_t ring = size_t(kRingBytes) * 256;  // 32 KB
  if (NORM) {  // room for xs beside the ring
    static std::atomic<uint64_t> opted{0};
    smem_opt_in(gemv_async_kernel<S, SILU, NORM, RES>, ring + kGemvNormMaxK * 4, opted);
  }
  const size_t shm = ring + (NORM ? size_t(K) * 4 : 0);
  launch(gemv_async_kernel<S, SILU, NORM, RES>, blocks(N, 8 / S), 256, shm, st, y, x, w, N, K, bias, btype, up, fz);
}
template <bool SILU, bool NORM, bool RES>
void gemv_async_launch(cudaStream_t st, float* y, const float* x, const WDesc& w, int64_t N, int64_t K,
                       const void* bias, int btype, int64_t up, const GemvFuse& fz = {}) {
  switch (!g_gemv_split && K >= kGemvLongK ? 8 : gemv_split(N)) {
    case 8: gemv_async_launch_s<8, SILU, NORM, RES>(st, y, x, w, N, K, bias, btype, up, fz); break;
    case 1: gemv_async_launch_s<1, SILU, NORM, RES>(st, y, x, w, N, K, bias, btype, up, fz); break;
    case 2: gemv_async_launch_s<2, SILU, NORM, RES>(st, y, x, w, N, K, bias, btype, up, fz); break;
    default: gemv_async_launch_s<4, SILU, NORM, RES>(st, y, x, w, N, K, bias, btype, up, fz); break;
  }
}

template <bool SILU, bool NORM, bool RES>
void gemv_tma_launch(cudaStream_t st, float* y, const float* x, const WDesc& w, int64_t N, int64_t K,
                     const void* bias, int btype, int64_t up, const GemvFuse& fz = {}) {
  constexpr size_t ring = size_t(8) * kTmaStages * kTmaSeg;
  static std::atomic<uint64_t> opted{0};
  smem_opt_in(gemv_tma_kernel<SILU, NORM, RES>, ring + (NORM ? kGemvNormMaxK * 4 : 0), opted);
  const size_t shm = ring + (NORM ? size_t(K) * 4 : 0);
  const int64_t G = std::min<int64_t>(gemv_sms(), N);
  const int64_t rows = (N + G - 1) / G;  // most rows of a block
  int S = g_gemv_split ? g_gemv_split : rows >= kTmaMaxRowsSplit ? 1 : rows >= 16 ? 2 : rows >= 8 ? 4 : 8;
  if (S > 1 && rows > kTmaMaxRowsSplit) S = 1;  // a forced split with more rows than the partial sums hold
  launch(gemv_tma_kernel<SILU, NORM, RES>, unsigned(G), 256, shm, st, y, x, w, N, K, S, bias, btype, up, fz);
}

template <int TT, bool SILU, bool F8>
void gemv_vec_launch(cudaStream_t st, float* y, int64_t ldy, const float* x, int64_t ldx, int T, const WDesc& w,
                     int64_t N, int64_t K, const void* bias, int btype, int64_t up) {
  // Weights under kGemvStreamBytes: loads that skip L1 and two warps per row (kbench gemv --graph on an H200:
  // 3584x3584 bf16 46 -> 54 % of the probe, 4608x3584 47 -> 59 %, 1536x8960 45 -> 57 %); larger ones keep
  // L1-allocating loads, faster there (lm_head 152064x3584: 90 % vs 70 %, gate/up 37888x3584: 90 % vs 73 %).
  // One token, bf16 weights: bulk copies into per-warp rings for large weights, the cp.async ring below that
  // (kbench gemv --graph, H200, runs 29-30; the register-held kernel stays for FP8, T > 1 and when both are off).
  if constexpr (!F8 && TT == 1) {
    if (T == 1 && g_gemv_tma && N * K * 2 * (SILU ? 2 : 1) >= g_gemv_tma_min)
      return gemv_tma_launch<SILU, false, false>(st, y, x, w, N, K, bias, btype, up);
    if (T == 1 && g_gemv_async) return gemv_async_launch<SILU, false, false>(st, y, x, w, N, K, bias, btype, up);
  }
  const int64_t bytes = N * K * (F8 ? 1 : 2) * (SILU ? 2 : 1);
  const bool stream = g_gemv_stream >= 0 ? g_gemv_stream == 1 : bytes < kGemvStreamBytes;
  if (stream && g_gemv_split == 0) {
    launch(gemv_vec_kernel<TT, 2, SILU, F8, true>, blocks(N, 4), 256, 0, st,
        y, ldy, x, ldx, w, N, K, T, bias, btype, up, g_gemv_roll);
    return;
  }
  switch (!g_gemv_split && K >= kGemvLongK ? 8 : gemv_split(N)) {
    case 8: launch(gemv_vec_kernel<TT, 8, SILU, F8, false>, blocks(N, 1), 256, 0, st,
        y, ldy, x, ldx, w, N, K, T, bias, btype, up, g_gemv_roll); break;
    case 1: launch(gemv_vec_kernel<TT, 1, SILU, F8, false>, blocks(N, 8), 256, 0, st,
        y, ldy, x, ldx, w, N, K, T, bias, btype, up, g_gemv_roll); break;
    case 2: launch(gemv_vec_kernel<TT, 2, SILU, F8, false>, blocks(N, 4), 256, 0, st,
        y, ldy, x, ldx, w, N, K, T, bias, btype, up, g_gemv_roll); break;
    default: launch(gemv_vec_kernel<TT, 4, SILU, F8, false>, blocks(N, 2), 256, 0, st,
        y, ldy, x, ldx, w, N, K, T, bias, btype, up, g_gemv_roll); break;
  }
}
template <bool SILU, bool F8>
void gemv_vec(cudaStream_t st, float* y, int64_t ldy, const float* x, int64_t ldx, int64_t T, const WDesc& w,
              int64_t N, int64_t K, const void* bias, int btype, int64_t up) {
  if (T <= 1) gemv_vec_launch<1, SILU, F8>(st, y, ldy, x, ldx, int(T), w, N, K, bias, btype, up);
  else if (T <= 2) gemv_vec_launch<2, SILU, F8>(st, y, ldy, x, ldx, int(T), w, N, K, bias, btype, up);
  else if (T <= 4) gemv_vec_launch<4, SILU, F8>(st, y, ldy, x, ldx, int(T), w, N, K, bias, btype, up);
  else gemv_vec_launch<8, SILU, F8>(st, y, ldy, x, ldx, int(T), w, N, K, bias, btype, up);
}
// FP8 block weights the vectorised GEMV can take.
bool f8_vec_ok(const WDesc& w, int64_t K, const float* x, int64_t ldx) {
  return w.type == W_F8 && w.scale && K % 16 == 0 && w.ld % 16 == 0 && w.bc % 16 == 0 && ldx % 4 == 0 &&
         aligned16(w.w) && aligned16(x);
}
}  // namespace

void gemv(cudaStream_t st, float* y, int64_t ldy, const float* x, int64_t ldx, int64_t T, const WDesc& w, int64_t N,
          int64_t K, const void* bias, int btype) {
  const bool vec = vec_ok(w, K, x, ldx);
  if (vec) return gemv_vec<false, false>(st, y, ldy, x, ldx, T, w, N, K, bias, btype, 0);
  if (f8_vec_ok(w, K, x, ldx)) return gemv_vec<false, true>(st, y, ldy, x, ldx, T, w, N, K, bias, btype, 0);
  const unsigned g = blocks(N, 8);
  if (T <= 1) launch(gemv_kernel<1>, g, 256, 0, st, y, ldy, x, ldx, w, N, K, int(T), bias, btype, vec);
  else if (T <= 2) launch(gemv_kernel<2>, g, 256, 0, st, y, ldy, x, ldx, w, N, K, int(T), bias, btype, vec);
  else if (T <= 4) launch(gemv_kernel<4>, g, 256, 0, st, y, ldy, x, ldx, w, N, K, int(T), bias, btype, vec);
  else launch(gemv_kernel<8>, g, 256, 0, st, y, ldy, x, ldx, w, N, K, int(T), bias, btype, vec);
  check_launch();
}

bool gemv_fused(cudaStream_t st, float* y, const float* x, const WDesc& w, int64_t N, int64_t K, const void* bias,
                int btype, bool silu, const void* nw, int nwtype, float eps, bool res) {
  const bool norm = nw != nullptr;
  if (w.type != W_BF16 || K % 8 != 0 || w.ld % 8 != 0 || !aligned16(w.w) || !aligned16(x)) return false;
  if ((norm && K > kGemvNormMaxK) || (silu && (bias || res)) || (norm && res)) return false;
  const int64_t rows = silu ? 2 * N : N;
  const bool tma = g_gemv_tma && rows * K * 2 >= g_gemv_tma_min;
  if (!tma && !g_gemv_async) return false;
  GemvFuse fz;
  fz.nw = nw;
  fz.nwtype = nwtype;
  fz.eps = eps;
  if (tma) {
    if (silu) gemv_tma_launch<true, true, false>(st, y, x, w, N, K, nullptr, 0, N, fz);
    else if (norm) gemv_tma_launch<false, true, false>(st, y, x, w, N, K, bias, btype, 0, fz);
    else gemv_tma_launch<false, false, true>(st, y, x, w, N, K, bias, btype, 0, fz);
  } else {
    if (silu) gemv_async_launch<true, true, false>(st, y, x, w, N, K, nullptr, 0, N, fz);
    else if (norm) gemv_async_launch<false, true, false>(st, y, x, w, N, K, bias, btype, 0, fz);
    else gemv_async_launch<false, false, true>(st, y, x, w, N, K, bias, btype, 0, fz);
  }
  return true;
}

void gemv_silu(cudaStream_t st, float* y, int64_t ldy, const float* x, int64_t ldx, int64_t T, const WDesc& w,
               int64_t I, int64_t K) {
  const bool vec = vec_ok(w, K, x, ldx);
  if (vec) return gemv_vec<true, false>(st, y, ldy, x, ldx, T, w, I, K, nullptr, 0, I);
  if (f8_vec_ok(w, K, x, ldx)) return gemv_vec<true, true>(st, y, ldy, x, ldx, T, w, I, K, nullptr, 0, I);
  const unsigned g = blocks(I, 8);
  if (T <= 1) launch(gemv_silu_kernel<1>, g, 256, 0, st, y, ldy, x, ldx, w, I, K, int(T), vec);
  else if (T <= 2) launch(gemv_silu_kernel<2>, g, 256, 0, st, y, ldy, x, ldx, w, I, K, int(T), vec);
  else if (T <= 4) launch(gemv_silu_kernel<4>, g, 256, 0, st, y, ldy, x, ldx, w, I, K, int(T), vec);
  else launch(gemv_silu_kernel<8>, g, 256, 0, st, y, ldy, x, ldx, w, I, K, int(T), vec);
  check_launch();
}

void combine_halves(cudaStream_t st, float* y, int64_t ldy, const float* y2, int64_t T, int64_t N, const void* bias,
                    int btype) {
  launch(combine_halves_kernel, blocks(T * N), 256, 0, st, y, ldy, y2, T, N, bias, btype);
  check_launch();
}

void copy_rows_segs(cudaStream_t st, float* dst, int64_t ldd, const float* src, int64_t lds, int64_t T, int64_t D,
                    const SegMeta& m) {
  launch(copy_rows_segs_kernel, blocks(T * D), 256, 0, st, dst, ldd, src, lds, T, D, m);
  check_launch();
}

void mla_segs(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
              const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0, const float* kpe,
              int64_t lk0, const WDesc& w, int64_t T, int64_t H, int Dn, int Dv, int R, int C, float scale,
              const SegMeta& m, float* part, int nsplit) {
  DSFUSE_CHECK(C <= 32 * kMlaPer, "CUDA MLA: latent rank ", C, " above ", 32 * kMlaPer);
  const size_t shm = sizeof(float) * (C + kMlaWarps * C + 2 * kMlaWarps);
  if (shm > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(mla_segs_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shm)));
  if (!part) nsplit = 1;
  launch(mla_segs_kernel, dim3(static_cast<unsigned>(T * H), nsplit), 32 * kMlaWarps, shm, st, 
      out, lo0, lo1, qn, lqn0, lqn1, qpe, lqp0, lqp1, lat, ll0, kpe, lk0, w, H, Dn, Dv, R, C, scale, m, nsplit, part);
  check_launch();
  if (nsplit > 1) {
    launch(mla_finish_kernel, static_cast<unsigned>(T * H), 256, sizeof(float) * C, st,
        out, lo0, lo1, part, w, H, Dn, Dv,
                                                                                   C, nsplit);
    check_launch();
  }
}

bool mla_heads_supported(int64_t H, int R, int C) { return H <= kMhH && C <= 512 && R <= 64; }

void mla_heads(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
               const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0, const float* kpe,
               int64_t lk0, const WDesc& w, int64_t T, int64_t H, int Dn, int Dv, int R, int C, float scale,
               const SegMeta& m, float* part, int nsplit, float* qlat, float* qpe_s) {
  DSFUSE_CHECK(mla_heads_supported(H, R, C), "CUDA MLA (all heads per block): H ", H, ", R ", R, ", C ", C,
               " above 16 / 64 / 512");
  launch(mla_absorb_kernel, static_cast<unsigned>(T * H), 128, 0, st,
      qlat, qpe_s, qn, lqn0, lqn1, qpe, lqp0, lqp1, w, H,
                                                                  Dn, Dv, R, C, scale);
  check_launch();
  const size_t shm = sizeof(float) * (kMhKT * (C + 1) + kMhKT * R + kMhH * kMhKT + 3 * kMhH);
  launch(mla_heads_kernel, dim3(static_cast<unsigned>(T), nsplit), kMhThreads, shm, st,
      part, qlat, qpe_s, lat, ll0, kpe,
                                                                                    lk0, int(H), R, C, m, nsplit);
  check_launch();
  launch(mla_finish_kernel, static_cast<unsigned>(T * H), 256, sizeof(float) * C, st,
      out, lo0, lo1, part, w, H, Dn, Dv, C,
                                                                                 nsplit);
  check_launch();
}

void argmax_rows(cudaStream_t st, int32_t* ids, const float* x, int64_t ldx, int64_t R, int64_t V, void* scratch) {
  auto* pv = static_cast<float*>(scratch);
  auto* pi = reinterpret_cast<int64_t*>(static_cast<char*>(scratch) + sizeof(float) * R * kArgParts);
  launch(argmax_part_kernel, dim3(static_cast<unsigned>(R), kArgParts), 256, 0, st, pv, pi, x, ldx, V);
  check_launch();
  launch(argmax_final_kernel, static_cast<unsigned>(R), 64, 0, st, ids, pv, pi, V);
  check_launch();
}

void gpu_spin(cudaStream_t st, double seconds) {
  spin_kernel<<<1, 1, 0, st>>>(static_cast<uint64_t>(seconds * 1e9));
  check_launch();
}

double read_bandwidth_gbs(cudaStream_t st, size_t bytes, int passes) {
  void* buf = nullptr;
  uint32_t* sink = nullptr;
  if (cudaMalloc(&buf, bytes) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  CUDA_CHECK(cudaMalloc(&sink, sizeof(uint32_t)));
  CUDA_CHECK(cudaMemsetAsync(buf, 1, bytes, st));
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  double best = 0;
  for (int i = 0; i < passes + 1; ++i) {
    CUDA_CHECK(cudaEventRecord(a, st));
    launch(read_probe_kernel, sms * 8, 512, 0, st, static_cast<const uint4*>(buf), int64_t(bytes / 16), sink);
    CUDA_CHECK(cudaEventRecord(b, st));
    CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    if (i > 0) best = std::max(best, double(bytes) / (ms * 1e-3) / 1e9);  // first pass warms up
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaFree(sink);
  cudaFree(buf);
  return best;
}

}  // namespace dsfuse::cuda
