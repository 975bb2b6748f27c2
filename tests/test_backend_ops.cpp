// Every backend op against the scalar reference backend, parametrized over backends
// (cpu now; cuda joins the list when built). Prints the normalized error of each op.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <random>
#include <set>

#include "backend/backend.h"
#include "ops/moe_routing.h"
#include "ops/reference.h"
#include "ops/rope.h"
#include "quant/quantize.h"
#include "test_util.h"
#ifdef DSFUSE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

using namespace dsfuse;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float s = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, s);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

double nerr(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

#ifdef DSFUSE_HAVE_CUDA
// The tests hold their tensors in host memory; this adapter copies every tensor argument into the device
// backend's memory (weights through prepare()), runs the op there and copies the arguments back.
class Staged final : public Backend {
 public:
  explicit Staged(std::unique_ptr<Backend> in) : in_(std::move(in)) {}
  ~Staged() override { flush(); }
  Device device() const override { return in_->device(); }
  std::string name() const override { return in_->name(); }
  void* alloc(size_t n) override { return in_->alloc(n); }
  void free(void* p) override { in_->free(p); }
  void copy_to_device(void* d, const void* s, size_t n) override { in_->copy_to_device(d, s, n); }
  void copy_to_host(void* d, const void* s, size_t n) override { in_->copy_to_host(d, s, n); }

  void embedding(TensorView out, const TensorView& table, const int32_t* ids, int64_t T) override {
    in_->embedding(dev(out), dev(table), ids, T);
    flush();
  }
  void linear(TensorView y, const TensorView& x, const Linear& w) override {
    in_->linear(dev(y), dev(x), in_->prepare(w));
    flush();
  }
  void rms_norm(TensorView y, const TensorView& x, const TensorView& w, float eps) override {
    TensorView dy = dev(y);
    in_->rms_norm(dy, x.data == y.data ? dy : dev(x), dev(w), eps);
    flush();
  }
  void add(TensorView y, const TensorView& x) override {
    in_->add(dev(y), dev(x));
    flush();
  }
  void silu_mul(TensorView y, const TensorView& g, const TensorView& u) override {
    in_->silu_mul(dev(y), dev(g), dev(u));
    flush();
  }
  void rope(TensorView x, int off, const RopeTable& t, RopeStyle st, const int32_t* pos) override {
    in_->rope(dev(x), off, t, st, pos);
    flush();
  }
  void copy_rows(TensorView dst, int64_t r0, const TensorView& src, const PagedRows& rows) override {
    in_->copy_rows(dev(dst), r0, dev(src), rows);
    flush();
  }
  void attention(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v, int64_t past,
                 float scale, const PagedRows& rows) override {
    in_->attention(dev(out), dev(q), dev(k), dev(v), past, scale, rows);
    flush();
  }
  void mla_attention(TensorView out, const TensorView& qn, const TensorView& qp, const TensorView& lat,
                     const TensorView& kpe, const Linear& kv_b, int64_t past, float scale,
                     const PagedRows& rows) override {
    in_->mla_attention(dev(out), dev(qn), dev(qp), dev(lat), dev(kpe), in_->prepare(kv_b), past, scale, rows);
    flush();
  }
  void moe_route(TensorView ids, TensorView w, const TensorView& logits, const TensorView& bias,
                 const RouterParams& p) override {
    in_->moe_route(dev(ids), dev(w), dev(logits), bias.empty() ? bias : dev(bias), p);
    flush();
  }
  void moe_experts(TensorView out, const TensorView& x, const TensorView& ids, const TensorView& w,
                   const std::vector<ExpertWeights>& experts) override {
    std::vector<ExpertWeights> de;
    for (const auto& e : experts) de.push_back({in_->prepare(e.gate), in_->prepare(e.up), in_->prepare(e.down)});
    in_->moe_experts(dev(out), dev(x), dev(ids), dev(w), de);
    flush();
  }

  void linear_silu(TensorView y, const TensorView& x, const Linear& w) override {
    in_->linear_silu(dev(y), dev(x), in_->prepare(w));
    flush();
  }
  void add_rms_norm(TensorView x, const TensorView& o, TensorView h, const TensorView& w, float eps) override {
    in_->add_rms_norm(dev(x), dev(o), dev(h), dev(w), eps);
    flush();
  }
  bool fuses_norm_linear(int64_t T, const Linear& w) const override { return in_->fuses_norm_linear(T, w); }
  void rms_norm_linear(TensorView y, const TensorView& x, const TensorView& nw, float eps, const Linear& w,
                       TensorView h) override {
    in_->rms_norm_linear(dev(y), dev(x), dev(nw), eps, in_->prepare(w), dev(h));
    flush();
  }
  void rms_norm_linear_silu(TensorView y, const TensorView& x, const TensorView& nw, float eps, const Linear& w,
                            TensorView h) override {
    in_->rms_norm_linear_silu(dev(y), dev(x), dev(nw), eps, in_->prepare(w), dev(h));
    flush();
  }
  void linear_add(TensorView x, const TensorView& a, const Linear& w, TensorView tmp) override {
    in_->linear_add(dev(x), dev(a), in_->prepare(w), dev(tmp));
    flush();
  }
  void argmax_rows(TensorView ids, const TensorView& x) override {
    in_->argmax_rows(dev(ids), dev(x));
    flush();
  }
  void sample_rows(TensorView ids, const TensorView& x, const SampleRowParams* params) override {
    in_->sample_rows(dev(ids), dev(x), params);  // params stay on the host (the op stages them)
    flush();
  }
  void copy_rows_segs(TensorView dst, const TensorView& src, const std::vector<SeqSegment>& segs) override {
    in_->copy_rows_segs(dev(dst), dev(src), segs);
    flush();
  }
  void rope_store_kv(TensorView qk, int64_t Hq, const RopeTable& t, const int32_t* pos, TensorView kc, TensorView vc,
                     const TensorView& v, const std::vector<SeqSegment>& segs) override {
    in_->rope_store_kv(dev(qk), Hq, t, pos, dev(kc), dev(vc), dev(v), segs);
    flush();
  }
  void mla_store_kv(TensorView kv_a, int64_t C, const TensorView& w, float eps, const RopeTable& t, const int32_t* pos,
                    TensorView latent, TensorView lat_c, TensorView kpe_c, const std::vector<SeqSegment>& segs) override {
    in_->mla_store_kv(dev(kv_a), C, dev(w), eps, t, pos, dev(latent), dev(lat_c), dev(kpe_c), segs);
    flush();
  }
  void attention_segs(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v, float scale,
                      const std::vector<SeqSegment>& segs) override {
    in_->attention_segs(dev(out), dev(q), dev(k), dev(v), scale, segs);
    flush();
  }
  void mla_attention_segs(TensorView out, const TensorView& qn, const TensorView& qp, const TensorView& lat,
                          const TensorView& kpe, const Linear& kv_b, float scale,
                          const std::vector<SeqSegment>& segs) override {
    in_->mla_attention_segs(dev(out), dev(qn), dev(qp), dev(lat), dev(kpe), in_->prepare(kv_b), scale, segs);
    flush();
  }

 private:
  TensorView dev(const TensorView& h) {
    if (h.empty()) return h;
    int64_t extent = 1;
    for (int i = 0; i < h.ndim; ++i) extent += (h.shape[i] - 1) * h.stride[i];
    const size_t bytes = static_cast<size_t>(extent) * dtype_size(h.dtype);
    void* d = in_->alloc(bytes);
    in_->copy_to_device(d, h.data, bytes);
    staged_.push_back({h.data, d, bytes});
    TensorView v = h;
    v.data = d;
    v.device = in_->device();
    return v;
  }
  void flush() {
    for (auto& s : staged_) in_->copy_to_host(s.host, s.dev, s.bytes), in_->free(s.dev);
    staged_.clear();
  }
  struct Stage {
    void* host;
    void* dev;
    size_t bytes;
  };
  std::unique_ptr<Backend> in_;
  std::vector<Stage> staged_;
};
#endif

std::unique_ptr<Backend> make_backend(const std::string& name) {
  if (name == "cpu") return make_cpu_backend(2);
#ifdef DSFUSE_HAVE_CUDA
  if (name == "cuda" && test::cuda_available()) return std::make_unique<Staged>(make_cuda_backend(0));
#endif
  return nullptr;
}

bool cuda_bf16_mode(const std::string& name) { return name == "cuda" && !test::cuda_f32_mode(); }

class BackendOps : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "cuda" && !test::cuda_available()) GTEST_SKIP() << test::cuda_skip_reason();
    be = make_backend(GetParam());
    ref = make_reference_backend();
  }
  void check(const char* op, const std::vector<float>& got, const std::vector<float>& want, double tol = 1e-5) {
    // bf16 GEMMs on the GPU (hi/lo split activations, ~3e-6 measured) get 1e-4; exact checks stay exact.
    if (tol > 0 && cuda_bf16_mode(GetParam())) tol = std::max(tol, 1e-4);
    const double e = nerr(got.data(), want.data(), got.size());
    std::printf("[ops] %-6s %-28s err %.2e\n", GetParam().c_str(), op, e);
    EXPECT_LE(e, tol) << op;
  }
  std::unique_ptr<Backend> be, ref;
};

