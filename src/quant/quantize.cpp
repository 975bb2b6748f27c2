#include "quant/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/thread_pool.h"

namespace dsfuse {

QuantType parse_quant_type(const std::string& s) {
  if (s == "none" || s.empty()) return QuantType::None;
  if (s == "int8") return QuantType::Int8;
  if (s == "int8-asym") return QuantType::Int8Asym;
  fail(cat("unknown quantization '", s, "' (supported: none, int8, int8-asym)"));
}

const char* quant_type_name(QuantType q) {
  switch (q) {
    case QuantType::None: return "none";
    case QuantType::Int8: return "int8";
    case QuantType::Int8Asym: return "int8-asym";
  }
  return "?";
}

int64_t int8_group_size(int64_t K) {
  static const int64_t want = [] {
    const char* e = std::getenv("DSFUSE_INT8_GROUP");
    return e ? std::atoll(e) : int64_t{128};
  }();
  if (want <= 0 || want >= K) return K;
  for (int64_t g = want; g >= 16; g /= 2)
    if (K % g == 0) return g;
  return K;
}

Linear quantize_linear(const Linear& w, QuantType q, std::vector<std::unique_ptr<Buffer>>& store) {
  DSFUSE_CHECK(q != QuantType::None, "quantize_linear called without a quantization type");
  const int64_t N = w.out_features(), K = w.in_features();
  const int64_t gs = int8_group_size(K), G = K / gs;
  auto qb = std::make_unique<Buffer>(static_cast<size_t>(N * K));
  auto sb = std::make_unique<Buffer>(static_cast<size_t>(N * G) * sizeof(float) * 2);
  int8_t* qd = static_cast<int8_t*>(qb->data());
  float* scale = static_cast<float*>(sb->data());
  float* zero = scale + N * G;
  ThreadPool::global().parallel_for(N, [&](int64_t b, int64_t e, int) {
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t n = b; n < e; ++n) {
      dequantize_rows(w, n, n + 1, row.data());
      for (int64_t g = 0; g < G; ++g) {
        const float* v = row.data() + g * gs;
        float lo = 0, hi = 0;
        for (int64_t k = 0; k < gs; ++k) {
          lo = std::min(lo, v[k]);
          hi = std::max(hi, v[k]);
        }
        float s, z;
        if (q == QuantType::Int8) {
          s = std::max(std::fabs(lo), std::fabs(hi)) / 127.0f;
          z = 0;
        } else {  // map [lo, hi] onto [-128, 127]
          s = (hi - lo) / 255.0f;
          z = s > 0 ? std::nearbyint(-128.0f - lo / s) : 0;
        }
        if (s == 0) s = 1;
        const float inv = 1.0f / s;
        for (int64_t k = 0; k < gs; ++k) {
          const float x = std::nearbyint(v[k] * inv + z);
          qd[n * K + g * gs + k] = static_cast<int8_t>(std::clamp(x, -128.0f, 127.0f));
        }
        scale[n * G + g] = s;
        zero[n * G + g] = z;
      }
    }
  }, 16);
  Linear out;
  out.w = TensorView(qd, DType::I8, {N, K});
  out.scale = TensorView(scale, DType::F32, {N, G});
  if (q == QuantType::Int8Asym) out.zero = TensorView(zero, DType::F32, {N, G});
  out.bias = w.bias;
  store.push_back(std::move(qb));
  store.push_back(std::move(sb));
  return out;
}

}  // namespace dsfuse
