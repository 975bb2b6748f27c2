// SIMD kernels of the CPU backend, compiled once per instruction set and picked at run time.
//
// Dispatch: kernels_avx2.cpp and kernels_avx512.cpp compile the same templates (kernels_impl.h) under
// `#pragma GCC target(...)`, so the library itself stays portable (no -march); `cpu::kernels()` returns
// the table of the best ISA the CPU reports (cpuid via __builtin_cpu_supports), capped by $DSFUSE_ISA
// (scalar | avx2 | avx512) so tests and benchmarks can force each path.
//
// Weight formats with fast paths: f32, bf16, i8 (per-row or per-group scales, optional zero points).
// Activations stay f32 and every product is an f32 FMA of the exactly converted weight, so results
// match the scalar reference up to summation order.
#pragma once
#include <cstdint>
#include <memory>

#include "backend/backend.h"

namespace dsfuse::cpu {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };
const char* isa_name(Isa isa);
bool isa_supported(Isa isa);  // the CPU (and this build) can run it
Isa best_isa();               // best supported, capped by $DSFUSE_ISA

// A weight matrix [N, K] as the kernels read it.
struct WMat {
  DType dtype = DType::F32;  // F32, BF16 or I8
  const void* w = nullptr;
  int64_t ws = 0;                // row stride (elements)
  const float* scale = nullptr;  // I8: [N, K / group] (row stride sstride)
  const float* zero = nullptr;   // I8 asym: same shape as scale, or null
  int64_t sstride = 0, group = 0;
};
bool to_wmat(const Linear& l, WMat& m);  // false when the format has no fast path (f16, fp8)

struct Kernels {
  Isa isa = Isa::Scalar;
  int nr = 16;      // GEMM panel width (columns of packed B)
  int mr_max = 4;   // GEMM micro-tile rows
  // y[t*ys + n] = sum_k x[t*xs + k] * W[n, k] for n in [n0, n1), t < T. Streams W once per call
  // (all T tokens of a row block are done while the rows are in cache).
  void (*gemv)(const WMat& w, int64_t K, int64_t n0, int64_t n1, const float* x, int64_t xs, int64_t T, float* y,
               int64_t ys) = nullptr;
  // C[i*ldc + j] (acc ? += : =) sum_k A[i*lda + k] * Bp[k*nr + j] for i < mr (<= mr_max), j < ncols (<= nr).
  void (*gemm_tile)(int mr, int64_t kc, const float* a, int64_t lda, const float* bp, float* c, int64_t ldc, int ncols,
                    bool acc) = nullptr;
  // out[0..K) = W[row, 0..K) as f32 (what dequantize_rows gives, up to fma rounding for int8)
  void (*dequant_row)(const WMat& w, int64_t K, int64_t row, float* out) = nullptr;
  // y[0..K) += a * W[row, 0..K)
  void (*axpy_w)(const WMat& w, int64_t K, int64_t row, float a, float* y) = nullptr;
  float (*dot)(const float* a, const float* b, int64_t n) = nullptr;
  void (*axpy)(float* y, float a, const float* x, int64_t n) = nullptr;  // y += a x
  void (*scal)(float* y, float a, int64_t n) = nullptr;                   // y *= a
  void (*add)(float* y, const float* x, int64_t n) = nullptr;             // y += x
  float (*sumsq)(const float* x, int64_t n) = nullptr;
  void (*rms_apply)(float* y, const float* x, const float* w, float inv, int64_t n) = nullptr;  // y = w * (x * inv)
  void (*silu_mul)(float* y, const float* g, const float* u, int64_t n) = nullptr;
  float (*softmax_inplace)(float* p, int64_t n) = nullptr;  // p = exp(p - max p); returns the sum
  double (*fma_probe)(int64_t iters) = nullptr;
  float (*stream_sum)(const float* p, int64_t n) = nullptr;  // bandwidth probe (8 accumulators)             // runs independent FMA chains; returns flops
};

const Kernels& kernels(Isa isa);
inline const Kernels& kernels() { return kernels(best_isa()); }

// The CPU backend running the kernels of `isa` (tests compare every path; falls back when unsupported).
std::unique_ptr<Backend> make_cpu_backend_isa(int threads, Isa isa);

namespace scalar { void fill(Kernels& k); }
namespace avx2 { bool fill(Kernels& k); }    // false when not compiled for x86
namespace avx512 { bool fill(Kernels& k); }

}  // namespace dsfuse::cpu
