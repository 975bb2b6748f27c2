// Runtime dispatch of the CPU kernels and the portable scalar versions (the fallback on CPUs without
// AVX2+FMA, and a third path the tests compare).
#include "backend/cpu/kernels.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <string>

namespace dsfuse::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__)
    case Isa::Avx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      __builtin_cpu_init();
      return isa_supported(Isa::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    default: return false;
  }
}

Isa best_isa() {
  static const Isa best = [] {
    Isa cap = Isa::Avx512;
    if (const char* e = std::getenv("DSFUSE_ISA")) {
      const std::string s = e;
      if (s == "scalar") cap = Isa::Scalar;
      else if (s == "avx2") cap = Isa::Avx2;
    }
    for (int i = static_cast<int>(cap); i > 0; --i)
      if (isa_supported(static_cast<Isa>(i))) return static_cast<Isa>(i);
    return Isa::Scalar;
  }();
  return best;
}

bool to_wmat(const Linear& l, WMat& m) {
  const DType d = l.w.dtype;
  if (d != DType::F32 && d != DType::BF16 && d != DType::I8) return false;
  m.dtype = d;
  m.w = l.w.data;
  m.ws = l.w.stride[0];
  if (d == DType::I8) {
    const int64_t K = l.in_features();
    m.scale = l.scale.ptr<float>();
    m.zero = l.zero.empty() ? nullptr : l.zero.ptr<float>();
    const int64_t groups = l.scale.ndim == 2 ? l.scale.shape[1] : 1;
    m.sstride = groups;
    m.group = (K + groups - 1) / groups;
  }
  return true;
}

namespace scalar {
namespace {

inline float wval(const WMat& w, int64_t n, int64_t k) {
  switch (w.dtype) {
    case DType::F32: return static_cast<const float*>(w.w)[n * w.ws + k];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(w.w)[n * w.ws + k]);
    default: {
      const int64_t g = k / w.group;
      const float z = w.zero ? w.zero[n * w.sstride + g] : 0.0f;
      return (static_cast<float>(static_cast<const int8_t*>(w.w)[n * w.ws + k]) - z) * w.scale[n * w.sstride + g];
    }
  }
}

float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void gemv(const WMat& w, int64_t K, int64_t n0, int64_t n1, const float* x, int64_t xs, int64_t T, float* y,
          int64_t ys) {
  float row[1024];
  for (int64_t n = n0; n < n1; ++n) {
    float acc[64];
    const int64_t TT = T < 64 ? T : 64;
    for (int64_t t0 = 0; t0 < T; t0 += TT) {
      const int64_t t1 = t0 + TT < T ? t0 + TT : T;
      for (int64_t t = t0; t < t1; ++t) acc[t - t0] = 0;
      for (int64_t k0 = 0; k0 < K; k0 += 1024) {
        const int64_t kn = K - k0 < 1024 ? K - k0 : 1024;
        for (int64_t k = 0; k < kn; ++k) row[k] = wval(w, n, k0 + k);
        for (int64_t t = t0; t < t1; ++t) acc[t - t0] += dot(row, x + t * xs + k0, kn);
      }
      for (int64_t t = t0; t < t1; ++t) y[t * ys + n] = acc[t - t0];
    }
  }
}

void gemm_tile(int mr, int64_t kc, const float* a, int64_t lda, const float* bp, float* c, int64_t ldc, int ncols,
               bool accum) {
  constexpr int NR = 16;
  for (int i = 0; i < mr; ++i) {
    float acc[NR] = {};
    for (int64_t k = 0; k < kc; ++k) {
      const float av = a[i * lda + k];
      for (int j = 0; j < NR; ++j) acc[j] += av * bp[k * NR + j];
    }
    for (int j = 0; j < ncols; ++j) c[i * ldc + j] = accum ? c[i * ldc + j] + acc[j] : acc[j];
  }
}

void axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
void dequant_row(const WMat& w, int64_t K, int64_t row, float* out) {
  for (int64_t k = 0; k < K; ++k) out[k] = wval(w, row, k);
}
void axpy_w(const WMat& w, int64_t K, int64_t row, float a, float* y) {
  for (int64_t k = 0; k < K; ++k) y[k] += a * wval(w, row, k);
}
void scal(float* y, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}
void add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}
float sumsq(const float* x, int64_t n) { return dot(x, x, n); }
void rms_apply(float* y, const float* x, const float* w, float inv, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * inv);
}
void silu_mul(float* y, const float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}
float softmax_inplace(float* p, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, p[i]);
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += (p[i] = std::exp(p[i] - mx));
  return s;
}

double fma_probe(int64_t iters) {
  float a[8] = {1, 1.001f, 1.002f, 1.003f, 1.004f, 1.005f, 1.006f, 1.007f};
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 8; ++j) a[j] = std::fma(a[j], 0.9999f, 1e-4f);
  volatile float sink = a[0] + a[7];
  (void)sink;
  return static_cast<double>(iters) * 16;
}

}  // namespace

void fill(Kernels& k) {
  k.fma_probe = fma_probe;
  k.isa = Isa::Scalar;
  k.nr = 16;
  k.mr_max = 4;
  k.gemv = gemv;
  k.gemm_tile = gemm_tile;
  k.dequant_row = dequant_row;
  k.stream_sum = [](const float* p, int64_t n) { return dot(p, p, n); };
  k.axpy_w = axpy_w;
  k.dot = dot;
  k.axpy = axpy;
  k.scal = scal;
  k.add = add;
  k.sumsq = sumsq;
  k.rms_apply = rms_apply;
  k.silu_mul = silu_mul;
  k.softmax_inplace = softmax_inplace;
}

}  // namespace scalar

namespace {
struct Tables {
  Kernels t[3];
  Tables() {
    scalar::fill(t[0]);
    if (!avx2::fill(t[1])) scalar::fill(t[1]);
    if (!avx512::fill(t[2])) t[2] = t[1];
  }
};
}  // namespace

const Kernels& kernels(Isa isa) {
  static const Tables tables;
  if (!isa_supported(isa)) isa = best_isa();
  return tables.t[static_cast<int>(isa)];
}

}  // namespace dsfuse::cpu
