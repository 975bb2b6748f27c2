// Every fast CPU kernel against the scalar reference backend, for each instruction-set path this
// machine can run (scalar, AVX2, AVX-512), with odd sizes/tails, strided rows, T = 1 (GEMV) and T > 1
// (GEMM), every weight format. Prints the normalized error max|fast - ref| / max|ref| per case group.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "core/arena.h"
#include "ops/reference.h"
#include "quant/quantize.h"
#include "test_util.h"

namespace dsfuse {
namespace {

using cpu::Isa;

std::vector<Isa> isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (cpu::isa_supported(i)) v.push_back(i);
    else std::printf("[ops] isa %s not supported here: skipped\n", cpu::isa_name(i));
  return v;
}

struct Rng {
  std::mt19937 g{42};
  float operator()() { return std::normal_distribution<float>(0.0f, 1.0f)(g); }
};

// Owns the bytes behind a Linear.
struct OwnedLinear {
  std::vector<std::unique_ptr<Buffer>> store;
  Linear l;
};

enum class WFmt { F32, BF16, F16, F8, I8Row, I8Group, I8AsymGroup };
const char* fmt_name(WFmt f) {
  switch (f) {
    case WFmt::F32: return "f32";
    case WFmt::BF16: return "bf16";
    case WFmt::F16: return "f16";
    case WFmt::F8: return "f8e4m3";
    case WFmt::I8Row: return "i8-row";
    case WFmt::I8Group: return "i8-group";
    case WFmt::I8AsymGroup: return "i8asym-group";
  }
  return "?";
}

void* alloc(OwnedLinear& o, size_t bytes) {
  o.store.push_back(std::make_unique<Buffer>(bytes + 64));
  return o.store.back()->data();
}

// N x K weights with a row stride of K + pad (strided rows), optional bias.
OwnedLinear make_linear(WFmt f, int64_t N, int64_t K, Rng& r, bool bias, int64_t pad = 3) {
  OwnedLinear o;
  const int64_t ws = K + pad;
  auto set_view = [&](void* d, DType t) {
    o.l.w = TensorView(d, t, {N, K});
    o.l.w.stride[0] = ws;
  };
  switch (f) {
    case WFmt::F32: {
      float* d = static_cast<float*>(alloc(o, N * ws * 4));
      for (int64_t i = 0; i < N * ws; ++i) d[i] = r() * 0.1f;
      set_view(d, DType::F32);
      break;
    }
    case WFmt::BF16:
    case WFmt::F16: {
      uint16_t* d = static_cast<uint16_t*>(alloc(o, N * ws * 2));
      for (int64_t i = 0; i < N * ws; ++i) d[i] = f == WFmt::BF16 ? f32_to_bf16(r() * 0.1f) : f32_to_f16(r() * 0.1f);
      set_view(d, f == WFmt::BF16 ? DType::BF16 : DType::F16);
      break;
    }
    case WFmt::F8: {
      uint8_t* d = static_cast<uint8_t*>(alloc(o, N * ws));
      for (int64_t i = 0; i < N * ws; ++i) d[i] = f32_to_f8e4m3(r() * 50.0f);
      set_view(d, DType::F8E4M3);
      o.l.block_rows = 4;
      o.l.block_cols = 16;
      const int64_t br = (N + 3) / 4, bc = (K + 15) / 16;
      float* s = static_cast<float*>(alloc(o, br * bc * 4));
      for (int64_t i = 0; i < br * bc; ++i) s[i] = 0.001f * (1 + (i % 7));
      o.l.scale = TensorView(s, DType::F32, {br, bc});
      break;
    }
    default: {  // int8: groups of K/G columns, G = 1 (per row) or the largest of 4, 2 dividing K
      const bool asym = f == WFmt::I8AsymGroup;
      int64_t G = 1;
      if (f != WFmt::I8Row) G = K % 4 == 0 ? 4 : K % 2 == 0 ? 2 : 1;
      int8_t* d = static_cast<int8_t*>(alloc(o, N * ws));
      for (int64_t i = 0; i < N * ws; ++i) d[i] = static_cast<int8_t>(static_cast<int>(r() * 50.0f) % 128);
      set_view(d, DType::I8);
      float* s = static_cast<float*>(alloc(o, N * G * 4));
      for (int64_t i = 0; i < N * G; ++i) s[i] = 0.002f * (1 + (i % 5));
      o.l.scale = TensorView(s, DType::F32, {N, G});
      if (asym) {
        float* z = static_cast<float*>(alloc(o, N * G * 4));
        for (int64_t i = 0; i < N * G; ++i) z[i] = static_cast<float>(static_cast<int>(i % 9) - 4);
        o.l.zero = TensorView(z, DType::F32, {N, G});
      }
    }
  }
  if (bias) {
    float* b = static_cast<float*>(alloc(o, N * 4));
    for (int64_t i = 0; i < N; ++i) b[i] = r();
    o.l.bias = TensorView(b, DType::F32, {N});
  }
  return o;
}

double norm_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return INFINITY;
    num = std::max(num, static_cast<double>(std::fabs(a[i] - b[i])));
    den = std::max(den, static_cast<double>(std::fabs(b[i])));
  }
  return den > 0 ? num / den : num;
}

