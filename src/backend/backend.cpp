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

void Backend::copy_rows_segs(TensorView dst, const TensorView& src, const std::vector<SeqSegment>& segs) {
  for (const SeqSegment& s : segs) copy_rows(dst, s.past, src.rows(s.t0, s.t0 + s.n), s.rows);
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
