// CPU backend: threaded SIMD kernels over f32 activations and weights in their stored format.
// Scratch memory is owned per thread and only grows, so a steady-state forward pass does not allocate.
//
// linear(): up to 24 tokens (decode, small expert batches) -> GEMV kernels that stream each weight row
// block once for all tokens (bf16/f32/int8 read directly, no dequantized copy, next block prefetched);
// more tokens (prefill) -> GEMM (gemm_wt): the tokens are packed once per call into 32-token panels
// [k][32]; each thread converts 12 weight rows at a time to f32 (SIMD) and the 12x32 micro-kernel
// (24 zmm accumulators) broadcasts weight elements against token vectors over all of K. f16/fp8
// weights use `gemm` (weight panels transposed into [kc][NR]). Threads split the output rows (chunks
// claimed dynamically), so there is no reduction between threads.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/stats.h"
#include "core/arena.h"
#include "core/thread_pool.h"
#include "ops/moe_routing.h"

namespace dsfuse {
namespace {

float* frow(const TensorView& t, int64_t r) { return t.ptr<float>() + r * t.stride[0]; }

// Rows of at most this many tokens go through the GEMV kernels (4-token register groups re-reading
// each row block from L1/L2), more through the GEMM. Measured crossover on Zen 4 (2 threads, 1408x2048):
// GEMV 187 (bf16) / 152 (int8) GFLOP/s at T = 24, where the GEMM's 32-token panels are still 3/4 empty.
int64_t gemv_max_tokens() {
  static const int64_t v = [] {
    const char* e = std::getenv("DSFUSE_GEMV_MAX_T");
    return e ? std::atoll(e) : int64_t{24};
  }();
  return v;
}
// MLA absorbs from the stored kv_b rows for at most this many tokens (else dequantizes each head once).
constexpr int64_t kMlaDirectMaxT = 4;

}  // namespace

cpu::Stats& cpu::stats() {
  static Stats s;
  return s;
}

namespace {

// Prefill GEMM flavour for bf16/f32/int8 ($DSFUSE_GEMM): 0 (default) weight rows converted to f32
// row-major with SIMD and tokens packed (gemm_wt); "packed": weight panels transposed into [k][NR]
// (gemm, ~30% slower because the transpose is scalar; what f16/fp8 weights always use).
int gemm_mode() {
  static const int v = [] {
    const char* e = std::getenv("DSFUSE_GEMM");
    return e && std::string(e) == "packed" ? 2 : 0;
  }();
  return v;
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, cpu::Isa isa) : pool_(threads), scratch_(pool_.size()), k_(&cpu::kernels(isa)) {}

  Device device() const override { return Device::cpu(); }
  std::string name() const override { return std::string("cpu-") + cpu::isa_name(k_->isa); }
  void* alloc(size_t bytes) override { return std::aligned_alloc(64, (bytes + 63) / 64 * 64); }
  void free(void* p) override { std::free(p); }
  void copy_to_device(void* d, const void* s, size_t n) override { std::memcpy(d, s, n); }
  void copy_to_host(void* d, const void* s, size_t n) override { std::memcpy(d, s, n); }

  void embedding(TensorView out, const TensorView& table, const int32_t* ids, int64_t T) override {
    Linear l{table};
    cpu::stats().weight_bytes.fetch_add(T * table.shape[1] * static_cast<int64_t>(dtype_size(table.dtype)),
                                        std::memory_order_relaxed);
    for (int64_t t = 0; t < T; ++t) dequantize_rows(l, ids[t], ids[t] + 1, frow(out, t));
  }

