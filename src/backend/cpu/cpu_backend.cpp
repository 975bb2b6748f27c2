// CPU backend: threaded, cache-tiled kernels over f32 activations and weights in their stored format.
// Scratch memory is owned per thread and only grows, so a steady-state forward pass does not allocate.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/backend.h"
#include "core/arena.h"
#include "core/thread_pool.h"
#include "ops/moe_routing.h"

namespace dsfuse {
namespace {

float* frow(const TensorView& t, int64_t r) { return t.ptr<float>() + r * t.stride[0]; }

// Dot product with 8 independent accumulators (vectorizes without -ffast-math).
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads), scratch_(pool_.size()) {}

  Device device() const override { return Device::cpu(); }
  std::string name() const override { return "cpu"; }
  void* alloc(size_t bytes) override { return std::aligned_alloc(64, (bytes + 63) / 64 * 64); }
  void free(void* p) override { std::free(p); }
  void copy_to_device(void* d, const void* s, size_t n) override { std::memcpy(d, s, n); }
  void copy_to_host(void* d, const void* s, size_t n) override { std::memcpy(d, s, n); }

  void embedding(TensorView out, const TensorView& table, const int32_t* ids, int64_t T) override {
    Linear l{table};
    for (int64_t t = 0; t < T; ++t) dequantize_rows(l, ids[t], ids[t] + 1, frow(out, t));
  }

