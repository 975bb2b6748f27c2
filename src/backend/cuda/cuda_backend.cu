// CUDA backend: device memory, one stream, cuBLAS GEMMs, streaming GEMVs for decode and simple kernels for
// the rest (the fast paths' kernels are in kernels.cu). Weights are uploaded by prepare() (f32/bf16/f16 as
// stored, FP8 with its block scales, int8 dequantized to f32); DSFUSE_CUDA_F32=1 upcasts every weight to f32
// so GEMMs run in f32 (tests).
// linear: T <= 8 -> one-warp-per-row GEMV streaming the stored weight (16-byte loads for bf16, FP8 block
// dequant in-kernel, f32 activations and accumulation); T > 8 -> cuBLAS: bf16/FP8 (FP8 dequantized to exact
// bf16 in scratch) as one bf16 GEMM over the hi/lo split of the activations stacked as 2T rows (T <= 256; the
// weights are read once) or over bf16 activations (T > 256, compute-bound prefill), f32/f16 as an f32 GEMM.
// Step inputs (ids, positions, segments, block tables) are uploaded once per forward (begin_step); other
// host-pointer arguments are staged into per-op device scratch, constants (rope tables) cached.
// Decode steps are recorded as CUDA graphs and replayed (graph_begin / graph_launch).
#include <cublas_v2.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/stats.h"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/mla_tc.cuh"
#include "core/log.h"
#include "ops/moe_routing.h"

namespace dsfuse {
using namespace dsfuse::cuda;
namespace {

#define CUBLAS_CHECK(expr)                                                      \
  do {                                                                          \
    cublasStatus_t s_ = (expr);                                                 \
    if (s_ != CUBLAS_STATUS_SUCCESS) fail(cat("cuBLAS error ", int(s_), " at " #expr)); \
  } while (0)

// ---- kernels ----

// Dequantizes a weight to [N, K] (contiguous) bf16 or f32; FP8 is value x block scale rounded to bf16 (the
// CPU's form), so the bf16 output is exact.
template <typename T>
__global__ void dequant_kernel(T* out, WDesc w, int64_t N, int64_t K) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * K) return;
  const float v = wload(w, i / K, i % K);
  if constexpr (std::is_same_v<T, float>) out[i] = v;
  else out[i] = __float2bfloat16_rn(v);
}

// Splits f32 activations into two bf16 parts, x ~= hi + lo (relative error ~2^-16): [hi | lo] as [2, R, K].
// (lo: only with `split`)
__global__ void split_bf16_kernel(__nv_bfloat16* out, const float* x, int64_t ldx, int64_t R, int64_t K, bool split) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= R * K) return;
  const float v = x[(i / K) * ldx + i % K];
  const __nv_bfloat16 hi = __float2bfloat16_rn(v);
  out[i] = hi;
  if (split) out[R * K + i] = __float2bfloat16_rn(v - __bfloat162float(hi));
}

__global__ void add_bias_kernel(float* y, int64_t ldy, int64_t T, int64_t N, const void* b, int btype) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * N) return;
  y[(i / N) * ldy + i % N] += vload(b, btype, i % N);
}

__global__ void rms_norm_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t D, const void* w, int wtype,
                                float eps) {
  pdl_entry();
  const float* xr = x + blockIdx.x * ldx;
  float* yr = y + blockIdx.x * ldy;
  float ss = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss += xr[d] * xr[d];
  const float inv = 1.0f / sqrtf(block_sum(ss) / float(D) + eps);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) yr[d] = vload(w, wtype, d) * (xr[d] * inv);
}

// x += o; h = rms_norm(x) * w, one block per row.
__global__ void add_rms_norm_kernel(float* x, int64_t ldx, const float* o, int64_t ldo, float* h, int64_t ldh,
                                    int64_t D, const void* w, int wtype, float eps) {
  pdl_entry();
  float* xr = x + blockIdx.x * ldx;
  const float* orow = o + blockIdx.x * ldo;
  float* hr = h + blockIdx.x * ldh;
  float ss = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = xr[d] + orow[d];
    xr[d] = v;
    ss += v * v;
  }
  const float inv = 1.0f / sqrtf(block_sum(ss) / float(D) + eps);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) hr[d] = vload(w, wtype, d) * (xr[d] * inv);
}

// The same two norms with the row held in registers (PER values per thread, up to 1024 threads): every load
// of the row is issued before any store, so a decode row costs one memory round trip instead of one per loop
// iteration (the stores may alias the inputs, which serialises the loops above). ADD: x += o, h = norm(x) * w;
// otherwise h = norm(x) * w (h may be x).
template <int PER, bool ADD>
__global__ void __launch_bounds__(1024) norm_reg_kernel(float* x, int64_t ldx, const float* o, int64_t ldo, float* h,
                                                        int64_t ldh, int64_t D, const void* w, int wtype, float eps) {
  pdl_entry();
  float* xr = x + blockIdx.x * ldx;
  float* hr = h + blockIdx.x * ldh;
  float v[PER];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t d = threadIdx.x + int64_t(j) * blockDim.x;
    v[j] = d < D ? xr[d] + (ADD ? o[blockIdx.x * ldo + d] : 0.0f) : 0.0f;
  }
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t d = threadIdx.x + int64_t(j) * blockDim.x;
    if (ADD && d < D) xr[d] = v[j];
    ss += v[j] * v[j];
  }
  const float inv = 1.0f / sqrtf(block_sum(ss) / float(D) + eps);
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t d = threadIdx.x + int64_t(j) * blockDim.x;
    if (d < D) hr[d] = vload(w, wtype, d) * (v[j] * inv);
  }
}

// Launches norm_reg_kernel when the row fits (D <= 16384); returns false otherwise.
template <bool ADD>
bool norm_reg(cudaStream_t st, int64_t T, int64_t D, float* x, int64_t ldx, const float* o, int64_t ldo, float* h,
              int64_t ldh, const void* w, int wtype, float eps) {
  const int per = D <= 4096 ? 4 : D <= 8192 ? 8 : D <= 16384 ? 16 : 0;
  if (per == 0 || T <= 0) return false;
  const unsigned nt = static_cast<unsigned>(((D + per - 1) / per + 31) / 32 * 32);
  const dim3 g(static_cast<unsigned>(T));
  if (per == 4) launch(norm_reg_kernel<4, ADD>, g, nt, 0, st, x, ldx, o, ldo, h, ldh, D, w, wtype, eps);
  else if (per == 8) launch(norm_reg_kernel<8, ADD>, g, nt, 0, st, x, ldx, o, ldo, h, ldh, D, w, wtype, eps);
  else launch(norm_reg_kernel<16, ADD>, g, nt, 0, st, x, ldx, o, ldo, h, ldh, D, w, wtype, eps);
  return true;
}

__global__ void add_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t T, int64_t D) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * D) return;
  y[(i / D) * ldy + i % D] += x[(i / D) * ldx + i % D];
}

__global__ void silu_mul_kernel(float* y, int64_t ldy, const float* g, int64_t ldg, const float* u, int64_t ldu,
                                int64_t T, int64_t I) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * I) return;
  const int64_t t = i / I, c = i % I;
  const float gv = g[t * ldg + c];
  y[t * ldy + c] = gv / (1.0f + expf(-gv)) * u[t * ldu + c];
}

// One rope pair (x0, x1) rotated by the angle pos * inv_freq; cos and sin scaled by cs_scale (RopeTable's).
__device__ __forceinline__ void rope_pair(float& x0, float& x1, int pos, float inv_freq, float cs_scale) {
  const float ang = float(pos) * inv_freq;
  const float c = cosf(ang) * cs_scale, s = sinf(ang) * cs_scale;
  const float y0 = x0 * c - x1 * s, y1 = x1 * c + x0 * s;
  x0 = y0;
  x1 = y1;
}

__global__ void rope_kernel(float* x, int64_t ld0, int64_t ld1, int64_t T, int64_t H, int offset, int half,
                            const float* inv_freq, float cs_scale, int neox, const int32_t* pos) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * H * half) return;
  const int p = int(i % half);
  const int64_t h = (i / half) % H, t = i / (half * H);
  float* v = x + t * ld0 + h * ld1 + offset;
  const int a = neox ? p : 2 * p, b = neox ? p + half : 2 * p + 1;
  rope_pair(v[a], v[b], pos[t], inv_freq[p], cs_scale);
}

// rope_store_kv: Neox rope of the q and k heads in place, rotated k heads and v written to the cache rows of the
// step. Threads [0, T (Hq + Hkv) half) rotate one pair each; the rest copy v.
__global__ void rope_store_kv_kernel(float* qk, int64_t ld0, int64_t Hq, int64_t Hkv, int D, int half,
                                     const float* inv_freq, float cs_scale, const int32_t* pos, float* kc,
                                     int64_t ldk, float* vc, int64_t ldv, const float* v, int64_t lv0, int64_t T,
                                     SegMeta m) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nr = T * (Hq + Hkv) * half;
  if (i < nr) {
    const int p = int(i % half);
    const int64_t h = (i / half) % (Hq + Hkv), t = i / (half * (Hq + Hkv));
    float* x = qk + t * ld0 + h * D;
    float y0 = x[p], y1 = x[p + half];
    rope_pair(y0, y1, pos[t], inv_freq[p], cs_scale);
    x[p] = y0;
    x[p + half] = y1;
    if (h >= Hq) {
      float* kr = kc + int64_t(m.slot[t]) * ldk + (h - Hq) * D;
      kr[p] = y0;
      kr[p + half] = y1;
    }
    return;
  }
  const int64_t j = i - nr;
  if (j >= T * Hkv * D) return;
  const int64_t t = j / (Hkv * D), d = j % (Hkv * D);
  vc[int64_t(m.slot[t]) * ldv + d] = v[t * lv0 + d];
}

