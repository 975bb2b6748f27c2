// Decode-step graphs (CUDA graphs on the GPU) checked on the CPU (and, with the same wrapper posing as a device
// backend, the llama-family layers' folded norm / residual path): a backend wrapper with the same semantics as
// the CUDA backend's recording -- step inputs copied once per forward into buffers at fixed addresses, ops
// recorded instead of run while a graph is being captured, the recording replayed for later steps with the
// same key -- must give the same logits as plain execution, token by token. This catches model code that
// assumes something a replay does not redo (host data read at record time, arena layout after the layers).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <set>

#include "backend/backend.h"
#include "engine/default_model.h"
#include "loader/config.h"
#include "loader/safetensors.h"
#include "models/model.h"
#include "test_util.h"

using namespace dsfuse;

namespace {

class GraphSemantics final : public Backend {
 public:
  explicit GraphSemantics(std::unique_ptr<Backend> in) : in_(std::move(in)) {
    ids_.reserve(kCap);
    pos_.reserve(kCap);
    tables_.reserve(kCap);
  }
  int replays = 0, recordings = 0;
  // As a device backend (fake_device: q/k/v and gate/up get stacked, weights are copied by prepare() as a device
  // backend copies them) that folds norms and residual adds into the projections at one token (fold: the
  // Backend defaults compose them; folds counts the calls).
  bool fake_device = false, fold = false;
  int folds = 0;
  ~GraphSemantics() override {
    for (void* p : owned_) in_->free(p);
  }

  Device device() const override { return fake_device ? Device{DeviceKind::CUDA, 0} : in_->device(); }
  bool fuses_norm_linear(int64_t T, const Linear& /*w*/) const override { return fold && T == 1; }
  void rms_norm_linear(TensorView y, const TensorView& x, const TensorView& nw, float eps, const Linear& w,
                       TensorView h) override {
    ++folds;
    Backend::rms_norm_linear(y, x, nw, eps, w, h);
  }
  void rms_norm_linear_silu(TensorView y, const TensorView& x, const TensorView& nw, float eps, const Linear& w,
                            TensorView h) override {
    ++folds;
    Backend::rms_norm_linear_silu(y, x, nw, eps, w, h);
  }
  void linear_add(TensorView x, const TensorView& a, const Linear& w, TensorView tmp) override {
    ++folds;
    Backend::linear_add(x, a, w, tmp);
  }
  std::string name() const override { return "graph-semantics(" + in_->name() + ")"; }
  void* alloc(size_t n) override { return in_->alloc(n); }
  void free(void* p) override {
    in_->free(p);
    graphs_.clear();
  }
  void copy_to_device(void* d, const void* s, size_t n) override { in_->copy_to_device(d, s, n); }
  void copy_to_host(void* d, const void* s, size_t n) override { in_->copy_to_host(d, s, n); }
  Linear prepare(const Linear& w) override {
    if (!fake_device) return in_->prepare(w);
    Linear c = w;
    c.w = own(w.w);
    c.scale = own(w.scale);
    c.zero = own(w.zero);
    c.bias = own(w.bias);
    return c;
  }
  TensorView prepare(const TensorView& v) override { return fake_device ? own(v) : in_->prepare(v); }

  // Step inputs at fixed addresses (reserved capacity; a larger step would move them: graphs are dropped).
  void begin_step(const int32_t* ids, const int32_t* positions, int64_t T, const std::vector<SeqSegment>* segs) override {
    size_t nt = 0;
    if (segs)
      for (const auto& s : *segs)
        if (s.rows.table) nt += static_cast<size_t>((s.past + s.n - 1) / s.rows.block_size + 1);
    if (static_cast<size_t>(T) > kCap || nt > kCap) graphs_.clear();
    ids_.assign(ids, ids + T);
    pos_.assign(positions, positions + T);
    tables_.clear();
    segs_.clear();
    if (segs) {
      for (const auto& s : *segs) {
        SeqSegment c = s;
        if (s.rows.table) {
          const size_t nb = static_cast<size_t>((s.past + s.n - 1) / s.rows.block_size + 1);
          c.rows.table = tables_.data() + tables_.size();
          tables_.insert(tables_.end(), s.rows.table, s.rows.table + nb);
        }
        segs_.push_back(c);
      }
      segs_src_ = segs;
    }
  }
  bool graph_launch(uint64_t key) override {
    auto it = graphs_.find(key);
    if (it == graphs_.end()) return false;
    for (auto& op : it->second) op();
    ++replays;
    return true;
  }
  void graph_begin(uint64_t key) override {
    if (!seen_.insert(key).second) {
      recording_ = true;
      key_ = key;
      rec_.clear();
    }
  }
  void graph_end() override {
    if (!recording_) return;
    recording_ = false;
    for (auto& op : rec_) op();  // recording ran nothing
    graphs_[key_] = std::move(rec_);
    ++recordings;
  }

