#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "ops/sample_rows.h"

namespace dsfuse::sampling {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Order used everywhere a ranking of tokens is needed: larger value first, then lower id.
inline bool better(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

using sample_rows_detail::desc_key;  // the order key the device sampler uses too

// Max of x[0, n) (n >= 1, no NaN): eight running maxima, so the compares do not form one latency chain.
float max_of(const float* x, size_t n) {
  float mq[8];
  for (int q = 0; q < 8; ++q) mq[q] = x[0];
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int q = 0; q < 8; ++q) mq[q] = x[i + q] > mq[q] ? x[i + q] : mq[q];
  for (; i < n; ++i) mq[0] = x[i] > mq[0] ? x[i] : mq[0];
  float m = mq[0];
  for (int q = 1; q < 8; ++q) m = mq[q] > m ? mq[q] : m;
  return m;
}

// Sum in double of the floats f(0), ..., f(n - 1) in four running sums (no add latency chain).
template <typename F>
double sum4(size_t n, F f) {
  double z[4] = {0.0, 0.0, 0.0, 0.0};
  size_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int q = 0; q < 4; ++q) z[q] += f(i + q);
  for (; i < n; ++i) z[0] += f(i);
  return (z[0] + z[1]) + (z[2] + z[3]);
}

// Sorts ids by (x descending, id ascending) given ids in ascending order: a stable LSD radix sort on the
// 32-bit value key (3 passes of 11 bits), so equal values keep their ascending ids. O(n): the top-p candidate
// set of a flat distribution holds 10^4-10^5 tokens, where a comparison sort through x[id] dominated.
void sort_desc_stable(const float* x, std::vector<int32_t>& ids, std::vector<uint64_t>& a, std::vector<uint64_t>& b) {
  const size_t n = ids.size();
  if (n < 64) {
    std::stable_sort(ids.begin(), ids.end(), [x](int32_t p, int32_t q) { return desc_key(x[p]) < desc_key(x[q]); });
    return;
  }
  a.resize(n);
  b.resize(n);
  for (size_t j = 0; j < n; ++j) a[j] = (static_cast<uint64_t>(desc_key(x[ids[j]])) << 32) | static_cast<uint32_t>(ids[j]);
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  std::vector<uint32_t> cnt(kBuckets);
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = 32 + pass * kBits;
    std::fill(cnt.begin(), cnt.end(), 0u);
    for (size_t j = 0; j < n; ++j) ++cnt[(a[j] >> shift) & (kBuckets - 1)];
    uint32_t sum = 0;
    for (auto& c : cnt) {
      const uint32_t t = c;
      c = sum;
      sum += t;
    }
    for (size_t j = 0; j < n; ++j) b[cnt[(a[j] >> shift) & (kBuckets - 1)]++] = a[j];
    a.swap(b);
  }
  for (size_t j = 0; j < n; ++j) ids[j] = static_cast<int32_t>(a[j] & 0xffffffffu);
}

// The n best (value, id) pairs of x[0..V) under `better`, sorted best first, written to `out`
// (which is also used as the selection heap). `idx` is scratch for the large-n path.
void select_top(const float* x, size_t V, size_t n, std::vector<std::pair<float, int32_t>>& out,
                std::vector<int32_t>& idx) {
  out.clear();
  n = std::min(n, V);
  if (n == 0) return;
  if (n <= 4096) {
    // Heap of the n best seen so far; front = worst of them. Most tokens fail the first compare.
    for (size_t i = 0; i < n; ++i) out.emplace_back(x[i], static_cast<int32_t>(i));
    std::make_heap(out.begin(), out.end(), better);
    for (size_t i = n; i < V; ++i) {
      std::pair<float, int32_t> c(x[i], static_cast<int32_t>(i));
      if (better(c, out.front())) {
        std::pop_heap(out.begin(), out.end(), better);
        out.back() = c;
        std::push_heap(out.begin(), out.end(), better);
      }
    }
    std::sort_heap(out.begin(), out.end(), better);  // ascending under `better` = best first
  } else {
    idx.resize(V);
    for (size_t i = 0; i < V; ++i) idx[i] = static_cast<int32_t>(i);
    auto cmp = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
    std::nth_element(idx.begin(), idx.begin() + (n - 1), idx.end(), cmp);
    std::sort(idx.begin(), idx.begin() + n, cmp);
    for (size_t i = 0; i < n; ++i) out.emplace_back(x[idx[i]], idx[i]);
  }
}

}  // namespace

