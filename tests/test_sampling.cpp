#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "ops/sample_rows.h"
#include "sampling/generation_config.h"
#include "sampling/sampler.h"
#include "test_util.h"

using namespace dsfuse;
using namespace dsfuse::sampling;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<double> softmax(const std::vector<float>& l, double T = 1.0) {
  double m = -std::numeric_limits<double>::infinity();
  for (float v : l) m = std::max(m, double(v) / T);
  std::vector<double> p(l.size());
  double s = 0;
  for (size_t i = 0; i < l.size(); ++i) s += p[i] = std::exp(double(l[i]) / T - m);
  for (double& v : p) v /= s;
  return p;
}

std::vector<double> log_softmax(const std::vector<float>& l) {
  auto p = softmax(l);
  for (double& v : p) v = std::log(v);
  return p;
}

SamplingParams seeded(uint64_t seed = 1234) {
  SamplingParams p;
  p.seed = seed;
  return p;
}

// Draws n samples (logits copied fresh each time because sample() uses them as scratch).
std::vector<int32_t> draw(Sampler& s, const std::vector<float>& logits, int n,
                          const std::vector<int32_t>& ids = {}, size_t num_prompt = 0) {
  std::vector<int32_t> out;
  std::vector<float> buf;
  for (int i = 0; i < n; ++i) {
    buf = logits;
    out.push_back(s.sample(buf, ids, num_prompt));
  }
  return out;
}

std::vector<std::pair<int32_t, double>> dist(Sampler& s, std::vector<float> logits,
                                              const std::vector<int32_t>& ids = {},
                                              size_t num_prompt = 0) {
  return s.distribution(logits, ids, num_prompt);
}

std::set<int32_t> support(Sampler& s, std::vector<float> logits, const std::vector<int32_t>& ids = {},
                          size_t num_prompt = 0) {
  std::set<int32_t> r;
  for (auto& [tok, p] : s.distribution(logits, ids, num_prompt)) r.insert(tok);
  return r;
}

// Literal port of HF TopPLogitsWarper over a probability vector (0 = already removed).
std::set<int32_t> reference_top_p(const std::vector<double>& probs, double top_p) {
  std::vector<int32_t> idx;
  for (size_t i = 0; i < probs.size(); ++i)
    if (probs[i] > 0) idx.push_back(int32_t(i));
  // ascending by prob (ties: higher id first, mirror of "desc, lower id first")
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    return probs[a] < probs[b] || (probs[a] == probs[b] && a > b);
  });
  std::set<int32_t> keep;
  double cum = 0;
  for (size_t r = 0; r < idx.size(); ++r) {
    cum += probs[idx[r]];
    if (cum > 1 - top_p || r + 1 == idx.size()) keep.insert(idx[r]);
  }
  return keep;
}

std::vector<float> random_logits(size_t V, float scale, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> l(V);
  for (auto& v : l) v = nd(g);
  return l;
}

}  // namespace

// ---------------------------------------------------------------- SamplingParams::validate

TEST(SamplingParams, DefaultsAreValid) { EXPECT_NO_THROW(SamplingParams{}.validate()); }

TEST(SamplingParams, ValidateRejectsEachBadFieldByName) {
  struct Case {
    void (*mutate)(SamplingParams&);
    const char* field;
  };
  const Case cases[] = {
      {[](SamplingParams& p) { p.temperature = -0.1f; }, "temperature"},
      {[](SamplingParams& p) { p.temperature = NAN; }, "temperature"},
      {[](SamplingParams& p) { p.temperature = kInf; }, "temperature"},
      {[](SamplingParams& p) { p.top_p = 0.0f; }, "top_p"},
      {[](SamplingParams& p) { p.top_p = 1.01f; }, "top_p"},
      {[](SamplingParams& p) { p.top_p = NAN; }, "top_p"},
      {[](SamplingParams& p) { p.min_p = -0.01f; }, "min_p"},
      {[](SamplingParams& p) { p.min_p = 1.5f; }, "min_p"},
      {[](SamplingParams& p) { p.min_p = NAN; }, "min_p"},
      {[](SamplingParams& p) { p.top_k = -2; }, "top_k"},
      {[](SamplingParams& p) { p.repetition_penalty = 0.0f; }, "repetition_penalty"},
      {[](SamplingParams& p) { p.repetition_penalty = -1.0f; }, "repetition_penalty"},
      {[](SamplingParams& p) { p.repetition_penalty = NAN; }, "repetition_penalty"},
      {[](SamplingParams& p) { p.presence_penalty = 2.5f; }, "presence_penalty"},
      {[](SamplingParams& p) { p.presence_penalty = NAN; }, "presence_penalty"},
      {[](SamplingParams& p) { p.frequency_penalty = -2.01f; }, "frequency_penalty"},
      {[](SamplingParams& p) { p.frequency_penalty = NAN; }, "frequency_penalty"},
      {[](SamplingParams& p) { p.logprobs = -2; }, "logprobs"},
  };
  for (const auto& c : cases) {
    SamplingParams p;
    c.mutate(p);
    try {
      p.validate();
      ADD_FAILURE() << "no error for bad " << c.field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.field), std::string::npos) << e.what();
    }
    EXPECT_THROW(Sampler{p}, Error) << c.field;
  }
  // Boundary values that are allowed.
  SamplingParams ok;
  ok.temperature = 0;
  ok.top_k = -1;
  ok.top_p = 1;
  ok.min_p = 1;
  ok.presence_penalty = -2;
  ok.frequency_penalty = 2;
  ok.logprobs = 0;
  EXPECT_NO_THROW(ok.validate());
  SamplingParams bad;
  bad.top_p = 1.5f;
  try {
    bad.validate();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("1.5"), std::string::npos) << "value in message";
  }
}