// mla_store_kv: one block per token: interleaved rope of the rope key (in place in kv_a and into its pool row),
// latent = rms_norm(kv_a[:, :C]) * w into the scratch and its pool row.
__global__ void mla_store_kv_kernel(float* kv_a, int64_t lda, int64_t C, int64_t R, const void* w, int wtype, float eps,
                                    const float* inv_freq, float cs_scale, const int32_t* pos, float* latent,
                                    int64_t ldl, float* lat_c, int64_t ldc, float* kpe_c, int64_t ldk, SegMeta m) {
  pdl_entry();
  const int64_t t = blockIdx.x;
  float* row = kv_a + t * lda;
  const int64_t slot = m.slot[t];
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += row[c] * row[c];
  const float inv = 1.0f / sqrtf(block_sum(ss) / float(C) + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float v = vload(w, wtype, c) * (row[c] * inv);
    latent[t * ldl + c] = v;
    lat_c[slot * ldc + c] = v;
  }
  for (int64_t p = threadIdx.x; p < R / 2; p += blockDim.x) {
    float* x = row + C;
    float y0 = x[2 * p], y1 = x[2 * p + 1];
    rope_pair(y0, y1, pos[t], inv_freq[p], cs_scale);
    x[2 * p] = y0;
    x[2 * p + 1] = y1;
    kpe_c[slot * ldk + 2 * p] = y0;
    kpe_c[slot * ldk + 2 * p + 1] = y1;
  }
}

__global__ void embedding_kernel(float* out, int64_t ldo, const void* table, int type, int64_t ldt, const int32_t* ids,
                                 int64_t T, int64_t H) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * H) return;
  const int64_t t = i / H, d = i % H;
  out[t * ldo + d] = vload(table, type, int64_t(ids[t]) * ldt + d);
}

__global__ void copy_rows_kernel(float* dst, int64_t ldd, int64_t r0, const float* src, int64_t lds, int64_t T,
                                 int64_t D, const int32_t* table, int bs) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * D) return;
  const int64_t t = i / D, d = i % D;
  dst[phys_row(table, bs, r0 + t) * ldd + d] = src[t * lds + d];
}

__global__ void gather_rows_kernel(float* dst, const float* src, int64_t lds, const int32_t* idx, int64_t n,
                                   int64_t H) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * H) return;
  dst[i] = src[int64_t(idx[i / H]) * lds + i % H];
}

__global__ void zero_rows_kernel(float* y, int64_t ldy, int64_t T, int64_t D) {
  pdl_entry();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < T * D) y[(i / D) * ldy + i % D] = 0.0f;
}

int wtype_of(DType t) {
  switch (t) {
    case DType::F32: return W_F32;
    case DType::BF16: return W_BF16;
    case DType::F16: return W_F16;
    case DType::F8E4M3: return W_F8;
    default: fail(cat("CUDA backend: dtype ", dtype_name(t), " is not supported here"));
  }
}