  void linear(TensorView y, const TensorView& x, const Linear& w) override {
    const int64_t T = x.shape[0], N = w.out_features(), K = w.in_features();
    cpu::stats().weight_bytes.fetch_add(static_cast<int64_t>(w.bytes()), std::memory_order_relaxed);
    cpu::stats().macs.fetch_add(T * N * K, std::memory_order_relaxed);
    cpu::WMat m;
    const bool fast = cpu::to_wmat(w, m);
    if (fast && T <= gemv_max_tokens()) {
      constexpr int64_t kRowBlock = 16;
      const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
      pool_.parallel_for(blocks, [&](int64_t b, int64_t e, int) {
        k_->gemv(m, K, b * kRowBlock, std::min(N, e * kRowBlock), x.ptr<float>(), x.stride[0], T, y.ptr<float>(),
                 y.stride[0]);
      });
    } else if (fast && gemm_mode() == 0) {
      gemm_wt(y, x, w, m);
    } else {
      gemm(y, x, w, fast ? &m : nullptr);
    }
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
        const float inv = 1.0f / std::sqrt(k_->sumsq(xr, D) / static_cast<float>(D) + eps);
        k_->rms_apply(frow(y, t), xr, wf, inv, D);
      }
    }, 16);
  }

  void add(TensorView y, const TensorView& x) override {
    const int64_t T = x.shape[0], D = x.numel() / x.shape[0];
    for (int64_t t = 0; t < T; ++t) {
      float* yr = frow(y, t);
      const float* xr = frow(x, t);
      k_->add(yr, xr, D);
    }
  }

  void silu_mul(TensorView y, const TensorView& gate, const TensorView& up) override {
    const int64_t T = gate.shape[0], I = gate.shape[gate.ndim - 1];
    pool_.parallel_for(T, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        const float* g = frow(gate, t);
        const float* u = frow(up, t);
        float* o = frow(y, t);
        k_->silu_mul(o, g, u, I);
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
    cpu::stats().macs.fetch_add(Hq * (D + Dv) * (T * past + T * (T + 1) / 2), std::memory_order_relaxed);
    pool_.parallel_for(T * Hq, [&](int64_t b, int64_t e, int tid) {
      float* p = scratch(tid, S_max);
      for (int64_t i = b; i < e; ++i) {
        const int64_t t = i / Hq, h = i % Hq, kh = h / group, S = past + t + 1;
        const float* qr = frow(q, t) + h * q.stride[1];
        for (int64_t s = 0; s < S; ++s) p[s] = k_->dot(qr, frow(k, rows.phys(s)) + kh * k.stride[1], D) * scale;
        const float sum = k_->softmax_inplace(p, S);
        float* o = frow(out, t) + h * out.stride[1];
        std::fill(o, o + Dv, 0.0f);
        for (int64_t s = 0; s < S; ++s) k_->axpy(o, p[s], frow(v, rows.phys(s)) + kh * v.stride[1], Dv);
        k_->scal(o, 1.0f / sum, Dv);
      }
    });
  }

  void mla_attention(TensorView out, const TensorView& q_nope, const TensorView& q_pe, const TensorView& latent,
                     const TensorView& k_pe, const Linear& kv_b, int64_t past, float scale,
                     const PagedRows& rows) override {
    const int64_t T = q_nope.shape[0], H = q_nope.shape[1], Dn = q_nope.shape[2], R = q_pe.shape[2];
    const int64_t C = latent.shape[1], Dv = out.shape[2], S_max = past + T;
    cpu::stats().weight_bytes.fetch_add(static_cast<int64_t>(kv_b.bytes()), std::memory_order_relaxed);
    cpu::stats().macs.fetch_add(T * H * (Dn + Dv) * C + H * (2 * C + R) * (T * past + T * (T + 1) / 2),
                                std::memory_order_relaxed);
    cpu::WMat m;
    // Few tokens with a directly readable kv_b: absorb straight from the stored rows (each head's rows are
    // read once per token from cache, never dequantized to a copy). Otherwise dequantize a head once.
    const bool direct = cpu::to_wmat(kv_b, m) && T <= kMlaDirectMaxT;
    pool_.parallel_for(H, [&](int64_t b, int64_t e, int tid) {
      float* w = scratch(tid, (direct ? 0 : (Dn + Dv) * C) + 2 * C + S_max + Dv);
      float* ql = w + (direct ? 0 : (Dn + Dv) * C);  // [C] absorbed query
      float* ol = ql + C;                            // [C] latent output
      float* p = ol + C;                             // [S] scores
      float* ov = p + S_max;                         // [Dv]
      for (int64_t h = b; h < e; ++h) {
        const int64_t r0 = h * (Dn + Dv);
        if (!direct) dequantize_rows(kv_b, r0, r0 + Dn + Dv, w);
        const float* wk = w;           // [Dn, C]
        const float* wv = w + Dn * C;  // [Dv, C]
        for (int64_t t = 0; t < T; ++t) {
          const float* qn = frow(q_nope, t) + h * q_nope.stride[1];
          std::fill(ql, ql + C, 0.0f);
          for (int64_t d = 0; d < Dn; ++d) {
            if (direct) k_->axpy_w(m, C, r0 + d, qn[d], ql);
            else k_->axpy(ql, qn[d], wk + d * C, C);
          }
          const float* qp = frow(q_pe, t) + h * q_pe.stride[1];
          const int64_t S = past + t + 1;
          for (int64_t s = 0; s < S; ++s)
            p[s] = (k_->dot(ql, frow(latent, rows.phys(s)), C) + k_->dot(qp, frow(k_pe, rows.phys(s)), R)) * scale;
          const float sum = k_->softmax_inplace(p, S);
          std::fill(ol, ol + C, 0.0f);
          for (int64_t s = 0; s < S; ++s) k_->axpy(ol, p[s], frow(latent, rows.phys(s)), C);
          const float inv = 1.0f / sum;
          float* o = frow(out, t) + h * out.stride[1];
          if (direct) {
            k_->gemv(m, C, r0 + Dn, r0 + Dn + Dv, ol, C, 1, ov - (r0 + Dn), 0);
            for (int64_t d = 0; d < Dv; ++d) o[d] = ov[d] * inv;
          } else {
            for (int64_t d = 0; d < Dv; ++d) o[d] = k_->dot(ol, wv + d * C, C) * inv;
          }
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
    if (moe_fused(out, x, experts, E, H, K, max_i, wt)) return;
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
        k_->axpy(frow(out, slot / K), wt[slot], frow(y, j), H);
      }
    }
  }

 private:
  // Few tokens per expert (decode): all active experts' gate+up rows in one parallel_for and all their
  // down rows in a second, instead of 3 small threaded GEMVs per expert (fewer hand-offs, longer
  // streams per thread). Needs directly readable weights; returns false to take the general path.
  bool moe_fused(TensorView out, const TensorView& x, const std::vector<ExpertWeights>& experts, int64_t E, int64_t H,
                 int64_t K, int64_t max_i, const float* wt) {
    using Act = ActRec;  // expert, tokens, offset of its buffers, its weights
    acts_.clear();
    int64_t off = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = count_[e + 1] - count_[e];
      if (n == 0 || experts[e].gate.empty()) continue;  // unused, or owned by another rank
      if (n > gemv_max_tokens()) return false;
      Act a{e, n, off, {}, {}, {}};
      if (!cpu::to_wmat(experts[e].gate, a.g) || !cpu::to_wmat(experts[e].up, a.u) ||
          !cpu::to_wmat(experts[e].down, a.d) || !experts[e].gate.bias.empty() || !experts[e].up.bias.empty() ||
          !experts[e].down.bias.empty())
        return false;
      acts_.push_back(a);
      off += n * (H + 2 * max_i + H);
    }
    float* buf = moe_buf_.grow(off);
    for (const Act& a : acts_)
      for (int64_t j = 0; j < a.n; ++j)
        std::memcpy(buf + a.off + j * H, frow(x, order_[count_[a.e] + j] / K), H * sizeof(float));
    constexpr int64_t RB = 16;
    // Phase 1: items = (active expert, gate|up, row block)
    items_.clear();
    for (int64_t i = 0; i < static_cast<int64_t>(acts_.size()); ++i) {
      const int64_t I = experts[acts_[i].e].gate.out_features();
      for (int which = 0; which < 2; ++which)
        for (int64_t r = 0; r < I; r += RB) items_.push_back({i, which, r, std::min(I, r + RB)});
    }
    pool_.parallel_for(static_cast<int64_t>(items_.size()), [&](int64_t b, int64_t e, int) {
      for (int64_t it = b; it < e; ++it) {
        const Item& w = items_[it];
        const Act& a = acts_[w.act];
        float* xs = buf + a.off;
        float* dst = buf + a.off + a.n * H + (w.which ? a.n * max_i : 0);
        k_->gemv(w.which ? a.u : a.g, H, w.r0, w.r1, xs, H, a.n, dst, max_i);
      }
    });
    for (const Act& a : acts_) {
      const int64_t I = experts[a.e].gate.out_features();
      float* g = buf + a.off + a.n * H;
      for (int64_t j = 0; j < a.n; ++j) k_->silu_mul(g + j * max_i, g + j * max_i, g + a.n * max_i + j * max_i, I);
    }
    // Phase 2: down rows
    items_.clear();
    for (int64_t i = 0; i < static_cast<int64_t>(acts_.size()); ++i)
      for (int64_t r = 0; r < H; r += RB) items_.push_back({i, 2, r, std::min(H, r + RB)});
    pool_.parallel_for(static_cast<int64_t>(items_.size()), [&](int64_t b, int64_t e, int) {
      for (int64_t it = b; it < e; ++it) {
        const Item& w = items_[it];
        const Act& a = acts_[w.act];
        const int64_t I = experts[a.e].gate.out_features();
        k_->gemv(a.d, I, w.r0, w.r1, buf + a.off + a.n * H, max_i, a.n, buf + a.off + a.n * (H + 2 * max_i), H);
      }
    });
    for (const Act& a : acts_)
      for (int64_t j = 0; j < a.n; ++j) {
        const int32_t slot = order_[count_[a.e] + j];
        k_->axpy(frow(out, slot / K), wt[slot], buf + a.off + a.n * (H + 2 * max_i) + j * H, H);
      }
    for (const Act& a : acts_) {
      cpu::stats().weight_bytes.fetch_add(
          static_cast<int64_t>(experts[a.e].gate.bytes() + experts[a.e].up.bytes() +
                               experts[a.e].down.bytes()),
          std::memory_order_relaxed);
      cpu::stats().macs.fetch_add(a.n * 3 * H * experts[a.e].gate.out_features(), std::memory_order_relaxed);
    }
    return true;
  }
  struct Item {
    int64_t act;
    int which;  // 0 gate, 1 up, 2 down
    int64_t r0, r1;
  };
  std::vector<Item> items_;

  // y = x W^T through packed panels (see the file comment). `m` is null for formats without a direct
  // reader (f16, fp8): their panel rows are dequantized once per panel into scratch first.
  void gemm(TensorView y, const TensorView& x, const Linear& w, const cpu::WMat* m) {
    const int64_t T = x.shape[0], N = w.out_features(), K = w.in_features();
    const int NR = k_->nr, MR = k_->mr_max;
    constexpr int64_t KC = 128;
    const int64_t panels = (N + NR - 1) / NR;
    const float* xp = x.ptr<float>();
    float* yp = y.ptr<float>();
    const int64_t xs = x.stride[0], ys = y.stride[0];
    pool_.parallel_for(panels, [&](int64_t b, int64_t e, int tid) {
      float* bp = scratch(tid, KC * NR + (m ? 0 : NR * K));
      float* rows = bp + KC * NR;  // [NR, K] dequantized rows (no direct reader only)
      for (int64_t pi = b; pi < e; ++pi) {
        const int64_t n0 = pi * NR;
        const int nc = static_cast<int>(std::min<int64_t>(NR, N - n0));
        if (!m) dequantize_rows(w, n0, n0 + nc, rows);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
          const int64_t kc = std::min(KC, K - k0);
          pack(m, rows, K, n0, nc, k0, kc, NR, bp);
          for (int64_t t0 = 0; t0 < T; t0 += MR) {
            const int mr = static_cast<int>(std::min<int64_t>(MR, T - t0));
            k_->gemm_tile(mr, kc, xp + t0 * xs + k0, xs, bp, yp + t0 * ys + n0, ys, nc, k0 > 0);
          }
        }
      }
    });
  }

  // y = x W^T with the roles of the micro-kernel swapped: x is packed once per call into token panels
  // xp[tb][k][NR] (NR tokens, zero-padded), and each thread converts MR weight rows at a time to f32
  // (row-major, SIMD, no transpose) whose elements the micro-kernel broadcasts against the token
  // vectors: C^T[MR rows][NR tokens] in registers over all of K, written back transposed once.
  void gemm_wt(TensorView y, const TensorView& x, const Linear& w, const cpu::WMat& m) {
    const int64_t T = x.shape[0], N = w.out_features(), K = w.in_features();
    const int NR = k_->nr, MR = k_->mr_max;
    const int64_t tblocks = (T + NR - 1) / NR;
    float* xp = xpack_.grow(tblocks * K * NR);
    const float* xd = x.ptr<float>();
    const int64_t xs = x.stride[0], ys = y.stride[0];
    pool_.parallel_for(tblocks * K, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t tb = i / K, k = i % K;
        float* dst = xp + (tb * K + k) * NR;
        for (int j = 0; j < NR; ++j) {
          const int64_t t = tb * NR + j;
          dst[j] = t < T ? xd[t * xs + k] : 0.0f;
        }
      }
    }, 256);
    const int64_t rblocks = (N + MR - 1) / MR;
    float* yd = y.ptr<float>();
    pool_.parallel_for(rblocks, [&](int64_t b, int64_t e, int tid) {
      float* wbuf = scratch(tid, MR * K + MR * NR);
      float* ct = wbuf + MR * K;
      for (int64_t rb = b; rb < e; ++rb) {
        const int64_t n0 = rb * MR;
        const int mr = static_cast<int>(std::min<int64_t>(MR, N - n0));
        for (int i = 0; i < mr; ++i) k_->dequant_row(m, K, n0 + i, wbuf + i * K);
        for (int64_t tb = 0; tb < tblocks; ++tb) {
          const int nc = static_cast<int>(std::min<int64_t>(NR, T - tb * NR));
          k_->gemm_tile(mr, K, wbuf, K, xp + tb * K * NR, ct, NR, nc, false);
          for (int j = 0; j < nc; ++j) {
            float* yr = yd + (tb * NR + j) * ys + n0;
            for (int i = 0; i < mr; ++i) yr[i] = ct[i * NR + j];
          }
        }
      }
    });
  }

  // bp[k * NR + j] = W[n0 + j, k0 + k] as f32 (zero for j >= nc).
  static void pack(const cpu::WMat* m, const float* rows, int64_t K, int64_t n0, int nc, int64_t k0, int64_t kc, int NR,
                   float* bp) {
    if (nc < NR) std::fill(bp, bp + kc * NR, 0.0f);
    for (int j = 0; j < nc; ++j) {
      const int64_t n = n0 + j;
      float* dst = bp + j;
      if (!m) {
        const float* r = rows + j * K + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * NR] = r[k];
        continue;
      }
      switch (m->dtype) {
        case DType::F32: {
          const float* r = static_cast<const float*>(m->w) + n * m->ws + k0;
          for (int64_t k = 0; k < kc; ++k) dst[k * NR] = r[k];
          break;
        }
        case DType::BF16: {
          const uint16_t* r = static_cast<const uint16_t*>(m->w) + n * m->ws + k0;
          for (int64_t k = 0; k < kc; ++k) dst[k * NR] = bf16_to_f32(r[k]);
          break;
        }
        default: {  // I8 (groups may start inside the chunk)
          const int8_t* r = static_cast<const int8_t*>(m->w) + n * m->ws;
          const float* sc = m->scale + n * m->sstride;
          const float* zp = m->zero ? m->zero + n * m->sstride : nullptr;
          for (int64_t k = 0; k < kc;) {
            const int64_t g = (k0 + k) / m->group;
            const int64_t end = std::min(kc, (g + 1) * m->group - k0);
            const float s = sc[g], z = zp ? zp[g] : 0.0f;
            for (; k < end; ++k) dst[k * NR] = (static_cast<float>(r[k0 + k]) - z) * s;
          }
        }
      }
    }
  }

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
  const cpu::Kernels* k_;
  Grow route_scratch_, moe_buf_, xpack_;
  struct ActRec {
    int64_t e, n, off;
    cpu::WMat g, u, d;
  };
  std::vector<ActRec> acts_;
  std::vector<int64_t> count_, fill_;
  std::vector<int32_t> order_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads, cpu::best_isa()); }

std::unique_ptr<Backend> cpu::make_cpu_backend_isa(int threads, Isa isa) {
  return std::make_unique<CpuBackend>(threads, isa);
}

}  // namespace dsfuse