void SamplingParams::validate() const {
  // Written as !(in range) so that NaN fails every check.
  DSFUSE_CHECK(temperature >= 0.0f && std::isfinite(temperature),
               "SamplingParams.temperature must be a finite value >= 0, got ", temperature);
  DSFUSE_CHECK(top_k >= -1, "SamplingParams.top_k must be >= -1 (0 or -1 disable it), got ", top_k);
  DSFUSE_CHECK(top_p > 0.0f && top_p <= 1.0f, "SamplingParams.top_p must be in (0, 1], got ",
               top_p);
  DSFUSE_CHECK(min_p >= 0.0f && min_p <= 1.0f, "SamplingParams.min_p must be in [0, 1], got ",
               min_p);
  DSFUSE_CHECK(repetition_penalty > 0.0f && std::isfinite(repetition_penalty),
               "SamplingParams.repetition_penalty must be a finite value > 0, got ",
               repetition_penalty);
  DSFUSE_CHECK(presence_penalty >= -2.0f && presence_penalty <= 2.0f,
               "SamplingParams.presence_penalty must be in [-2, 2], got ", presence_penalty);
  DSFUSE_CHECK(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f,
               "SamplingParams.frequency_penalty must be in [-2, 2], got ", frequency_penalty);
  DSFUSE_CHECK(logprobs >= -1, "SamplingParams.logprobs must be >= -1 (-1 = off), got ",
               logprobs);
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  params_.validate();
  if (params_.seed) {
    rng_.seed(*params_.seed);
  } else {
    std::random_device rd;
    uint64_t s = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    rng_.seed(s);
  }
}

double Sampler::uniform01() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

void Sampler::next_epoch() {
  if (++epoch_ == 0) {  // wrapped: old marks could alias, clear them
    std::fill(stamp_.begin(), stamp_.end(), 0u);
    epoch_ = 1;
  }
}

void Sampler::apply_penalties(std::span<float> logits, std::span<const int32_t> ids,
                              size_t num_prompt) {
  const float rp = params_.repetition_penalty;
  if (rp != 1.0f) {
    next_epoch();
    for (int32_t id : ids) {
      if (stamp_[id] == epoch_) continue;  // each distinct id is penalized once (HF gather/scatter)
      stamp_[id] = epoch_;
      float& l = logits[id];
      l = l < 0.0f ? l * rp : l / rp;
    }
  }
  const float pp = params_.presence_penalty, fp = params_.frequency_penalty;
  if (pp != 0.0f || fp != 0.0f) {
    next_epoch();
    touched_.clear();
    for (size_t i = num_prompt; i < ids.size(); ++i) {
      const int32_t id = ids[i];
      if (stamp_[id] != epoch_) {
        stamp_[id] = epoch_;
        count_[id] = 0;
        touched_.push_back(id);
      }
      ++count_[id];
    }
    for (int32_t id : touched_) {  // as vLLM: frequency first, then presence
      logits[id] -= fp * static_cast<float>(count_[id]);
      logits[id] -= pp;
    }
  }
}