WDesc desc_of(const Linear& l) {
  WDesc d{};
  d.w = l.w.data;
  d.type = wtype_of(l.w.dtype);
  d.ld = l.w.stride[0];
  d.br = l.block_rows;
  d.bc = l.block_cols;
  if (d.type == W_F8) {
    DSFUSE_CHECK(!l.scale.empty(), "FP8 weight without weight_scale_inv");
    d.scale = l.scale.ptr<float>();
    d.sc_cols = static_cast<int>(l.scale.shape[1]);
  }
  return d;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int dev) : dev_(dev) {
    int n = 0;
    CUDA_CHECK(cudaGetDeviceCount(&n));
    DSFUSE_CHECK(dev >= 0 && dev < n, "CUDA device ", dev, " not present (", n, " found)");
    CUDA_CHECK(cudaSetDevice(dev_));
    {  // a GPU this build has no code for fails here with the fix, not at the first kernel
      cudaFuncAttributes fa{};
      const cudaError_t fe = cudaFuncGetAttributes(&fa, add_kernel);
      if (fe != cudaSuccess && fe != cudaErrorInvalidDeviceFunction && fe != cudaErrorNoKernelImageForDevice)
        fail(cat("CUDA device ", dev_, ": ", cudaGetErrorString(fe), " (an earlier fault on this device, which a",
                 " process cannot recover from)"));
      if (fe != cudaSuccess) {
        cudaGetLastError();
        int ma = 0, mi = 0;
        cudaDeviceGetAttribute(&ma, cudaDevAttrComputeCapabilityMajor, dev_);
        cudaDeviceGetAttribute(&mi, cudaDevAttrComputeCapabilityMinor, dev_);
        fail(cat("CUDA device ", dev_, " (compute capability ", ma, ".", mi, "): this build has no kernels for it (",
                 cudaGetErrorString(fe), "); rebuild with -DCMAKE_CUDA_ARCHITECTURES=", ma, mi));
      }
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, dev_));
    CUBLAS_CHECK(cublasCreate(&blas_));
    CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));  // no TF32: f32 GEMMs stay f32
    const char* e = std::getenv("DSFUSE_CUDA_F32");
    f32_ = e && *e && std::string(e) != "0";
    const char* g = std::getenv("DSFUSE_CUDA_GRAPHS");
    graphs_ = !(g && std::string(g) == "0");
    const char* mh = std::getenv("DSFUSE_CUDA_MLA_HEADS");
    mla_heads_ = mh && std::string(mh) == "1";
    // DSFUSE_CUDA_MLA: unset = the tensor-core kernels of mla_tc.cu chosen by step size (see
    // mla_attention_segs); tc2 / tc force the 8-warp / 4-warp one (tc2 falls back to tc for shapes or GPUs it
    // does not take); segs = the per-head FP32 kernel; heads.
    const char* mk = std::getenv("DSFUSE_CUDA_MLA");
    const std::string mks = mk ? mk : "";
    if (mks == "heads") mla_heads_ = true;
    mla_kernel_ = mks == "" ? MlaKernel::Auto : mks == "tc2" ? MlaKernel::Tc2
                : mks == "segs" || mks == "heads" ? MlaKernel::Segs : MlaKernel::Tc;
    // DSFUSE_CUDA_SKIP=op[,op...]: those ops are not run (wrong results; diagnosis only: a decode row with and
    // without an op gives that op's cost inside the replayed step graph).
    if (const char* sk = std::getenv("DSFUSE_CUDA_SKIP"); sk && *sk) {
      std::string v(sk);
      for (size_t a = 0; a <= v.size();) {
        size_t b = v.find(',', a);
        if (b == std::string::npos) b = v.size();
        if (b > a) skip_.insert(v.substr(a, b - a));
        a = b + 1;
      }
      log::warn("DSFUSE_CUDA_SKIP=" + v + ": those ops do not run, results are wrong (diagnosis only)");
    }
    const char* pr = std::getenv("DSFUSE_CUDA_PROFILE");
    profile_ = pr && *pr && std::string(pr) != "0";
    if (profile_ && std::string(pr) == "decode") profile_max_T_ = 256;  // only steps of <= 256 tokens
    if (profile_) graphs_ = false;
    // Programmatic dependent launch (see common.cuh) on sm_90+, unless DSFUSE_CUDA_PDL=0.
    int cc = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, dev_));
    const char* pdl = std::getenv("DSFUSE_CUDA_PDL");
    cuda::set_pdl_enabled(cc >= 9 && !(pdl && std::string(pdl) == "0"));
    const char* roll = std::getenv("DSFUSE_CUDA_GEMV_ROLL");
    cuda::set_gemv_roll(!(roll && std::string(roll) == "0"));
    if (const char* gs = std::getenv("DSFUSE_CUDA_GEMV_SPLIT"); gs && *gs) cuda::set_gemv_split(std::atoi(gs));
    if (const char* gt = std::getenv("DSFUSE_CUDA_GEMV_STREAM"); gt && *gt) cuda::set_gemv_stream(std::atoi(gt));
    {
      const char* gk = std::getenv("DSFUSE_CUDA_GEMV_TMA");
      const char* gm = std::getenv("DSFUSE_CUDA_GEMV_TMA_MIN_MB");
      cuda::set_gemv_tma(cc >= 9 && !(gk && std::string(gk) == "0"), gm && *gm ? std::atoll(gm) << 20 : -1);
    }
    {  // tensor-core GQA attention (attention.cu): sm_80+, not in the exact-f32 mode
      const char* at = std::getenv("DSFUSE_CUDA_ATTN_TC");
      cuda::set_attn_tc(cc >= 8 && !f32_ && !(at && std::string(at) == "0"));
    }
    if (const char* fn = std::getenv("DSFUSE_CUDA_FUSE_NORM"); fn && *fn) fuse_norm_ = std::string(fn) == "1" ? 1 : 0;
    if (const char* sb = std::getenv("DSFUSE_CUDA_SMALL_BATCH_BLAS"); sb && std::string(sb) == "0")
      small_batch_blas_ = false;
    if (const char* mr = std::getenv("DSFUSE_CUDA_MOE_RING"); mr && std::string(mr) == "0") cuda::set_moe_ring(false);
    if (const char* ga = std::getenv("DSFUSE_CUDA_GEMV_ASYNC"); ga && std::string(ga) == "0")
      cuda::set_gemv_async(false);
    if (const char* gm = std::getenv("DSFUSE_CUDA_GEMV_MAX_T"); gm && *gm)
      gemv_max_T_ = std::clamp<int64_t>(std::atoll(gm), 0, kGemvMaxT);
    // Split-K attention merges in its last block through these counters (zero between launches);
    // DSFUSE_CUDA_ATTN_MERGE=0: a separate combine kernel instead.
    if (const char* sm = std::getenv("DSFUSE_CUDA_SPLIT_MAX_T"); sm && *sm) split_max_T_ = std::atoll(sm);
    if (const char* mg = std::getenv("DSFUSE_CUDA_MOE_GEMM_PAIRS"); mg && *mg) moe_gemm_pairs_ = std::atoll(mg);
    if (const char* ds = std::getenv("DSFUSE_CUDA_SAMPLING"); ds && std::string(ds) == "0") device_sampling_ = false;
    if (const char* bp = std::getenv("DSFUSE_CUDA_ATTN_BLOCKS_PER_SM"); bp && std::atoi(bp) > 0)
      attn_bps_ = std::atoi(bp);
    const char* am = std::getenv("DSFUSE_CUDA_ATTN_MERGE");
    attn_merge_ = !(am && std::string(am) == "0");
    CUDA_CHECK(cudaMalloc(&attn_counters_, sizeof(int) * kAttnCounters));
    CUDA_CHECK(cudaMemset(attn_counters_, 0, sizeof(int) * kAttnCounters));
  }
  ~CudaBackend() override {
    cudaSetDevice(dev_);
    cudaFree(attn_counters_);
    if (profile_) prof_resolve();
    for (cudaEvent_t e : prof_events_) cudaEventDestroy(e);
    for (int i = 0; i < 2; ++i)
      if (stage_host_[i]) cudaFreeHost(stage_host_[i]), cudaEventDestroy(stage_done_[i]);
    if (profile_ && !prof_.empty()) {
      double total = 0;
      for (auto& [k, v] : prof_) total += v.second;
      std::vector<std::pair<double, std::string>> rows;
      for (auto& [k, v] : prof_) rows.push_back({v.second, k});
      std::sort(rows.rbegin(), rows.rend());
      std::fprintf(stderr, "cuda profile (device %d): %.3f s of GPU time in ops\n", dev_, total);
      for (auto& [t, k] : rows)
        std::fprintf(stderr, "  %-20s %8lld calls %10.3f ms %5.1f%% %8.2f us/call\n", k.c_str(),
                     static_cast<long long>(prof_[k].first), t * 1e3, 100 * t / total, t * 1e6 / prof_[k].first);
    }
    cudaStreamSynchronize(stream_);
    drop_graphs();
    for (void* p : owned_) cudaFree(p);
    for (auto& c : scratch_) cudaFree(c.p);
    for (auto& [k, c] : consts_) cudaFree(c.dev);
    for (auto& [k, x] : expert_tables_) cudaFree(x.dev);
    cudaFree(step_dev_);
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_);
  }

  Device device() const override { return Device{DeviceKind::CUDA, dev_}; }
  std::string name() const override { return f32_ ? "cuda-f32" : "cuda"; }

  void* alloc(size_t bytes) override {
    void* p = nullptr;
    CUDA_CHECK(cudaSetDevice(dev_));
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
  }
  void free(void* p) override {
    if (!p) return;
    cudaStreamSynchronize(stream_);
    cudaFree(p);
    drop_graphs();  // recorded graphs may point into freed memory
  }
  void copy_to_device(void* d, const void* s, size_t n) override {
    CUDA_CHECK(cudaMemcpyAsync(d, s, n, cudaMemcpyDefault, stream_));
  }
  void copy_to_host(void* d, const void* s, size_t n) override {
    CUDA_CHECK(cudaMemcpyAsync(d, s, n, cudaMemcpyDefault, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void synchronize() override { CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  void* native_stream() override { return stream_; }
  void bind_thread() override { CUDA_CHECK(cudaSetDevice(dev_)); }

  double measure_bandwidth_gbs() override {
    CUDA_CHECK(cudaSetDevice(dev_));
    size_t free_b = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
    const size_t bytes = std::min<size_t>(size_t(4) << 30, free_b / 4);
    return read_bandwidth_gbs(stream_, bytes & ~size_t(4095), 5);
  }

  TensorView prepare(const TensorView& v) override {
    if (v.empty()) return v;
    TensorView out = v;
    out.data = upload(v);
    for (int i = v.ndim - 1; i >= 0; --i) out.stride[i] = i == v.ndim - 1 ? 1 : out.stride[i + 1] * v.shape[i + 1];
    out.device = device();
    return out;
  }

  Linear prepare(const Linear& w) override {
    Linear out = w;
    const int64_t N = w.out_features(), K = w.in_features();
    if (f32_ || w.w.dtype == DType::I8) {
      // Dequantized on the host exactly as the CPU does (FP8: bf16-rounded block products), kept as f32.
      std::vector<float> buf(static_cast<size_t>(N * K));
      dequantize_rows(w, 0, N, buf.data());
      out.w = prepare(TensorView(buf.data(), DType::F32, {N, K}));
      out.scale = TensorView();
      out.zero = TensorView();
    } else {
      out.w = prepare(w.w);
      out.scale = prepare(w.scale);
    }
    out.bias = prepare(w.bias);
    return out;
  }

  // ---- step inputs ----
  // Packed int32 layout in one device buffer: ids [T] | positions [T] | token segment [T] | cache row [T] |
  // segments [nseg, 4] | block tables. Uploaded with one copy (skipped when unchanged).
  void begin_step(const int32_t* ids, const int32_t* positions, int64_t T, const std::vector<SeqSegment>* segs) override {
    if (profile_ && T <= profile_max_T_) {  // queue the whole step behind a 30 ms hold: ops timed back to back
      prof_resolve();
      cuda::gpu_spin(stream_, 0.03);
    }
    step_host_.clear();
    step_T_ = T;
    step_host_.insert(step_host_.end(), ids, ids + T);
    if (positions) step_host_.insert(step_host_.end(), positions, positions + T);
    else step_host_.resize(step_host_.size() + T, 0);
    if (segs) pack_segs(*segs, T, step_host_);
    const size_t bytes = step_host_.size() * sizeof(int32_t);
    if (bytes > step_cap_) {
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      cudaFree(step_dev_);
      step_cap_ = std::max<size_t>(bytes * 2, 1 << 16);
      CUDA_CHECK(cudaMalloc(&step_dev_, step_cap_));
      ++step_gen_;
      step_uploaded_.clear();
    }
    if (step_uploaded_ != step_host_) {
      CUDA_CHECK(cudaMemcpyAsync(step_dev_, step_host_.data(), bytes, cudaMemcpyHostToDevice, stream_));
      step_uploaded_ = step_host_;
    }
  }

  // ---- graphs ----
  bool graph_launch(uint64_t key) override {
    if (!graphs_) return false;
    auto it = graphs_map_.find(key);
    if (it == graphs_map_.end()) return false;
    if (it->second.scratch_gen != scratch_gen_ || it->second.step_gen != step_gen_) {
      cudaGraphExecDestroy(it->second.exec);
      graphs_map_.erase(it);
      return false;
    }
    CUDA_CHECK(cudaGraphLaunch(it->second.exec, stream_));
    count_bytes(it->second.weight_bytes);
    return true;
  }
  void graph_begin(uint64_t key) override {
    if (!graphs_ || capturing_) return;
    if (!seen_.count(key)) {  // first time: run plainly (warms the scratch and constant caches)
      seen_[key] = 1;
      return;
    }
    if (graphs_map_.size() >= 64) drop_graphs();
    reset_scratch();  // merges grown chunks now, not while recording
    capture_key_ = key;
    capture_broken_ = false;
    capture_bytes0_ = bytes_read_;
    CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    capturing_ = true;
  }
  void graph_end() override {
    if (!capturing_) return;
    capturing_ = false;
    cudaGraph_t g = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream_, &g);
    cudaGraphExec_t exec = nullptr;
    bool ok = e == cudaSuccess && g && !capture_broken_ &&
              cudaGraphInstantiate(&exec, g, 0) == cudaSuccess;
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    DSFUSE_CHECK(ok, "CUDA graph capture failed", capture_broken_ ? " (an op needed the host while recording)" : "",
                 e != cudaSuccess ? cat(": ", cudaGetErrorString(e)) : "",
                 "; set DSFUSE_CUDA_GRAPHS=0 to run without graphs");
    Graph gr;
    gr.exec = exec;
    gr.scratch_gen = scratch_gen_;
    gr.step_gen = step_gen_;
    gr.weight_bytes = bytes_read_ - capture_bytes0_;  // this backend's own ops (other ranks' threads count too)
    graphs_map_[capture_key_] = gr;
    CUDA_CHECK(cudaGraphLaunch(exec, stream_));  // recording ran nothing: run it now
  }

  // ---- ops ----
  void embedding(TensorView out, const TensorView& table, const int32_t* ids, int64_t T) override {
    Prof prof(this, "embedding");
    if (prof.skip) return;
    Op op(this);
    const int64_t H = table.shape[1];
    const int32_t* d_ids = step_input(ids, T, 0);
    launch(embedding_kernel, blocks(T * H), 256, 0, stream_, out.ptr<float>(), out.stride[0], table.data,
                                                          wtype_of(table.dtype), table.stride[0], d_ids, T, H);
    check_launch();
  }

  void linear(TensorView y, const TensorView& x, const Linear& w) override {
    Prof prof(this, "linear");
    if (prof.skip) return;
    Op op(this);
    linear_impl(y.ptr<float>(), y.stride[0], x.ptr<float>(), x.stride[0], x.shape[0], w);
  }

  // One-token steps over bf16 weights may fold the norm into the next GEMV and the residual add into the previous
  // one's output (cuda::gemv_fused: the TMA and cp.async-ring kernels); other shapes compose the ops. By default
  // only for models whose fused q/k/v weight is under kFuseNormMaxBytes: measured on 8-layer decode (H200, run 35,
  // 3 interleaved rounds) R1-Distill-Qwen-1.5B 1.042x (qkv 6.3 MB), Qwen-7B 0.987x (33 MB), LLM-7B 0.997x (100 MB):
  // the two kernels saved per layer matter where layers are short; on 7B layers the norm prologue of every block
  // costs about what they save. DSFUSE_CUDA_FUSE_NORM=1 / =0 forces it on / off. The ops themselves always fuse
  // when called (the op tests cover them).
  static constexpr int64_t kFuseNormMaxBytes = int64_t(16) << 20;
  bool fuses_norm_linear(int64_t T, const Linear& w) const override {
    if (T != 1 || f32_ || w.w.dtype != DType::BF16 || fuse_norm_ == 0) return false;
    return fuse_norm_ == 1 || static_cast<int64_t>(w.bytes()) < kFuseNormMaxBytes;
  }
  void rms_norm_linear(TensorView y, const TensorView& x, const TensorView& nw, float eps, const Linear& w,
                       TensorView h) override {
    Prof prof(this, "rms_norm_linear");
    if (prof.skip) return;
    Op op(this);
    if (fused_gemv(y, x, w, false, &nw, eps, false)) return;
    Backend::rms_norm_linear(y, x, nw, eps, w, h);
  }
  void rms_norm_linear_silu(TensorView y, const TensorView& x, const TensorView& nw, float eps,
                            const Linear& gate_up, TensorView h) override {
    Prof prof(this, "rms_norm_linear_silu");
    if (prof.skip) return;
    Op op(this);
    if (fused_gemv(y, x, gate_up, true, &nw, eps, false)) return;
    Backend::rms_norm_linear_silu(y, x, nw, eps, gate_up, h);
  }
  void linear_add(TensorView x, const TensorView& a, const Linear& w, TensorView tmp) override {
    Prof prof(this, "linear_add");
    if (prof.skip) return;
    Op op(this);
    if (fused_gemv(x, a, w, false, nullptr, 0.0f, true)) return;
    Backend::linear_add(x, a, w, tmp);
  }
  // One token through cuda::gemv_fused when it takes the weight (false: the caller composes the ops).
  bool fused_gemv(TensorView y, const TensorView& x, const Linear& w, bool silu, const TensorView* nw, float eps,
                  bool res) {
    if (x.shape[0] != 1 || (nw && nw->ndim != 1)) return false;
    const WDesc d = desc_of(w);
    const int64_t N = silu ? w.out_features() / 2 : w.out_features(), K = w.in_features();
    const void* bias = w.bias.empty() ? nullptr : w.bias.data;
    const int btype = w.bias.empty() ? 0 : wtype_of(w.bias.dtype);
    if (!cuda::gemv_fused(stream_, y.ptr<float>(), x.ptr<float>(), d, N, K, bias, btype, silu,
                          nw ? nw->data : nullptr, nw ? wtype_of(nw->dtype) : 0, eps, res))
      return false;
    count_bytes(static_cast<int64_t>(w.bytes()));
    return true;
  }

  void rms_norm(TensorView y, const TensorView& x, const TensorView& w, float eps) override {
    Prof prof(this, "rms_norm");
    if (prof.skip) return;
    const int64_t T = x.shape[0], D = x.shape[x.ndim - 1];
    if (norm_reg<false>(stream_, T, D, x.ptr<float>(), x.stride[0], nullptr, 0, y.ptr<float>(),
                        y.stride[0], w.data, wtype_of(w.dtype), eps))
      return;
    launch(rms_norm_kernel, static_cast<unsigned>(T), 256, 0, stream_, y.ptr<float>(), y.stride[0], x.ptr<float>(),
                                                                    x.stride[0], D, w.data, wtype_of(w.dtype), eps);
    check_launch();
  }

  void add(TensorView y, const TensorView& x) override {
    Prof prof(this, "add");
    if (prof.skip) return;
    const int64_t T = x.shape[0], D = x.numel() / T;
    launch(add_kernel, blocks(T * D), 256, 0, stream_, y.ptr<float>(), y.stride[0], x.ptr<float>(), x.stride[0], T, D);
    check_launch();
  }

  void add_rms_norm(TensorView x, const TensorView& o, TensorView h, const TensorView& w, float eps) override {
    Prof prof(this, "add_rms_norm");
    if (prof.skip) return;
    const int64_t T = x.shape[0], D = x.shape[x.ndim - 1];
    if (norm_reg<true>(stream_, T, D, x.ptr<float>(), x.stride[0], o.ptr<float>(), o.stride[0], h.ptr<float>(),
                       h.stride[0], w.data, wtype_of(w.dtype), eps))
      return;
    launch(add_rms_norm_kernel, static_cast<unsigned>(T), 256, 0, stream_, x.ptr<float>(), x.stride[0], o.ptr<float>(),
                                                                        o.stride[0], h.ptr<float>(), h.stride[0], D,
                                                                        w.data, wtype_of(w.dtype), eps);
    check_launch();
  }

  void linear_silu(TensorView y, const TensorView& x, const Linear& w) override {
    Op op(this);
    Prof prof(this, "linear_silu");
    if (prof.skip) return;
    const int64_t T = x.shape[0], I = w.out_features() / 2, K = w.in_features();
    if (T <= gemv_max_T_ && w.bias.empty() && !small_batch_to_blas(desc_of(w), 2 * I, K, T)) {
      count_bytes(static_cast<int64_t>(w.bytes()));
      cuda::gemv_silu(stream_, y.ptr<float>(), y.stride[0], x.ptr<float>(), x.stride[0], T, desc_of(w), I, K);
      return;
    }
    float* gu = scratch_f(T * 2 * I);  // GEMM (and bias), then SwiGLU
    linear_impl(gu, 2 * I, x.ptr<float>(), x.stride[0], T, w);
    launch(silu_mul_kernel, blocks(T * I), 256, 0, stream_, y.ptr<float>(), y.stride[0], gu, 2 * I, gu + I, 2 * I, T, I);
    check_launch();
  }

  void silu_mul(TensorView y, const TensorView& gate, const TensorView& up) override {
    Prof prof(this, "silu_mul");
    if (prof.skip) return;
    const int64_t T = gate.shape[0], I = gate.shape[gate.ndim - 1];
    launch(silu_mul_kernel, blocks(T * I), 256, 0, stream_, y.ptr<float>(), y.stride[0], gate.ptr<float>(),
                                                         gate.stride[0], up.ptr<float>(), up.stride[0], T, I);
    check_launch();
  }

  void rope(TensorView x, int offset, const RopeTable& tab, RopeStyle style, const int32_t* pos) override {
    Prof prof(this, "rope");
    if (prof.skip) return;
    Op op(this);
    const int64_t T = x.shape[0], H = x.shape[1];
    const int half = tab.rot_dim() / 2;
    const float* d_freq = constant(tab.inv_freq.data(), half);
    const int32_t* d_pos = step_input(pos, T, 1);
    launch(rope_kernel, blocks(T * H * half), 256, 0, stream_, x.ptr<float>(), x.stride[0], x.stride[1], T, H, offset,
                                                           half, d_freq, tab.cos_sin_scale,
                                                           style == RopeStyle::Neox, d_pos);
    check_launch();
  }

  void copy_rows(TensorView dst, int64_t r0, const TensorView& src, const PagedRows& rows) override {
    Prof prof(this, "copy_rows");
    if (prof.skip) return;
    Op op(this);
    const int64_t T = src.shape[0], D = src.numel() / T;
    const int32_t* tab = rows.table ? stage(rows.table, (r0 + T - 1) / rows.block_size + 1) : nullptr;
    launch(copy_rows_kernel, blocks(T * D), 256, 0, stream_, dst.ptr<float>(), dst.stride[0], r0, src.ptr<float>(),
                                                         src.stride[0], T, D, tab, rows.block_size);
    check_launch();
  }

  void attention(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v, int64_t past,
                 float scale, const PagedRows& rows) override {
    attention_segs(out, q, k, v, scale, {SeqSegment{0, q.shape[0], past, rows}});
  }

  void mla_attention(TensorView out, const TensorView& q_nope, const TensorView& q_pe, const TensorView& latent,
                     const TensorView& k_pe, const Linear& kv_b, int64_t past, float scale,
                     const PagedRows& rows) override {
    mla_attention_segs(out, q_nope, q_pe, latent, k_pe, kv_b, scale, {SeqSegment{0, q_nope.shape[0], past, rows}});
  }

  void argmax_rows(TensorView ids, const TensorView& x) override {
    Prof prof(this, "argmax");
    if (prof.skip) return;
    Op op(this);
    cuda::argmax_rows(stream_, ids.ptr<int32_t>(), x.ptr<float>(), x.stride[0], x.shape[0], x.shape[1],
                      scratch(argmax_scratch_bytes(x.shape[0])));
  }

  void copy_rows_segs(TensorView dst, const TensorView& src, const std::vector<SeqSegment>& segs) override {
    Prof prof(this, "copy_rows_segs");
    if (prof.skip) return;
    Op op(this);
    const int64_t T = src.shape[0], D = src.numel() / T;
    cuda::copy_rows_segs(stream_, dst.ptr<float>(), dst.stride[0], src.ptr<float>(), src.stride[0], T, D,
                         seg_meta(segs, T));
  }

  void rope_store_kv(TensorView qk, int64_t Hq, const RopeTable& tab, const int32_t* pos, TensorView kc,
                     TensorView vc, const TensorView& v, const std::vector<SeqSegment>& segs) override {
    const int64_t T = qk.shape[0], Hkv = qk.shape[1] - Hq, D = qk.shape[2];
    const int half = tab.rot_dim() / 2;
    if (2 * half != D || qk.stride[1] != D || qk.stride[2] != 1 || v.stride[1] != D || v.stride[2] != 1 ||
        kc.stride[1] != 1 || vc.stride[1] != 1)
      return Backend::rope_store_kv(qk, Hq, tab, pos, kc, vc, v, segs);  // partial rotary or strided heads
    Prof prof(this, "rope_store_kv");
    if (prof.skip) return;
    Op op(this);
    const float* d_freq = constant(tab.inv_freq.data(), half);
    const int32_t* d_pos = step_input(pos, T, 1);
    const int64_t n = T * (Hq + Hkv) * half + T * Hkv * D;
    launch(rope_store_kv_kernel, blocks(n), 256, 0, stream_, qk.ptr<float>(), qk.stride[0], Hq, Hkv, int(D), half,
           d_freq, tab.cos_sin_scale, d_pos, kc.ptr<float>(), kc.stride[0], vc.ptr<float>(), vc.stride[0],
           v.ptr<float>(), v.stride[0], T, seg_meta(segs, T));
  }

  void mla_store_kv(TensorView kv_a, int64_t C, const TensorView& norm_w, float eps, const RopeTable& tab,
                    const int32_t* pos, TensorView latent, TensorView lat_c, TensorView kpe_c,
                    const std::vector<SeqSegment>& segs) override {
    const int64_t T = kv_a.shape[0], R = kv_a.shape[1] - C;
    const int half = tab.rot_dim() / 2;
    if (2 * half != R || kv_a.stride[1] != 1 || latent.stride[1] != 1 || lat_c.stride[1] != 1 || kpe_c.stride[1] != 1)
      return Backend::mla_store_kv(kv_a, C, norm_w, eps, tab, pos, latent, lat_c, kpe_c, segs);
    Prof prof(this, "mla_store_kv");
    if (prof.skip) return;
    Op op(this);
    const float* d_freq = constant(tab.inv_freq.data(), half);
    const int32_t* d_pos = step_input(pos, T, 1);
    launch(mla_store_kv_kernel, static_cast<unsigned>(T), 256, 0, stream_, kv_a.ptr<float>(), kv_a.stride[0], C, R,
           norm_w.data, wtype_of(norm_w.dtype), eps, d_freq, tab.cos_sin_scale, d_pos, latent.ptr<float>(),
           latent.stride[0], lat_c.ptr<float>(), lat_c.stride[0], kpe_c.ptr<float>(), kpe_c.stride[0],
           seg_meta(segs, T));
  }

  void attention_segs(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v, float scale,
                      const std::vector<SeqSegment>& segs) override {
    Prof prof(this, "attention_segs");
    if (prof.skip) return;
    Op op(this);
    const int64_t T = q.shape[0], Hq = q.shape[1], D = q.shape[2], Hkv = k.shape[1], Dv = v.shape[2];
    // Key splits only when tokens x kv heads leave the GPU idle (decode of small batches).
    const int64_t nb = T * Hkv;
    // Aim: 8 blocks of 4 warps per SM for steps of <= 8 tokens, 2 above (measured on an H200: a batch of 64
    // decodes 6,544 tok/s at 2 and 6,003 at 8; DSFUSE_CUDA_ATTN_BLOCKS_PER_SM overrides both).
    const int64_t target = int64_t(attn_bps_ > 0 ? attn_bps_ : T <= 8 ? 8 : 2) * sms_;
    const int max_split = nb >= target ? 1 : static_cast<int>(std::min<int64_t>(32, (target + nb - 1) / nb));
    float* part = max_split > 1 ? scratch_f(attention_part_floats(T, Hq, int(Dv), max_split)) : nullptr;
    cuda::attention_segs(stream_, out.ptr<float>(), out.stride[0], out.stride[1], q.ptr<float>(), q.stride[0],
                         q.stride[1], k.ptr<float>(), k.stride[0], k.stride[1], v.ptr<float>(), v.stride[0],
                         v.stride[1], T, Hq, Hq / Hkv, int(D), int(Dv), scale, seg_meta(segs, T), part, target,
                         max_split, attn_merge_ ? attn_counters_ : nullptr);
  }

  void mla_attention_segs(TensorView out, const TensorView& q_nope, const TensorView& q_pe, const TensorView& latent,
                          const TensorView& k_pe, const Linear& kv_b, float scale,
                          const std::vector<SeqSegment>& segs) override {
    Prof prof(this, "mla_attention_segs");
    if (prof.skip) return;
    Op op(this);
    const int64_t T = q_nope.shape[0], H = q_nope.shape[1], Dn = q_nope.shape[2], R = q_pe.shape[2];
    const int64_t C = latent.shape[1], Dv = out.shape[2];
    if (mla_heads_ && mla_heads_supported(H, int(R), int(C))) {  // all heads per block (opt-in)
      const int ns = static_cast<int>(std::clamp<int64_t>((2 * sms_ + T - 1) / T, 1, 64));
      float* part = scratch_f(T * H * ns * (C + 2));
      float* qlat = scratch_f(T * H * C);
      float* qpe_s = scratch_f(T * H * R);
      cuda::mla_heads(stream_, out.ptr<float>(), out.stride[0], out.stride[1], q_nope.ptr<float>(), q_nope.stride[0],
                      q_nope.stride[1], q_pe.ptr<float>(), q_pe.stride[0], q_pe.stride[1], latent.ptr<float>(),
                      latent.stride[0], k_pe.ptr<float>(), k_pe.stride[0], desc_of(kv_b), T, H, int(Dn), int(Dv),
                      int(R), int(C), scale, seg_meta(segs, T), part, ns, qlat, qpe_s);
      return;
    }
    if (mla_kernel_ != MlaKernel::Segs && !f32_ && mla_tc_supported(H, int(R), int(C)) &&
        mla_tc_aligned(latent.data, latent.stride[0], k_pe.data, k_pe.stride[0])) {  // tensor cores (TF32)
      int64_t max_keys = 0;  // unknown while recording a graph: it is replayed at longer contexts
      if (!capturing_)
        for (const SeqSegment& s : segs) max_keys = std::max(max_keys, s.past + s.n);
      // tc2 (8 warps) for batched steps; tc for a few tokens, where it measured ahead (V2-Lite b=1 decode 184 vs
      // 177 tok/s; 64 x 4096 cache: tc2 881 GB/s vs 777). DSFUSE_CUDA_MLA=tc / tc2 forces one.
      const bool tc2 = (mla_kernel_ == MlaKernel::Tc2 || (mla_kernel_ == MlaKernel::Auto && T >= 16)) &&
                       mla_tc2_supported(H, int(R), int(C));
      const int ns = tc2 ? mla_tc2_splits(T, H, max_keys, int(R), int(C), sms_)
                         : mla_tc_splits(T, H, max_keys, int(R), int(C), sms_);
      float* part = scratch_f(mla_tc_part_floats(T, H, int(C), ns));
      float* qcat = scratch_f(mla_tc_q_floats(T, H, int(R), int(C)));
      (tc2 ? cuda::mla_tc2 : cuda::mla_tc)(
          stream_, out.ptr<float>(), out.stride[0], out.stride[1], q_nope.ptr<float>(), q_nope.stride[0],
          q_nope.stride[1], q_pe.ptr<float>(), q_pe.stride[0], q_pe.stride[1], latent.ptr<float>(), latent.stride[0],
          k_pe.ptr<float>(), k_pe.stride[0], desc_of(kv_b), T, H, int(Dn), int(Dv), int(R), int(C), scale,
          seg_meta(segs, T), part, ns, qcat);
      return;
    }
    // Key splits when tokens x heads leave the GPU idle (decode of small batches); 64+ keys per split.
    const int64_t nb = T * H;
    const int nsplit = nb >= 2 * sms_ ? 1 : static_cast<int>(std::min<int64_t>(16, (2 * sms_ + nb - 1) / nb));
    float* part = nsplit > 1 ? scratch_f(nb * nsplit * (C + 2)) : nullptr;
    cuda::mla_segs(stream_, out.ptr<float>(), out.stride[0], out.stride[1], q_nope.ptr<float>(), q_nope.stride[0],
                   q_nope.stride[1], q_pe.ptr<float>(), q_pe.stride[0], q_pe.stride[1], latent.ptr<float>(),
                   latent.stride[0], k_pe.ptr<float>(), k_pe.stride[0], desc_of(kv_b), T, H, int(Dn), int(Dv),
                   int(R), int(C), scale, seg_meta(segs, T), part, nsplit);
  }

  void moe_route(TensorView ids, TensorView weights, const TensorView& logits, const TensorView& bias,
                 const RouterParams& p) override {
    Prof prof(this, "moe_route");
    if (prof.skip) return;
    Op op(this);
    const int64_t T = logits.shape[0], E = p.n_experts;
    const float* d_bias = nullptr;
    if (!bias.empty()) {
      if (bias.dtype == DType::F32) {
        d_bias = bias.ptr<float>();
      } else {
        float* b = scratch_f(E);
        launch(embedding_kernel, blocks(E), 256, 0, stream_, b, E, bias.data, wtype_of(bias.dtype), E, zero_id(), 1, E);
        check_launch();
        d_bias = b;
      }
    }
    cuda::moe_route(stream_, ids.ptr<int32_t>(), ids.stride[0], weights.ptr<float>(), weights.stride[0],
                    logits.ptr<float>(), logits.stride[0], d_bias, T, p);
  }

  void sample_rows(TensorView ids, const TensorView& x, const SampleRowParams* params) override {
    Prof prof(this, "sample_rows");
    if (prof.skip) return;
    Op op(this);
    const int64_t R = x.shape[0], V = x.shape[1];
    const SampleRowParams* d = stage(params, R);
    cuda::sample_rows(stream_, ids.ptr<int32_t>(), x.ptr<float>(), x.stride[0], R, V, d);
  }
  bool device_sampling() const override { return device_sampling_; }

  void moe_experts(TensorView out, const TensorView& x, const TensorView& ids, const TensorView& weights,
                   const std::vector<ExpertWeights>& experts) override {
    Prof prof(this, "moe_experts");
    if (prof.skip) return;
    Op op(this);
    const int64_t T = x.shape[0], H = x.shape[1], K = ids.shape[1];
    const int E = static_cast<int>(experts.size());
    // The experts this rank holds: their intermediate size, bytes each, count.
    int64_t I = 0, ebytes = 0, owned = 0;
    for (const auto& ew : experts)
      if (!ew.gate.empty()) {
        I = ew.gate.out_features();
        ebytes = static_cast<int64_t>(ew.gate.bytes() + ew.up.bytes() + ew.down.bytes());
        ++owned;
      }
    if (I == 0) {  // no expert on this rank
      launch(zero_rows_kernel, blocks(T * H), 256, 0, stream_, out.ptr<float>(), out.stride[0], T, H);
      check_launch();
      return;
    }
    if (capturing_ || T * K <= moe_gemm_pairs_ || E > 320) {
      moe_experts_device(out, x, ids, weights, experts, I);
      // Bytes: at most one read of every selected expert (exact for one token). Under expert parallelism a rank
      // holds `owned` of E experts and computes only the pairs routed to them: about T K owned / E of them.
      count_bytes(std::min<int64_t>((T * K * owned + E - 1) / E, owned) * ebytes);
      return;
    }
    moe_experts_gemm(out, x, ids, weights, experts, I);  // linear_impl counts each GEMM's weight bytes
  }

  // Routed experts for large steps (prefill): the pairs sorted by expert on the device (stable), one copy of the
  // counts to the host (the only synchronisation), the token rows gathered in expert order, then per expert on
  // this rank three GEMMs on its contiguous rows (linear_impl: bf16 tensor cores, hi/lo activations up to 256
  // rows) with one SwiGLU over all rows between them, and the outputs put back per pair and summed per token in
  // slot order.
  void moe_experts_gemm(TensorView out, const TensorView& x, const TensorView& ids, const TensorView& weights,
                        const std::vector<ExpertWeights>& experts, int64_t I) {
    const int64_t T = x.shape[0], H = x.shape[1], K = ids.shape[1];
    const int E = static_cast<int>(experts.size());
    const ExpertDesc* tab = expert_table(experts);
    auto* meta = static_cast<int32_t*>(scratch(sizeof(int32_t) * (2 * E + 1)));
    auto* pair = static_cast<int32_t*>(scratch(sizeof(int32_t) * T * K));
    auto* tok = static_cast<int32_t*>(scratch(sizeof(int32_t) * T * K));
    cuda::moe_sort_pairs(stream_, ids.ptr<int32_t>(), ids.stride[0], T, static_cast<int>(K), E, meta, pair, tok);
    std::vector<int32_t> hm(static_cast<size_t>(2 * E + 1));
    CUDA_CHECK(cudaMemcpyAsync(hm.data(), meta, sizeof(int32_t) * hm.size(), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    const int64_t M = hm[2 * E];  // pairs with a valid expert id
    DSFUSE_CHECK(M >= 0 && M <= T * K, "moe_experts: bad pair count ", M);
    float* xg = scratch_f(std::max<int64_t>(M, 1) * H);  // gathered rows, then the down projections
    float* g = scratch_f(std::max<int64_t>(M, 1) * I);
    float* u = scratch_f(std::max<int64_t>(M, 1) * I);
    float* ybuf = scratch_f(T * K * H);
    if (M > 0) {
      launch(gather_rows_kernel, blocks(M * H), 256, 0, stream_, xg, x.ptr<float>(), x.stride[0], tok, M, H);
      check_launch();
    }
    for (int e = 0; e < E; ++e) {
      const int64_t n = hm[e], r0 = hm[E + e];
      if (!n || experts[e].gate.empty()) continue;  // no pairs, or another expert-parallel rank's expert
      linear_impl(g + r0 * I, I, xg + r0 * H, H, n, experts[e].gate);
      linear_impl(u + r0 * I, I, xg + r0 * H, H, n, experts[e].up);
    }
    if (M > 0) {
      launch(silu_mul_kernel, blocks(M * I), 256, 0, stream_, g, I, g, I, u, I, M, I);
      check_launch();
    }
    for (int e = 0; e < E; ++e) {
      const int64_t n = hm[e], r0 = hm[E + e];
      if (!n || experts[e].gate.empty()) continue;
      linear_impl(xg + r0 * H, H, g + r0 * I, I, n, experts[e].down);
      cuda::moe_scatter_rows(stream_, ybuf, H, xg + r0 * H, H, pair + r0, n, H);
    }
    cuda::moe_combine(stream_, out.ptr<float>(), out.stride[0], ybuf, weights.ptr<float>(), weights.stride[0],
                      ids.ptr<int32_t>(), ids.stride[0], tab, E, T, static_cast<int>(K), H);
  }

 private:
  // Per-op scratch: a bump allocator over device chunks; reset when the outermost op starts. When an op needed
  // more than the first chunk, the chunks are merged into one larger chunk at the next reset (grow-only; every
  // merge invalidates recorded graphs).
  struct Chunk {
    char* p = nullptr;
    size_t size = 0, used = 0;
  };
  struct Op {
    CudaBackend* b;
    explicit Op(CudaBackend* be) : b(be) {
      if (b->depth_++ == 0) b->reset_scratch();
    }
    ~Op() { --b->depth_; }
  };
  // DSFUSE_CUDA_PROFILE=1: every op is timed on the GPU with a pair of CUDA events (graphs off; nothing is
  // synchronised), and a table of GPU time per op kind is printed when the backend goes away.
  // Times the op when profiling; `skip`: the op is in DSFUSE_CUDA_SKIP (the caller returns at once).
  struct Prof {
    CudaBackend* b = nullptr;
    const char* name = nullptr;
    cudaEvent_t e0 = nullptr;
    bool skip = false;
    Prof(CudaBackend* be, const char* n) : skip(!be->skip_.empty() && be->skip_.count(n) > 0) {
      if (!be->profile_ || be->prof_depth_++ > 0 || be->step_T_ > be->profile_max_T_) {
        if (be->profile_) b = be;  // nested: only the depth is tracked
        return;
      }
      b = be;
      name = n;
      e0 = b->event();
      cudaEventRecord(e0, b->stream_);
    }
    ~Prof() {
      if (!b) return;
      if (name) {
        cudaEvent_t e1 = b->event();
        cudaEventRecord(e1, b->stream_);
        b->prof_pending_.push_back({name, e0, e1});
        if (b->prof_pending_.size() > 4096) b->prof_resolve();
      }
      --b->prof_depth_;
    }
  };
  struct ProfPending {
    const char* name;
    cudaEvent_t e0, e1;
  };
  cudaEvent_t event() {
    if (prof_events_.empty()) {
      cudaEvent_t e;
      CUDA_CHECK(cudaEventCreate(&e));
      return e;
    }
    cudaEvent_t e = prof_events_.back();
    prof_events_.pop_back();
    return e;
  }
  void prof_resolve() {
    if (prof_pending_.empty()) return;
    cudaStreamSynchronize(stream_);
    for (auto& p : prof_pending_) {
      float ms = 0;
      cudaEventElapsedTime(&ms, p.e0, p.e1);
      auto& e = prof_[p.name];
      e.first += 1;
      e.second += ms * 1e-3;
      prof_events_.push_back(p.e0);
      prof_events_.push_back(p.e1);
    }
    prof_pending_.clear();
  }
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    uint64_t scratch_gen = 0, step_gen = 0;
    int64_t weight_bytes = 0;
  };
  struct Const {
    void* dev = nullptr;
    std::vector<char> host;
  };

  void drop_graphs() {
    for (auto& [k, g] : graphs_map_) cudaGraphExecDestroy(g.exec);
    graphs_map_.clear();
  }

  void reset_scratch() {
    if (scratch_.size() > 1) {
      if (capturing_) {  // cannot free while recording: keep the chunks, the graph is discarded
        capture_broken_ = true;
      } else {
        size_t total = 0;
        for (auto& c : scratch_) total += c.size;
        CUDA_CHECK(cudaStreamSynchronize(stream_));
        for (auto& c : scratch_) cudaFree(c.p);
        scratch_.clear();
        add_chunk(total);
        ++scratch_gen_;
      }
    }
    for (auto& c : scratch_) c.used = 0;
  }
  void add_chunk(size_t bytes) {
    Chunk c;
    c.size = bytes;
    if (capturing_) capture_broken_ = true;  // a new chunk while recording: the graph would not be replayable
    CUDA_CHECK(cudaMalloc(&c.p, bytes));
    scratch_.push_back(c);
  }
  void* scratch(size_t bytes) {
    bytes = (bytes + 255) & ~size_t(255);
    if (scratch_.empty() || scratch_.back().used + bytes > scratch_.back().size)
      add_chunk(std::max<size_t>(bytes, scratch_.empty() ? (16u << 20) : scratch_.back().size * 2));
    Chunk& c = scratch_.back();
    void* p = c.p + c.used;
    c.used += bytes;
    return p;
  }
  float* scratch_f(int64_t n) { return static_cast<float*>(scratch(sizeof(float) * n)); }
  template <typename T>
  const T* stage(const T* host, int64_t n) {
    if (!host || n <= 0) return nullptr;
    void* d = scratch(sizeof(T) * n);
    if (capturing_) {  // a host copy cannot be recorded: the graph is discarded (see graph_end)
      capture_broken_ = true;
      return static_cast<const T*>(d);
    }
    // Pageable source: returns once the bytes are staged, so the caller's buffer may go away.
    CUDA_CHECK(cudaMemcpyAsync(d, host, sizeof(T) * n, cudaMemcpyHostToDevice, stream_));
    return static_cast<const T*>(d);
  }
  // Host constants (rope tables) uploaded once, keyed by address and checked by content.
  template <typename T>
  const T* constant(const T* host, int64_t n) {
    const size_t bytes = sizeof(T) * n;
    Const& c = consts_[reinterpret_cast<uintptr_t>(host)];
    if (c.host.size() == bytes && std::memcmp(c.host.data(), host, bytes) == 0) return static_cast<const T*>(c.dev);
    if (capturing_) {
      capture_broken_ = true;
      return static_cast<const T*>(scratch(bytes));
    }
    if (c.host.size() < bytes) {
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      cudaFree(c.dev);
      CUDA_CHECK(cudaMalloc(&c.dev, bytes));
      drop_graphs();
    }
    c.host.assign(reinterpret_cast<const char*>(host), reinterpret_cast<const char*>(host) + bytes);
    CUDA_CHECK(cudaMemcpyAsync(c.dev, host, bytes, cudaMemcpyHostToDevice, stream_));
    return static_cast<const T*>(c.dev);
  }
  const int32_t* zero_id() {
    static const int32_t z = 0;
    return constant(&z, 1);
  }
  // ids / positions of the current step when `host` holds them (by content), else staged per op.
  // The step's copy of ids (part 0) or positions (part 1) when `host` holds them (by content), else staged
  // per op.
  const int32_t* step_input(const int32_t* host, int64_t T, int part) {
    if (T == step_T_ && step_dev_ && std::memcmp(host, step_host_.data() + part * T, sizeof(int32_t) * T) == 0)
      return static_cast<const int32_t*>(step_dev_) + part * T;
    return stage(host, T);
  }
  // Appends the segment metadata of a batch: token segment [T], cache row [T], segments [n, 4], tables.
  static void pack_segs(const std::vector<SeqSegment>& segs, int64_t T, std::vector<int32_t>& out) {
    const size_t base = out.size();
    out.resize(base + 2 * T + 4 * segs.size(), 0);
    int32_t* tok_seg = out.data() + base;
    for (size_t i = 0; i < segs.size(); ++i) {
      const SeqSegment& s = segs[i];
      for (int64_t t = s.t0; t < s.t0 + s.n && t < T; ++t) {
        out[base + t] = static_cast<int32_t>(i);
        out[base + T + t] = static_cast<int32_t>(s.rows.phys(s.past + (t - s.t0)));
      }
      int32_t* sg = out.data() + base + 2 * T + 4 * i;
      sg[0] = static_cast<int32_t>(s.t0);
      sg[1] = static_cast<int32_t>(s.n);
      sg[2] = static_cast<int32_t>(s.past);
      sg[3] = -1;
      (void)tok_seg;
    }
    for (size_t i = 0; i < segs.size(); ++i) {
      const SeqSegment& s = segs[i];
      if (!s.rows.table) continue;
      const int64_t nb = (s.past + s.n - 1) / s.rows.block_size + 1;
      const int32_t off = static_cast<int32_t>(out.size() - (base + 2 * T + 4 * segs.size()));
      out[base + 2 * T + 4 * i + 3] = off;
      out.insert(out.end(), s.rows.table, s.rows.table + nb);
    }
  }
  // Device metadata for `segs`: the step's copy when they are the step's segments, else staged per op.
  SegMeta seg_meta(const std::vector<SeqSegment>& segs, int64_t T) {
    int bs = 0;
    for (const auto& s : segs)
      if (s.rows.table) bs = s.rows.block_size;
    tmp_meta_.clear();
    pack_segs(segs, T, tmp_meta_);
    const int32_t* d = nullptr;
    const size_t off = 2 * static_cast<size_t>(step_T_);
    if (T == step_T_ && step_dev_ && step_host_.size() == off + tmp_meta_.size() &&
        std::memcmp(step_host_.data() + off, tmp_meta_.data(), tmp_meta_.size() * sizeof(int32_t)) == 0) {
      d = static_cast<const int32_t*>(step_dev_) + off;
    } else {
      d = stage(tmp_meta_.data(), static_cast<int64_t>(tmp_meta_.size()));
    }
    SegMeta m;
    m.tok_seg = d;
    m.slot = d + T;
    m.seg = d + 2 * T;
    m.tables = d + 2 * T + 4 * segs.size();
    m.block_size = bs ? bs : 1;
    return m;
  }

  void check_launch() { CUDA_CHECK(cudaGetLastError()); }

  void* upload(const TensorView& v) {
    const size_t es = dtype_size(v.dtype);
    const int64_t n = v.numel();
    void* d = alloc(static_cast<size_t>(n) * es);
    owned_.push_back(d);
    bool contiguous = true;
    int64_t expect = 1;
    for (int i = v.ndim - 1; i >= 0; --i) {
      if (v.shape[i] != 1 && v.stride[i] != expect) contiguous = false;
      expect *= v.shape[i];
    }
    if (contiguous) {
      copy_in(d, v.data, static_cast<size_t>(n) * es);
    } else {
      DSFUSE_CHECK(v.ndim == 2 && v.stride[1] == 1, "CUDA upload: unsupported strided tensor ", v.shape_str());
      CUDA_CHECK(cudaMemcpy2D(d, v.shape[1] * es, v.data, v.stride[0] * es, v.shape[1] * es, v.shape[0],
                              cudaMemcpyHostToDevice));
    }
    return d;
  }

  // Host -> device copy of weights through two pinned staging buffers (pageable copies run at a few GB/s;
  // pinned ones at PCIe speed, and the memcpy into one buffer overlaps the transfer of the other).
  void copy_in(void* dst, const void* src, size_t bytes) {
    constexpr size_t kStage = size_t{32} << 20;
    if (bytes < (size_t{1} << 20)) {
      CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
      return;
    }
    if (!stage_host_[0]) {
      for (int i = 0; i < 2; ++i) {
        if (cudaHostAlloc(&stage_host_[i], kStage, cudaHostAllocDefault) != cudaSuccess) {
          cudaGetLastError();
          stage_host_[0] = stage_host_[1] = nullptr;
          CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
          return;
        }
        CUDA_CHECK(cudaEventCreateWithFlags(&stage_done_[i], cudaEventDisableTiming));
        CUDA_CHECK(cudaEventRecord(stage_done_[i], stream_));
      }
    }
    for (size_t off = 0, i = 0; off < bytes; off += kStage, i ^= 1) {
      const size_t m = std::min(kStage, bytes - off);
      CUDA_CHECK(cudaEventSynchronize(stage_done_[i]));  // the buffer's previous transfer has finished
      std::memcpy(stage_host_[i], static_cast<const char*>(src) + off, m);
      CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + off, stage_host_[i], m, cudaMemcpyHostToDevice, stream_));
      CUDA_CHECK(cudaEventRecord(stage_done_[i], stream_));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // the caller may free `src` now
  }

  // Device table of an expert list's weights, cached by the list's address and checked by content (a list
  // at a reused address gets a new table).
  const ExpertDesc* expert_table(const std::vector<ExpertWeights>& experts) {
    std::vector<ExpertDesc> h(experts.size());
    std::memset(h.data(), 0, sizeof(ExpertDesc) * h.size());
    for (size_t e = 0; e < experts.size(); ++e) {
      if (experts[e].gate.empty()) continue;
      h[e].gate = desc_of(experts[e].gate);
      h[e].up = desc_of(experts[e].up);
      h[e].down = desc_of(experts[e].down);
    }
    ExpertTable& t = expert_tables_[reinterpret_cast<uintptr_t>(experts.data())];
    const size_t bytes = sizeof(ExpertDesc) * h.size();
    if (t.dev && t.host.size() == bytes && std::memcmp(t.host.data(), h.data(), bytes) == 0)
      return static_cast<const ExpertDesc*>(t.dev);
    if (capturing_) {
      capture_broken_ = true;
      return static_cast<const ExpertDesc*>(scratch(bytes));
    }
    if (t.dev) {
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      cudaFree(t.dev);
      drop_graphs();
    }
    CUDA_CHECK(cudaMalloc(&t.dev, bytes));
    CUDA_CHECK(cudaMemcpy(t.dev, h.data(), bytes, cudaMemcpyHostToDevice));
    t.host.assign(reinterpret_cast<const char*>(h.data()), reinterpret_cast<const char*>(h.data()) + bytes);
    return static_cast<const ExpertDesc*>(t.dev);
  }

  // Routed experts without leaving the device: pairs sorted by expert, grouped GEMVs reading each selected
  // expert's weights once per step.
  void moe_experts_device(TensorView out, const TensorView& x, const TensorView& ids, const TensorView& weights,
                          const std::vector<ExpertWeights>& experts, int64_t I) {
    const int64_t T = x.shape[0], H = x.shape[1], K = ids.shape[1];
    const int E = static_cast<int>(experts.size());
    const ExpertDesc* tab = expert_table(experts);
    auto* cnt = static_cast<int32_t*>(scratch(sizeof(int32_t) * (2 * E + 1)));
    auto* list = static_cast<int32_t*>(scratch(sizeof(int32_t) * E * T));
    float* hbuf = scratch_f(T * K * I);
    float* ybuf = scratch_f(T * K * H);
    cuda::moe_experts_grouped(stream_, out.ptr<float>(), out.stride[0], x.ptr<float>(), x.stride[0],
                              ids.ptr<int32_t>(), ids.stride[0], weights.ptr<float>(), weights.stride[0], T,
                              static_cast<int>(K), H, I, tab, E, cnt, list, hbuf, ybuf);
  }

  // Steps of 2-8 tokens over larger bf16 weights go to cuBLAS (activations split into bf16 hi + lo rows): it reads
  // the weights once for all rows in about the one-token time, while the decode GEMV rereads the activations from
  // L1 for every weight chunk and slows about linearly with T (kbench gemv --graph on an H200, runs 27-28:
  // 4096x11008 T=2 44.5 vs 28.5 us, T=8 147 vs 29; but 1536x1536 T=2 4.9 vs 8.1, 256x1536 T=8 5.8 vs 6.3).
  bool small_batch_to_blas(const WDesc& d, int64_t N, int64_t K, int64_t T) const {
    if (T < 2 || f32_ || d.type != W_BF16 || !small_batch_blas_) return false;
    const int64_t mb = int64_t(1) << 20, bytes = N * K * 2;
    return bytes >= (T >= 8 ? 2 * mb : T >= 4 ? 4 * mb : 12 * mb);
  }

  // y [T, N] (row stride ldy) = x [T, K] (row stride ldx) W^T + b, all f32 device pointers.
  void linear_impl(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t T, const Linear& w) {
    const int64_t N = w.out_features(), K = w.in_features();
    const WDesc d = desc_of(w);
    const int btype = w.bias.empty() ? 0 : wtype_of(w.bias.dtype);
    const void* bias = w.bias.empty() ? nullptr : w.bias.data;
    count_bytes(static_cast<int64_t>(w.bytes()));
    if (T <= gemv_max_T_ && !small_batch_to_blas(d, N, K, T)) {
      cuda::gemv(stream_, y, ldy, x, ldx, T, d, N, K, bias, btype);
      return;
    }
    const float one = 1.0f, zero = 0.0f;
    if (!f32_ && (d.type == W_BF16 || d.type == W_F8)) {
      // bf16 tensor-core GEMMs with f32 accumulation. Up to 256 rows the activations are split into bf16 hi + lo
      // parts stacked as 2T rows of one GEMM (weights read once; keeps logits within ~1e-5 of f32 instead of the
      // ~1e-3 one bf16 rounding costs, which MoE routers amplify); above, a plain bf16 GEMM (compute-bound).
      // DSFUSE_CUDA_SPLIT_MAX_T moves that limit (0: bf16 activations in every GEMM, as vLLM does).
      const void* wp = w.w.data;
      int64_t lda = d.ld;
      if (d.type == W_F8) {
        auto* deq = static_cast<__nv_bfloat16*>(scratch(sizeof(uint16_t) * N * K));
        launch(dequant_kernel<__nv_bfloat16>, blocks(N * K), 256, 0, stream_, deq, d, N, K);
        check_launch();
        wp = deq;
        lda = K;
      }
      const bool split = T <= split_max_T_;
      auto* xs = static_cast<__nv_bfloat16*>(scratch(sizeof(uint16_t) * (split ? 2 : 1) * T * K));
      launch(split_bf16_kernel, blocks(T * K), 256, 0, stream_, xs, x, ldx, T, K, split);
      check_launch();
      if (split) {
        float* y2 = scratch_f(2 * T * N);
        CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(2 * T), int(K), &one, wp, CUDA_R_16BF,
                                  int(lda), xs, CUDA_R_16BF, int(K), &zero, y2, CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
        cuda::combine_halves(stream_, y, ldy, y2, T, N, bias, btype);
        return;
      }
      CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(T), int(K), &one, wp, CUDA_R_16BF,
                                int(lda), xs, CUDA_R_16BF, int(K), &zero, y, CUDA_R_32F, int(ldy), CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    } else {
      // f32 weights (and f16 / FP8-in-f32-mode / tied bf16 tables in f32 mode, dequantized to f32 scratch).
      const void* wp = w.w.data;
      int64_t lda = d.ld;
      if (d.type != W_F32) {
        float* deq = scratch_f(N * K);
        launch(dequant_kernel<float>, blocks(N * K), 256, 0, stream_, deq, d, N, K);
        check_launch();
        wp = deq;
        lda = K;
      }
      CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(T), int(K), &one, wp, CUDA_R_32F,
                                int(lda), x, CUDA_R_32F, int(ldx), &zero, y, CUDA_R_32F, int(ldy),
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    if (bias) {
      launch(add_bias_kernel, blocks(T * N), 256, 0, stream_, y, ldy, T, N, bias, btype);
      check_launch();
    }
  }

  // Weight bytes read: the process-wide counter (bench's bound) and this backend's own share (graphs record
  // their step's bytes from it: under tensor parallelism other ranks' threads add to the global one meanwhile).
  void count_bytes(int64_t b) {
    cpu::stats().weight_bytes += b;
    bytes_read_ += b;
  }
  int64_t bytes_read_ = 0;
  int dev_ = 0, sms_ = 132;
  void* stage_host_[2] = {nullptr, nullptr};
  cudaEvent_t stage_done_[2] = {nullptr, nullptr};
  int64_t profile_max_T_ = INT64_MAX;
  int* attn_counters_ = nullptr;
  bool attn_merge_ = true;
  int64_t split_max_T_ = 256;
  // Steps of up to this many tokens take the decode GEMV, longer ones cuBLAS (DSFUSE_CUDA_GEMV_MAX_T, 0..8).
  int64_t gemv_max_T_ = kGemvMaxT;
  int fuse_norm_ = -1;  // fuses_norm_linear: -1 by weight size, 0 off, 1 on (DSFUSE_CUDA_FUSE_NORM)
  bool small_batch_blas_ = true;  // small_batch_to_blas (DSFUSE_CUDA_SMALL_BATCH_BLAS=0: the GEMV up to 8 tokens)
  // moe_experts: steps with more (token, expert) pairs than this take the GEMM path (DSFUSE_CUDA_MOE_GEMM_PAIRS).
  int64_t moe_gemm_pairs_ = 8192;
  // The engine sends eligible sampled steps to sample_rows (DSFUSE_CUDA_SAMPLING=0: drawn on the host instead;
  // R1's sampling, 64 concurrent Qwen-7B requests on an H200: 2,536-2,834 output tok/s vs 1,409 on the host).
  bool device_sampling_ = true;
  // DSFUSE_CUDA_SKIP: op kinds not run (diagnosis).
  std::set<std::string> skip_;
  int attn_bps_ = 0;  // 0: by step size
  bool f32_ = false, graphs_ = true, profile_ = false, mla_heads_ = false;
  // MLA kernel after the opt-in heads one: Auto = tensor cores, tc2 from 16 tokens per step; Tc / Tc2 forced;
  // Segs = the FP32 per-head kernel (DSFUSE_CUDA_MLA, read in the constructor).
  enum class MlaKernel { Auto, Tc, Tc2, Segs } mla_kernel_ = MlaKernel::Auto;
  int prof_depth_ = 0;
  std::map<std::string, std::pair<int64_t, double>> prof_;
  std::vector<ProfPending> prof_pending_;
  std::vector<cudaEvent_t> prof_events_;
  int depth_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::vector<void*> owned_;
  std::vector<Chunk> scratch_;
  uint64_t scratch_gen_ = 0;
  std::map<uintptr_t, Const> consts_;
  struct ExpertTable {
    void* dev = nullptr;
    std::vector<char> host;
  };
  std::map<uintptr_t, ExpertTable> expert_tables_;
  // Step inputs.
  std::vector<int32_t> step_host_, step_uploaded_, tmp_meta_;
  int64_t step_T_ = -1;
  void* step_dev_ = nullptr;
  size_t step_cap_ = 0;
  uint64_t step_gen_ = 0;
  // Graphs.
  std::map<uint64_t, Graph> graphs_map_;
  std::map<uint64_t, int> seen_;
  bool capturing_ = false, capture_broken_ = false;
  uint64_t capture_key_ = 0;
  int64_t capture_bytes0_ = 0;
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(int device) { return std::make_unique<CudaBackend>(device); }

}  // namespace dsfuse