// Weights of every stored format, with the bytes kept alive by the fixture.
struct WeightSet {
  std::vector<float> f32;
  std::vector<uint16_t> bf16, f16;
  std::vector<uint8_t> f8;
  std::vector<float> f8_scale;
  std::vector<std::unique_ptr<Buffer>> store;
  std::vector<std::pair<std::string, Linear>> all;
  WeightSet(int64_t N, int64_t K, uint32_t seed) {
    f32 = randn(N * K, seed, 0.1f);
    for (float v : f32) bf16.push_back(f32_to_bf16(v)), f16.push_back(f32_to_f16(v));
    Linear lf{TensorView(f32.data(), DType::F32, {N, K})};
    Linear lb{TensorView(bf16.data(), DType::BF16, {N, K})};
    Linear lh{TensorView(f16.data(), DType::F16, {N, K})};
    // FP8 with 128x128 blocks and partial edge blocks.
    const int64_t br = (N + 127) / 128, bc = (K + 127) / 128;
    f8_scale = randn(br * bc, seed + 1, 0.001f);
    for (auto& s : f8_scale) s = std::fabs(s) + 1e-3f;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) f8.push_back(f32_to_f8e4m3(f32[n * K + k] / f8_scale[(n / 128) * bc + k / 128]));
    Linear l8{TensorView(f8.data(), DType::F8E4M3, {N, K}), TensorView(f8_scale.data(), DType::F32, {br, bc})};
    all = {{"f32", lf}, {"bf16", lb}, {"f16", lh}, {"fp8-block", l8},
           {"int8", quantize_linear(lb, QuantType::Int8, store)},
           {"int8-asym", quantize_linear(lb, QuantType::Int8Asym, store)}};
  }
};

// E experts of bf16 weights (gate, up [I, Hd], down [Hd, I]); expert e's from seeds sg + e, su + e, sd + e. The
// bytes live in `keep`.
std::vector<ExpertWeights> bf16_experts(int64_t E, int64_t I, int64_t Hd, uint32_t sg, uint32_t su, uint32_t sd,
                                        std::vector<std::unique_ptr<WeightSet>>& keep) {
  std::vector<ExpertWeights> experts;
  for (int64_t e = 0; e < E; ++e) {
    keep.push_back(std::make_unique<WeightSet>(I, Hd, sg + static_cast<uint32_t>(e)));
    keep.push_back(std::make_unique<WeightSet>(I, Hd, su + static_cast<uint32_t>(e)));
    keep.push_back(std::make_unique<WeightSet>(Hd, I, sd + static_cast<uint32_t>(e)));
    experts.push_back({keep[keep.size() - 3]->all[1].second, keep[keep.size() - 2]->all[1].second,
                       keep[keep.size() - 1]->all[1].second});
  }
  return experts;
}

