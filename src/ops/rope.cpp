#include "ops/rope.h"

#include <algorithm>
#include <cmath>

namespace dsfuse {

double yarn_get_mscale(double factor, double m) {
  if (factor <= 1) return 1.0;
  return 0.1 * m * std::log(factor) + 1.0;
}

RopeTable make_rope_table(const RopeConfig& rope, int dim) {
  RopeTable t;
  const int half = dim / 2;
  t.inv_freq.resize(half);
  // base ** (2i / dim) in float32, as torch does.
  std::vector<float> pos_freq(half);
  for (int i = 0; i < half; ++i)
    pos_freq[i] = std::pow(static_cast<float>(rope.theta), static_cast<float>(2 * i) / static_cast<float>(dim));
  for (int i = 0; i < half; ++i) t.inv_freq[i] = 1.0f / pos_freq[i];

  switch (rope.type) {
    case RopeType::Default: break;
    case RopeType::Linear:
      for (auto& f : t.inv_freq) f = static_cast<float>(f / rope.factor);
      break;
    case RopeType::Llama3: {
      const double old_ctx = rope.original_max_position_embeddings;
      const double low_wl = old_ctx / rope.low_freq_factor, high_wl = old_ctx / rope.high_freq_factor;
      for (auto& f : t.inv_freq) {
        const double wl = 2 * M_PI / f;
        if (wl < high_wl) continue;  // high frequency: unchanged
        if (wl > low_wl) {
          f = static_cast<float>(f / rope.factor);
        } else {
          const double smooth = (old_ctx / wl - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
          f = static_cast<float>((1 - smooth) * f / rope.factor + smooth * f);
        }
      }
      break;
    }
    case RopeType::Yarn: {
      const double base = rope.theta, orig = rope.original_max_position_embeddings;
      auto corr_dim = [&](double rot) { return (dim * std::log(orig / (rot * 2 * M_PI))) / (2 * std::log(base)); };
      double low = std::floor(corr_dim(rope.beta_fast)), high = std::ceil(corr_dim(rope.beta_slow));
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      for (int i = 0; i < half; ++i) {
        const float ramp = std::clamp(static_cast<float>((i - low) / (high - low)), 0.0f, 1.0f);
        const float extrap = 1.0f - ramp;  // share of the original (extrapolated) frequency
        const float f_extra = 1.0f / pos_freq[i];
        const float f_inter = 1.0f / (static_cast<float>(rope.factor) * pos_freq[i]);
        t.inv_freq[i] = f_inter * (1.0f - extrap) + f_extra * extrap;
      }
      if (rope.attention_factor) {
        t.cos_sin_scale = static_cast<float>(*rope.attention_factor);
      } else if (rope.mscale != 0 && rope.mscale_all_dim != 0) {
        t.cos_sin_scale = static_cast<float>(yarn_get_mscale(rope.factor, rope.mscale) /
                                             yarn_get_mscale(rope.factor, rope.mscale_all_dim));
      } else {
        t.cos_sin_scale = static_cast<float>(yarn_get_mscale(rope.factor, rope.mscale != 0 ? rope.mscale : 1.0));
      }
      break;
    }
  }
  return t;
}

float mla_softmax_scale(const ModelConfig& c) {
  const auto& m = *c.mla;
  double s = 1.0 / std::sqrt(static_cast<double>(m.qk_nope_head_dim + m.qk_rope_head_dim));
  if (c.rope.type == RopeType::Yarn && c.rope.mscale_all_dim != 0) {
    const double ms = yarn_get_mscale(c.rope.factor, c.rope.mscale_all_dim);
    s *= ms * ms;
  }
  return static_cast<float>(s);
}

}  // namespace dsfuse
