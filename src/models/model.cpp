#include "models/model.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/log.h"
#include "ops/reference.h"
#ifdef DSFUSE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace dsfuse {

// ---------------------------------------------------------------- weight loading

void WeightLoader::check_float(const std::string& name, const TensorView& v, bool allow_fp8) {
  const bool ok = v.dtype == DType::F32 || v.dtype == DType::BF16 || v.dtype == DType::F16 ||
                  (allow_fp8 && v.dtype == DType::F8E4M3);
  DSFUSE_CHECK(ok, "tensor '", name, "' in ", ck_.file_of(name), " has dtype ", dtype_name(v.dtype),
               ", expected F32, BF16 or F16", allow_fp8 ? " (or F8_E4M3 with weight_scale_inv)" : "");
}

Linear WeightLoader::linear(const std::string& name, int64_t N, int64_t K, bool bias) {
  Linear l = load_linear(name, N, K, bias);
  if (quant_ != QuantType::None) {
    l = quantize_linear(l, quant_, store_);
    if (ck_.is_synthetic()) ck_.release(name + ".weight");
  }
  return be_ ? be_->prepare(l) : l;
}

Linear WeightLoader::linear_exact(const std::string& name, int64_t N, int64_t K, bool bias) {
  Linear l = load_linear(name, N, K, bias);
  return be_ ? be_->prepare(l) : l;
}

Linear WeightLoader::load_linear(const std::string& name, int64_t N, int64_t K, bool bias) {
  Linear l;
  const std::string wn = name + ".weight";
  l.w = ck_.get(wn, {N, K});
  check_float(wn, l.w, true);
  if (l.w.dtype == DType::F8E4M3) {
    DSFUSE_CHECK(cfg_.quant.fp8, "tensor '", wn, "' in ", ck_.file_of(wn),
                 " is float8_e4m3fn but config.json has no fp8 quantization_config");
    l.block_rows = cfg_.quant.block_rows;
    l.block_cols = cfg_.quant.block_cols;
    const std::string sn = name + ".weight_scale_inv";
    DSFUSE_CHECK(ck_.has(sn), "missing tensor '", sn, "' (block scales of FP8 weight '", wn, "') in checkpoint ",
                 ck_.root().string());
    const int64_t br = (N + l.block_rows - 1) / l.block_rows, bc = (K + l.block_cols - 1) / l.block_cols;
    l.scale = ck_.get(sn, {br, bc});
    DSFUSE_CHECK(l.scale.dtype == DType::F32, "tensor '", sn, "' in ", ck_.file_of(sn), " has dtype ",
                 dtype_name(l.scale.dtype), ", expected F32");
  } else if (ck_.has(name + ".weight_scale_inv")) {
    fail(cat("tensor '", name, ".weight_scale_inv' in ", ck_.file_of(name + ".weight_scale_inv"),
             " scales a weight that is not float8 (", dtype_name(l.w.dtype), ")"));
  }
  if (bias) {
    l.bias = ck_.get(name + ".bias", {N});
    check_float(name + ".bias", l.bias, false);
  }
  return l;
}

TensorView WeightLoader::vector(const std::string& name, int64_t n) {
  TensorView v = ck_.get(name, {n});
  check_float(name, v, false);
  return be_ ? be_->prepare(v) : v;
}

TensorView WeightLoader::matrix(const std::string& name, int64_t r, int64_t c) {
  TensorView v = ck_.get(name, {r, c});
  check_float(name, v, false);
  return be_ ? be_->prepare(v) : v;
}

// ---------------------------------------------------------------- shared model parts

void CausalLM::load_common(WeightLoader& wl) {
  embed_ = wl.matrix("model.embed_tokens.weight", cfg_.vocab_size, cfg_.hidden_size);
  final_norm_ = wl.vector("model.norm.weight", cfg_.hidden_size);
  if (cfg_.tie_word_embeddings && !wl.has("lm_head.weight")) {
    lm_head_.w = embed_;
  } else {
    lm_head_ = wl.linear_exact("lm_head", cfg_.vocab_size, cfg_.hidden_size);
  }
}

void CausalLM::mlp(TensorView out, const TensorView& x, const MlpWeights& w) {
  const int64_t T = x.shape[0], I = w.gate.out_features();
  TensorView g = arena_.alloc(DType::F32, {T, I});
  TensorView u = arena_.alloc(DType::F32, {T, I});
  be_.linear(g, x, w.gate);
  be_.linear(u, x, w.up);
  be_.silu_mul(g, g, u);
  be_.linear(out, g, w.down);
}