TEST(Ops, LinearAllFormatsAllIsas) {
  auto ref = make_reference_backend();
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 1}, {5, 7}, {17, 33}, {33, 100}, {64, 256}, {70, 160}};
  const std::vector<int64_t> Ts = {1, 2, 3, 4, 5, 9, 13, 40};
  for (Isa isa : isas()) {
    auto be = cpu::make_cpu_backend_isa(2, isa);
    for (WFmt f : {WFmt::F32, WFmt::BF16, WFmt::F16, WFmt::F8, WFmt::I8Row, WFmt::I8Group, WFmt::I8AsymGroup}) {
      double worst = 0;
      for (auto [N, K] : shapes) {
        Rng r;
        OwnedLinear w = make_linear(f, N, K, r, N % 2 == 1);
        for (int64_t T : Ts) {
          // x rows strided (K + 5), y rows strided (N + 2)
          std::vector<float> x(T * (K + 5));
          for (auto& v : x) v = r();
          TensorView xv(x.data(), DType::F32, {T, K});
          xv.stride[0] = K + 5;
          std::vector<float> y1(T * (N + 2), 7.0f), y2(T * (N + 2), 7.0f);
          TensorView yv1(y1.data(), DType::F32, {T, N}), yv2(y2.data(), DType::F32, {T, N});
          yv1.stride[0] = yv2.stride[0] = N + 2;
          ref->linear(yv1, xv, w.l);
          be->linear(yv2, xv, w.l);
          const double e = norm_err(y2, y1);  // padding must stay untouched too (both 7)
          worst = std::max(worst, e);
          EXPECT_LE(e, 2e-6) << cpu::isa_name(isa) << " " << fmt_name(f) << " N=" << N << " K=" << K << " T=" << T;
        }
      }
      std::printf("[ops] linear %-7s %-13s worst normalized error %.2e\n", cpu::isa_name(isa), fmt_name(f), worst);
    }
  }
}

