// DeepSeek MoE gate: expert choice for one token, shared by every backend (host and device code).
#pragma once
#include <cmath>
#include <cstdint>

#include "backend/backend.h"

#ifdef __CUDACC__
#define DSFUSE_HD __host__ __device__
#else
#define DSFUSE_HD
#endif

namespace dsfuse {

// Indices of the k largest values (ties: lower index first), in descending order.
DSFUSE_HD inline void route_topk(const float* v, int n, int k, int32_t* out) {
  for (int j = 0; j < k; ++j) out[j] = -1;
  for (int i = 0; i < n; ++i) {
    int pos = k;
    while (pos > 0 && (out[pos - 1] < 0 || v[i] > v[out[pos - 1]])) --pos;
    if (pos >= k) continue;
    for (int j = k - 1; j > pos; --j) out[j] = out[j - 1];
    out[pos] = i;
  }
}

// logits [E] f32; bias [E] or nullptr (V3 e_score_correction_bias, used for selection only).
// Writes top_k expert ids and their weights. `scratch` holds at least 3*E + n_group floats.
DSFUSE_HD inline void route_token(const float* logits, const float* bias, const RouterParams& p, int32_t* ids, float* weights,
                 float* scratch) {
  const int E = p.n_experts;
  float* scores = scratch;          // [E] gate probabilities
  float* choice = scratch + E;      // [E] scores used for selection
  float* group = scratch + 2 * E;   // [n_group]
  if (p.sigmoid) {
    for (int e = 0; e < E; ++e) scores[e] = 1.0f / (1.0f + expf(-logits[e]));
  } else {
    float mx = -INFINITY;
    for (int e = 0; e < E; ++e) mx = fmaxf(mx, logits[e]);
    float sum = 0;
    for (int e = 0; e < E; ++e) sum += (scores[e] = expf(logits[e] - mx));
    for (int e = 0; e < E; ++e) scores[e] /= sum;
  }
  for (int e = 0; e < E; ++e) choice[e] = scores[e] + (bias ? bias[e] : 0.0f);

  if (p.method != RouterParams::Method::Greedy && p.n_group > 1) {
    const int per = E / p.n_group;
    for (int g = 0; g < p.n_group; ++g) {
      const float* c = choice + g * per;
      if (p.method == RouterParams::Method::NoauxTc) {  // sum of the two best in the group
        float a = -INFINITY, b = -INFINITY;
        for (int i = 0; i < per; ++i) {
          if (c[i] > a) { b = a; a = c[i]; }
          else if (c[i] > b) b = c[i];
        }
        group[g] = per >= 2 ? a + b : a;
      } else {  // group_limited_greedy: best in the group
        float a = -INFINITY;
        for (int i = 0; i < per; ++i) a = fmaxf(a, c[i]);
        group[g] = a;
      }
    }
    int32_t sel[256];
    const int tg = p.topk_group < 256 ? p.topk_group : 256;
    route_topk(group, p.n_group, tg, sel);
    for (int g = 0; g < p.n_group; ++g) {
      bool keep = false;
      for (int j = 0; j < tg; ++j) keep = keep || sel[j] == g;
      if (!keep)
        for (int i = 0; i < per; ++i) choice[g * per + i] = -INFINITY;
    }
  }
  route_topk(choice, E, p.top_k, ids);
  float sum = 0;
  for (int j = 0; j < p.top_k; ++j) sum += (weights[j] = scores[ids[j]]);
  if (p.sigmoid) {  // V3: optional normalisation, then always the routed scaling factor
    if (p.norm_topk_prob) for (int j = 0; j < p.top_k; ++j) weights[j] /= (sum + 1e-20f);
    for (int j = 0; j < p.top_k; ++j) weights[j] *= p.routed_scaling_factor;
  } else if (p.top_k > 1 && p.norm_topk_prob) {  // V2: normalised weights are not rescaled
    for (int j = 0; j < p.top_k; ++j) weights[j] /= (sum + 1e-20f);
  } else {
    for (int j = 0; j < p.top_k; ++j) weights[j] *= p.routed_scaling_factor;
  }
}

}  // namespace dsfuse