// ---------------------------------------------------------------- greedy / top-k = 1

TEST(Sampler, GreedyIsArgmaxLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p);
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 2.9f};
  EXPECT_EQ(s.sample(l, {}, 0), 1);
  l = {1.0f, 5.0f, 2.0f, 5.0f, 5.0f};
  EXPECT_EQ(s.sample(l, {}, 0), 1);
  l = {-kInf, -kInf, -3.0f};
  EXPECT_EQ(s.sample(l, {}, 0), 2);
  for (uint64_t seed = 0; seed < 5; ++seed) {
    auto big = random_logits(50000, 2.0f, seed);
    const int32_t expect = int32_t(std::max_element(big.begin(), big.end()) - big.begin());
    EXPECT_EQ(s.sample(big, {}, 0), expect);
  }
}

TEST(Sampler, TopK1EqualsGreedy) {
  SamplingParams p = seeded(7);
  p.top_k = 1;
  p.temperature = 1.5f;
  Sampler s(p);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto l = random_logits(1000, 1.0f, seed);
    const int32_t expect = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    for (int32_t t : draw(s, l, 20)) EXPECT_EQ(t, expect);
  }
}

// ---------------------------------------------------------------- RNG

TEST(Sampler, SeededReproducibility) {
  auto l = random_logits(500, 1.0f, 3);
  Sampler a(seeded(42)), b(seeded(42)), c(seeded(43));
  auto sa = draw(a, l, 100), sb = draw(b, l, 100), sc = draw(c, l, 100);
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
  EXPECT_GT(std::set<int32_t>(sa.begin(), sa.end()).size(), 10u) << "not actually random";
  a.reseed(42);
  EXPECT_EQ(draw(a, l, 100), sa);
  // Unseeded samplers differ from each other (random_device seeding).
  Sampler u1(SamplingParams{}), u2(SamplingParams{});
  EXPECT_NE(draw(u1, l, 100), draw(u2, l, 100));
}

// ---------------------------------------------------------------- distribution

TEST(Sampler, EmpiricalDistributionMatchesSoftmaxOverTemperature) {
  const std::vector<float> l = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.0f, 1.5f, 0.2f};
  for (float T : {0.7f, 1.0f, 1.8f}) {
    SamplingParams p = seeded(99);
    p.temperature = T;
    Sampler s(p);
    const int N = 20000;
    std::vector<int> cnt(l.size());
    for (int32_t t : draw(s, l, N)) cnt[t]++;
    const auto expect = softmax(l, T);
    double chi2 = 0;
    for (size_t i = 0; i < l.size(); ++i) {
      const double e = N * expect[i];
      chi2 += (cnt[i] - e) * (cnt[i] - e) / e;
    }
    // df = 7: P(chi2 > 29.9) = 1e-4. Sampling softmax(l) instead of softmax(l/T) gives chi2 > 100.
    EXPECT_LT(chi2, 29.9) << "T=" << T;
    // distribution() reports the exact same target.
    auto d = dist(s, l);
    ASSERT_EQ(d.size(), l.size());
    for (auto& [tok, prob] : d) EXPECT_NEAR(prob, expect[tok], 1e-6);
  }
}