TEST_P(BackendOps, Linear) {
  for (auto [N, K, T] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {37, 130, 1}, {300, 260, 5}, {64, 64, 33}}) {
    WeightSet ws(N, K, static_cast<uint32_t>(N * 7 + K));
    auto bias = randn(N, 5);
    // x with a row stride larger than K (a strided view).
    auto xs = randn(T * (K + 3), 9);
    TensorView x(xs.data(), DType::F32, {T, K});
    x.stride[0] = K + 3;
    for (auto& [name, w] : ws.all) {
      for (bool with_bias : {false, true}) {
        Linear l = w;
        if (with_bias) l.bias = TensorView(bias.data(), DType::F32, {N});
        std::vector<float> a(T * N), b(T * N);
        be->linear(TensorView(a.data(), DType::F32, {T, N}), x, l);
        ref->linear(TensorView(b.data(), DType::F32, {T, N}), x, l);
        check(("linear " + name + (with_bias ? "+bias " : " ") + std::to_string(N) + "x" + std::to_string(K) + " T" +
               std::to_string(T)).c_str(), a, b);
      }
    }
  }
}

// The decode GEMV's variants: 1, 2 or 4 warps per row (chosen by the row count), K not a multiple of the
// vector width times the lanes, 1..8 tokens, bias, and the fused gate/up + SwiGLU form.
TEST_P(BackendOps, LinearDecodeShapes) {
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{8500, 272}, {2500, 144}, {38, 1040}}) {
    WeightSet ws(N, K, static_cast<uint32_t>(N + K));
    auto bias = randn(N, 5);
    for (int wi : {1, 3})  // bf16, FP8 with 128 x 128 block scales: the vectorised paths
    for (int64_t T : {1, 3, 8}) {
      const Linear& w = ws.all[static_cast<size_t>(wi)].second;
      const std::string tag = ws.all[static_cast<size_t>(wi)].first;
      auto xs = randn(T * K, 9);
      TensorView x(xs.data(), DType::F32, {T, K});
      Linear lb = w;
      lb.bias = TensorView(bias.data(), DType::F32, {N});
      std::vector<float> a(T * N), b(T * N);
      be->linear(TensorView(a.data(), DType::F32, {T, N}), x, lb);
      ref->linear(TensorView(b.data(), DType::F32, {T, N}), x, lb);
      check(("linear " + tag + "+bias " + std::to_string(N) + "x" + std::to_string(K) + " T" + std::to_string(T)).c_str(),
            a, b);
      const int64_t I = N / 2;
      std::vector<float> c(T * I), d(T * I);
      be->linear_silu(TensorView(c.data(), DType::F32, {T, I}), x, w);
      ref->linear_silu(TensorView(d.data(), DType::F32, {T, I}), x, w);
      check(("linear_silu " + tag + " " + std::to_string(N) + "x" + std::to_string(K) + " T" + std::to_string(T)).c_str(),
            c, d);
    }
  }
}

// The decode step's fold-ins: rms_norm_linear (with bias), rms_norm_linear_silu and linear_add against the
// reference's separate ops, at one token (the fused GEMVs on CUDA, bf16) and at three (composed), for bf16, f32
// and FP8 weights (the last two compose on every backend) and f32 / bf16 norm weights.
TEST_P(BackendOps, LinearFusedNormResidual) {
  // N / 2 a multiple of 8, so that linear_add's [K, N / 2] weights take the vectorised kernels too.
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{8512, 272}, {2512, 144}, {48, 1040}, {640, 1536}}) {
    WeightSet ws(N, K, static_cast<uint32_t>(3 * N + K));
    WeightSet wd(K, N / 2, static_cast<uint32_t>(N + 5 * K));  // [K, I]: the down projection of linear_add
    auto bias = randn(N, 6), bias_d = randn(K, 7);
    auto nwf = randn(K, 8, 0.5f);
    for (auto& v : nwf) v += 1.0f;
    std::vector<uint16_t> nwb(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) nwb[static_cast<size_t>(k)] = f32_to_bf16(nwf[static_cast<size_t>(k)]);
    for (int wi : {1, 0, 3})  // bf16, f32, FP8 block-scaled
    for (int64_t T : {1, 3}) {
      const std::string tag = ws.all[static_cast<size_t>(wi)].first + " " + std::to_string(N) + "x" +
                              std::to_string(K) + " T" + std::to_string(T);
      const TensorView nw = wi == 1 ? TensorView(nwb.data(), DType::BF16, {K}) : TensorView(nwf.data(), DType::F32, {K});
      auto xs = randn(T * K, 9, 2.0f);
      TensorView x(xs.data(), DType::F32, {T, K});
      std::vector<float> hbuf(T * K), href(T * K);
      TensorView h(hbuf.data(), DType::F32, {T, K}), hr(href.data(), DType::F32, {T, K});
      ref->rms_norm(hr, x, nw, 1e-5f);
      Linear lb = ws.all[static_cast<size_t>(wi)].second;
      lb.bias = TensorView(bias.data(), DType::F32, {N});
      std::vector<float> a(T * N), b(T * N);
      be->rms_norm_linear(TensorView(a.data(), DType::F32, {T, N}), x, nw, 1e-5f, lb, h);
      ref->linear(TensorView(b.data(), DType::F32, {T, N}), hr, lb);
      check(("rms_norm_linear " + tag).c_str(), a, b);
      const int64_t I = N / 2;
      std::vector<float> c(T * I), d(T * I);
      be->rms_norm_linear_silu(TensorView(c.data(), DType::F32, {T, I}), x, nw, 1e-5f,
                               ws.all[static_cast<size_t>(wi)].second, h);
      ref->linear_silu(TensorView(d.data(), DType::F32, {T, I}), hr, ws.all[static_cast<size_t>(wi)].second);
      check(("rms_norm_linear_silu " + tag).c_str(), c, d);
      // x += c Wd^T + b: the residual stream updated in place.
      Linear ld = wd.all[static_cast<size_t>(wi)].second;
      ld.bias = TensorView(bias_d.data(), DType::F32, {K});
      auto x1 = xs, x2 = xs;
      std::vector<float> tmp(T * K), tmp2(T * K);
      be->linear_add(TensorView(x1.data(), DType::F32, {T, K}), TensorView(c.data(), DType::F32, {T, I}), ld,
                     TensorView(tmp.data(), DType::F32, {T, K}));
      ref->linear(TensorView(tmp2.data(), DType::F32, {T, K}), TensorView(c.data(), DType::F32, {T, I}), ld);
      ref->add(TensorView(x2.data(), DType::F32, {T, K}), TensorView(tmp2.data(), DType::F32, {T, K}));
      check(("linear_add " + tag).c_str(), x1, x2);
    }
  }
}

