// CUDA backend: device memory, one stream, cuBLAS GEMMs, a streaming GEMV for decode and simple kernels
// for the rest. Weights are uploaded by prepare() (f32/bf16/f16 as stored, FP8 with its block scales,
// int8 dequantized to f32); DSFUSE_CUDA_F32=1 upcasts every weight to f32 so GEMMs run in f32 (tests).
// linear: T <= 8 -> one-warp-per-row GEMV streaming the stored weight (FP8 block dequant in-kernel, f32
// activations and accumulation); T > 8 -> cuBLAS: bf16/FP8 (FP8 dequantized to exact bf16 in scratch) as two
// bf16 GEMMs over the hi/lo split of the activations, f32/f16 as an f32 GEMM (no TF32).
// Host-pointer arguments (ids, positions, block tables) are staged into per-op device scratch.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "ops/moe_routing.h"

namespace dsfuse {
namespace {

#define CUDA_CHECK(expr)                                                                     \
  do {                                                                                       \
    cudaError_t e_ = (expr);                                                                 \
    if (e_ != cudaSuccess) fail(cat("CUDA error ", cudaGetErrorString(e_), " at " #expr));   \
  } while (0)
#define CUBLAS_CHECK(expr)                                                      \
  do {                                                                          \
    cublasStatus_t s_ = (expr);                                                 \
    if (s_ != CUBLAS_STATUS_SUCCESS) fail(cat("cuBLAS error ", int(s_), " at " #expr)); \
  } while (0)

__constant__ float c_f8[256];

enum WType : int { W_F32 = 0, W_BF16 = 1, W_F16 = 2, W_F8 = 3 };

// A weight as the kernels see it.
struct WDesc {
  const void* w;
  const float* scale;  // FP8 block scales [ceil(N/br), sc_cols]
  int type;
  int64_t ld;  // row stride in elements
  int br, bc, sc_cols;
};

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t v) { return __uint_as_float(uint32_t(v) << 16); }
__device__ __forceinline__ float round_bf16_dev(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(((u >> 16) | 0x40) << 16);
  u += 0x7fffu + ((u >> 16) & 1u);
  return __uint_as_float((u >> 16) << 16);
}

__device__ __forceinline__ float wload(const WDesc& d, int64_t n, int64_t k) {
  switch (d.type) {
    case W_F32: return static_cast<const float*>(d.w)[n * d.ld + k];
    case W_BF16: return bf16_bits_to_f32(static_cast<const uint16_t*>(d.w)[n * d.ld + k]);
    case W_F16: return __half2float(static_cast<const __half*>(d.w)[n * d.ld + k]);
    default: {
      const uint8_t b = static_cast<const uint8_t*>(d.w)[n * d.ld + k];
      return round_bf16_dev(c_f8[b] * d.scale[(n / d.br) * d.sc_cols + k / d.bc]);
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

__device__ __forceinline__ int64_t phys_row(const int32_t* table, int bs, int64_t s) {
  return table ? int64_t(table[s / bs]) * bs + s % bs : s;
}

// ---- kernels ----

// y[t, n] = sum_k x[t, k] W[n, k] + b[n] for T <= 8: one warp per output row streams the weight once.
constexpr int kGemvMaxT = 8;
__global__ void gemv_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, WDesc w, int64_t N, int64_t K, int T,
                            const void* bias, int btype) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (n >= N) return;
  float acc[kGemvMaxT];
#pragma unroll
  for (int t = 0; t < kGemvMaxT; ++t) acc[t] = 0.0f;
  for (int64_t k = lane; k < K; k += 32) {
    const float wv = wload(w, n, k);
#pragma unroll
    for (int t = 0; t < kGemvMaxT; ++t)
      if (t < T) acc[t] = fmaf(wv, x[t * ldx + k], acc[t]);
  }
  const float b = bias ? vload(bias, btype, n) : 0.0f;
#pragma unroll
  for (int t = 0; t < kGemvMaxT; ++t) {
    if (t >= T) break;
    const float s = warp_sum(acc[t]);
    if (lane == 0) y[t * ldy + n] = s + b;
  }
}

// Dequantizes a weight to [N, K] (contiguous) bf16 or f32; FP8 is value x block scale rounded to bf16 (the
// CPU's form), so the bf16 output is exact.
template <typename T>
__global__ void dequant_kernel(T* out, WDesc w, int64_t N, int64_t K) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * K) return;
  const float v = wload(w, i / K, i % K);
  if constexpr (std::is_same_v<T, float>) out[i] = v;
  else out[i] = __float2bfloat16_rn(v);
}

// Splits f32 activations into two bf16 parts, x ~= hi + lo (relative error ~2^-16): [hi | lo] as [2, R, K].
__global__ void split_bf16_kernel(__nv_bfloat16* out, const float* x, int64_t ldx, int64_t R, int64_t K) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= R * K) return;
  const float v = x[(i / K) * ldx + i % K];
  const __nv_bfloat16 hi = __float2bfloat16_rn(v);
  out[i] = hi;
  out[R * K + i] = __float2bfloat16_rn(v - __bfloat162float(hi));
}

__global__ void add_bias_kernel(float* y, int64_t ldy, int64_t T, int64_t N, const void* b, int btype) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * N) return;
  y[(i / N) * ldy + i % N] += vload(b, btype, i % N);
}