TEST(Sampler, TopKKeepsExactlyTheKBestAndTies) {
  SamplingParams p = seeded(5);
  p.top_k = 3;
  Sampler s(p);
  const std::vector<float> l = {0.0f, 2.0f, 1.0f, 3.0f, -1.0f, 0.5f};
  auto drawn = draw(s, l, 5000);
  std::set<int32_t> seen(drawn.begin(), drawn.end());
  EXPECT_EQ(seen, (std::set<int32_t>{1, 2, 3}));
  // Renormalized over the kept set.
  auto d = dist(s, l);
  auto e = softmax({2.0f, 1.0f, 3.0f});
  std::map<int32_t, double> dm(d.begin(), d.end());
  EXPECT_NEAR(dm[1], e[0], 1e-6);
  EXPECT_NEAR(dm[2], e[1], 1e-6);
  EXPECT_NEAR(dm[3], e[2], 1e-6);
  // HF keeps every token tied with the k-th value.
  SamplingParams p2 = seeded(5);
  p2.top_k = 2;
  Sampler s2(p2);
  EXPECT_EQ(support(s2, {5.0f, 4.0f, 4.0f, 1.0f}), (std::set<int32_t>{0, 1, 2}));
  // top_k >= vocab and -1 are no-ops.
  for (int k : {-1, 0, 6, 100}) {
    SamplingParams q = seeded(5);
    q.top_k = k;
    Sampler sq(q);
    EXPECT_EQ(support(sq, l).size(), l.size()) << k;
  }
  // Large k path (nth_element) agrees with the definition.
  auto big = random_logits(20000, 1.0f, 11);
  SamplingParams q = seeded(5);
  q.top_k = 5000;
  Sampler sq(q);
  auto sorted = big;
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  std::set<int32_t> expect;
  for (size_t i = 0; i < big.size(); ++i)
    if (big[i] >= sorted[4999]) expect.insert(int32_t(i));
  EXPECT_EQ(support(sq, big), expect);
}

TEST(Sampler, TopPMatchesHfReferenceAndExcludesTail) {
  for (size_t V : {10, 1000, 131072}) {
    for (float scale : {0.3f, 2.0f, 6.0f}) {
      auto l = random_logits(V, scale, V + size_t(scale * 10));
      for (float top_p : {0.05f, 0.5f, 0.9f, 0.95f, 0.999f}) {
        for (float T : {0.6f, 1.0f}) {
          SamplingParams p = seeded(1);
          p.top_p = top_p;
          p.temperature = T;
          Sampler s(p);
          auto got = support(s, l);
          auto expect = reference_top_p(softmax(l, T), top_p);
          EXPECT_EQ(got, expect) << "V=" << V << " scale=" << scale << " top_p=" << top_p
                                 << " T=" << T << " got " << got.size() << " expected "
                                 << expect.size();
        }
      }
    }
  }
  // Draws never leave the nucleus.
  const std::vector<float> l = {3.0f, 2.5f, 0.0f, -1.0f, 2.0f, -3.0f};
  SamplingParams p = seeded(8);
  p.top_p = 0.8f;
  Sampler s(p);
  auto nucleus = reference_top_p(softmax(l), 0.8);
  EXPECT_EQ(nucleus, (std::set<int32_t>{0, 1, 4}));
  auto drawn = draw(s, l, 5000);
  EXPECT_EQ(std::set<int32_t>(drawn.begin(), drawn.end()), nucleus);
}

TEST(Sampler, TopPKeepsAtLeastOne) {
  SamplingParams p = seeded(2);
  p.top_p = 1e-6f;
  Sampler s(p);
  auto l = random_logits(1000, 0.01f, 4);  // nearly flat: every prob ~1e-3 >> top_p
  const int32_t amax = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
  EXPECT_EQ(support(s, l), std::set<int32_t>{amax});
  for (int32_t t : draw(s, l, 200)) EXPECT_EQ(t, amax);
}

TEST(Sampler, TopPAfterTopKRenormalizes) {
  // After top-k=3 the probabilities are renormalized over 3 tokens before the nucleus is taken.
  const std::vector<float> l = {2.0f, 1.9f, 1.8f, 1.7f, 1.6f, 1.5f};
  SamplingParams p = seeded(2);
  p.top_k = 3;
  p.top_p = 0.6f;
  Sampler s(p);
  auto e = softmax({2.0f, 1.9f, 1.8f});  // ~0.367, 0.332, 0.301 -> mass before 3rd = 0.699 >= 0.6
  ASSERT_LT(e[0], 0.6);
  EXPECT_EQ(support(s, l), (std::set<int32_t>{0, 1}));
}