// Rope of q and k heads and the cache writes of k and v in one op, over a paged pool.
TEST_P(BackendOps, RopeStoreKv) {
  const int bs = 4;
  const int64_t Hq = 6, Hkv = 2, D = 16, rows = 32, T = 5;
  std::vector<int32_t> t0 = {5, 1}, t1 = {7, 2, 3};
  std::vector<SeqSegment> segs = {{0, 2, 3, PagedRows{t0.data(), bs}}, {2, 3, 6, PagedRows{t1.data(), bs}}};
  std::vector<int32_t> pos = {3, 4, 6, 7, 8};
  RopeTable rt = make_rope_table(RopeConfig{}, static_cast<int>(D));
  auto qk = randn(T * (Hq + Hkv) * D, 1), v = randn(T * Hkv * D, 2);
  auto kc = randn(rows * Hkv * D, 3), vc = randn(rows * Hkv * D, 4);
  auto qk2 = qk, kc2 = kc, vc2 = vc;
  TensorView vv(v.data(), DType::F32, {T, Hkv, D});
  be->rope_store_kv(TensorView(qk.data(), DType::F32, {T, Hq + Hkv, D}), Hq, rt, pos.data(),
                    TensorView(kc.data(), DType::F32, {rows, Hkv * D}), TensorView(vc.data(), DType::F32, {rows, Hkv * D}),
                    vv, segs);
  ref->rope(TensorView(qk2.data(), DType::F32, {T, Hq + Hkv, D}), 0, rt, RopeStyle::Neox, pos.data());
  TensorView k2(qk2.data() + Hq * D, DType::F32, {T, Hkv * D});
  k2.stride[0] = (Hq + Hkv) * D;
  ref->copy_rows_segs(TensorView(kc2.data(), DType::F32, {rows, Hkv * D}), k2, segs);
  ref->copy_rows_segs(TensorView(vc2.data(), DType::F32, {rows, Hkv * D}),
                      TensorView(v.data(), DType::F32, {T, Hkv * D}), segs);
  check("rope_store_kv q,k", qk, qk2);
  check("rope_store_kv k cache", kc, kc2);
  check("rope_store_kv v cache", vc, vc2, 0);
}

// MLA's cache rows in one op: rope of the rope key, rms-normed latent, both written to the pools.
TEST_P(BackendOps, MlaStoreKv) {
  const int bs = 4;
  const int64_t C = 40, R = 8, rows = 24, T = 4;
  std::vector<int32_t> t0 = {3, 1}, t1 = {5};
  std::vector<SeqSegment> segs = {{0, 3, 2, PagedRows{t0.data(), bs}}, {3, 1, 0, PagedRows{t1.data(), bs}}};
  std::vector<int32_t> pos = {2, 3, 4, 0};
  RopeTable rt = make_rope_table(RopeConfig{}, static_cast<int>(R));
  auto kv = randn(T * (C + R), 1), w = randn(C, 2), lc = randn(rows * C, 3), kc = randn(rows * R, 4);
  auto kv2 = kv, lc2 = lc, kc2 = kc;
  std::vector<float> lat(T * C), lat2(T * C);
  be->mla_store_kv(TensorView(kv.data(), DType::F32, {T, C + R}), C, TensorView(w.data(), DType::F32, {C}), 1e-6f, rt,
                   pos.data(), TensorView(lat.data(), DType::F32, {T, C}), TensorView(lc.data(), DType::F32, {rows, C}),
                   TensorView(kc.data(), DType::F32, {rows, R}), segs);
  ref->mla_store_kv(TensorView(kv2.data(), DType::F32, {T, C + R}), C, TensorView(w.data(), DType::F32, {C}), 1e-6f, rt,
                    pos.data(), TensorView(lat2.data(), DType::F32, {T, C}),
                    TensorView(lc2.data(), DType::F32, {rows, C}), TensorView(kc2.data(), DType::F32, {rows, R}), segs);
  check("mla_store_kv kv_a", kv, kv2);
  check("mla_store_kv latent", lat, lat2);
  check("mla_store_kv latent pool", lc, lc2);
  check("mla_store_kv rope-key pool", kc, kc2);
}

// MLA at DeepSeek's latent shapes (C = 512, R = 64: the GPU's tensor-core kernel), heads not a multiple of 16,
// decode tokens over long paged contexts (several key tiles, a partial last tile) and a short prefill.
TEST_P(BackendOps, MlaAttentionLatent512) {
  const int bs = 16;
  const int64_t H = 20, Dn = 32, Dv = 24, R = 64, C = 512, rows = 1024;
  std::vector<int32_t> t0(20), t1 = {40}, t2 = {41, 3, 60};
  for (int i = 0; i < 20; ++i) t0[static_cast<size_t>(i)] = (i * 7 + 5) % 40;  // shuffled blocks of 0..39
  // seg 0: 1 token after 300 cached; seg 1: 3-token prefill; seg 2: 1 token after 40
  std::vector<SeqSegment> segs = {{0, 1, 300, PagedRows{t0.data(), bs}}, {1, 3, 0, PagedRows{t1.data(), bs}},
                                  {4, 1, 40, PagedRows{t2.data(), bs}}};
  const int64_t T = 5;
  auto qn = randn(T * H * Dn, 6), qp = randn(T * H * R, 7), lat = randn(rows * C, 8), kpe = randn(rows * R, 9);
  WeightSet ws(H * (Dn + Dv), C, 10);
  const Linear& kvb = ws.all[1].second;
  std::vector<float> c(T * H * Dv), d(T * H * Dv);
  TensorView qnv(qn.data(), DType::F32, {T, H, Dn}), qpv(qp.data(), DType::F32, {T, H, R});
  TensorView latv(lat.data(), DType::F32, {rows, C}), kpev(kpe.data(), DType::F32, {rows, R});
  be->mla_attention_segs(TensorView(c.data(), DType::F32, {T, H, Dv}), qnv, qpv, latv, kpev, kvb, 0.05f, segs);
  ref->mla_attention_segs(TensorView(d.data(), DType::F32, {T, H, Dv}), qnv, qpv, latv, kpev, kvb, 0.05f, segs);
  // The GPU's bf16 mode scores with TF32 tensor cores (10-bit mantissa): ~1e-3.
  check("mla_attention_segs C=512 R=64", c, d, GetParam() == "cpu" ? 1e-5 : 3e-3);
}

