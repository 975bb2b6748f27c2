#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ops/moe_routing.h"
#include "ops/reference.h"

namespace dsfuse {
namespace {

float* frow(const TensorView& t, int64_t r) { return t.ptr<float>() + r * t.stride[0]; }

class ReferenceBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu(); }
  std::string name() const override { return "reference"; }
  void* alloc(size_t bytes) override { return std::malloc(bytes); }
  void free(void* p) override { std::free(p); }
  void copy_to_device(void* d, const void* s, size_t n) override { std::memcpy(d, s, n); }
  void copy_to_host(void* d, const void* s, size_t n) override { std::memcpy(d, s, n); }

  void embedding(TensorView out, const TensorView& table, const int32_t* ids, int64_t T) override {
    Linear l{table};
    for (int64_t t = 0; t < T; ++t) dequantize_rows(l, ids[t], ids[t] + 1, frow(out, t));
  }

  void linear(TensorView y, const TensorView& x, const Linear& w) override {
    const int64_t T = x.shape[0], N = w.out_features(), K = w.in_features();
    std::vector<float> row(K);
    for (int64_t n = 0; n < N; ++n) {
      dequantize_rows(w, n, n + 1, row.data());
      const float b = w.bias.empty() ? 0.0f : vec_at(w.bias, n);
      for (int64_t t = 0; t < T; ++t) {
        double acc = 0;
        const float* xr = frow(x, t);
        for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(xr[k]) * row[k];
        frow(y, t)[n] = static_cast<float>(acc) + b;
      }
    }
  }