TEST(Sampler, MinPExcludesRelativeToMaxProb) {
  // probs 0.5, 0.3, 0.15, 0.05
  const std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams p = seeded(3);
  p.min_p = 0.2f;  // threshold 0.1
  Sampler s(p);
  EXPECT_EQ(support(s, l), (std::set<int32_t>{0, 1, 2}));
  auto drawn = draw(s, l, 5000);
  EXPECT_EQ(std::set<int32_t>(drawn.begin(), drawn.end()), (std::set<int32_t>{0, 1, 2}));
  auto d = dist(s, l);
  std::map<int32_t, double> dm(d.begin(), d.end());
  EXPECT_NEAR(dm[0], 0.5 / 0.95, 1e-6);
  EXPECT_NEAR(dm[2], 0.15 / 0.95, 1e-6);
  // min_p = 1 keeps only the max (and exact ties).
  SamplingParams q = seeded(3);
  q.min_p = 1.0f;
  Sampler s1(q);
  EXPECT_EQ(support(s1, l), std::set<int32_t>{0});
  EXPECT_EQ(support(s1, {1.0f, 4.0f, 4.0f}), (std::set<int32_t>{1, 2}));
  // Temperature sharpens before min-p: at T=0.5 probs ~ 0.5^2 : 0.3^2 ..., 0.15^2/0.25 = 0.09 < 0.2.
  SamplingParams r = seeded(3);
  r.min_p = 0.2f;
  r.temperature = 0.5f;
  Sampler s2(r);
  EXPECT_EQ(support(s2, l), (std::set<int32_t>{0, 1}));
  // Large vocab, no other filter.
  auto big = random_logits(131072, 2.0f, 21);
  SamplingParams b = seeded(3);
  b.min_p = 0.05f;
  Sampler sb(b);
  const float mx = *std::max_element(big.begin(), big.end());
  std::set<int32_t> expect;
  for (size_t i = 0; i < big.size(); ++i)
    if (std::exp(double(big[i]) - mx) >= 0.05) expect.insert(int32_t(i));
  EXPECT_EQ(support(sb, big), expect);
}

TEST(Sampler, BannedTokensNeverSampledAndAllBannedIsAnError) {
  std::vector<float> l = {1.0f, -kInf, 1.0f, -kInf, 1.0f};
  SamplingParams p = seeded(4);
  p.temperature = 3.0f;
  Sampler s(p);
  for (int32_t t : draw(s, l, 3000)) EXPECT_TRUE(t == 0 || t == 2 || t == 4) << t;
  std::vector<float> all = {-kInf, -kInf};
  EXPECT_THROW(s.sample(all, {}, 0), Error);
}

// ---------------------------------------------------------------- penalties

TEST(Sampler, PenaltiesExactValues) {
  const std::vector<float> l = {2.0f, -2.0f, 1.0f, 0.5f, -1.0f};
  const std::vector<int32_t> ids = {0, 1, 0, /*generated:*/ 2, 2, 1};
  const size_t np = 3;
  auto check = [&](SamplingParams p, std::vector<float> expect_logits) {
    p.seed = 1;
    Sampler s(p);
    auto d = dist(s, l, ids, np);
    auto e = softmax(expect_logits);
    ASSERT_EQ(d.size(), l.size());
    for (auto& [tok, prob] : d) EXPECT_NEAR(prob, e[tok], 1e-7) << "token " << tok;
  };
  SamplingParams rp;
  rp.repetition_penalty = 2.0f;  // seen {0,1,2}: 2/2=1, -2*2=-4, 1/2=0.5; duplicates once only
  check(rp, {1.0f, -4.0f, 0.5f, 0.5f, -1.0f});
  SamplingParams fp;
  fp.frequency_penalty = 0.5f;  // generated counts: 2 -> 2, 1 -> 1; prompt ids ignored
  check(fp, {2.0f, -2.5f, 0.0f, 0.5f, -1.0f});
  SamplingParams pp;
  pp.presence_penalty = 0.25f;
  check(pp, {2.0f, -2.25f, 0.75f, 0.5f, -1.0f});
  SamplingParams all;
  all.repetition_penalty = 2.0f;
  all.frequency_penalty = 0.5f;
  all.presence_penalty = 0.25f;
  check(all, {1.0f, -4.75f, -0.75f, 0.5f, -1.0f});
  SamplingParams neg;  // negative penalties encourage
  neg.frequency_penalty = -1.0f;
  neg.presence_penalty = -2.0f;
  check(neg, {2.0f, 1.0f, 5.0f, 0.5f, -1.0f});
  SamplingParams t;  // penalties happen before temperature
  t.repetition_penalty = 2.0f;
  t.temperature = 0.5f;
  check(t, {2.0f, -8.0f, 1.0f, 1.0f, -2.0f});
  // repetition_penalty < 1 rewards seen tokens the HF way.
  SamplingParams lt;
  lt.repetition_penalty = 0.5f;
  check(lt, {4.0f, -1.0f, 2.0f, 0.5f, -1.0f});
}