TEST(Ops, GemvKernelEveryTokenCount) {
  // The GEMV kernel alone over 1..9 tokens and odd row ranges (n0, n1), i8 groups spanning vector tails.
  for (Isa isa : isas()) {
    const auto& k = cpu::kernels(isa);
    double worst = 0;
    for (WFmt f : {WFmt::F32, WFmt::BF16, WFmt::I8Row, WFmt::I8Group, WFmt::I8AsymGroup}) {
      Rng r;
      const int64_t N = 23, K = 200;
      OwnedLinear w = make_linear(f, N, K, r, false);
      cpu::WMat m;
      ASSERT_TRUE(cpu::to_wmat(w.l, m));
      std::vector<float> wd(N * K);
      dequantize_rows(w.l, 0, N, wd.data());
      for (int64_t T = 1; T <= 9; ++T) {
        std::vector<float> x(T * K), y(T * N, 0.0f), yr(T * N, 0.0f);
        for (auto& v : x) v = r();
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 3; n < 21; ++n) {
            double s = 0;
            for (int64_t kk = 0; kk < K; ++kk) s += static_cast<double>(x[t * K + kk]) * wd[n * K + kk];
            yr[t * N + n] = static_cast<float>(s);
          }
        k.gemv(m, K, 3, 21, x.data(), K, T, y.data(), N);
        const double e = norm_err(y, yr);
        worst = std::max(worst, e);
        EXPECT_LE(e, 2e-6) << cpu::isa_name(isa) << " " << fmt_name(f) << " T=" << T;
      }
    }
    std::printf("[ops] gemv   %-7s worst normalized error %.2e (vs f64 dot of dequantized rows)\n", cpu::isa_name(isa),
                worst);
  }
}

