// Default (per-segment) implementations of the batched Backend ops.
#include "backend/backend.h"

#include <algorithm>

namespace dsfuse {

void Backend::linear_silu(TensorView y, const TensorView& x, const Linear& gate_up) {
  const int64_t T = x.shape[0], I = gate_up.out_features() / 2;
  void* p = alloc(sizeof(float) * static_cast<size_t>(T * 2 * I));
  TensorView gu(p, DType::F32, {T, 2 * I}, device());
  linear(gu, x, gate_up);
  TensorView g = gu, u = gu;
  g.shape[1] = u.shape[1] = I;
  u.data = gu.ptr<float>() + I;
  silu_mul(y, g, u);
  free(p);
}

void Backend::argmax_rows(TensorView ids, const TensorView& x) {
  const int64_t R = x.shape[0], V = x.shape[1];
  for (int64_t r = 0; r < R; ++r) {
    const float* row = x.ptr<float>() + r * x.stride[0];
    ids.ptr<int32_t>()[r] = static_cast<int32_t>(std::max_element(row, row + V) - row);
  }
}

void Backend::sample_rows(TensorView ids, const TensorView& x, const SampleRowParams* params) {
  const int64_t R = x.shape[0], V = x.shape[1];
  for (int64_t r = 0; r < R; ++r)
    ids.ptr<int32_t>()[r] = sample_row_reference(x.ptr<float>() + r * x.stride[0], V, params[r]);
}

void Backend::copy_rows_segs(TensorView dst, const TensorView& src, const std::vector<SeqSegment>& segs) {
  for (const SeqSegment& s : segs) copy_rows(dst, s.past, src.rows(s.t0, s.t0 + s.n), s.rows);
}

void Backend::rope_store_kv(TensorView qk, int64_t Hq, const RopeTable& table, const int32_t* positions,
                            TensorView kc, TensorView vc, const TensorView& v, const std::vector<SeqSegment>& segs) {
  rope(qk, 0, table, RopeStyle::Neox, positions);
  const int64_t T = qk.shape[0], Hkv = qk.shape[1] - Hq, D = qk.shape[2];
  auto flat = [&](TensorView t, int64_t h0) {  // heads [h0, h0 + Hkv) of [T, H, D] -> [T, Hkv * D]
    t.data = t.ptr<float>() + h0 * t.stride[1];
    t.ndim = 2;
    t.shape = {T, Hkv * D, 0, 0};
    t.stride = {t.stride[0], 1, 0, 0};
    return t;
  };
  copy_rows_segs(kc, flat(qk, Hq), segs);
  copy_rows_segs(vc, flat(v, 0), segs);
}

void Backend::mla_store_kv(TensorView kv_a, int64_t C, const TensorView& norm_w, float eps, const RopeTable& table,
                           const int32_t* positions, TensorView latent, TensorView lat_c, TensorView kpe_c,
                           const std::vector<SeqSegment>& segs) {
  const int64_t T = kv_a.shape[0], R = kv_a.shape[1] - C;
  TensorView kpe = kv_a;  // [T, 1, R] view at column C
  kpe.data = kv_a.ptr<float>() + C;
  kpe.ndim = 3;
  kpe.shape = {T, 1, R, 0};
  kpe.stride = {kv_a.stride[0], R, 1, 0};
  rope(kpe, 0, table, RopeStyle::Interleaved, positions);
  TensorView lat_new = kv_a;  // [T, C] view
  lat_new.shape[1] = C;
  rms_norm(latent, lat_new, norm_w, eps);
  TensorView kpe2 = kpe;  // [T, R]
  kpe2.ndim = 2;
  kpe2.shape = {T, R, 0, 0};
  kpe2.stride = {kv_a.stride[0], 1, 0, 0};
  copy_rows_segs(lat_c, latent, segs);
  copy_rows_segs(kpe_c, kpe2, segs);
}

void Backend::attention_segs(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v,
                             float scale, const std::vector<SeqSegment>& segs) {
  for (const SeqSegment& s : segs)
    attention(out.rows(s.t0, s.t0 + s.n), q.rows(s.t0, s.t0 + s.n), k, v, s.past, scale, s.rows);
}

void Backend::mla_attention_segs(TensorView out, const TensorView& q_nope, const TensorView& q_pe,
                                 const TensorView& latent, const TensorView& k_pe, const Linear& kv_b, float scale,
                                 const std::vector<SeqSegment>& segs) {
  for (const SeqSegment& s : segs)
    mla_attention(out.rows(s.t0, s.t0 + s.n), q_nope.rows(s.t0, s.t0 + s.n), q_pe.rows(s.t0, s.t0 + s.n), latent,
                  k_pe, kv_b, s.past, scale, s.rows);
}

}  // namespace dsfuse