TEST(Sampler, RepetitionPenaltyChangesGreedyChoice) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  std::vector<float> l = {3.0f, 2.0f};
  const std::vector<int32_t> ids = {0};
  EXPECT_EQ(s.sample(l, ids, 1), 1);  // 3/2 = 1.5 < 2
  l = {3.0f, 2.0f};
  EXPECT_EQ(s.sample(l, {}, 0), 0);
  // State does not leak between calls (epoch marks): token 0 not penalized now.
  SamplingParams q;
  q.temperature = 0;
  q.frequency_penalty = 2.0f;
  Sampler sq(q);
  l = {3.0f, 2.0f};
  EXPECT_EQ(sq.sample(l, ids, 0), 1);  // generated once: 3 - 2 = 1
  l = {3.0f, 2.0f};
  EXPECT_EQ(sq.sample(l, ids, 1), 0);  // same id but it is prompt: no OpenAI penalty
}

// ---------------------------------------------------------------- logprobs

TEST(Sampler, LogprobsAreRawLogSoftmax) {
  auto l = random_logits(2000, 2.0f, 77);
  const auto ls = log_softmax(l);
  std::vector<int32_t> ord(l.size());
  std::iota(ord.begin(), ord.end(), 0);
  std::stable_sort(ord.begin(), ord.end(), [&](int a, int b) { return l[a] > l[b]; });
  const std::vector<int32_t> ids = {ord[0], ord[1], ord[1]};  // penalize the top tokens

  SamplingParams p = seeded(12);
  p.temperature = 0.7f;
  p.top_k = 40;
  p.top_p = 0.9f;
  p.repetition_penalty = 1.3f;
  p.frequency_penalty = 0.4f;
  p.logprobs = 5;
  Sampler s(p);
  Sampler ref(p);
  for (int it = 0; it < 50; ++it) {
    std::vector<float> buf = l, buf2 = l;
    SampleResult r;
    const int32_t t = s.sample(buf, ids, 1, &r);
    EXPECT_EQ(r.token, t);
    EXPECT_NEAR(r.logprob, ls[t], 1e-4);
    ASSERT_EQ(r.top.size(), 5u);
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(r.top[i].first, ord[i]);
      EXPECT_NEAR(r.top[i].second, ls[ord[i]], 1e-4);
    }
    // processed logprob = log of the final distribution's probability.
    auto d = ref.distribution(buf2, ids, 1);
    std::map<int32_t, double> dm(d.begin(), d.end());
    ASSERT_TRUE(dm.count(t)) << "sampled a token outside the final distribution";
    EXPECT_NEAR(r.processed_logprob, std::log(dm[t]), 1e-4);
  }
  // logprobs 0: no alternatives; logprobs > vocab: clamped; greedy processed logprob 0.
  SamplingParams g;
  g.temperature = 0;
  g.logprobs = 10;
  Sampler sg(g);
  std::vector<float> small = {0.0f, 1.0f, 2.0f};
  SampleResult r;
  EXPECT_EQ(sg.sample(small, {}, 0, &r), 2);
  EXPECT_EQ(r.top.size(), 3u);
  EXPECT_FLOAT_EQ(r.processed_logprob, 0.0f);
  auto lss = log_softmax({0.0f, 1.0f, 2.0f});
  EXPECT_NEAR(r.logprob, lss[2], 1e-6);
  EXPECT_NEAR(r.top[2].second, lss[0], 1e-6);
  g.logprobs = 0;
  Sampler sg0(g);
  small = {0.0f, 1.0f, 2.0f};
  sg0.sample(small, {}, 0, &r);
  EXPECT_TRUE(r.top.empty());
  // Banned token in the raw logits: logprob -inf, still listed last when asked for everything.
  SamplingParams b = seeded(1);
  b.logprobs = 3;
  Sampler sb(b);
  std::vector<float> withban = {0.0f, -kInf, 1.0f};
  sb.sample(withban, {}, 0, &r);
  EXPECT_EQ(r.top[2].first, 1);
  EXPECT_TRUE(std::isinf(r.top[2].second) && r.top[2].second < 0);
}