TEST_P(BackendOps, NormsActivationsRope) {
  const int64_t T = 9, D = 96;
  auto x = randn(T * D, 1), w = randn(D, 2);
  std::vector<uint16_t> wb;
  for (float v : w) wb.push_back(f32_to_bf16(v));
  std::vector<float> a = x, b = x;  // in place (y aliases x)
  TensorView wv(wb.data(), DType::BF16, {D});
  be->rms_norm(TensorView(a.data(), DType::F32, {T, D}), TensorView(a.data(), DType::F32, {T, D}), wv, 1e-6f);
  ref->rms_norm(TensorView(b.data(), DType::F32, {T, D}), TensorView(b.data(), DType::F32, {T, D}), wv, 1e-6f);
  check("rms_norm (in place)", a, b);

  auto g = randn(T * D, 3), u = randn(T * D, 4);
  std::vector<float> sa(T * D), sb(T * D);
  be->silu_mul(TensorView(sa.data(), DType::F32, {T, D}), TensorView(g.data(), DType::F32, {T, D}),
               TensorView(u.data(), DType::F32, {T, D}));
  ref->silu_mul(TensorView(sb.data(), DType::F32, {T, D}), TensorView(g.data(), DType::F32, {T, D}),
                TensorView(u.data(), DType::F32, {T, D}));
  check("silu_mul", sa, sb);

  std::vector<float> ya = x, yb = x;
  be->add(TensorView(ya.data(), DType::F32, {T, D}), TensorView(g.data(), DType::F32, {T, D}));
  ref->add(TensorView(yb.data(), DType::F32, {T, D}), TensorView(g.data(), DType::F32, {T, D}));
  check("add", ya, yb, 0);

  RopeTable tab;
  for (int i = 0; i < 8; ++i) tab.inv_freq.push_back(std::pow(10000.0f, -i / 8.0f));
  tab.cos_sin_scale = 1.1f;
  std::vector<int32_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(100 + 3 * t);
  for (RopeStyle st : {RopeStyle::Neox, RopeStyle::Interleaved}) {
    std::vector<float> ra = x, rb = x;  // [T, 4 heads, 24]: rotate dims [8, 24) of each head
    be->rope(TensorView(ra.data(), DType::F32, {T, 4, 24}), 8, tab, st, pos.data());
    ref->rope(TensorView(rb.data(), DType::F32, {T, 4, 24}), 8, tab, st, pos.data());
    check(st == RopeStyle::Neox ? "rope neox" : "rope interleaved", ra, rb);
    // Rope preserves the norm of each rotated pair up to the scale and leaves other dims alone.
    EXPECT_EQ(ra[0], x[0]);
  }
}

TEST_P(BackendOps, Attention) {
  const int64_t T = 5, past = 7, S = past + T, Hq = 6, Hkv = 2, D = 16, Dv = 12;
  auto q = randn(T * Hq * D, 1), k = randn(S * Hkv * D, 2), v = randn(S * Hkv * Dv, 3);
  std::vector<float> a(T * Hq * Dv), b(T * Hq * Dv);
  TensorView qv(q.data(), DType::F32, {T, Hq, D}), kv(k.data(), DType::F32, {S, Hkv, D}), vv(v.data(), DType::F32, {S, Hkv, Dv});
  be->attention(TensorView(a.data(), DType::F32, {T, Hq, Dv}), qv, kv, vv, past, 0.25f);
  ref->attention(TensorView(b.data(), DType::F32, {T, Hq, Dv}), qv, kv, vv, past, 0.25f);
  check("attention gqa causal", a, b);
}

TEST_P(BackendOps, MlaAttention) {
  const int64_t T = 4, past = 6, S = past + T, H = 3, Dn = 8, R = 6, Dv = 10, C = 20;
  auto qn = randn(T * H * Dn, 1), qp = randn(T * H * R, 2), lat = randn(S * C, 3), kpe = randn(S * R, 4);
  WeightSet ws(H * (Dn + Dv), C, 5);
  for (auto& [name, w] : ws.all) {
    std::vector<float> a(T * H * Dv), b(T * H * Dv);
    TensorView qnv(qn.data(), DType::F32, {T, H, Dn}), qpv(qp.data(), DType::F32, {T, H, R});
    be->mla_attention(TensorView(a.data(), DType::F32, {T, H, Dv}), qnv, qpv, TensorView(lat.data(), DType::F32, {S, C}),
                      TensorView(kpe.data(), DType::F32, {S, R}), w, past, 0.3f);
    ref->mla_attention(TensorView(b.data(), DType::F32, {T, H, Dv}), qnv, qpv, TensorView(lat.data(), DType::F32, {S, C}),
                       TensorView(kpe.data(), DType::F32, {S, R}), w, past, 0.3f);
    check(("mla_attention kv_b " + name).c_str(), a, b);
  }
}

TEST_P(BackendOps, LinearSilu) {
  const int64_t I = 24, K = 32;
  WeightSet ws(2 * I, K, 21);
  for (int64_t T : {3, 20}) {
    auto x = randn(T * K, 22);
    for (auto& [name, w] : ws.all) {
      if (w.w.dtype == DType::I8) continue;
      std::vector<float> a(T * I), b(T * I);
      be->linear_silu(TensorView(a.data(), DType::F32, {T, I}), TensorView(x.data(), DType::F32, {T, K}), w);
      ref->linear_silu(TensorView(b.data(), DType::F32, {T, I}), TensorView(x.data(), DType::F32, {T, K}), w);
      check(("linear_silu " + name + " T=" + std::to_string(T)).c_str(), a, b);
    }
  }
}