int32_t Sampler::prepare(std::span<float> logits, std::span<const int32_t> ids,
                         size_t num_prompt) {
  const size_t V = logits.size();
  DSFUSE_CHECK(V > 0, "Sampler: logits row is empty");
  DSFUSE_CHECK(V <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
               "Sampler: vocab size ", V, " does not fit int32 token ids");
  DSFUSE_CHECK(num_prompt <= ids.size(), "Sampler: num_prompt ", num_prompt,
               " exceeds the number of ids ", ids.size());
  if (stamp_.size() < V) {
    stamp_.assign(V, 0u);
    count_.assign(V, 0);
    epoch_ = 0;
    cand_.reserve(V);
    w_.reserve(V);
  }
  bool bad = false;  // branch-free scan (vectorizes); the first bad token is looked up only on failure
  for (size_t i = 0; i < V; ++i) bad |= !(logits[i] < std::numeric_limits<float>::infinity());
  if (bad)
    for (size_t i = 0; i < V; ++i) {
      const float l = logits[i];
      DSFUSE_CHECK(!std::isnan(l) && l != std::numeric_limits<float>::infinity(),
                   "Sampler: logit of token ", i, " is ", l, " (NaN/+inf not allowed)");
    }
  for (size_t i = 0; i < ids.size(); ++i)
    DSFUSE_CHECK(ids[i] >= 0 && static_cast<size_t>(ids[i]) < V, "Sampler: token id ", ids[i],
                 " at position ", i, " is outside the vocab [0, ", V, ")");

  apply_penalties(logits, ids, num_prompt);

  // Max (first occurrence = lowest id on ties): the value in a vectorizable pass, then its first index.
  const float m = max_of(logits.data(), V);
  size_t amax = 0;
  while (logits[amax] != m) ++amax;
  DSFUSE_CHECK(m != kNegInf, "Sampler: every logit is -inf, no token can be sampled");
  if (params_.is_greedy()) return static_cast<int32_t>(amax);

  // x = (l - max) / T: same distribution as l / T, never overflows, max is exactly 0.
  const float T = params_.temperature;
  for (size_t i = 0; i < V; ++i) logits[i] = (logits[i] - m) / T;
  const float* x = logits.data();

  all_tokens_ = true;
  cand_.clear();

  // top-k: keep every token >= the k-th largest value (HF keeps ties with the k-th value).
  const int k = params_.top_k;
  if (k > 0 && static_cast<size_t>(k) < V) {
    select_top(x, V, static_cast<size_t>(k), heap_, cand_);
    const float thr = heap_.back().first;
    cand_.clear();
    for (size_t i = 0; i < V; ++i)
      if (x[i] >= thr && x[i] != kNegInf) cand_.push_back(static_cast<int32_t>(i));
    all_tokens_ = false;
  }

  // top-p (nucleus).
  if (params_.top_p < 1.0f) {
    const double top_p = params_.top_p;
    double Z = 0.0;
    const bool w_by_id = all_tokens_;  // w_[id] = exp(x[id]) for every token, made below
    if (all_tokens_) {
      // Only tokens with prob >= t can be in the nucleus once the tokens >= t hold mass >= top_p.
      // Try small candidate sets first; t0 = (1 - top_p) / V always qualifies, because all tokens
      // below it together hold less than 1 - top_p.
      w_.resize(V);
      Z = sum4(V, [&](size_t i) { return w_[i] = std::exp(x[i]); });
      const double t0 = (1.0 - top_p) / static_cast<double>(V);
      for (double t : {1e-4, 1e-6, t0}) {
        const bool last = t <= t0;
        if (last) t = t0;
        const float wt = static_cast<float>(t * Z);
        cand_.clear();
        double mass = 0.0;
        for (size_t i = 0; i < V; ++i)
          if (w_[i] >= wt && w_[i] > 0.0f) {
            cand_.push_back(static_cast<int32_t>(i));
            mass += w_[i];
          }
        // Margin guards against summation-order rounding vs. the sorted cumsum below.
        if (last || mass >= top_p * Z * (1.0 + 1e-9)) break;
      }
      all_tokens_ = false;
    } else {
      for (int32_t id : cand_) Z += std::exp(x[id]);
    }
    // By probability descending, ties by lower id (cand_ is in ascending id order here).
    sort_desc_stable(x, cand_, keys_, keys2_);
    // Keep a token iff the mass strictly before it is < top_p (HF: drop cumsum_asc <= 1 - top_p).
    const double limit = top_p * Z;
    double before = 0.0;
    size_t keep = 0;
    while (keep < cand_.size() && before < limit) {
      const int32_t id = cand_[keep++];
      before += w_by_id ? w_[id] : std::exp(x[id]);  // the same float exp either way
    }
    cand_.resize(std::max<size_t>(keep, 1));
  }

  // min-p: prob >= min_p * max_prob  <=>  x >= log(min_p) + x_max, and x_max == 0 (the argmax
  // survives top-k and top-p, so it is still the max of what is left).
  if (params_.min_p > 0.0f) {
    const float lthr = std::log(params_.min_p);
    if (all_tokens_) {
      for (size_t i = 0; i < V; ++i)
        if (x[i] >= lthr) cand_.push_back(static_cast<int32_t>(i));
      all_tokens_ = false;
    } else {
      size_t o = 0;
      for (int32_t id : cand_)
        if (x[id] >= lthr) cand_[o++] = id;
      cand_.resize(o);
    }
  }

  // Final unnormalized weights.
  wsum_ = 0.0;
  if (all_tokens_) {
    w_.resize(V);
    wsum_ = sum4(V, [&](size_t i) { return w_[i] = std::exp(x[i]); });
  } else {
    w_.resize(cand_.size());
    for (size_t j = 0; j < cand_.size(); ++j) {
      w_[j] = std::exp(x[cand_[j]]);
      wsum_ += w_[j];
    }
  }
  return -1;
}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> ids, size_t num_prompt,
                        SampleResult* out) {
  const size_t V = logits.size();
  if (out) raw_.assign(logits.begin(), logits.end());  // no allocation once capacity >= V

  int32_t tok = prepare(logits, ids, num_prompt);
  float processed = 0.0f;
  if (tok < 0) {
    const double target = uniform01() * wsum_;
    const size_t n = all_tokens_ ? V : cand_.size();
    double acc = 0.0;
    size_t pick = n;
    size_t last_nonzero = 0;
    for (size_t j = 0; j < n; ++j) {
      if (w_[j] <= 0.0f) continue;
      last_nonzero = j;
      acc += w_[j];
      if (acc > target) {
        pick = j;
        break;
      }
    }
    if (pick == n) pick = last_nonzero;  // rounding: target landed past the final sum
    tok = all_tokens_ ? static_cast<int32_t>(pick) : cand_[pick];
    processed = static_cast<float>(std::log(static_cast<double>(w_[pick]) / wsum_));
  }

  if (out) {
    out->token = tok;
    out->processed_logprob = processed;
    const float m = max_of(raw_.data(), V);
    const double s = sum4(V, [&](size_t i) { return std::exp(raw_[i] - m); });  // float exp, double sum
    const double lse = static_cast<double>(m) + std::log(s);
    out->logprob = static_cast<float>(static_cast<double>(raw_[tok]) - lse);
    out->top.clear();
    if (params_.logprobs > 0) {
      select_top(raw_.data(), V, static_cast<size_t>(params_.logprobs), heap_, cand_);
      for (const auto& [v, id] : heap_)
        out->top.emplace_back(id, static_cast<float>(static_cast<double>(v) - lse));
    }
  }
  return tok;
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(std::span<float> logits,
                                                              std::span<const int32_t> ids,
                                                              size_t num_prompt) {
  std::vector<std::pair<int32_t, double>> d;
  const int32_t tok = prepare(logits, ids, num_prompt);
  if (tok >= 0) {
    d.emplace_back(tok, 1.0);
    return d;
  }
  const size_t n = all_tokens_ ? logits.size() : cand_.size();
  for (size_t j = 0; j < n; ++j)
    if (w_[j] > 0.0f)
      d.emplace_back(all_tokens_ ? static_cast<int32_t>(j) : cand_[j], w_[j] / wsum_);
  std::sort(d.begin(), d.end(), [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  });
  return d;
}

}  // namespace dsfuse::sampling