TEST(Ops, ElementwiseAttentionMlaMoe) {
  auto ref = make_reference_backend();
  for (Isa isa : isas()) {
    auto be = cpu::make_cpu_backend_isa(2, isa);
    Rng r;
    auto randv = [&](int64_t n, float sc = 1.0f) {
      std::vector<float> v(n);
      for (auto& e : v) e = r() * sc;
      return v;
    };
    // rms_norm / silu_mul / add over odd widths
    double e_norm = 0, e_silu = 0, e_add = 0;
    for (int64_t D : {1, 7, 33, 100, 1536}) {
      const int64_t T = 5;
      auto x = randv(T * D), w = randv(D), g = randv(T * D, 4.0f), u = randv(T * D);
      std::vector<float> a(T * D), b(T * D);
      TensorView xv(x.data(), DType::F32, {T, D}), wv(w.data(), DType::F32, {D});
      ref->rms_norm(TensorView(a.data(), DType::F32, {T, D}), xv, wv, 1e-6f);
      be->rms_norm(TensorView(b.data(), DType::F32, {T, D}), xv, wv, 1e-6f);
      e_norm = std::max(e_norm, norm_err(b, a));
      TensorView gv(g.data(), DType::F32, {T, D}), uv(u.data(), DType::F32, {T, D});
      ref->silu_mul(TensorView(a.data(), DType::F32, {T, D}), gv, uv);
      be->silu_mul(TensorView(b.data(), DType::F32, {T, D}), gv, uv);
      e_silu = std::max(e_silu, norm_err(b, a));
      a = x;
      b = x;
      ref->add(TensorView(a.data(), DType::F32, {T, D}), uv);
      be->add(TensorView(b.data(), DType::F32, {T, D}), uv);
      e_add = std::max(e_add, norm_err(b, a));
    }
    EXPECT_LE(e_norm, 1e-6);
    EXPECT_LE(e_silu, 1e-6);
    EXPECT_LE(e_add, 1e-7);

    // GQA attention: decode (T=1 over a cache) and prefill chunks, head dims with vector tails.
    double e_att = 0;
    for (auto [T, past, D] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 0, 24}, {1, 37, 128}, {7, 0, 40}, {3, 10, 17}}) {
      const int64_t Hq = 6, Hkv = 2, S = past + T;
      auto q = randv(T * Hq * D), k = randv(S * Hkv * D), v = randv(S * Hkv * D);
      std::vector<float> a(T * Hq * D), b(T * Hq * D);
      TensorView qv(q.data(), DType::F32, {T, Hq, D}), kv(k.data(), DType::F32, {S, Hkv, D}),
          vv(v.data(), DType::F32, {S, Hkv, D});
      const float sc = 1.0f / std::sqrt(static_cast<float>(D));
      ref->attention(TensorView(a.data(), DType::F32, {T, Hq, D}), qv, kv, vv, past, sc);
      be->attention(TensorView(b.data(), DType::F32, {T, Hq, D}), qv, kv, vv, past, sc);
      e_att = std::max(e_att, norm_err(b, a));
    }
    EXPECT_LE(e_att, 2e-6);

    // MLA absorbed attention: direct (few tokens, bf16/i8 kv_b read in place) and dequantized paths.
    double e_mla = 0;
    for (WFmt f : {WFmt::BF16, WFmt::I8Group, WFmt::I8AsymGroup, WFmt::F16}) {
      for (auto [T, past] : std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {1, 9}, {3, 4}, {8, 0}}) {
        const int64_t H = 3, Dn = 16, R = 8, Dv = 12, C = 40, S = past + T;
        OwnedLinear kvb = make_linear(f, H * (Dn + Dv), C, r, false);
        auto qn = randv(T * H * Dn), qp = randv(T * H * R), lat = randv(S * C), kpe = randv(S * R);
        std::vector<float> a(T * H * Dv), b(T * H * Dv);
        TensorView qnv(qn.data(), DType::F32, {T, H, Dn}), qpv(qp.data(), DType::F32, {T, H, R}),
            lv(lat.data(), DType::F32, {S, C}), kv(kpe.data(), DType::F32, {S, R});
        ref->mla_attention(TensorView(a.data(), DType::F32, {T, H, Dv}), qnv, qpv, lv, kv, kvb.l, past, 0.1f);
        be->mla_attention(TensorView(b.data(), DType::F32, {T, H, Dv}), qnv, qpv, lv, kv, kvb.l, past, 0.1f);
        const double e = norm_err(b, a);
        e_mla = std::max(e_mla, e);
        EXPECT_LE(e, 5e-6) << fmt_name(f) << " T=" << T << " past=" << past;
      }
    }

    // MoE experts: tokens gathered per expert; fused GEMV path and per-expert GEMM path.
    double e_moe = 0;
    for (WFmt f : {WFmt::BF16, WFmt::I8Group}) {
      const int64_t E = 5, Hd = 48, I = 40, top = 2;
      std::vector<OwnedLinear> own;
      std::vector<ExpertWeights> ex(E);
      for (int64_t e = 0; e < E; ++e) {
        own.push_back(make_linear(f, I, Hd, r, false));
        ex[e].gate = own.back().l;
        own.push_back(make_linear(f, I, Hd, r, false));
        ex[e].up = own.back().l;
        own.push_back(make_linear(f, Hd, I, r, false));
        ex[e].down = own.back().l;
      }
      for (int64_t T : {1, 20, 80}) {  // 1, 20: fused decode path (<= 24 tokens per expert); 80: per-expert GEMMs
        auto x = randv(T * Hd);
        std::vector<int32_t> ids(T * top);
        std::vector<float> wts(T * top);
        for (int64_t i = 0; i < T * top; ++i) {
          ids[i] = static_cast<int32_t>((i * 3 + i / top) % E);
          wts[i] = 0.5f + 0.1f * (i % 3);
        }
        if (top == 2)
          for (int64_t t = 0; t < T; ++t)
            if (ids[t * 2] == ids[t * 2 + 1]) ids[t * 2 + 1] = (ids[t * 2 + 1] + 1) % E;
        std::vector<float> a(T * Hd), b(T * Hd);
        TensorView xv(x.data(), DType::F32, {T, Hd}), iv(ids.data(), DType::I32, {T, top}),
            wv(wts.data(), DType::F32, {T, top});
        ref->moe_experts(TensorView(a.data(), DType::F32, {T, Hd}), xv, iv, wv, ex);
        be->moe_experts(TensorView(b.data(), DType::F32, {T, Hd}), xv, iv, wv, ex);
        e_moe = std::max(e_moe, norm_err(b, a));
      }
    }
    EXPECT_LE(e_moe, 5e-6);
    std::printf("[ops] %-7s rms_norm %.1e silu_mul %.1e add %.1e attention %.1e mla %.1e moe %.1e\n",
                cpu::isa_name(isa), e_norm, e_silu, e_add, e_att, e_mla, e_moe);
  }
}