void CausalLM::forward(const int32_t* ids, int64_t T, KVCache& cache, float* logits, bool all_logits) {
  DSFUSE_CHECK(T > 0, "forward needs at least one token");
  const int64_t past = cache.length();
  DSFUSE_CHECK(past + T <= cache.max_tokens(), "sequence of ", past + T, " tokens exceeds the KV cache capacity of ",
               cache.max_tokens());
  for (int64_t t = 0; t < T; ++t)
    DSFUSE_CHECK(ids[t] >= 0 && ids[t] < cfg_.vocab_size, "token id ", ids[t], " at position ", past + t,
                 " is out of range [0, ", cfg_.vocab_size, ")");
  positions_.resize(T);
  for (int64_t t = 0; t < T; ++t) positions_[t] = static_cast<int32_t>(past + t);
  Batch b;
  b.ids = ids;
  b.positions = positions_.data();
  b.T = T;
  b.segs.push_back(SeqSegment{0, T, past, PagedRows{}});
  all_rows_.clear();
  for (int64_t t = all_logits ? 0 : T - 1; t < T; ++t) all_rows_.push_back(t);
  forward_batch(b, cache, all_rows_, logits);
  cache.set_length(past + T);
}

void CausalLM::forward_batch(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows, float* logits) {
  const int64_t T = b.T, H = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t L = static_cast<int64_t>(logit_rows.size());
  int64_t S = 0;
  for (const auto& s : b.segs) S = std::max(S, s.past + s.n);
  arena_.reserve((static_cast<size_t>(T * H + L * (H + V)) + layer_workspace_floats(T, S)) * sizeof(float) + 64 * 64);
  arena_.reset();
  TensorView x = arena_.alloc(DType::F32, {T, H});
  be_.embedding(x, embed_, b.ids, T);
  layers(x, b, pool);
  if (L == 0) return;
  // Final norm and head only for the rows whose logits are wanted.  // xl [L, H] -> out [L, V]
  TensorView xl = arena_.alloc(DType::F32, {L, H});
  for (int64_t i = 0; i < L; ++i) be_.copy_rows(xl, i, x.rows(logit_rows[i], logit_rows[i] + 1));
  be_.rms_norm(xl, xl, final_norm_, static_cast<float>(cfg_.rms_norm_eps));
  TensorView out = arena_.alloc(DType::F32, {L, V});
  be_.linear(out, xl, lm_head_);
  be_.copy_to_host(logits, out.data, out.nbytes());
}

// ---------------------------------------------------------------- registry

const std::map<std::string, ModelFactory>& model_registry() {
  static const std::map<std::string, ModelFactory> r = {
      {"LlamaForCausalLM", make_llama},
      {"Qwen2ForCausalLM", make_qwen2},
      {"DeepseekV2ForCausalLM", make_deepseek},
      {"DeepseekV3ForCausalLM", make_deepseek},
  };
  return r;
}

// ---------------------------------------------------------------- public API

namespace {

class SequenceImpl final : public Sequence {
 public:
  explicit SequenceImpl(std::unique_ptr<KVCache> c) : cache(std::move(c)) {}
  int64_t length() const override { return cache->length(); }
  int64_t capacity() const override { return cache->max_tokens(); }
  void truncate(int64_t n) override {
    DSFUSE_CHECK(n >= 0 && n <= cache->length(), "truncate(", n, ") outside [0, ", cache->length(), "]");
    cache->set_length(n);
  }
  std::unique_ptr<KVCache> cache;
};

const char* family_name(Family f) {
  switch (f) {
    case Family::Llama: return "llama";
    case Family::Qwen2: return "qwen2";
    case Family::DeepseekV2: return "deepseek_v2";
    case Family::DeepseekV3: return "deepseek_v3";
  }
  return "?";
}

class ModelImpl final : public Model {
 public:
  ModelImpl(ModelConfig cfg, std::unique_ptr<Checkpoint> ck, const LoadOptions& opts)
      : cfg_(std::move(cfg)), ck_(std::move(ck)), wl_(*ck_, cfg_, parse_quant_type(opts.quant)) {
    if (opts.device == "cpu") be_ = make_cpu_backend(opts.threads);
    else if (opts.device == "reference") be_ = make_reference_backend();
#ifdef DSFUSE_HAVE_CUDA
    else if (opts.device == "cuda" || opts.device.rfind("cuda:", 0) == 0) {
      const int idx = opts.device.size() > 5 ? std::stoi(opts.device.substr(5)) : 0;
      DSFUSE_CHECK(cuda_device_count() > idx, "device '", opts.device, "': no such CUDA device (",
                   cuda_device_count(), " found)");
      be_ = make_cuda_backend(idx);
    }
    else fail(cat("device '", opts.device, "' is not available (this build supports: cpu, reference, cuda, cuda:N)"));
#else
    else fail(cat("device '", opts.device, "' is not available (this build supports: cpu, reference; "
                  "built without CUDA)"));
#endif
    wl_.set_backend(be_.get());
    auto it = model_registry().find(cfg_.architecture);
    DSFUSE_CHECK(it != model_registry().end(), "no implementation registered for ", cfg_.architecture);
    for (const auto& n : ck_->names())
      if (n.size() > 20 && n.compare(n.size() - 20, 20, ".rotary_emb.inv_freq") == 0) ck_->mark_ignored(n);
    lm_ = it->second(cfg_, wl_, *be_);
    const auto extra = ck_->unused();
    if (!extra.empty()) {
      std::string list;
      for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", '" : "'") + extra[i] + "'";
      if (extra.size() > 5) list += cat(" and ", extra.size() - 5, " more");
      fail(cat("unexpected tensor", extra.size() > 1 ? "s " : " ", list, " in ", ck_->file_of(extra[0]),
               ": not part of ", cfg_.architecture, " with this config.json"));
    }
    log::info(cat("loaded ", cfg_.architecture, " from ", ck_->root().string()));
  }