  void embedding(TensorView out, const TensorView& table, const int32_t* ids, int64_t T) override {
    const int32_t* d = step(ids, ids_, T);
    op([=, this] { in_->embedding(out, table, d, T); });
  }
  void linear(TensorView y, const TensorView& x, const Linear& w) override {
    op([=, this] { in_->linear(y, x, w); });
  }
  void linear_silu(TensorView y, const TensorView& x, const Linear& w) override {
    op([=, this] { in_->linear_silu(y, x, w); });
  }
  void rms_norm(TensorView y, const TensorView& x, const TensorView& w, float eps) override {
    op([=, this] { in_->rms_norm(y, x, w, eps); });
  }
  void add(TensorView y, const TensorView& x) override {
    op([=, this] { in_->add(y, x); });
  }
  void add_rms_norm(TensorView x, const TensorView& o, TensorView h, const TensorView& w, float eps) override {
    op([=, this] { in_->add_rms_norm(x, o, h, w, eps); });
  }
  void silu_mul(TensorView y, const TensorView& g, const TensorView& u) override {
    op([=, this] { in_->silu_mul(y, g, u); });
  }
  void rope(TensorView x, int off, const RopeTable& t, RopeStyle st, const int32_t* pos) override {
    const int32_t* d = step(pos, pos_, x.shape[0]);
    op([=, this] { in_->rope(x, off, t, st, d); });
  }
  void copy_rows(TensorView dst, int64_t r0, const TensorView& src, const PagedRows& rows) override {
    EXPECT_TRUE(rows.table == nullptr || !recording_) << "host block table read while recording";
    op([=, this] { in_->copy_rows(dst, r0, src, rows); });
  }
  void attention(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v, int64_t past,
                 float scale, const PagedRows& rows) override {
    EXPECT_FALSE(recording_) << "attention with a host `past` while recording";
    op([=, this] { in_->attention(out, q, k, v, past, scale, rows); });
  }
  void mla_attention(TensorView out, const TensorView& qn, const TensorView& qp, const TensorView& lat,
                     const TensorView& kpe, const Linear& kv_b, int64_t past, float scale,
                     const PagedRows& rows) override {
    EXPECT_FALSE(recording_) << "mla_attention with a host `past` while recording";
    op([=, this] { in_->mla_attention(out, qn, qp, lat, kpe, kv_b, past, scale, rows); });
  }
  void moe_route(TensorView ids, TensorView w, const TensorView& logits, const TensorView& bias,
                 const RouterParams& p) override {
    op([=, this] { in_->moe_route(ids, w, logits, bias, p); });
  }
  void moe_experts(TensorView out, const TensorView& x, const TensorView& ids, const TensorView& w,
                   const std::vector<ExpertWeights>& experts) override {
    const std::vector<ExpertWeights>* e = &experts;  // the model's own list: lives as long as the model
    op([=, this] { in_->moe_experts(out, x, ids, w, *e); });
  }
  void argmax_rows(TensorView ids, const TensorView& x) override {
    op([=, this] { in_->argmax_rows(ids, x); });
  }
  void copy_rows_segs(TensorView dst, const TensorView& src, const std::vector<SeqSegment>& segs) override {
    const std::vector<SeqSegment>* s = step_segs(segs);
    op([=, this] { in_->copy_rows_segs(dst, src, *s); });
  }
  void attention_segs(TensorView out, const TensorView& q, const TensorView& k, const TensorView& v, float scale,
                      const std::vector<SeqSegment>& segs) override {
    const std::vector<SeqSegment>* s = step_segs(segs);
    op([=, this] { in_->attention_segs(out, q, k, v, scale, *s); });
  }
  void mla_attention_segs(TensorView out, const TensorView& qn, const TensorView& qp, const TensorView& lat,
                          const TensorView& kpe, const Linear& kv_b, float scale,
                          const std::vector<SeqSegment>& segs) override {
    const std::vector<SeqSegment>* s = step_segs(segs);
    op([=, this] { in_->mla_attention_segs(out, qn, qp, lat, kpe, kv_b, scale, *s); });
  }