TEST_P(BackendOps, AddRmsNorm) {
  const int64_t T = 3, D = 40;
  auto x = randn(T * D, 1), o = randn(T * D, 2), w = randn(D, 3);
  auto x2 = x;
  std::vector<float> h(T * D), h2(T * D);
  be->add_rms_norm(TensorView(x.data(), DType::F32, {T, D}), TensorView(o.data(), DType::F32, {T, D}),
                   TensorView(h.data(), DType::F32, {T, D}), TensorView(w.data(), DType::F32, {D}), 1e-6f);
  ref->add(TensorView(x2.data(), DType::F32, {T, D}), TensorView(o.data(), DType::F32, {T, D}));
  ref->rms_norm(TensorView(h2.data(), DType::F32, {T, D}), TensorView(x2.data(), DType::F32, {T, D}),
                TensorView(w.data(), DType::F32, {D}), 1e-6f);
  check("add_rms_norm x", x, x2);
  check("add_rms_norm h", h, h2);
}

TEST_P(BackendOps, ArgmaxRows) {
  const int64_t R = 3, V = 70001;
  auto x = randn(R * V, 11);
  x[5] = 100.0f;                            // row 0: single maximum
  x[V + 7] = x[V + 4000] = 50.0f;           // row 1: tie -> lowest index
  x[2 * V + V - 1] = 1e30f;                 // row 2: last element
  std::vector<int32_t> a(R), b(R);
  be->argmax_rows(TensorView(a.data(), DType::I32, {R}), TensorView(x.data(), DType::F32, {R, V}));
  ref->argmax_rows(TensorView(b.data(), DType::I32, {R}), TensorView(x.data(), DType::F32, {R, V}));
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, (std::vector<int32_t>{5, 7, static_cast<int32_t>(V - 1)}));
}

// Token choice per row (ops/sample_rows.h) against the host reference, over a real vocabulary size: greedy rows,
// temperature only, top-k / top-p / min-p alone and together, rows with many exactly tied logits (the top-p
// boundary inside a tie class) and banned (-inf) tokens. The device's expf may differ from the host's in the last
// bit, which moves a pick only when a draw lands within ~1e-7 of a boundary: at most one row of 96 may differ,
// and then only to a token next to the reference's in the draw order.
TEST_P(BackendOps, SampleRows) {
  const int64_t R = 96, V = 152064;
  auto x = randn(R * V, 21, 2.0f);
  std::vector<SampleRowParams> ps(R);
  std::mt19937_64 g(3);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  for (int64_t r = 0; r < R; ++r) {
    SampleRowParams& p = ps[r];
    const int kind = static_cast<int>(r % 8);
    p.temperature = kind == 0 ? 0.0f : kind % 2 ? 0.6f : 1.0f;
    p.top_k = kind == 2 || kind == 6 ? 40 : kind == 7 ? 1 : 0;
    p.top_p = kind == 3 || kind == 6 ? 0.95f : kind == 5 ? 0.5f : 1.0f;
    p.min_p = kind == 4 || kind == 6 ? 0.05f : 0.0f;
    p.u = ud(g);
    float* row = x.data() + r * V;
    if (r % 3 == 0)
      for (int64_t i = 0; i < V; ++i) row[i] = std::round(row[i] * 2.0f) / 2.0f;  // ties everywhere
    row[(r * 7919) % V] = -std::numeric_limits<float>::infinity();
  }
  std::vector<int32_t> a(R), b(R);
  be->sample_rows(TensorView(a.data(), DType::I32, {R}), TensorView(x.data(), DType::F32, {R, V}), ps.data());
  ref->sample_rows(TensorView(b.data(), DType::I32, {R}), TensorView(x.data(), DType::F32, {R, V}), ps.data());
  int differ = 0;
  for (int64_t r = 0; r < R; ++r) {
    ASSERT_GE(a[r], 0) << "row " << r;
    ASSERT_LT(a[r], V) << "row " << r;
    if (a[r] != b[r]) {
      ++differ;
      // Allowed only at a boundary: the draw just above or below gives the device's token on the host.
      SampleRowParams lo = ps[r], hi = ps[r];
      lo.u = std::max(0.0, lo.u - 1e-6), hi.u = std::min(1.0 - 1e-12, hi.u + 1e-6);
      const float* row = x.data() + r * V;
      EXPECT_TRUE(sample_row_reference(row, V, lo) == a[r] || sample_row_reference(row, V, hi) == a[r])
          << "row " << r << ": device " << a[r] << ", reference " << b[r] << " (not at a boundary)";
    }
    if (ps[r].temperature == 0.0f) EXPECT_EQ(a[r], b[r]) << "greedy row " << r;
  }
  std::printf("[ops] %-6s sample_rows: %d of %lld rows differ from the reference (boundary draws)\n",
              GetParam().c_str(), differ, static_cast<long long>(R));
  EXPECT_LE(differ, 1);
}