// ---------------------------------------------------------------- bad input

TEST(Sampler, RejectsBadInputsWithClearErrors) {
  Sampler s(seeded(1));
  auto expect_err = [&](std::vector<float> l, std::vector<int32_t> ids, size_t np,
                        const std::string& needle) {
    try {
      s.sample(l, ids, np);
      ADD_FAILURE() << "expected error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_err({1.0f, NAN}, {}, 0, "token 1");
  expect_err({kInf, 0.0f}, {}, 0, "token 0");
  expect_err({1.0f, 2.0f}, {0, 5}, 1, "token id 5");
  expect_err({1.0f, 2.0f}, {0, -1}, 1, "token id -1");
  expect_err({1.0f, 2.0f}, {0}, 2, "num_prompt");
  expect_err({}, {}, 0, "empty");
  expect_err({-kInf, -kInf}, {}, 0, "-inf");
}

// ---------------------------------------------------------------- large vocab

// Backend::sample_rows' reference (ops/sample_rows.h, what the device kernel computes) draws from the same
// distribution as the host Sampler: over a fine grid of uniform draws, each token is picked with the Sampler's
// probability (up to the grid and the 2^-40 fixed point), for temperature, top-k (with ties), top-p, min-p.
TEST(SampleRows, ReferenceMatchesSamplerDistribution) {
  struct Cfg {
    float T;
    int k;
    float top_p, min_p;
    float scale;
    bool ties;
  };
  const std::vector<Cfg> cfgs = {{1.0f, 0, 1.0f, 0.0f, 2.0f, false},   {0.6f, 0, 0.95f, 0.0f, 2.0f, false},
                                 {0.7f, 50, 0.9f, 0.0f, 3.0f, false},  {1.0f, 20, 1.0f, 0.0f, 1.0f, true},
                                 {0.8f, 0, 0.5f, 0.0f, 1.0f, true},    {1.2f, 0, 1.0f, 0.05f, 2.0f, false},
                                 {0.5f, 100, 0.8f, 0.02f, 4.0f, true}, {1.0f, 1, 1.0f, 0.0f, 2.0f, false}};
  const size_t V = 400;
  const int N = 8000;
  for (size_t ci = 0; ci < cfgs.size(); ++ci) {
    const Cfg& c = cfgs[ci];
    auto l = random_logits(V, c.scale, 77 + ci);
    if (c.ties)
      for (auto& v : l) v = std::round(v * 2.0f) / 2.0f;  // many exactly equal logits
    l[5] = -std::numeric_limits<float>::infinity();           // a banned token
    SamplingParams sp = seeded(1);
    sp.temperature = c.T, sp.top_k = c.k, sp.top_p = c.top_p, sp.min_p = c.min_p;
    Sampler s(sp);
    std::map<int32_t, double> want;
    for (auto [id, pr] : dist(s, l)) want[id] = pr;
    SampleRowParams rp;
    rp.temperature = c.T, rp.top_k = c.k, rp.top_p = c.top_p, rp.min_p = c.min_p;
    std::map<int32_t, int> got;
    for (int j = 0; j < N; ++j) {
      rp.u = (j + 0.5) / N;
      ++got[sample_row_reference(l.data(), static_cast<int64_t>(V), rp)];
    }
    for (const auto& [id, n] : got) EXPECT_TRUE(want.count(id)) << "cfg " << ci << ": token " << id << " outside the support";
    for (const auto& [id, pr] : want) {
      const double f = got.count(id) ? double(got[id]) / N : 0.0;
      EXPECT_NEAR(f, pr, 1.5 / N + 1e-9) << "cfg " << ci << " token " << id;
    }
  }
  // Greedy rows: the argmax, lowest id on ties.
  std::vector<float> t = {1.0f, 3.0f, 3.0f, -1.0f};
  SampleRowParams g;
  EXPECT_EQ(sample_row_reference(t.data(), 4, g), 1);
}

TEST(Sampler, LargeVocabSpeedSanity) {
  const size_t V = 129280;  // DeepSeek-V3 vocab
  auto l = random_logits(V, 3.0f, 5);
  std::vector<int32_t> ids(4096);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919) % V);
  SamplingParams p = seeded(1);
  p.temperature = 0.6f;
  p.top_p = 0.95f;
  p.repetition_penalty = 1.1f;
  p.frequency_penalty = 0.1f;
  p.logprobs = 5;
  Sampler s(p);
  std::vector<float> buf(V);
  SampleResult r;
  const int N = 200;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < N; ++i) {
    std::copy(l.begin(), l.end(), buf.begin());
    s.sample(buf, ids, 2048, &r);
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / N;
  std::printf("[ sampler ] vocab %zu, top_p 0.95 + penalties + logprobs: %.3f ms/sample\n", V, ms);
  EXPECT_LT(ms, 25.0);  // generous: shared CI cores; typical is well under 2 ms in Release

  // Other common configurations (timings printed for reference only).
  auto time_cfg = [&](const char* name, SamplingParams q) {
    q.seed = 1;
    Sampler sq(q);
    auto a = std::chrono::steady_clock::now();
    for (int i = 0; i < 100; ++i) {
      std::copy(l.begin(), l.end(), buf.begin());
      sq.sample(buf, ids, 2048);
    }
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count() / 100;
    std::printf("[ sampler ] vocab %zu, %s: %.3f ms/sample\n", V, name, t);
  };
  SamplingParams q;
  q.temperature = 0;
  time_cfg("greedy", q);
  q.temperature = 1.0f;
  time_cfg("temperature only", q);
  q.top_k = 50;
  q.top_p = 0.9f;
  time_cfg("top_k 50 + top_p 0.9", q);
  q.top_k = 0;
  q.top_p = 1.0f;
  q.min_p = 0.05f;
  time_cfg("min_p 0.05", q);
}