 private:
  static constexpr size_t kCap = 1 << 16;
  void op(std::function<void()> f) {
    if (recording_) rec_.push_back(std::move(f));
    else f();
  }
  // The step's copy when `host` holds the step's values (as the CUDA backend matches by content); anything
  // else read while recording would be stale at replay.
  const int32_t* step(const int32_t* host, const std::vector<int32_t>& copy, int64_t T) {
    if (static_cast<int64_t>(copy.size()) == T && std::memcmp(host, copy.data(), sizeof(int32_t) * T) == 0)
      return copy.data();
    EXPECT_FALSE(recording_) << "host ids/positions that are not the step's, read while recording";
    return host;
  }
  const std::vector<SeqSegment>* step_segs(const std::vector<SeqSegment>& segs) {
    if (&segs == segs_src_) return &segs_;
    EXPECT_FALSE(recording_) << "segments that are not the step's, read while recording";
    return &segs;
  }

  TensorView own(const TensorView& v) {  // a copy this wrapper owns (the caller's host buffer may go)
    if (v.empty()) return v;
    EXPECT_TRUE(v.contiguous()) << "fake device: strided weight";
    void* p = in_->alloc(v.nbytes());
    std::memcpy(p, v.data, v.nbytes());
    owned_.push_back(p);
    TensorView c = v;
    c.data = p;
    return c;
  }

  std::unique_ptr<Backend> in_;
  std::vector<void*> owned_;
  std::vector<int32_t> ids_, pos_, tables_;
  std::vector<SeqSegment> segs_;
  const std::vector<SeqSegment>* segs_src_ = nullptr;
  std::map<uint64_t, std::vector<std::function<void()>>> graphs_;
  std::vector<std::function<void()>> rec_;
  std::set<uint64_t> seen_;
  bool recording_ = false;
  uint64_t key_ = 0;
};

std::unique_ptr<CausalLM> build(WeightLoader& wl, Backend& be, const ModelConfig& cfg) {
  wl.set_backend(&be);
  return model_registry().at(cfg.architecture)(cfg, wl, be);
}

// A checkpoint's model built twice: on a plain CPU backend and on `be` (a GraphSemantics wrapper).
struct SideBySide {
  ModelConfig cfg;
  Checkpoint ck;
  WeightLoader wl_a, wl_b;
  std::unique_ptr<Backend> plain_be = make_cpu_backend(1);
  std::unique_ptr<CausalLM> plain, other;
  SideBySide(const std::filesystem::path& dir, Backend& be)
      : cfg(load_config(dir)), ck(dir), wl_a(ck, cfg), wl_b(ck, cfg) {
    plain = build(wl_a, *plain_be, cfg);
    other = build(wl_b, be, cfg);
  }
  // n tokens decoded one at a time by both (each next token the plain model's greedy choice); step(i, la, lb)
  // compares the two logit rows of step i.
  using Step = std::function<void(int64_t, const std::vector<float>&, const std::vector<float>&)>;
  void decode(int64_t n, const Step& step) {
    auto ca = plain->new_cache(64), cb = other->new_cache(64);
    const size_t V = static_cast<size_t>(cfg.vocab_size);
    std::vector<float> la(V), lb(V);
    int32_t tok = 1;
    for (int64_t i = 0; i < n; ++i) {
      forward_sequence(*plain, &tok, 1, *ca, la.data(), false);
      forward_sequence(*other, &tok, 1, *cb, lb.data(), false);
      step(i, la, lb);
      tok = static_cast<int32_t>(std::max_element(la.begin(), la.end()) - la.begin());
    }
  }
};

// Token-by-token decoding with recorded/replayed steps equals plain decoding (same CPU kernels: bit-exact).
void check_replay(const std::filesystem::path& dir) {
  GraphSemantics graph_be(make_cpu_backend(1));
  SideBySide m(dir, graph_be);
  const int64_t n = 12;
  bool equal = true;
  m.decode(n, [&](int64_t i, const std::vector<float>& la, const std::vector<float>& lb) {
    if (!equal) return;
    equal = std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)) == 0;
    EXPECT_TRUE(equal) << dir << ": step " << i << " differs";
  });
  ASSERT_TRUE(equal);
  // Greedy through the engine's device path (forward_batch_greedy) on a fresh pool as well.
  auto cc = m.other->new_cache(64);
  Batch b;
  std::vector<int32_t> ids = {3}, pos = {0};
  std::vector<int64_t> rows = {0};
  int32_t next = -1;
  for (int i = 0; i < 4; ++i) {
    b.ids = ids.data();
    b.positions = pos.data();
    b.T = 1;
    b.segs = {SeqSegment{0, 1, pos[0], PagedRows{}}};
    m.other->forward_batch_greedy(b, *cc, rows, &next);
    cc->set_length(pos[0] + 1);
    ASSERT_GE(next, 0);
    ids[0] = next;
    ++pos[0];
  }
  std::printf("[graphs] %-24s %lld steps equal with %d recordings and %d replays\n", dir.filename().c_str(),
              static_cast<long long>(n), graph_be.recordings, graph_be.replays);
  EXPECT_GE(graph_be.replays, 8);
}

