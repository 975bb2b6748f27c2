// Kernel templates over a vector traits type `V` (see kernels_avx2.cpp / kernels_avx512.cpp, which
// include this file inside their own namespace after `#pragma GCC target`). No includes here: the
// including file provides <immintrin.h>, <cmath>, <cstdint> and kernels.h.
//
// V provides: F (vector of W floats), zero, set1, load, loadu_partial-free ops: store, fmadd, add, sub,
// mul, max, reduce_add, reduce_max, load_bf16 (W bf16 -> f32), load_i8 (W int8 -> f32), exp.

#define DSF_UNROLL _Pragma("GCC unroll 16")

// ------------------------------------------------------------------------------------ GEMV

// Rows n0..n0+R of a bf16/f32 matrix times TT tokens; U accumulators per (row, token) to hide FMA latency.
// `pf`: elements ahead to prefetch in every row (the same columns of the next row block), so that the
// next block's lines are in flight while this one is consumed (the rows are short, e.g. 1.5-3 KB).
template <int R, int TT, typename WT>
static inline void gemv_float_block(const WT* const* wr, int64_t K, const float* const* xr, float* out /*[R][TT]*/,
                                    int64_t pf) {
  constexpr int U = TT == 1 ? 2 : 1;
  typename V::F acc[U][R][TT];
  DSF_UNROLL for (int u = 0; u < U; ++u) DSF_UNROLL for (int r = 0; r < R; ++r) DSF_UNROLL for (int t = 0; t < TT; ++t)
      acc[u][r][t] = V::zero();
  int64_t k = 0;
  for (; k + U * V::W <= K; k += U * V::W) {
    DSF_UNROLL for (int u = 0; u < U; ++u) {
      typename V::F xv[TT];
      DSF_UNROLL for (int t = 0; t < TT; ++t) xv[t] = V::load(xr[t] + k + u * V::W);
      DSF_UNROLL for (int r = 0; r < R; ++r) {
        if (u == 0) V::prefetch(wr[r] + k + pf);
        const typename V::F wv = V::loadw(wr[r] + k + u * V::W);
        DSF_UNROLL for (int t = 0; t < TT; ++t) acc[u][r][t] = V::fmadd(wv, xv[t], acc[u][r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) {
      typename V::F a = acc[0][r][t];
      if (U > 1) a = V::add(a, acc[U - 1][r][t]);
      float s = V::reduce_add(a);
      for (int64_t j = k; j < K; ++j) s += V::wscalar(wr[r][j]) * xr[t][j];
      out[r * TT + t] = s;
    }
}

// int8 rows with scales per group of `G` columns (G == K: per row) and optional zero points:
// W = (q - z) * s. Per group the raw q·x is accumulated, then folded with the group's scale.
template <int R, int TT>
static inline void gemv_i8_block(const int8_t* const* wr, const float* const* sr, const float* const* zr, int64_t K,
                                 int64_t G, const float* const* xr, float* out, int64_t pf) {
  typename V::F tot[R][TT], g[R][TT], xs[TT];
  float tail[R][TT];
  DSF_UNROLL for (int r = 0; r < R; ++r) DSF_UNROLL for (int t = 0; t < TT; ++t) {
      tot[r][t] = V::zero();
      tail[r][t] = 0;
    }
  const bool asym = zr[0] != nullptr;
  for (int64_t k0 = 0, gi = 0; k0 < K; k0 += G, ++gi) {
    const int64_t k1 = k0 + G < K ? k0 + G : K;
    DSF_UNROLL for (int r = 0; r < R; ++r) DSF_UNROLL for (int t = 0; t < TT; ++t) g[r][t] = V::zero();
    DSF_UNROLL for (int t = 0; t < TT; ++t) xs[t] = V::zero();
    int64_t k = k0;
    for (; k + 64 <= k1; k += 64) {  // one cache line of every row per iteration
      DSF_UNROLL for (int r = 0; r < R; ++r) V::prefetch(wr[r] + k + pf);
      DSF_UNROLL for (int u = 0; u < 64 / V::W; ++u) {
        typename V::F xv[TT];
        DSF_UNROLL for (int t = 0; t < TT; ++t) {
          xv[t] = V::load(xr[t] + k + u * V::W);
          if (asym) xs[t] = V::add(xs[t], xv[t]);
        }
        DSF_UNROLL for (int r = 0; r < R; ++r) {
          const typename V::F wv = V::load_i8(wr[r] + k + u * V::W);
          DSF_UNROLL for (int t = 0; t < TT; ++t) g[r][t] = V::fmadd(wv, xv[t], g[r][t]);
        }
      }
    }
    for (; k + V::W <= k1; k += V::W) {
      typename V::F xv[TT];
      DSF_UNROLL for (int t = 0; t < TT; ++t) {
        xv[t] = V::load(xr[t] + k);
        if (asym) xs[t] = V::add(xs[t], xv[t]);
      }
      DSF_UNROLL for (int r = 0; r < R; ++r) {
        const typename V::F wv = V::load_i8(wr[r] + k);
        DSF_UNROLL for (int t = 0; t < TT; ++t) g[r][t] = V::fmadd(wv, xv[t], g[r][t]);
      }
    }
    DSF_UNROLL for (int r = 0; r < R; ++r) {
      const float s = sr[r][gi], z = asym ? zr[r][gi] : 0.0f;
      const typename V::F sv = V::set1(s);
      DSF_UNROLL for (int t = 0; t < TT; ++t) {
        tot[r][t] = V::fmadd(g[r][t], sv, tot[r][t]);
        if (asym) tot[r][t] = V::fnmadd(xs[t], V::set1(s * z), tot[r][t]);
        for (int64_t j = k; j < k1; ++j) tail[r][t] += (static_cast<float>(wr[r][j]) - z) * s * xr[t][j];
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) out[r * TT + t] = V::reduce_add(tot[r][t]) + tail[r][t];
}

template <int R, int TT>
static inline void gemv_rows(const WMat& w, int64_t K, int64_t n, const float* const* xr, float* out) {
  switch (w.dtype) {
    case DType::BF16: {
      const uint16_t* wr[R];
      for (int r = 0; r < R; ++r) wr[r] = static_cast<const uint16_t*>(w.w) + (n + r) * w.ws;
      gemv_float_block<R, TT>(wr, K, xr, out, R * w.ws);
      return;
    }
    case DType::F32: {
      const float* wr[R];
      for (int r = 0; r < R; ++r) wr[r] = static_cast<const float*>(w.w) + (n + r) * w.ws;
      gemv_float_block<R, TT>(wr, K, xr, out, R * w.ws);
      return;
    }
    case DType::I8: {
      const int8_t* wr[R];
      const float *sr[R], *zr[R];
      for (int r = 0; r < R; ++r) {
        wr[r] = static_cast<const int8_t*>(w.w) + (n + r) * w.ws;
        sr[r] = w.scale + (n + r) * w.sstride;
        zr[r] = w.zero ? w.zero + (n + r) * w.sstride : nullptr;
      }
      gemv_i8_block<R, TT>(wr, sr, zr, K, w.group, xr, out, R * w.ws);
      return;
    }
    default: return;
  }
}

template <int TT, int R>
static void gemv_tokens_r(const WMat& w, int64_t K, int64_t n0, int64_t n1, const float* x, int64_t xs, float* y,
                          int64_t ys) {
  const float* xr[TT];
  for (int t = 0; t < TT; ++t) xr[t] = x + t * xs;
  float out[R * TT];
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    gemv_rows<R, TT>(w, K, n, xr, out);
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < TT; ++t) y[t * ys + n + r] = out[r * TT + t];
  }
  for (; n < n1; ++n) {
    gemv_rows<1, TT>(w, K, n, xr, out);
    for (int t = 0; t < TT; ++t) y[t * ys + n] = out[t];
  }
}

// One token of bf16/f32: 8 rows per block (8 streams and accumulator chains in flight: 31 vs 27 GB/s on
// Zen 4); int8 (convert-bound) and several tokens: 4 rows.
template <int TT>
static void gemv_tokens(const WMat& w, int64_t K, int64_t n0, int64_t n1, const float* x, int64_t xs, float* y,
                        int64_t ys) {
  if (TT == 1 && w.dtype != DType::I8) gemv_tokens_r<TT, 2 * V::kRows>(w, K, n0, n1, x, xs, y, ys);
  else gemv_tokens_r<TT, V::kRows>(w, K, n0, n1, x, xs, y, ys);
}

static void gemv(const WMat& w, int64_t K, int64_t n0, int64_t n1, const float* x, int64_t xs, int64_t T, float* y,
                 int64_t ys) {
  // Rows in blocks of ~16 KB so that every token group re-reads them from L1/L2, not memory.
  const int64_t esize = w.dtype == DType::F32 ? 4 : w.dtype == DType::BF16 ? 2 : 1;
  int64_t blk = (16 << 10) / (K * esize + 1);
  blk = blk < V::kRows ? V::kRows : blk / V::kRows * V::kRows;
  if (T == 1) blk = n1 - n0;
  for (int64_t b0 = n0; b0 < n1; b0 += blk) {
    const int64_t b1 = b0 + blk < n1 ? b0 + blk : n1;
    int64_t t = 0;
    for (; t + V::kTT <= T; t += V::kTT) gemv_tokens<V::kTT>(w, K, b0, b1, x + t * xs, xs, y + t * ys, ys);
    switch (T - t) {
      case 1: gemv_tokens<1>(w, K, b0, b1, x + t * xs, xs, y + t * ys, ys); break;
      case 2: if constexpr (V::kTT > 2) gemv_tokens<2>(w, K, b0, b1, x + t * xs, xs, y + t * ys, ys); break;
      case 3: if constexpr (V::kTT > 3) gemv_tokens<3>(w, K, b0, b1, x + t * xs, xs, y + t * ys, ys); break;
      default: break;
    }
  }
}

// ------------------------------------------------------------------------------------ GEMM tile

template <int MR>
static inline void gemm_tile_t(int64_t kc, const float* a, int64_t lda, const float* bp, float* c, int64_t ldc,
                               int ncols, bool accum) {
  constexpr int NR = 2 * V::W;
  typename V::F acc[MR][2];
  DSF_UNROLL for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = V::zero();
  const float* ar[MR];
  DSF_UNROLL for (int i = 0; i < MR; ++i) ar[i] = a + i * lda;
  for (int64_t k = 0; k < kc; ++k) {
    const typename V::F b0 = V::load(bp + k * NR), b1 = V::load(bp + k * NR + V::W);
    DSF_UNROLL for (int i = 0; i < MR; ++i) {
      const typename V::F av = V::set1(ar[i][k]);
      acc[i][0] = V::fmadd(av, b0, acc[i][0]);
      acc[i][1] = V::fmadd(av, b1, acc[i][1]);
    }
  }
  if (ncols == NR) {
    DSF_UNROLL for (int i = 0; i < MR; ++i) {
      float* cr = c + i * ldc;
      if (accum) {
        V::store(cr, V::add(V::loadu(cr), acc[i][0]));
        V::store(cr + V::W, V::add(V::loadu(cr + V::W), acc[i][1]));
      } else {
        V::store(cr, acc[i][0]);
        V::store(cr + V::W, acc[i][1]);
      }
    }
  } else {
    alignas(64) float tmp[NR];
    for (int i = 0; i < MR; ++i) {
      V::store(tmp, acc[i][0]);
      V::store(tmp + V::W, acc[i][1]);
      float* cr = c + i * ldc;
      for (int j = 0; j < ncols; ++j) cr[j] = accum ? cr[j] + tmp[j] : tmp[j];
    }
  }
}

static void gemm_tile(int mr, int64_t kc, const float* a, int64_t lda, const float* bp, float* c, int64_t ldc,
                      int ncols, bool accum) {
  switch (mr) {
#define DSF_CASE(m) \
  case m: if constexpr (m <= V::kMR) gemm_tile_t<m>(kc, a, lda, bp, c, ldc, ncols, accum); return;
    DSF_CASE(1) DSF_CASE(2) DSF_CASE(3) DSF_CASE(4) DSF_CASE(5) DSF_CASE(6)
    DSF_CASE(7) DSF_CASE(8) DSF_CASE(9) DSF_CASE(10) DSF_CASE(11) DSF_CASE(12)
#undef DSF_CASE
    default: return;
  }
}


// ------------------------------------------------------------------------------------ vector ops

static float dot(const float* a, const float* b, int64_t n) {
  typename V::F s0 = V::zero(), s1 = V::zero(), s2 = V::zero(), s3 = V::zero();
  int64_t i = 0;
  for (; i + 4 * V::W <= n; i += 4 * V::W) {
    s0 = V::fmadd(V::loadu(a + i), V::loadu(b + i), s0);
    s1 = V::fmadd(V::loadu(a + i + V::W), V::loadu(b + i + V::W), s1);
    s2 = V::fmadd(V::loadu(a + i + 2 * V::W), V::loadu(b + i + 2 * V::W), s2);
    s3 = V::fmadd(V::loadu(a + i + 3 * V::W), V::loadu(b + i + 3 * V::W), s3);
  }
  for (; i + V::W <= n; i += V::W) s0 = V::fmadd(V::loadu(a + i), V::loadu(b + i), s0);
  float s = V::reduce_add(V::add(V::add(s0, s1), V::add(s2, s3)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

static void axpy(float* y, float a, const float* x, int64_t n) {
  const typename V::F av = V::set1(a);
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) V::storeu(y + i, V::fmadd(av, V::loadu(x + i), V::loadu(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

static void scal(float* y, float a, int64_t n) {
  const typename V::F av = V::set1(a);
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) V::storeu(y + i, V::mul(av, V::loadu(y + i)));
  for (; i < n; ++i) y[i] *= a;
}

static void addv(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) V::storeu(y + i, V::add(V::loadu(y + i), V::loadu(x + i)));
  for (; i < n; ++i) y[i] += x[i];
}

static float sumsq(const float* x, int64_t n) { return dot(x, x, n); }

static void rms_apply(float* y, const float* x, const float* w, float inv, int64_t n) {
  const typename V::F iv = V::set1(inv);
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) V::storeu(y + i, V::mul(V::loadu(w + i), V::mul(V::loadu(x + i), iv)));
  for (; i < n; ++i) y[i] = w[i] * (x[i] * inv);
}

static void silu_mul(float* y, const float* g, const float* u, int64_t n) {
  const typename V::F one = V::set1(1.0f);
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) {
    const typename V::F gv = V::loadu(g + i);
    const typename V::F e = V::exp(V::sub(V::zero(), gv));
    V::storeu(y + i, V::mul(V::div(gv, V::add(one, e)), V::loadu(u + i)));
  }
  for (; i < n; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

static float softmax_inplace(float* p, int64_t n) {
  float mx = -INFINITY;
  int64_t i = 0;
  if (n >= V::W) {
    typename V::F m = V::loadu(p);
    for (i = V::W; i + V::W <= n; i += V::W) m = V::max(m, V::loadu(p + i));
    mx = V::reduce_max(m);
  }
  for (; i < n; ++i) mx = p[i] > mx ? p[i] : mx;
  const typename V::F mv = V::set1(mx);
  typename V::F s = V::zero();
  for (i = 0; i + V::W <= n; i += V::W) {
    const typename V::F e = V::exp(V::sub(V::loadu(p + i), mv));
    V::storeu(p + i, e);
    s = V::add(s, e);
  }
  float sum = V::reduce_add(s);
  for (; i < n; ++i) sum += (p[i] = std::exp(p[i] - mx));
  return sum;
}

static void axpy_w(const WMat& w, int64_t K, int64_t row, float a, float* y) {
  switch (w.dtype) {
    case DType::F32: axpy(y, a, static_cast<const float*>(w.w) + row * w.ws, K); return;
    case DType::BF16: {
      const uint16_t* r = static_cast<const uint16_t*>(w.w) + row * w.ws;
      const typename V::F av = V::set1(a);
      int64_t i = 0;
      for (; i + V::W <= K; i += V::W) V::storeu(y + i, V::fmadd(av, V::loadw(r + i), V::loadu(y + i)));
      for (; i < K; ++i) y[i] += a * V::wscalar(r[i]);
      return;
    }
    case DType::I8: {
      const int8_t* r = static_cast<const int8_t*>(w.w) + row * w.ws;
      const float* s = w.scale + row * w.sstride;
      const float* z = w.zero ? w.zero + row * w.sstride : nullptr;
      for (int64_t k0 = 0, gi = 0; k0 < K; k0 += w.group, ++gi) {
        const int64_t k1 = k0 + w.group < K ? k0 + w.group : K;
        const float as = a * s[gi], zz = z ? z[gi] : 0.0f;
        const typename V::F av = V::set1(as), zv = V::set1(-as * zz);
        int64_t i = k0;
        for (; i + V::W <= k1; i += V::W) V::storeu(y + i, V::add(V::fmadd(av, V::load_i8(r + i), V::loadu(y + i)), zv));
        for (; i < k1; ++i) y[i] += as * (static_cast<float>(r[i]) - zz);
      }
      return;
    }
    default: return;
  }
}

// Independent FMA chains (12 vectors) for the peak-FLOP probe; returns the flops executed.
static double fma_probe(int64_t iters) {
  typename V::F a[12];
  DSF_UNROLL for (int j = 0; j < 12; ++j) a[j] = V::set1(1.0f + j * 1e-3f);
  const typename V::F m = V::set1(0.9999f), c = V::set1(1e-4f);
  for (int64_t i = 0; i < iters; ++i) {
    DSF_UNROLL for (int j = 0; j < 12; ++j) a[j] = V::fmadd(a[j], m, c);
  }
  typename V::F s = a[0];
  for (int j = 1; j < 12; ++j) s = V::add(s, a[j]);
  volatile float sink = V::reduce_add(s);
  (void)sink;
  return static_cast<double>(iters) * 12 * V::W * 2;
}

// out[0..K) = W[row, 0..K) as f32
static void dequant_row(const WMat& w, int64_t K, int64_t row, float* out) {
  int64_t i = 0;
  switch (w.dtype) {
    case DType::F32: {
      const float* r = static_cast<const float*>(w.w) + row * w.ws;
      for (; i < K; ++i) out[i] = r[i];
      return;
    }
    case DType::BF16: {
      const uint16_t* r = static_cast<const uint16_t*>(w.w) + row * w.ws;
      for (; i + V::W <= K; i += V::W) V::storeu(out + i, V::loadw(r + i));
      for (; i < K; ++i) out[i] = V::wscalar(r[i]);
      return;
    }
    case DType::I8: {
      const int8_t* r = static_cast<const int8_t*>(w.w) + row * w.ws;
      const float* s = w.scale + row * w.sstride;
      const float* z = w.zero ? w.zero + row * w.sstride : nullptr;
      for (int64_t k0 = 0, gi = 0; k0 < K; k0 += w.group, ++gi) {
        const int64_t k1 = k0 + w.group < K ? k0 + w.group : K;
        const float sc = s[gi], zz = z ? z[gi] : 0.0f;
        const typename V::F sv = V::set1(sc), zv = V::set1(-zz * sc);
        for (i = k0; i + V::W <= k1; i += V::W) V::storeu(out + i, V::fmadd(V::load_i8(r + i), sv, zv));
        for (; i < k1; ++i) out[i] = (static_cast<float>(r[i]) - zz) * sc;
      }
      return;
    }
    default: return;
  }
}

// Bandwidth probe: sums n floats with 8 independent vector accumulators, prefetching 2 KB ahead.
static float stream_sum(const float* p, int64_t n) {
  typename V::F a[8];
  DSF_UNROLL for (int j = 0; j < 8; ++j) a[j] = V::zero();
  int64_t i = 0;
  for (; i + 8 * V::W <= n; i += 8 * V::W) {
    V::prefetch(p + i + 512);
    if (V::W == 8) V::prefetch(p + i + 512 + 16);
    DSF_UNROLL for (int j = 0; j < 8; ++j) a[j] = V::add(a[j], V::loadu(p + i + j * V::W));
  }
  typename V::F s = a[0];
  for (int j = 1; j < 8; ++j) s = V::add(s, a[j]);
  float r = V::reduce_add(s);
  for (; i < n; ++i) r += p[i];
  return r;
}

static void fill_table(Kernels& k) {
  k.stream_sum = stream_sum;
  k.dequant_row = dequant_row;
  k.fma_probe = fma_probe;
  k.nr = 2 * V::W;
  k.mr_max = V::kMR;
  k.gemv = gemv;
  k.gemm_tile = gemm_tile;
  k.axpy_w = axpy_w;
  k.dot = dot;
  k.axpy = axpy;
  k.scal = scal;
  k.add = addv;
  k.sumsq = sumsq;
  k.rms_apply = rms_apply;
  k.silu_mul = silu_mul;
  k.softmax_inplace = softmax_inplace;
}

#undef DSF_UNROLL