__global__ void rms_norm_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t D, const void* w, int wtype,
                                float eps) {
  const float* xr = x + blockIdx.x * ldx;
  float* yr = y + blockIdx.x * ldy;
  float ss = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss += xr[d] * xr[d];
  __shared__ float red[32];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.0f;
    v = warp_sum(v);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  const float inv = 1.0f / sqrtf(red[0] / float(D) + eps);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) yr[d] = vload(w, wtype, d) * (xr[d] * inv);
}

__global__ void add_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t T, int64_t D) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * D) return;
  y[(i / D) * ldy + i % D] += x[(i / D) * ldx + i % D];
}

__global__ void silu_mul_kernel(float* y, int64_t ldy, const float* g, int64_t ldg, const float* u, int64_t ldu,
                                int64_t T, int64_t I) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * I) return;
  const int64_t t = i / I, c = i % I;
  const float gv = g[t * ldg + c];
  y[t * ldy + c] = gv / (1.0f + expf(-gv)) * u[t * ldu + c];
}

__global__ void rope_kernel(float* x, int64_t ld0, int64_t ld1, int64_t T, int64_t H, int offset, int half,
                            const float* inv_freq, float cs_scale, int neox, const int32_t* pos) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * H * half) return;
  const int p = int(i % half);
  const int64_t h = (i / half) % H, t = i / (half * H);
  float* v = x + t * ld0 + h * ld1 + offset;
  const float ang = float(pos[t]) * inv_freq[p];
  const float c = cosf(ang) * cs_scale, s = sinf(ang) * cs_scale;
  const int a = neox ? p : 2 * p, b = neox ? p + half : 2 * p + 1;
  const float x0 = v[a], x1 = v[b];
  v[a] = x0 * c - x1 * s;
  v[b] = x1 * c + x0 * s;
}

__global__ void embedding_kernel(float* out, int64_t ldo, const void* table, int type, int64_t ldt, const int32_t* ids,
                                 int64_t T, int64_t H) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * H) return;
  const int64_t t = i / H, d = i % H;
  out[t * ldo + d] = vload(table, type, int64_t(ids[t]) * ldt + d);
}

__global__ void copy_rows_kernel(float* dst, int64_t ldd, int64_t r0, const float* src, int64_t lds, int64_t T,
                                 int64_t D, const int32_t* table, int bs) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * D) return;
  const int64_t t = i / D, d = i % D;
  dst[phys_row(table, bs, r0 + t) * ldd + d] = src[t * lds + d];
}

// One warp per (token, head): online softmax over the causal prefix. D, Dv <= 32 * kAttnPer.
constexpr int kAttnPer = 8;
__global__ void attention_kernel(float* out, int64_t lo0, int64_t lo1, const float* q, int64_t lq0, int64_t lq1,
                                 const float* k, int64_t lk0, int64_t lk1, const float* v, int64_t lv0, int64_t lv1,
                                 int64_t T, int64_t Hq, int64_t group, int D, int Dv, int64_t past, float scale,
                                 const int32_t* table, int bs) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t id = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (id >= T * Hq) return;
  const int64_t t = id / Hq, h = id % Hq, kh = h / group, S = past + t + 1;
  float qr[kAttnPer], acc[kAttnPer];
  const float* qp = q + t * lq0 + h * lq1;