// Llama-family decode with the norms and residual adds folded into the projections (as a device backend sees
// the layers: stacked q/k/v and gate/up) matches plain CPU decoding, through recorded and replayed steps.
void check_fold(const std::filesystem::path& dir) {
  GraphSemantics fold_be(make_cpu_backend(1));
  fold_be.fake_device = fold_be.fold = true;
  SideBySide m(dir, fold_be);
  double worst = 0;
  m.decode(12, [&](int64_t, const std::vector<float>& la, const std::vector<float>& lb) {
    double num = 0, den = 0;
    for (size_t v = 0; v < la.size(); ++v) {
      num += (double(la[v]) - lb[v]) * (double(la[v]) - lb[v]);
      den += double(la[v]) * la[v];
    }
    worst = std::max(worst, std::sqrt(num / std::max(den, 1e-30)));
  });
  const bool llama = m.cfg.architecture == "LlamaForCausalLM" || m.cfg.architecture == "Qwen2ForCausalLM";
  std::printf("[fold] %-24s 12 steps, rel err %.2e, %d folded ops, %d replays\n", dir.filename().c_str(), worst,
              fold_be.folds, fold_be.replays);
  EXPECT_LT(worst, 1e-5) << dir;
  if (llama) EXPECT_GT(fold_be.folds, 0) << dir << ": the llama layers did not take the folded path";
  EXPECT_GE(fold_be.replays, 8);
}

TEST(DecodeGraphs, ReplayEqualsPlainDefaultModel) { check_replay(default_model_dir()); }
TEST(DecodeGraphs, FoldedNormsEqualPlainDefaultModel) { check_fold(default_model_dir()); }

class DecodeGraphFixtures : public ::testing::TestWithParam<std::string> {};
TEST_P(DecodeGraphFixtures, ReplayEqualsPlain) {
  DSFUSE_REQUIRE_FIXTURE(dir, "models/" + GetParam());
  check_replay(dir);
}
TEST_P(DecodeGraphFixtures, FoldedNormsEqualPlain) {
  DSFUSE_REQUIRE_FIXTURE(dir, "models/" + GetParam());
  check_fold(dir);
}
INSTANTIATE_TEST_SUITE_P(Fixtures, DecodeGraphFixtures, DSFUSE_FIXTURE_MODELS);

}  // namespace