  void linear(TensorView y, const TensorView& x, const Linear& w) override {
    const int64_t T = x.shape[0], N = w.out_features(), K = w.in_features();
    constexpr int64_t kTile = 8;
    const int64_t tiles = (N + kTile - 1) / kTile;
    pool_.parallel_for(tiles, [&](int64_t b, int64_t e, int tid) {
      float* wt = scratch(tid, kTile * K);
      for (int64_t tile = b; tile < e; ++tile) {
        const int64_t n0 = tile * kTile, n1 = std::min(N, n0 + kTile);
        dequantize_rows(w, n0, n1, wt);
        for (int64_t t = 0; t < T; ++t) {
          const float* xr = frow(x, t);
          float* yr = frow(y, t);
          for (int64_t n = n0; n < n1; ++n) yr[n] = dot(xr, wt + (n - n0) * K, K);
        }
      }
    });
    if (!w.bias.empty())
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) frow(y, t)[n] += vec_at(w.bias, n);
  }

  void rms_norm(TensorView y, const TensorView& x, const TensorView& w, float eps) override {
    const int64_t T = x.shape[0], D = x.shape[x.ndim - 1];
    pool_.parallel_for(T, [&](int64_t b, int64_t e, int tid) {
      float* wf = scratch(tid, D);
      for (int64_t d = 0; d < D; ++d) wf[d] = vec_at(w, d);
      for (int64_t t = b; t < e; ++t) {
        const float* xr = frow(x, t);
        const float inv = 1.0f / std::sqrt(dot(xr, xr, D) / static_cast<float>(D) + eps);
        float* yr = frow(y, t);
        for (int64_t d = 0; d < D; ++d) yr[d] = wf[d] * (xr[d] * inv);
      }
    }, 16);
  }

  void add(TensorView y, const TensorView& x) override {
    const int64_t T = x.shape[0], D = x.numel() / x.shape[0];
    for (int64_t t = 0; t < T; ++t) {
      float* yr = frow(y, t);
      const float* xr = frow(x, t);
      for (int64_t d = 0; d < D; ++d) yr[d] += xr[d];
    }
  }

  void silu_mul(TensorView y, const TensorView& gate, const TensorView& up) override {
    const int64_t T = gate.shape[0], I = gate.shape[gate.ndim - 1];
    pool_.parallel_for(T, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        const float* g = frow(gate, t);
        const float* u = frow(up, t);
        float* o = frow(y, t);
        for (int64_t i = 0; i < I; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      }
    }, 8);
  }

  void rope(TensorView x, int offset, const RopeTable& tab, RopeStyle style, const int32_t* pos) override {
    const int64_t T = x.shape[0], H = x.shape[1];
    const int half = tab.rot_dim() / 2;
    pool_.parallel_for(T, [&](int64_t b, int64_t e, int tid) {
      float* cs = scratch(tid, 2 * half);
      for (int64_t t = b; t < e; ++t) {
        for (int i = 0; i < half; ++i) {
          const float ang = static_cast<float>(pos[t]) * tab.inv_freq[i];
          cs[i] = std::cos(ang) * tab.cos_sin_scale;
          cs[half + i] = std::sin(ang) * tab.cos_sin_scale;
        }
        for (int64_t h = 0; h < H; ++h) {
          float* v = frow(x, t) + h * x.stride[1] + offset;
          for (int i = 0; i < half; ++i) {
            const int a = style == RopeStyle::Neox ? i : 2 * i;
            const int c = style == RopeStyle::Neox ? i + half : 2 * i + 1;
            const float x0 = v[a], x1 = v[c];
            v[a] = x0 * cs[i] - x1 * cs[half + i];
            v[c] = x1 * cs[i] + x0 * cs[half + i];
          }
        }
      }
    }, 8);
  }

  void copy_rows(TensorView dst, int64_t r0, const TensorView& src, const PagedRows& rows) override {
    const int64_t T = src.shape[0], D = src.numel() / src.shape[0];
    for (int64_t t = 0; t < T; ++t) std::memcpy(frow(dst, rows.phys(r0 + t)), frow(src, t), D * sizeof(float));
  }

  void attention(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v, int64_t past,
                 float scale, const PagedRows& rows) override {
    const int64_t T = q.shape[0], Hq = q.shape[1], D = q.shape[2], Hkv = k.shape[1], Dv = v.shape[2];
    const int64_t group = Hq / Hkv, S_max = past + T;
    pool_.parallel_for(T * Hq, [&](int64_t b, int64_t e, int tid) {
      float* p = scratch(tid, S_max);
      for (int64_t i = b; i < e; ++i) {
        const int64_t t = i / Hq, h = i % Hq, kh = h / group, S = past + t + 1;
        const float* qr = frow(q, t) + h * q.stride[1];
        float mx = -INFINITY;
        for (int64_t s = 0; s < S; ++s) {
          p[s] = dot(qr, frow(k, rows.phys(s)) + kh * k.stride[1], D) * scale;
          mx = std::max(mx, p[s]);
        }
        float sum = 0;
        for (int64_t s = 0; s < S; ++s) sum += (p[s] = std::exp(p[s] - mx));
        float* o = frow(out, t) + h * out.stride[1];
        std::fill(o, o + Dv, 0.0f);
        for (int64_t s = 0; s < S; ++s) axpy(o, p[s], frow(v, rows.phys(s)) + kh * v.stride[1], Dv);
        const float inv = 1.0f / sum;
        for (int64_t d = 0; d < Dv; ++d) o[d] *= inv;
      }
    });
  }

  void mla_attention(TensorView out, const TensorView& q_nope, const TensorView& q_pe, const TensorView& latent,
                     const TensorView& k_pe, const Linear& kv_b, int64_t past, float scale,
                     const PagedRows& rows) override {
    const int64_t T = q_nope.shape[0], H = q_nope.shape[1], Dn = q_nope.shape[2], R = q_pe.shape[2];
    const int64_t C = latent.shape[1], Dv = out.shape[2], S_max = past + T;
    pool_.parallel_for(H, [&](int64_t b, int64_t e, int tid) {
      float* w = scratch(tid, (Dn + Dv) * C + 2 * C + S_max);
      float* ql = w + (Dn + Dv) * C;  // [C] absorbed query
      float* ol = ql + C;             // [C] latent output
      float* p = ol + C;              // [S] scores
      for (int64_t h = b; h < e; ++h) {
        dequantize_rows(kv_b, h * (Dn + Dv), (h + 1) * (Dn + Dv), w);
        const float* wk = w;           // [Dn, C]
        const float* wv = w + Dn * C;  // [Dv, C]
        for (int64_t t = 0; t < T; ++t) {
          const float* qn = frow(q_nope, t) + h * q_nope.stride[1];
          std::fill(ql, ql + C, 0.0f);
          for (int64_t d = 0; d < Dn; ++d) axpy(ql, qn[d], wk + d * C, C);
          const float* qp = frow(q_pe, t) + h * q_pe.stride[1];
          const int64_t S = past + t + 1;
          float mx = -INFINITY;
          for (int64_t s = 0; s < S; ++s) {
            p[s] = (dot(ql, frow(latent, rows.phys(s)), C) + dot(qp, frow(k_pe, rows.phys(s)), R)) * scale;
            mx = std::max(mx, p[s]);
          }
          float sum = 0;
          for (int64_t s = 0; s < S; ++s) sum += (p[s] = std::exp(p[s] - mx));
          std::fill(ol, ol + C, 0.0f);
          for (int64_t s = 0; s < S; ++s) axpy(ol, p[s], frow(latent, rows.phys(s)), C);
          const float inv = 1.0f / sum;
          float* o = frow(out, t) + h * out.stride[1];
          for (int64_t d = 0; d < Dv; ++d) o[d] = dot(ol, wv + d * C, C) * inv;
        }
      }
    });
  }

  void moe_route(TensorView ids, TensorView weights, const TensorView& logits, const TensorView& bias,
                 const RouterParams& p) override {
    const int64_t T = logits.shape[0];
    float* b = nullptr;
    if (!bias.empty()) {
      b = scratch(0, p.n_experts);
      for (int64_t e = 0; e < p.n_experts; ++e) b[e] = vec_at(bias, e);
    }
    float* s = route_scratch_.grow(3 * p.n_experts + p.n_group);
    for (int64_t t = 0; t < T; ++t)
      route_token(frow(logits, t), b, p, ids.ptr<int32_t>() + t * p.top_k, weights.ptr<float>() + t * p.top_k, s);
  }

  void moe_experts(TensorView out, const TensorView& x, const TensorView& ids, const TensorView& weights,
                   const std::vector<ExpertWeights>& experts) override {
    const int64_t T = x.shape[0], H = x.shape[1], K = ids.shape[1];
    const int32_t* id = ids.ptr<int32_t>();
    const float* wt = weights.ptr<float>();
    for (int64_t t = 0; t < T; ++t) std::fill(frow(out, t), frow(out, t) + H, 0.0f);
    // Group the (token, slot) pairs by expert, then run each active expert once over its tokens.
    const int64_t E = static_cast<int64_t>(experts.size());
    count_.assign(E + 1, 0);
    for (int64_t i = 0; i < T * K; ++i) {
      DSFUSE_CHECK(id[i] >= 0 && id[i] < E, "moe: expert id ", id[i], " out of range");
      ++count_[id[i] + 1];
    }
    for (int64_t e = 0; e < E; ++e) count_[e + 1] += count_[e];
    order_.resize(T * K);
    fill_ = count_;
    for (int64_t i = 0; i < T * K; ++i) order_[fill_[id[i]]++] = static_cast<int32_t>(i);
    int64_t max_i = 0;
    for (const auto& e : experts) max_i = std::max(max_i, e.gate.out_features());
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = count_[e + 1] - count_[e];
      if (n == 0 || experts[e].gate.empty()) continue;  // unused, or owned by another rank
      float* buf = moe_buf_.grow(n * (H + 2 * max_i + H));
      TensorView xs(buf, DType::F32, {n, H});
      const int64_t I = experts[e].gate.out_features();
      TensorView g(buf + n * H, DType::F32, {n, I});
      TensorView u(buf + n * (H + max_i), DType::F32, {n, I});
      TensorView y(buf + n * (H + 2 * max_i), DType::F32, {n, H});
      for (int64_t j = 0; j < n; ++j) std::memcpy(frow(xs, j), frow(x, order_[count_[e] + j] / K), H * sizeof(float));
      linear(g, xs, experts[e].gate);
      linear(u, xs, experts[e].up);
      silu_mul(g, g, u);
      linear(y, g, experts[e].down);
      for (int64_t j = 0; j < n; ++j) {
        const int32_t slot = order_[count_[e] + j];
        axpy(frow(out, slot / K), wt[slot], frow(y, j), H);
      }
    }
  }

 private:
  struct Grow {
    Buffer buf;
    float* grow(int64_t floats) {
      const size_t bytes = static_cast<size_t>(floats) * sizeof(float);
      if (buf.size() < bytes) buf = Buffer(bytes * 5 / 4 + 256);
      return static_cast<float*>(buf.data());
    }
  };
  float* scratch(int tid, int64_t floats) { return scratch_[tid].grow(floats); }

  ThreadPool pool_;
  std::vector<Grow> scratch_;
  Grow route_scratch_, moe_buf_;
  std::vector<int64_t> count_, fill_;
  std::vector<int32_t> order_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace dsfuse