  void rms_norm(TensorView y, const TensorView& x, const TensorView& w, float eps) override {
    const int64_t T = x.shape[0], D = x.shape[x.ndim - 1];
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = frow(x, t);
      double ss = 0;
      for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(xr[d]) * xr[d];
      const float inv = 1.0f / std::sqrt(static_cast<float>(ss / D) + eps);
      float* yr = frow(y, t);
      for (int64_t d = 0; d < D; ++d) yr[d] = vec_at(w, d) * (xr[d] * inv);
    }
  }

  void add(TensorView y, const TensorView& x) override {
    const int64_t T = x.shape[0], D = x.numel() / x.shape[0];
    for (int64_t t = 0; t < T; ++t)
      for (int64_t d = 0; d < D; ++d) frow(y, t)[d] += frow(x, t)[d];
  }

  void silu_mul(TensorView y, const TensorView& gate, const TensorView& up) override {
    const int64_t T = gate.shape[0], I = gate.shape[gate.ndim - 1];
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < I; ++i) {
        const float g = frow(gate, t)[i];
        frow(y, t)[i] = g / (1.0f + std::exp(-g)) * frow(up, t)[i];
      }
  }

  void rope(TensorView x, int offset, const RopeTable& tab, RopeStyle style, const int32_t* pos) override {
    const int64_t T = x.shape[0], H = x.shape[1];
    const int half = tab.rot_dim() / 2;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        float* v = frow(x, t) + h * x.stride[1] + offset;
        for (int i = 0; i < half; ++i) {
          const float ang = static_cast<float>(pos[t]) * tab.inv_freq[i];
          const float c = std::cos(ang) * tab.cos_sin_scale, s = std::sin(ang) * tab.cos_sin_scale;
          const int a = style == RopeStyle::Neox ? i : 2 * i, b = style == RopeStyle::Neox ? i + half : 2 * i + 1;
          const float x0 = v[a], x1 = v[b];
          v[a] = x0 * c - x1 * s;
          v[b] = x1 * c + x0 * s;
        }
      }
  }

  void copy_rows(TensorView dst, int64_t r0, const TensorView& src, const PagedRows& rows) override {
    const int64_t T = src.shape[0], D = src.numel() / src.shape[0];
    for (int64_t t = 0; t < T; ++t) std::memcpy(frow(dst, rows.phys(r0 + t)), frow(src, t), D * sizeof(float));
  }

  void attention(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v, int64_t past,
                 float scale, const PagedRows& rows) override {
    const int64_t T = q.shape[0], Hq = q.shape[1], D = q.shape[2], Hkv = k.shape[1], Dv = v.shape[2];
    const int64_t group = Hq / Hkv;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t kh = h / group, S = past + t + 1;
        const float* qr = frow(q, t) + h * q.stride[1];
        std::vector<double> p(S);
        double mx = -INFINITY;
        for (int64_t s = 0; s < S; ++s) {
          const float* kr = frow(k, rows.phys(s)) + kh * k.stride[1];
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += static_cast<double>(qr[d]) * kr[d];
          p[s] = acc * scale;
          mx = std::max(mx, p[s]);
        }
        double sum = 0;
        for (auto& e : p) sum += (e = std::exp(e - mx));
        float* o = frow(out, t) + h * out.stride[1];
        for (int64_t d = 0; d < Dv; ++d) {
          double acc = 0;
          for (int64_t s = 0; s < S; ++s) acc += p[s] * (frow(v, rows.phys(s)) + kh * v.stride[1])[d];
          o[d] = static_cast<float>(acc / sum);
        }
      }
  }

  void mla_attention(TensorView out, const TensorView& q_nope, const TensorView& q_pe, const TensorView& latent,
                     const TensorView& k_pe, const Linear& kv_b, int64_t past, float scale,
                     const PagedRows& rows) override {
    const int64_t T = q_nope.shape[0], H = q_nope.shape[1], Dn = q_nope.shape[2], R = q_pe.shape[2];
    const int64_t C = latent.shape[1], Dv = out.shape[2];
    std::vector<float> w((Dn + Dv) * C);
    for (int64_t h = 0; h < H; ++h) {
      dequantize_rows(kv_b, h * (Dn + Dv), (h + 1) * (Dn + Dv), w.data());
      const float* wk = w.data();           // [Dn, C]
      const float* wv = w.data() + Dn * C;  // [Dv, C]
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> ql(C, 0.0);
        const float* qn = frow(q_nope, t) + h * q_nope.stride[1];
        for (int64_t d = 0; d < Dn; ++d)
          for (int64_t c = 0; c < C; ++c) ql[c] += static_cast<double>(qn[d]) * wk[d * C + c];
        const int64_t S = past + t + 1;
        std::vector<double> p(S);
        double mx = -INFINITY;
        const float* qp = frow(q_pe, t) + h * q_pe.stride[1];
        for (int64_t s = 0; s < S; ++s) {
          double acc = 0;
          for (int64_t c = 0; c < C; ++c) acc += ql[c] * frow(latent, rows.phys(s))[c];
          for (int64_t r = 0; r < R; ++r) acc += static_cast<double>(qp[r]) * frow(k_pe, rows.phys(s))[r];
          p[s] = acc * scale;
          mx = std::max(mx, p[s]);
        }
        double sum = 0;
        for (auto& e : p) sum += (e = std::exp(e - mx));
        std::vector<double> ol(C, 0.0);
        for (int64_t s = 0; s < S; ++s)
          for (int64_t c = 0; c < C; ++c) ol[c] += p[s] / sum * frow(latent, rows.phys(s))[c];
        float* o = frow(out, t) + h * out.stride[1];
        for (int64_t d = 0; d < Dv; ++d) {
          double acc = 0;
          for (int64_t c = 0; c < C; ++c) acc += ol[c] * wv[d * C + c];
          o[d] = static_cast<float>(acc);
        }
      }
    }
  }

  void moe_route(TensorView ids, TensorView weights, const TensorView& logits, const TensorView& bias,
                 const RouterParams& p) override {
    std::vector<float> scratch(3 * p.n_experts + p.n_group);
    std::vector<float> b;
    if (!bias.empty()) for (int64_t e = 0; e < p.n_experts; ++e) b.push_back(vec_at(bias, e));
    for (int64_t t = 0; t < logits.shape[0]; ++t)
      route_token(frow(logits, t), b.empty() ? nullptr : b.data(), p, ids.ptr<int32_t>() + t * p.top_k,
                  weights.ptr<float>() + t * p.top_k, scratch.data());
  }

  void moe_experts(TensorView out, const TensorView& x, const TensorView& ids, const TensorView& weights,
                   const std::vector<ExpertWeights>& experts) override {
    const int64_t T = x.shape[0], H = x.shape[1], K = ids.shape[1];
    for (int64_t t = 0; t < T; ++t) {
      float* o = frow(out, t);
      for (int64_t d = 0; d < H; ++d) o[d] = 0;
      for (int64_t j = 0; j < K; ++j) {
        const ExpertWeights& e = experts.at(ids.ptr<int32_t>()[t * K + j]);
        if (e.gate.empty()) continue;  // owned by another tensor-parallel rank
        const int64_t I = e.gate.out_features();
        std::vector<float> g(I), u(I), y(H);
        TensorView xv = x.rows(t, t + 1);
        TensorView gv(g.data(), DType::F32, {1, I}), uv(u.data(), DType::F32, {1, I}), yv(y.data(), DType::F32, {1, H});
        linear(gv, xv, e.gate);
        linear(uv, xv, e.up);
        silu_mul(gv, gv, uv);
        linear(yv, gv, e.down);
        const float wgt = weights.ptr<float>()[t * K + j];
        for (int64_t d = 0; d < H; ++d) o[d] += wgt * y[d];
      }
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_reference_backend() { return std::make_unique<ReferenceBackend>(); }

}  // namespace dsfuse