#pragma unroll
  for (int j = 0; j < kAttnPer; ++j) {
    const int d = lane + 32 * j;
    qr[j] = d < D ? qp[d] : 0.0f;
    acc[j] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t r = phys_row(table, bs, s);
    const float* kr = k + r * lk0 + kh * lk1;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kAttnPer; ++j) {
      const int d = lane + 32 * j;
      if (d < D) dot = fmaf(qr[j], kr[d], dot);
    }
    const float sc = warp_sum(dot) * scale;
    const float mn = fmaxf(m, sc);
    const float corr = expf(m - mn), p = expf(sc - mn);
    l = l * corr + p;
    const float* vr = v + r * lv0 + kh * lv1;
#pragma unroll
    for (int j = 0; j < kAttnPer; ++j) {
      const int d = lane + 32 * j;
      acc[j] = acc[j] * corr + (d < Dv ? p * vr[d] : 0.0f);
    }
    m = mn;
  }
  float* o = out + t * lo0 + h * lo1;
#pragma unroll
  for (int j = 0; j < kAttnPer; ++j) {
    const int d = lane + 32 * j;
    if (d < Dv) o[d] = acc[j] / l;
  }
}

// Absorbed MLA, one block (kMlaWarps warps) per (token, head). C <= 32 * kMlaPer.
constexpr int kMlaWarps = 4, kMlaPer = 32;
__global__ void mla_kernel(float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
                           const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0,
                           const float* kpe, int64_t lk0, WDesc w, int64_t H, int Dn, int Dv, int R, int C,
                           int64_t past, float scale, const int32_t* table, int bs) {
  extern __shared__ float sm[];
  float* q_lat = sm;                        // [C]
  float* o_part = sm + C;                   // [kMlaWarps, C]
  float* ml = o_part + kMlaWarps * C;       // [kMlaWarps, 2]
  const int64_t t = blockIdx.x / H, h = blockIdx.x % H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* qnr = qn + t * lqn0 + h * lqn1;
  const float* qpr = qpe + t * lqp0 + h * lqp1;
  const int64_t wrow0 = h * int64_t(Dn + Dv);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float a = 0.0f;
    for (int d = 0; d < Dn; ++d) a = fmaf(qnr[d], wload(w, wrow0 + d, c), a);
    q_lat[c] = a;
  }
  __syncthreads();
  float acc[kMlaPer];
#pragma unroll
  for (int j = 0; j < kMlaPer; ++j) acc[j] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int64_t S = past + t + 1;
  for (int64_t s = warp; s < S; s += kMlaWarps) {
    const int64_t r = phys_row(table, bs, s);
    const float* lr = lat + r * ll0;
    const float* kr = kpe + r * lk0;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kMlaPer; ++j) {
      const int c = lane + 32 * j;
      if (c < C) dot = fmaf(q_lat[c], lr[c], dot);
    }
    for (int e = lane; e < R; e += 32) dot = fmaf(qpr[e], kr[e], dot);
    const float sc = warp_sum(dot) * scale;
    const float mn = fmaxf(m, sc);
    const float corr = expf(m - mn), p = expf(sc - mn);
    l = l * corr + p;
#pragma unroll
    for (int j = 0; j < kMlaPer; ++j) {
      const int c = lane + 32 * j;
      acc[j] = acc[j] * corr + (c < C ? p * lr[c] : 0.0f);
    }
    m = mn;
  }
#pragma unroll
  for (int j = 0; j < kMlaPer; ++j) {
    const int c = lane + 32 * j;
    if (c < C) o_part[warp * C + c] = acc[j];
  }
  if (lane == 0) ml[2 * warp] = m, ml[2 * warp + 1] = l;
  __syncthreads();
  float M = -INFINITY;
  for (int i = 0; i < kMlaWarps; ++i) M = fmaxf(M, ml[2 * i]);
  float L = 0.0f;
  for (int i = 0; i < kMlaWarps; ++i) L += ml[2 * i] == -INFINITY ? 0.0f : ml[2 * i + 1] * expf(ml[2 * i] - M);
  __syncthreads();
  // Combine the warps' partial latent outputs into q_lat's space (reused as o_lat).
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float a = 0.0f;
    for (int i = 0; i < kMlaWarps; ++i)
      if (ml[2 * i] != -INFINITY) a += o_part[i * C + c] * expf(ml[2 * i] - M);
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