// ---------------------------------------------------------------- GenerationConfig

namespace {
struct TempDir {
  std::filesystem::path p;
  TempDir() {
    p = std::filesystem::temp_directory_path() /
        ("dsfuse_gencfg_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(p);
  }
  ~TempDir() { std::filesystem::remove_all(p); }
  void write(const std::string& text) const {
    std::ofstream(p / "generation_config.json") << text;
  }
};

void expect_parse_error(const std::string& text, const std::string& needle) {
  try {
    parse_generation_config(text, "x/generation_config.json");
    ADD_FAILURE() << "expected error for " << text;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("x/generation_config.json"), std::string::npos) << m;
    EXPECT_NE(m.find(needle), std::string::npos) << m;
  }
}
}  // namespace

TEST(GenerationConfig, ParsesScalarsAndEosList) {
  auto g = parse_generation_config(R"({
    "_from_model_config": true, "bos_token_id": 0, "eos_token_id": [1, 128001, 128009],
    "pad_token_id": null, "do_sample": true, "temperature": 0.6, "top_p": 0.95, "top_k": 20,
    "repetition_penalty": 1.05, "max_new_tokens": 256, "transformers_version": "4.46.3"})",
                                   "cfg");
  EXPECT_TRUE(g.found);
  EXPECT_EQ(g.bos_token_id, 0);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{1, 128001, 128009}));
  EXPECT_TRUE(g.is_eos(128009));
  EXPECT_FALSE(g.is_eos(2));
  EXPECT_FALSE(g.pad_token_id.has_value());
  EXPECT_EQ(g.do_sample, true);
  EXPECT_FLOAT_EQ(*g.temperature, 0.6f);
  EXPECT_FLOAT_EQ(*g.top_p, 0.95f);
  EXPECT_EQ(g.top_k, 20);
  EXPECT_FLOAT_EQ(*g.repetition_penalty, 1.05f);
  EXPECT_EQ(g.max_new_tokens_for(1000), 256);
  auto sp = g.sampling_params();
  EXPECT_FLOAT_EQ(sp.temperature, 0.6f);
  EXPECT_FLOAT_EQ(sp.top_p, 0.95f);
  EXPECT_EQ(sp.top_k, 20);
  EXPECT_FLOAT_EQ(sp.repetition_penalty, 1.05f);
  EXPECT_FALSE(sp.seed.has_value());

  auto g2 = parse_generation_config(R"({"eos_token_id": 2, "pad_token_id": -1, "max_length": 100,
                                        "temperature": 1})", "cfg");
  EXPECT_EQ(g2.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_FALSE(g2.pad_token_id.has_value());
  EXPECT_EQ(g2.max_new_tokens_for(30), 70);
  EXPECT_EQ(g2.max_new_tokens_for(300), 0);
  EXPECT_FLOAT_EQ(*g2.temperature, 1.0f);
}