  ModelInfo info() const override {
    ModelInfo m;
    m.architecture = cfg_.architecture;
    m.family = family_name(cfg_.family);
    std::map<std::string, int64_t> by;
    std::set<std::string> ignored(ck_->ignored().begin(), ck_->ignored().end());
    for (const auto& n : ck_->names()) {
      if (ignored.count(n)) continue;
      const TensorInfo& t = ck_->info(n);
      int64_t numel = 1;
      for (auto d : t.shape) numel *= d;
      const bool is_scale = n.size() > 17 && n.compare(n.size() - 17, 17, ".weight_scale_inv") == 0;
      if (!is_scale) m.parameters += numel;
      m.weight_bytes += static_cast<int64_t>(t.end - t.begin);
      by[dtype_name(t.dtype)] += numel;
    }
    m.dtypes.assign(by.begin(), by.end());
    auto probe = lm_->new_cache(1);
    m.kv_bytes_per_token = static_cast<int64_t>(probe->bytes_per_token());
    m.kv_layout = lm_->kv_layout();
    m.ignored_tensors = ck_->ignored();
    m.vocab_size = cfg_.vocab_size;
    m.num_layers = cfg_.num_hidden_layers;
    m.hidden_size = cfg_.hidden_size;
    m.max_position_embeddings = cfg_.max_position_embeddings;
    return m;
  }

  int vocab_size() const override { return cfg_.vocab_size; }
  int max_context() const override { return cfg_.max_position_embeddings; }

  std::unique_ptr<Sequence> new_sequence(int64_t max_tokens) override {
    return std::make_unique<SequenceImpl>(lm_->new_cache(max_tokens));
  }

  CausalLM& lm() { return *lm_; }

  void forward(Sequence& seq, std::span<const int32_t> ids, std::vector<float>& logits, bool all_logits) override {
    auto* s = dynamic_cast<SequenceImpl*>(&seq);
    DSFUSE_CHECK(s, "sequence was not created by this model");
    logits.resize(static_cast<size_t>((all_logits ? ids.size() : 1) * cfg_.vocab_size));
    lm_->forward(ids.data(), static_cast<int64_t>(ids.size()), *s->cache, logits.data(), all_logits);
  }

 private:
  ModelConfig cfg_;
  std::unique_ptr<Checkpoint> ck_;
  WeightLoader wl_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<CausalLM> lm_;
};

}  // namespace

BatchModel& batch_model(Model& m) {
  auto* impl = dynamic_cast<ModelImpl*>(&m);
  DSFUSE_CHECK(impl, "model was not created by Model::load");
  return impl->lm();
}

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir, const LoadOptions& opts) {
  ModelConfig cfg = load_config(dir);
  return std::make_unique<ModelImpl>(std::move(cfg), std::make_unique<Checkpoint>(dir), opts);
}

std::unique_ptr<Model> Model::load_dummy(const std::filesystem::path& config_json, const LoadOptions& opts,
                                         uint64_t seed) {
  ModelConfig cfg = load_config(config_json);
  cfg.quant = QuantConfig{};  // dummy weights are bf16 (then quantized as opts.quant says)
  cfg.num_nextn_predict_layers = 0;
  return std::make_unique<ModelImpl>(std::move(cfg), Checkpoint::synthetic(seed), opts);
}

}  // namespace dsfuse