__global__ void gather_rows_kernel(float* dst, const float* src, int64_t lds, const int32_t* idx, int64_t n,
                                   int64_t H) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * H) return;
  dst[i] = src[int64_t(idx[i / H]) * lds + i % H];
}

__global__ void scatter_add_kernel(float* out, int64_t ldo, const float* src, const int32_t* idx, const float* wts,
                                   int64_t n, int64_t H) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * H) return;
  out[int64_t(idx[i / H]) * ldo + i % H] += wts[i / H] * src[i];
}

__global__ void zero_rows_kernel(float* y, int64_t ldy, int64_t T, int64_t D) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < T * D) y[(i / D) * ldy + i % D] = 0.0f;
}

unsigned blocks(int64_t n, int per = 256) { return static_cast<unsigned>((n + per - 1) / per); }

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
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&blas_));
    CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));  // no TF32: f32 GEMMs stay f32
    CUDA_CHECK(cudaMemcpyToSymbol(c_f8, kF8E4M3Table, sizeof(float) * 256));
    const char* e = std::getenv("DSFUSE_CUDA_F32");
    f32_ = e && *e && std::string(e) != "0";
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (void* p : owned_) cudaFree(p);
    for (auto& c : scratch_) cudaFree(c.p);
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

  void embedding(TensorView out, const TensorView& table, const int32_t* ids, int64_t T) override {
    Op op(this);
    const int64_t H = table.shape[1];
    const int32_t* d_ids = stage(ids, T);
    embedding_kernel<<<blocks(T * H), 256, 0, stream_>>>(out.ptr<float>(), out.stride[0], table.data,
                                                          wtype_of(table.dtype), table.stride[0], d_ids, T, H);
    check_launch();
  }

  void linear(TensorView y, const TensorView& x, const Linear& w) override {
    Op op(this);
    linear_impl(y.ptr<float>(), y.stride[0], x.ptr<float>(), x.stride[0], x.shape[0], w);
  }

  void rms_norm(TensorView y, const TensorView& x, const TensorView& w, float eps) override {
    const int64_t T = x.shape[0], D = x.shape[x.ndim - 1];
    rms_norm_kernel<<<static_cast<unsigned>(T), 256, 0, stream_>>>(y.ptr<float>(), y.stride[0], x.ptr<float>(),
                                                                    x.stride[0], D, w.data, wtype_of(w.dtype), eps);
    check_launch();
  }

  void add(TensorView y, const TensorView& x) override {
    const int64_t T = x.shape[0], D = x.numel() / T;
    add_kernel<<<blocks(T * D), 256, 0, stream_>>>(y.ptr<float>(), y.stride[0], x.ptr<float>(), x.stride[0], T, D);
    check_launch();
  }

  void silu_mul(TensorView y, const TensorView& gate, const TensorView& up) override {
    const int64_t T = gate.shape[0], I = gate.shape[gate.ndim - 1];
    silu_mul_kernel<<<blocks(T * I), 256, 0, stream_>>>(y.ptr<float>(), y.stride[0], gate.ptr<float>(),
                                                         gate.stride[0], up.ptr<float>(), up.stride[0], T, I);
    check_launch();
  }

  void rope(TensorView x, int offset, const RopeTable& tab, RopeStyle style, const int32_t* pos) override {
    Op op(this);
    const int64_t T = x.shape[0], H = x.shape[1];
    const int half = tab.rot_dim() / 2;
    const float* d_freq = stage(tab.inv_freq.data(), half);
    const int32_t* d_pos = stage(pos, T);
    rope_kernel<<<blocks(T * H * half), 256, 0, stream_>>>(x.ptr<float>(), x.stride[0], x.stride[1], T, H, offset,
                                                           half, d_freq, tab.cos_sin_scale,
                                                           style == RopeStyle::Neox, d_pos);
    check_launch();
  }

  void copy_rows(TensorView dst, int64_t r0, const TensorView& src, const PagedRows& rows) override {
    Op op(this);
    const int64_t T = src.shape[0], D = src.numel() / T;
    const int32_t* tab = stage_table(rows, r0 + T);
    copy_rows_kernel<<<blocks(T * D), 256, 0, stream_>>>(dst.ptr<float>(), dst.stride[0], r0, src.ptr<float>(),
                                                         src.stride[0], T, D, tab, rows.block_size);
    check_launch();
  }

  void attention(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v, int64_t past,
                 float scale, const PagedRows& rows) override {
    Op op(this);
    const int64_t T = q.shape[0], Hq = q.shape[1], D = q.shape[2], Hkv = k.shape[1], Dv = v.shape[2];
    DSFUSE_CHECK(D <= 32 * kAttnPer && Dv <= 32 * kAttnPer, "CUDA attention: head dim ", D, "/", Dv,
                 " above ", 32 * kAttnPer);
    const int32_t* tab = stage_table(rows, past + T);
    const int wpb = 4;
    attention_kernel<<<blocks(T * Hq, wpb), 32 * wpb, 0, stream_>>>(
        out.ptr<float>(), out.stride[0], out.stride[1], q.ptr<float>(), q.stride[0], q.stride[1], k.ptr<float>(),
        k.stride[0], k.stride[1], v.ptr<float>(), v.stride[0], v.stride[1], T, Hq, Hq / Hkv, int(D), int(Dv), past,
        scale, tab, rows.block_size);
    check_launch();
  }

  void mla_attention(TensorView out, const TensorView& q_nope, const TensorView& q_pe, const TensorView& latent,
                     const TensorView& k_pe, const Linear& kv_b, int64_t past, float scale,
                     const PagedRows& rows) override {
    Op op(this);
    const int64_t T = q_nope.shape[0], H = q_nope.shape[1], Dn = q_nope.shape[2], R = q_pe.shape[2];
    const int64_t C = latent.shape[1], Dv = out.shape[2];
    DSFUSE_CHECK(C <= 32 * kMlaPer, "CUDA MLA: latent rank ", C, " above ", 32 * kMlaPer);
    const int32_t* tab = stage_table(rows, past + T);
    const size_t shm = sizeof(float) * (C + kMlaWarps * C + 2 * kMlaWarps);
    if (shm > 48 * 1024)
      CUDA_CHECK(cudaFuncSetAttribute(mla_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shm)));
    mla_kernel<<<static_cast<unsigned>(T * H), 32 * kMlaWarps, shm, stream_>>>(
        out.ptr<float>(), out.stride[0], out.stride[1], q_nope.ptr<float>(), q_nope.stride[0], q_nope.stride[1],
        q_pe.ptr<float>(), q_pe.stride[0], q_pe.stride[1], latent.ptr<float>(), latent.stride[0], k_pe.ptr<float>(),
        k_pe.stride[0], desc_of(kv_b), H, int(Dn), int(Dv), int(R), int(C), past, scale, tab, rows.block_size);
    check_launch();
  }

  void moe_route(TensorView ids, TensorView weights, const TensorView& logits, const TensorView& bias,
                 const RouterParams& p) override {
    const int64_t T = logits.shape[0], E = p.n_experts;
    std::vector<float> lg(static_cast<size_t>(T * E)), b;
    CUDA_CHECK(cudaMemcpy2DAsync(lg.data(), E * sizeof(float), logits.data, logits.stride[0] * sizeof(float),
                                 E * sizeof(float), T, cudaMemcpyDefault, stream_));
    if (!bias.empty()) {
      std::vector<uint8_t> raw(bias.nbytes());
      CUDA_CHECK(cudaMemcpyAsync(raw.data(), bias.data, raw.size(), cudaMemcpyDefault, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      TensorView hb(raw.data(), bias.dtype, {E});
      for (int64_t e = 0; e < E; ++e) b.push_back(vec_at(hb, e));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<int32_t> hid(static_cast<size_t>(T * p.top_k));
    std::vector<float> hw(hid.size()), scratch(3 * p.n_experts + p.n_group);
    for (int64_t t = 0; t < T; ++t)
      route_token(lg.data() + t * E, b.empty() ? nullptr : b.data(), p, hid.data() + t * p.top_k,
                  hw.data() + t * p.top_k, scratch.data());
    CUDA_CHECK(cudaMemcpy2DAsync(ids.data, ids.stride[0] * 4, hid.data(), p.top_k * 4, p.top_k * 4, T,
                                 cudaMemcpyDefault, stream_));
    CUDA_CHECK(cudaMemcpy2DAsync(weights.data, weights.stride[0] * 4, hw.data(), p.top_k * 4, p.top_k * 4, T,
                                 cudaMemcpyDefault, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // host vectors go out of scope
  }

  void moe_experts(TensorView out, const TensorView& x, const TensorView& ids, const TensorView& weights,
                   const std::vector<ExpertWeights>& experts) override {
    Op op(this);
    const int64_t T = x.shape[0], H = x.shape[1], K = ids.shape[1];
    std::vector<int32_t> hid(static_cast<size_t>(T * K));
    std::vector<float> hw(hid.size());
    CUDA_CHECK(cudaMemcpy2DAsync(hid.data(), K * 4, ids.data, ids.stride[0] * 4, K * 4, T, cudaMemcpyDefault, stream_));
    CUDA_CHECK(cudaMemcpy2DAsync(hw.data(), K * 4, weights.data, weights.stride[0] * 4, K * 4, T, cudaMemcpyDefault,
                                 stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    // Tokens per expert (each token picks distinct experts, so one expert's scatter-add has no conflicts).
    std::vector<std::vector<int32_t>> tok(experts.size());
    std::vector<std::vector<float>> wt(experts.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < K; ++j) {
        const int32_t e = hid[t * K + j];
        DSFUSE_CHECK(e >= 0 && size_t(e) < experts.size(), "expert id ", e, " out of range");
        tok[e].push_back(static_cast<int32_t>(t));
        wt[e].push_back(hw[t * K + j]);
      }
    zero_rows_kernel<<<blocks(T * H), 256, 0, stream_>>>(out.ptr<float>(), out.stride[0], T, H);
    for (size_t e = 0; e < experts.size(); ++e) {
      const int64_t n = static_cast<int64_t>(tok[e].size());
      if (!n || experts[e].gate.empty()) continue;  // no tokens, or another rank's expert
      const ExpertWeights& ew = experts[e];
      const int64_t I = ew.gate.out_features();
      const int32_t* d_idx = stage(tok[e].data(), n);
      const float* d_w = stage(wt[e].data(), n);
      float* xg = scratch_f(n * H);
      float* g = scratch_f(n * I);
      float* u = scratch_f(n * I);
      float* yd = scratch_f(n * H);
      gather_rows_kernel<<<blocks(n * H), 256, 0, stream_>>>(xg, x.ptr<float>(), x.stride[0], d_idx, n, H);
      linear_impl(g, I, xg, H, n, ew.gate);
      linear_impl(u, I, xg, H, n, ew.up);
      silu_mul_kernel<<<blocks(n * I), 256, 0, stream_>>>(g, I, g, I, u, I, n, I);
      linear_impl(yd, H, g, I, n, ew.down);
      scatter_add_kernel<<<blocks(n * H), 256, 0, stream_>>>(out.ptr<float>(), out.stride[0], yd, d_idx, d_w, n, H);
    }
    check_launch();
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // staged host vectors die here
  }

 private:
  // Per-op scratch: a bump allocator over device chunks; reset when the outermost op starts. When an op needed
  // more than the first chunk, the chunks are merged into one larger chunk at the next reset (grow-only).
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

  void reset_scratch() {
    if (scratch_.size() > 1) {
      size_t total = 0;
      for (auto& c : scratch_) total += c.size;
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      for (auto& c : scratch_) cudaFree(c.p);
      scratch_.clear();
      add_chunk(total);
    }
    for (auto& c : scratch_) c.used = 0;
  }
  void add_chunk(size_t bytes) {
    Chunk c;
    c.size = bytes;
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
    // Pageable source: returns once the bytes are staged, so the caller's buffer may go away.
    CUDA_CHECK(cudaMemcpyAsync(d, host, sizeof(T) * n, cudaMemcpyHostToDevice, stream_));
    return static_cast<const T*>(d);
  }
  // Block table entries covering logical rows [0, rows_end).
  const int32_t* stage_table(const PagedRows& rows, int64_t rows_end) {
    if (!rows.table) return nullptr;
    return stage(rows.table, (rows_end - 1) / rows.block_size + 1);
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
      CUDA_CHECK(cudaMemcpy(d, v.data, static_cast<size_t>(n) * es, cudaMemcpyHostToDevice));
    } else {
      DSFUSE_CHECK(v.ndim == 2 && v.stride[1] == 1, "CUDA upload: unsupported strided tensor ", v.shape_str());
      CUDA_CHECK(cudaMemcpy2D(d, v.shape[1] * es, v.data, v.stride[0] * es, v.shape[1] * es, v.shape[0],
                              cudaMemcpyHostToDevice));
    }
    return d;
  }

  // y [T, N] (row stride ldy) = x [T, K] (row stride ldx) W^T + b, all f32 device pointers.
  void linear_impl(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t T, const Linear& w) {
    const int64_t N = w.out_features(), K = w.in_features();
    const WDesc d = desc_of(w);
    const int btype = w.bias.empty() ? 0 : wtype_of(w.bias.dtype);
    if (T <= kGemvMaxT) {
      const int wpb = 8;
      gemv_kernel<<<blocks(N, wpb), 32 * wpb, 0, stream_>>>(y, ldy, x, ldx, d, N, K, int(T),
                                                             w.bias.empty() ? nullptr : w.bias.data, btype);
      check_launch();
      return;
    }
    const float one = 1.0f, zero = 0.0f;
    if (!f32_ && (d.type == W_BF16 || d.type == W_F8)) {
      // bf16 tensor-core GEMMs with f32 accumulation. Activations are split into bf16 hi + lo parts and both
      // are multiplied (two GEMMs), which keeps prefill logits within ~1e-5 of f32 instead of the ~1e-3 a
      // single bf16 rounding of the activations costs (and which MoE routers amplify).
      const void* wp = w.w.data;
      int64_t lda = d.ld;
      if (d.type == W_F8) {
        auto* deq = static_cast<__nv_bfloat16*>(scratch(sizeof(uint16_t) * N * K));
        dequant_kernel<__nv_bfloat16><<<blocks(N * K), 256, 0, stream_>>>(deq, d, N, K);
        check_launch();
        wp = deq;
        lda = K;
      }
      auto* xs = static_cast<__nv_bfloat16*>(scratch(sizeof(uint16_t) * 2 * T * K));
      split_bf16_kernel<<<blocks(T * K), 256, 0, stream_>>>(xs, x, ldx, T, K);
      check_launch();
      for (int part = 0; part < 2; ++part)
        CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(T), int(K), &one, wp, CUDA_R_16BF,
                                  int(lda), xs + part * T * K, CUDA_R_16BF, int(K), part ? &one : &zero, y,
                                  CUDA_R_32F, int(ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
      // f32 weights (and f16 / FP8-in-f32-mode / tied bf16 tables in f32 mode, dequantized to f32 scratch).
      const void* wp = w.w.data;
      int64_t lda = d.ld;
      if (d.type != W_F32) {
        float* deq = scratch_f(N * K);
        dequant_kernel<float><<<blocks(N * K), 256, 0, stream_>>>(deq, d, N, K);
        check_launch();
        wp = deq;
        lda = K;
      }
      CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(T), int(K), &one, wp, CUDA_R_32F,
                                int(lda), x, CUDA_R_32F, int(ldx), &zero, y, CUDA_R_32F, int(ldy),
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    if (!w.bias.empty()) {
      add_bias_kernel<<<blocks(T * N), 256, 0, stream_>>>(y, ldy, T, N, w.bias.data, btype);
      check_launch();
    }
  }

  int dev_ = 0;
  bool f32_ = false;
  int depth_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::vector<void*> owned_;
  std::vector<Chunk> scratch_;
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