TEST(Ops, QuantizeGroupsMatchDequantize) {
  // quantize_linear's groups: dequantize_rows (reference semantics) reproduces the weights within half a step.
  Rng r;
  for (int64_t K : {100, 256, 384}) {
    OwnedLinear w = make_linear(WFmt::F32, 9, K, r, false, 0);
    std::vector<std::unique_ptr<Buffer>> store;
    for (QuantType q : {QuantType::Int8, QuantType::Int8Asym}) {
      Linear ql = quantize_linear(w.l, q, store);
      const int64_t gs = int8_group_size(K);
      EXPECT_EQ(ql.scale.ndim, 2);
      EXPECT_EQ(ql.scale.shape[1], K / gs);
      std::vector<float> a(9 * K), b(9 * K);
      dequantize_rows(w.l, 0, 9, a.data());
      dequantize_rows(ql, 0, 9, b.data());
      for (int64_t n = 0; n < 9; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const float s = ql.scale.ptr<float>()[n * ql.scale.shape[1] + k / gs];
          EXPECT_LE(std::fabs(a[n * K + k] - b[n * K + k]), 0.5f * s * 1.001f);
        }
    }
  }
}

TEST(Bench, JsonFieldsSane) {
  DSFUSE_REQUIRE_FIXTURE(dir, "models/qwen2-tiny");
  auto r = test::run_dsfuse("bench --config " + (dir / "config.json").string() +
                            " --dummy-weights --gen-len 4 --prompt-len 8 --repeat 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string out = r.out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  const auto last = out.substr(out.rfind('\n') + 1);
  auto j = nlohmann::json::parse(last);
  for (const char* f : {"prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb", "weight_bytes_per_token",
                        "bandwidth_gbs", "bound_tok_s", "fraction_of_bound", "fma_peak_gflops"}) {
    ASSERT_TRUE(j.contains(f)) << f << " missing in " << last;
    EXPECT_TRUE(j[f].is_number()) << f;
    EXPECT_GT(j[f].get<double>(), 0) << f;
  }
  EXPECT_NEAR(j["bound_tok_s"].get<double>(), j["bandwidth_gbs"].get<double>() * 1e9 / j["weight_bytes_per_token"].get<double>(),
              1e-6 * j["bound_tok_s"].get<double>());
  EXPECT_NEAR(j["fraction_of_bound"].get<double>(), j["decode_tok_s"].get<double>() / j["bound_tok_s"].get<double>(), 1e-9);
  EXPECT_NEAR(j["ttft_ms"].get<double>(), 8 / j["prefill_tok_s"].get<double>() * 1e3, 1e-6 * j["ttft_ms"].get<double>());
  EXPECT_LT(j["bandwidth_gbs"].get<double>(), 10000);
  // Batched: 3 sequences per forward; weights are read once per step, so bytes per token drop.
  auto b = test::run_dsfuse("bench --config " + (dir / "config.json").string() +
                            " --dummy-weights --gen-len 4 --prompt-len 8 --repeat 1 --batch 3 --json");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  std::string bo = b.out;
  while (!bo.empty() && bo.back() == '\n') bo.pop_back();
  auto jb = nlohmann::json::parse(bo.substr(bo.rfind('\n') + 1));
  EXPECT_EQ(jb["batch"], 3);
  EXPECT_NEAR(jb["weight_bytes_per_token"].get<double>() * 3, j["weight_bytes_per_token"].get<double>(),
              0.01 * j["weight_bytes_per_token"].get<double>());
  EXPECT_NEAR(jb["ttft_ms"].get<double>(), 3 * 8 / jb["prefill_tok_s"].get<double>() * 1e3, 1e-6 * jb["ttft_ms"].get<double>());
}

}  // namespace
}  // namespace dsfuse