// Head dim 128 with 2-8 query heads per kv head in steps of many tokens: the CUDA backend's tensor-core (TF32)
// kernel. A mixed step (decode tokens at many context lengths and a prefill chunk; one key split) and a decode
// step of 8 long sequences (key splits merged by the last block), over a paged pool with tables out of order.
TEST_P(BackendOps, GqaHeadDim128Batches) {
  const int bs = 16;
  const int64_t D = 128;
  struct Case {
    const char* name;
    int64_t Hq, Hkv;
    std::vector<std::pair<int64_t, int64_t>> segs;  // (new tokens, cached before them)
  };
  std::vector<Case> cases = {{"gqa128 mixed step group 7", 28, 4, {}}, {"gqa128 long decode group 4", 32, 8, {}}};
  for (int i = 0; i < 56; ++i) cases[0].segs.push_back({1, (i * 37) % 300});
  cases[0].segs.push_back({8, 0});
  cases[0].segs.push_back({16, 100});
  for (int i = 0; i < 8; ++i) cases[1].segs.push_back({1, 700 + 45 * i});
  uint32_t seed = 40;
  for (const Case& cs : cases) {
    std::vector<std::vector<int32_t>> tables;
    std::vector<SeqSegment> segs;
    int64_t T = 0, nblocks = 0;
    for (auto [n, past] : cs.segs) {
      const int64_t nb = (past + n + bs - 1) / bs;
      tables.emplace_back();
      for (int64_t b = 0; b < nb; ++b) tables.back().push_back(static_cast<int32_t>(nblocks + b));
      nblocks += nb;
      T += n;
    }
    // Blocks out of order: reverse the physical numbering.
    for (auto& t : tables)
      for (auto& b : t) b = static_cast<int32_t>(nblocks - 1 - b);
    T = 0;
    for (size_t i = 0; i < cs.segs.size(); ++i) {
      segs.push_back({T, cs.segs[i].first, cs.segs[i].second, PagedRows{tables[i].data(), bs}});
      T += cs.segs[i].first;
    }
    const int64_t rows = nblocks * bs;
    auto q = randn(T * cs.Hq * D, seed++), kp = randn(rows * cs.Hkv * D, seed++), vp = randn(rows * cs.Hkv * D, seed++);
    std::vector<float> a(T * cs.Hq * D), b(T * cs.Hq * D);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    TensorView qv(q.data(), DType::F32, {T, cs.Hq, D});
    TensorView kv(kp.data(), DType::F32, {rows, cs.Hkv, D}), vv(vp.data(), DType::F32, {rows, cs.Hkv, D});
    be->attention_segs(TensorView(a.data(), DType::F32, {T, cs.Hq, D}), qv, kv, vv, scale, segs);
    ref->attention_segs(TensorView(b.data(), DType::F32, {T, cs.Hq, D}), qv, kv, vv, scale, segs);
    // TF32 products on the GPU (bf16 mode): ~1e-3 relative.
    check(cs.name, a, b, cuda_bf16_mode(GetParam()) ? 3e-3 : 1e-5);
  }
}

// Several sequences in one call over a paged pool: prefill chunks and decode tokens mixed, tables out of order.
TEST_P(BackendOps, SegmentedAttentionOverPagedPool) {
  const int bs = 4;
  const int64_t Hq = 4, Hkv = 2, D = 16, Dv = 16, rows = 64;
  std::vector<int32_t> t0 = {9, 2, 1}, t1 = {5, 0}, t2 = {12, 3, 7, 8};
  // seg 0: 3 new tokens after 5 cached; seg 1: 1 new token after 6; seg 2: 4 new tokens after 9 (contiguous-free)
  std::vector<SeqSegment> segs = {{0, 3, 5, PagedRows{t0.data(), bs}}, {3, 1, 6, PagedRows{t1.data(), bs}},
                                  {4, 4, 9, PagedRows{t2.data(), bs}}};
  const int64_t T = 8;
  auto q = randn(T * Hq * D, 1), kn = randn(T * Hkv * D, 2), vn = randn(T * Hkv * Dv, 3);
  auto kp = randn(rows * Hkv * D, 4), vp = randn(rows * Hkv * Dv, 5);
  auto kp2 = kp, vp2 = vp;
  TensorView knv(kn.data(), DType::F32, {T, Hkv * D}), vnv(vn.data(), DType::F32, {T, Hkv * Dv});
  be->copy_rows_segs(TensorView(kp.data(), DType::F32, {rows, Hkv * D}), knv, segs);
  be->copy_rows_segs(TensorView(vp.data(), DType::F32, {rows, Hkv * Dv}), vnv, segs);
  ref->copy_rows_segs(TensorView(kp2.data(), DType::F32, {rows, Hkv * D}), knv, segs);
  ref->copy_rows_segs(TensorView(vp2.data(), DType::F32, {rows, Hkv * Dv}), vnv, segs);
  check("copy_rows_segs", kp, kp2, 0);
  std::vector<float> a(T * Hq * Dv), b(T * Hq * Dv);
  TensorView qv(q.data(), DType::F32, {T, Hq, D});
  be->attention_segs(TensorView(a.data(), DType::F32, {T, Hq, Dv}), qv, TensorView(kp2.data(), DType::F32, {rows, Hkv, D}),
                     TensorView(vp2.data(), DType::F32, {rows, Hkv, Dv}), 0.25f, segs);
  ref->attention_segs(TensorView(b.data(), DType::F32, {T, Hq, Dv}), qv, TensorView(kp2.data(), DType::F32, {rows, Hkv, D}),
                      TensorView(vp2.data(), DType::F32, {rows, Hkv, Dv}), 0.25f, segs);
  check("attention_segs paged", a, b);
  // MLA over the same segments.
  const int64_t H = 3, Dn = 8, R = 6, Dv2 = 10, C = 20;
  auto qn = randn(T * H * Dn, 6), qp = randn(T * H * R, 7), lat = randn(rows * C, 8), kpe = randn(rows * R, 9);
  WeightSet ws(H * (Dn + Dv2), C, 10);
  const Linear& kvb = ws.all[1].second;
  std::vector<float> c(T * H * Dv2), d(T * H * Dv2);
  TensorView qnv(qn.data(), DType::F32, {T, H, Dn}), qpv(qp.data(), DType::F32, {T, H, R});
  TensorView latv(lat.data(), DType::F32, {rows, C}), kpev(kpe.data(), DType::F32, {rows, R});
  be->mla_attention_segs(TensorView(c.data(), DType::F32, {T, H, Dv2}), qnv, qpv, latv, kpev, kvb, 0.3f, segs);
  ref->mla_attention_segs(TensorView(d.data(), DType::F32, {T, H, Dv2}), qnv, qpv, latv, kpev, kvb, 0.3f, segs);
  check("mla_attention_segs paged", c, d);
}

