// Pieces shared by every backend's host side: weight dequantization and vector reads.
#include <cmath>

#include "backend/backend.h"

namespace dsfuse {

float vec_at(const TensorView& v, int64_t i) {
  switch (v.dtype) {
    case DType::F32: return v.ptr<float>()[i];
    case DType::BF16: return bf16_to_f32(v.ptr<uint16_t>()[i]);
    case DType::F16: return f16_to_f32(v.ptr<uint16_t>()[i]);
    default: fail(cat("vector of dtype ", dtype_name(v.dtype), " is not supported here"));
  }
}

void dequantize_rows(const Linear& w, int64_t r0, int64_t r1, float* out) {
  const int64_t K = w.in_features();
  const int64_t rs = w.w.stride[0];
  switch (w.w.dtype) {
    case DType::F32:
      for (int64_t r = r0; r < r1; ++r) {
        const float* src = w.w.ptr<float>() + r * rs;
        float* dst = out + (r - r0) * K;
        for (int64_t k = 0; k < K; ++k) dst[k] = src[k];
      }
      return;
    case DType::BF16:
      for (int64_t r = r0; r < r1; ++r) {
        const uint16_t* src = w.w.ptr<uint16_t>() + r * rs;
        float* dst = out + (r - r0) * K;
        for (int64_t k = 0; k < K; ++k) dst[k] = bf16_to_f32(src[k]);
      }
      return;
    case DType::F16:
      for (int64_t r = r0; r < r1; ++r) {
        const uint16_t* src = w.w.ptr<uint16_t>() + r * rs;
        float* dst = out + (r - r0) * K;
        for (int64_t k = 0; k < K; ++k) dst[k] = f16_to_f32(src[k]);
      }
      return;
    case DType::F8E4M3: {
      DSFUSE_CHECK(!w.scale.empty(), "FP8 weight without weight_scale_inv");
      const int64_t sc = w.scale.shape[1];
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* src = w.w.ptr<uint8_t>() + r * rs;
        const float* srow = w.scale.ptr<float>() + (r / w.block_rows) * sc;
        float* dst = out + (r - r0) * K;
        for (int64_t k = 0; k < K; ++k) dst[k] = round_bf16(f8e4m3_to_f32(src[k]) * srow[k / w.block_cols]);
      }
      return;
    }
    case DType::I8: {
      // scale / zero: [N] (per row) or [N, G] (per group of ceil(K / G) columns)
      const float* sc = w.scale.ptr<float>();
      const float* zp = w.zero.empty() ? nullptr : w.zero.ptr<float>();
      const int64_t G = w.scale.ndim == 2 ? w.scale.shape[1] : 1, gs = (K + G - 1) / G;
      for (int64_t r = r0; r < r1; ++r) {
        const int8_t* src = w.w.ptr<int8_t>() + r * rs;
        float* dst = out + (r - r0) * K;
        for (int64_t k = 0; k < K; ++k) {
          const float s = sc[r * G + k / gs], z = zp ? zp[r * G + k / gs] : 0.0f;
          dst[k] = (static_cast<float>(src[k]) - z) * s;
        }
      }
      return;
    }
    default: fail(cat("weights of dtype ", dtype_name(w.w.dtype), " are not supported"));
  }
}

}  // namespace dsfuse
