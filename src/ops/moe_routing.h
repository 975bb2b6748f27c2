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

// Score of one expert group (c: its `per` selection values): the sum of its two best (noaux_tc, DeepSeek-V3)
// or its best (group_limited_greedy, V2).
DSFUSE_HD inline float route_group_score(const float* c, int per, bool noaux) {
  if (noaux) {
    float a = -INFINITY, b = -INFINITY;
    for (int i = 0; i < per; ++i) {
      if (c[i] > a) { b = a; a = c[i]; }
      else if (c[i] > b) b = c[i];
    }
    return per >= 2 ? a + b : a;
  }
  float a = -INFINITY;
  for (int i = 0; i < per; ++i) a = fmaxf(a, c[i]);
  return a;
}

// Weight of a chosen expert from its gate score and the sum of the chosen scores: V3 (sigmoid) optionally
// normalises, then always applies the routed scaling factor; V2 (softmax) normalises without rescaling when
// top_k > 1 and norm_topk_prob, else rescales.
DSFUSE_HD inline float route_weight(float score, float sum, const RouterParams& p) {
  float w = score;
  if (p.sigmoid) {
    if (p.norm_topk_prob) w /= (sum + 1e-20f);
    w *= p.routed_scaling_factor;
  } else if (p.top_k > 1 && p.norm_topk_prob) {
    w /= (sum + 1e-20f);
  } else {
    w *= p.routed_scaling_factor;
  }
  return w;
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
    for (int g = 0; g < p.n_group; ++g)
      group[g] = route_group_score(choice + g * per, per, p.method == RouterParams::Method::NoauxTc);
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
  for (int j = 0; j < p.top_k; ++j) weights[j] = route_weight(weights[j], sum, p);
}

}  // namespace dsfuse