TEST_P(BackendOps, MoeRoutingAndExperts) {
  const int64_t T = 11, Hd = 24, I = 16, E = 8;
  auto logits = randn(T * E, 1), bias = randn(E, 2, 0.5f);
  for (auto method : {RouterParams::Method::Greedy, RouterParams::Method::GroupLimitedGreedy, RouterParams::Method::NoauxTc}) {
    RouterParams p;
    p.n_experts = E;
    p.top_k = 3;
    p.n_group = 4;
    p.topk_group = 2;
    p.method = method;
    p.sigmoid = method == RouterParams::Method::NoauxTc;
    p.norm_topk_prob = p.sigmoid;
    p.routed_scaling_factor = 2.5f;
    std::vector<int32_t> ia(T * 3), ib(T * 3);
    std::vector<float> wa(T * 3), wb(T * 3);
    TensorView bv = p.sigmoid ? TensorView(bias.data(), DType::F32, {E}) : TensorView();
    be->moe_route(TensorView(ia.data(), DType::I32, {T, 3}), TensorView(wa.data(), DType::F32, {T, 3}),
                  TensorView(logits.data(), DType::F32, {T, E}), bv, p);
    ref->moe_route(TensorView(ib.data(), DType::I32, {T, 3}), TensorView(wb.data(), DType::F32, {T, 3}),
                   TensorView(logits.data(), DType::F32, {T, E}), bv, p);
    EXPECT_EQ(ia, ib);
    check("moe_route", wa, wb, GetParam() == "cpu" ? 0 : 1e-6);  // device expf differs in the last bits
    for (int64_t t = 0; t < T; ++t) {
      // Chosen experts are distinct and, for grouped methods, come from at most topk_group groups.
      std::set<int> ex(ia.begin() + t * 3, ia.begin() + t * 3 + 3), groups;
      EXPECT_EQ(ex.size(), 3u);
      for (int e : ex) groups.insert(e / 2);
      if (method != RouterParams::Method::Greedy) EXPECT_LE(groups.size(), 2u);
    }
    if (method == RouterParams::Method::NoauxTc) {
      // Normalised weights times the routed scaling factor sum to the factor.
      for (int64_t t = 0; t < T; ++t) EXPECT_NEAR(wa[t * 3] + wa[t * 3 + 1] + wa[t * 3 + 2], 2.5f, 1e-5);
    }
  }
  // Experts: gathered-per-expert CPU path vs per-token reference loop.
  std::vector<std::unique_ptr<WeightSet>> keep;
  const std::vector<ExpertWeights> experts = bf16_experts(E, I, Hd, 10, 30, 50, keep);
  auto x = randn(T * Hd, 7);
  std::vector<int32_t> ids(T * 2);
  std::vector<float> w(T * 2);
  for (int64_t t = 0; t < T; ++t) ids[t * 2] = t % E, ids[t * 2 + 1] = (t * 3 + 1) % E, w[t * 2] = 0.7f, w[t * 2 + 1] = 0.3f;
  std::vector<float> a(T * Hd), b(T * Hd);
  be->moe_experts(TensorView(a.data(), DType::F32, {T, Hd}), TensorView(x.data(), DType::F32, {T, Hd}),
                  TensorView(ids.data(), DType::I32, {T, 2}), TensorView(w.data(), DType::F32, {T, 2}), experts);
  ref->moe_experts(TensorView(b.data(), DType::F32, {T, Hd}), TensorView(x.data(), DType::F32, {T, Hd}),
                   TensorView(ids.data(), DType::I32, {T, 2}), TensorView(w.data(), DType::F32, {T, 2}), experts);
  check("moe_experts", a, b);
}

// A prefill-sized step: more (token, expert) pairs than the CUDA backend's grouped-GEMV limit (8192), so it takes
// the sorted GEMM path; 41 experts of which the last gets no token, ~210 rows per expert.
TEST_P(BackendOps, MoeExpertsLargeStep) {
  const int64_t T = 4200, Hd = 24, I = 16, E = 41;
  std::vector<std::unique_ptr<WeightSet>> keep;
  const std::vector<ExpertWeights> experts = bf16_experts(E, I, Hd, 100, 200, 300, keep);
  auto x = randn(T * Hd, 17);
  std::vector<int32_t> ids(T * 2);
  std::vector<float> w(T * 2);
  for (int64_t t = 0; t < T; ++t)
    ids[t * 2] = static_cast<int32_t>(t % 40), ids[t * 2 + 1] = static_cast<int32_t>((7 * t + 3) % 40),
    w[t * 2] = 0.6f, w[t * 2 + 1] = 0.4f;
  std::vector<float> a(T * Hd), b(T * Hd), c(T * Hd);
  const TensorView xv(x.data(), DType::F32, {T, Hd}), iv(ids.data(), DType::I32, {T, 2}), wv(w.data(), DType::F32, {T, 2});
  be->moe_experts(TensorView(a.data(), DType::F32, {T, Hd}), xv, iv, wv, experts);
  ref->moe_experts(TensorView(b.data(), DType::F32, {T, Hd}), xv, iv, wv, experts);
  check("moe_experts T=4200 E=41", a, b);
  be->moe_experts(TensorView(c.data(), DType::F32, {T, Hd}), xv, iv, wv, experts);
  EXPECT_EQ(a, c) << "moe_experts is not deterministic";
}

TEST_P(BackendOps, EmbeddingAndCopyRows) {
  const int64_t V = 10, Hd = 7;
  WeightSet ws(V, Hd, 3);
  std::vector<int32_t> ids = {3, 0, 9, 3};
  std::vector<float> a(4 * Hd), b(4 * Hd);
  be->embedding(TensorView(a.data(), DType::F32, {4, Hd}), ws.all[1].second.w, ids.data(), 4);
  ref->embedding(TensorView(b.data(), DType::F32, {4, Hd}), ws.all[1].second.w, ids.data(), 4);
  check("embedding bf16", a, b, 0);
  std::vector<float> dst(6 * Hd, 0.0f);
  be->copy_rows(TensorView(dst.data(), DType::F32, {6, Hd}), 2, TensorView(a.data(), DType::F32, {4, Hd}));
  EXPECT_EQ(dst[2 * Hd], a[0]);
  EXPECT_EQ(dst[5 * Hd + Hd - 1], a[4 * Hd - 1]);
  EXPECT_EQ(dst[Hd], 0.0f);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, ::testing::Values("cpu", "cuda"));

}  // namespace