TEST(GenerationConfig, DoSampleAndDefaultsPolicies) {
  auto greedy = parse_generation_config(R"({"do_sample": false, "temperature": 0.6,
                                            "repetition_penalty": 1.2})", "cfg");
  for (auto pol : {DefaultsPolicy::kTransformers, DefaultsPolicy::kVllm}) {
    auto sp = greedy.sampling_params(pol);
    EXPECT_EQ(sp.temperature, 0.0f);
    EXPECT_TRUE(sp.is_greedy());
    EXPECT_FLOAT_EQ(sp.repetition_penalty, 1.2f);  // HF applies it to greedy search too
  }
  auto unspecified = parse_generation_config(R"({"temperature": 0.6, "top_p": 0.9})", "cfg");
  EXPECT_EQ(unspecified.sampling_params(DefaultsPolicy::kTransformers).temperature, 0.0f);
  auto v = unspecified.sampling_params(DefaultsPolicy::kVllm);
  EXPECT_FLOAT_EQ(v.temperature, 0.6f);
  EXPECT_FLOAT_EQ(v.top_p, 0.9f);
  EXPECT_EQ(v.top_k, 0);
  auto sampling = parse_generation_config(R"({"do_sample": true})", "cfg");
  EXPECT_EQ(sampling.sampling_params(DefaultsPolicy::kTransformers).top_k, 50);
  EXPECT_EQ(sampling.sampling_params(DefaultsPolicy::kVllm).top_k, 0);
  EXPECT_FLOAT_EQ(sampling.sampling_params().temperature, 1.0f);
}

TEST(GenerationConfig, MalformedIsAnErrorNamingFileAndField) {
  expect_parse_error("{\"temperature\": 0.6,", "malformed JSON");
  expect_parse_error("[1, 2]", "object");
  expect_parse_error(R"({"eos_token_id": "2"})", "eos_token_id");
  expect_parse_error(R"({"eos_token_id": [1, "x"]})", "eos_token_id[1]");
  expect_parse_error(R"({"eos_token_id": [1, -3]})", "eos_token_id[1]");
  expect_parse_error(R"({"eos_token_id": 1.5})", "eos_token_id");
  expect_parse_error(R"({"bos_token_id": 99999999999})", "bos_token_id");
  expect_parse_error(R"({"do_sample": "yes"})", "do_sample");
  expect_parse_error(R"({"temperature": "hot"})", "temperature");
  expect_parse_error(R"({"temperature": -1})", "temperature");
  expect_parse_error(R"({"top_p": 0})", "top_p");
  expect_parse_error(R"({"top_p": 1.2})", "top_p");
  expect_parse_error(R"({"top_k": 0.5})", "top_k");
  expect_parse_error(R"({"top_k": -5})", "top_k");
  expect_parse_error(R"({"min_p": 2})", "min_p");
  expect_parse_error(R"({"repetition_penalty": 0})", "repetition_penalty");
  expect_parse_error(R"({"max_new_tokens": -1})", "max_new_tokens");
  expect_parse_error(R"({"max_length": true})", "max_length");
}

TEST(GenerationConfig, LoadFromDirMissingAndMalformedFiles) {
  TempDir d;
  auto missing = load_generation_config(d.p);
  EXPECT_FALSE(missing.found);
  EXPECT_TRUE(missing.eos_token_ids.empty());
  EXPECT_FALSE(missing.max_new_tokens_for(5).has_value());
  auto sp = missing.sampling_params();
  EXPECT_EQ(sp.temperature, 0.0f);  // HF default do_sample=false
  EXPECT_NO_THROW(sp.validate());

  d.write(R"({"eos_token_id": [7, 8], "do_sample": true, "top_k": 0})");
  auto g = load_generation_config(d.p);
  EXPECT_TRUE(g.found);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(g.sampling_params().top_k, 0);  // explicit 0 = off, HF's 50 not applied

  d.write("{ not json");
  try {
    load_generation_config(d.p);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((d.p / "generation_config.json").string()),
              std::string::npos)
        << e.what();
  }
}

TEST(GenerationConfig, FixtureModel) {
  DSFUSE_REQUIRE_FIXTURE(dir, "models/deepseek-v3-tiny");
  auto g = load_generation_config(dir);
  EXPECT_TRUE(g.found);
  EXPECT_EQ(g.bos_token_id, 0);
  EXPECT_EQ(g.eos_token_ids, std::vector<int32_t>{1});
  auto sp = g.sampling_params();
  EXPECT_FLOAT_EQ(sp.temperature, 0.6f);
  EXPECT_FLOAT_EQ(sp.top_p, 0.95f);
  EXPECT_NO_THROW(Sampler{sp});
}
