#include "models/model.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/log.h"
#include "ops/reference.h"
#include "parallel/tp_group.h"
#ifdef DSFUSE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif
#ifdef DSFUSE_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace dsfuse {

// ---------------------------------------------------------------- weight loading

void WeightLoader::check_float(const std::string& name, const TensorView& v, bool allow_fp8) {
  const bool ok = v.dtype == DType::F32 || v.dtype == DType::BF16 || v.dtype == DType::F16 ||
                  (allow_fp8 && v.dtype == DType::F8E4M3);
  DSFUSE_CHECK(ok, "tensor '", name, "' in ", ck_.file_of(name), " has dtype ", dtype_name(v.dtype),
               ", expected F32, BF16 or F16", allow_fp8 ? " (or F8_E4M3 with weight_scale_inv)" : "");
}

std::pair<int64_t, int64_t> TPInfo::share(int64_t n, const std::string& what) const {
  DSFUSE_CHECK(n % size == 0, what, " (", n, ") is not divisible by the tensor-parallel size ", size);
  return {rank * (n / size), (rank + 1) * (n / size)};
}

Linear WeightLoader::shard(const Linear& l, const std::string& name, Split split) {
  if (split == Split::None || tp_.size == 1) return l;
  const int64_t N = l.out_features(), K = l.in_features();
  const auto [n0, n1] = split == Split::Column ? tp_.share(N, "rows of " + name) : std::pair<int64_t, int64_t>{0, N};
  const auto [k0, k1] = split == Split::Row ? tp_.share(K, "columns of " + name) : std::pair<int64_t, int64_t>{0, K};
  Linear out;
  const bool fp8 = l.w.dtype == DType::F8E4M3;
  const bool blocks_aligned = !fp8 || (n0 % l.block_rows == 0 && k0 % l.block_cols == 0 && k1 - k0 == K);
  if (k0 == 0 && k1 == K && blocks_aligned) {
    // Output rows: a zero-copy view of the mapped bytes (FP8: whole scale-block rows).
    out = l;
    out.w = l.w.rows(n0, n1);
    if (fp8) out.scale = l.scale.rows(n0 / l.block_rows, (n1 + l.block_rows - 1) / l.block_rows);
  } else {
    // Input columns (or FP8 blocks cut by the split): a contiguous copy; FP8 becomes its bf16 dequantized
    // form (the same values the per-block dequantization produces).
    const DType dt = fp8 ? DType::BF16 : l.w.dtype;
    const size_t es = dtype_size(dt);
    auto buf = std::make_unique<Buffer>(static_cast<size_t>((n1 - n0) * (k1 - k0)) * es);
    char* dst = static_cast<char*>(buf->data());
    std::vector<float> row;
    for (int64_t n = n0; n < n1; ++n) {
      char* d = dst + (n - n0) * (k1 - k0) * static_cast<int64_t>(es);
      if (fp8) {
        row.resize(static_cast<size_t>(K));
        dequantize_rows(l, n, n + 1, row.data());
        for (int64_t k = k0; k < k1; ++k) reinterpret_cast<uint16_t*>(d)[k - k0] = f32_to_bf16(row[k]);
      } else {
        std::memcpy(d, static_cast<const char*>(l.w.data) + (n * l.w.stride[0] + k0) * static_cast<int64_t>(es),
                    static_cast<size_t>(k1 - k0) * es);
      }
    }
    out.w = TensorView(buf->data(), dt, {n1 - n0, k1 - k0});
    out.bias = l.bias;
    store_.push_back(std::move(buf));
  }
  if (!l.bias.empty()) {
    if (split == Split::Column) out.bias = l.bias.rows(n0, n1);
    else out.bias = tp_.rank == 0 ? l.bias : TensorView();
  }
  return out;
}

Linear WeightLoader::linear(const std::string& name, int64_t N, int64_t K, bool bias, Split split) {
  const size_t held = store_.size();
  Linear l = shard(load_linear(name, N, K, bias), name, split);
  if (quant_ != QuantType::None) {
    l = quantize_linear(l, quant_, store_);
    if (ck_.is_synthetic()) ck_.release(name + ".weight");  // quantized bytes are a copy
  }
  return release_synthetic(prepare(l, held), name);
}

// Dummy weights are made on demand, so once a device backend holds its copy the host tensor can go (another
// tensor-parallel rank asking for it later gets the same values made again): host memory stays at about one
// tensor, not the whole model (the largest dummy models exceed the host's memory).
Linear WeightLoader::release_synthetic(Linear l, const std::string& name) {
  if (ck_.is_synthetic() && be_ && !(be_->device() == Device::cpu())) ck_.release(name + ".weight");
  return l;
}

Linear WeightLoader::linear_fused(const std::vector<std::pair<std::string, int64_t>>& parts, int64_t K, bool bias,
                                  Split split) {
  if (!be_ || be_->device().kind == DeviceKind::CPU || quant_ != QuantType::None) return {};
  std::vector<Linear> ls;
  int64_t N = 0;
  for (const auto& [name, n] : parts) {
    ls.push_back(shard(load_linear(name, n, K, bias), name, split));
    const Linear& l = ls.back();
    if (l.w.dtype == DType::F8E4M3 || l.w.dtype != ls[0].w.dtype || l.w.stride[1] != 1 ||
        l.bias.empty() != ls[0].bias.empty() || (!l.bias.empty() && l.bias.dtype != ls[0].bias.dtype))
      return {};
    N += l.out_features();
  }
  const int64_t Kl = ls[0].in_features();
  const size_t es = dtype_size(ls[0].w.dtype);
  auto buf = std::make_unique<Buffer>(static_cast<size_t>(N * Kl) * es);
  std::unique_ptr<Buffer> bbuf;
  if (!ls[0].bias.empty()) bbuf = std::make_unique<Buffer>(static_cast<size_t>(N) * dtype_size(ls[0].bias.dtype));
  int64_t r = 0;
  for (const Linear& l : ls) {
    for (int64_t n = 0; n < l.out_features(); ++n)
      std::memcpy(static_cast<char*>(buf->data()) + (r + n) * Kl * static_cast<int64_t>(es),
                  static_cast<const char*>(l.w.data) + n * l.w.stride[0] * static_cast<int64_t>(es),
                  static_cast<size_t>(Kl) * es);
    if (bbuf) {
      const size_t bes = dtype_size(l.bias.dtype);
      for (int64_t n = 0; n < l.out_features(); ++n)
        std::memcpy(static_cast<char*>(bbuf->data()) + (r + n) * bes,
                    static_cast<const char*>(l.bias.data) + n * l.bias.stride[0] * static_cast<int64_t>(bes), bes);
    }
    r += l.out_features();
  }
  Linear f;
  f.w = TensorView(buf->data(), ls[0].w.dtype, {N, Kl});
  if (bbuf) f.bias = TensorView(bbuf->data(), ls[0].bias.dtype, {N});
  Linear out = be_->prepare(f);  // device copy: the host buffers can go
  if (ck_.is_synthetic())
    for (const auto& p : parts) ck_.release(p.first + ".weight");
  return out;
}

Linear WeightLoader::linear_exact(const std::string& name, int64_t N, int64_t K, bool bias, Split split) {
  const size_t held = store_.size();
  return release_synthetic(prepare(shard(load_linear(name, N, K, bias), name, split), held), name);
}

Linear WeightLoader::prepare(const Linear& l, size_t held) {
  if (!be_) return l;
  Linear out = be_->prepare(l);
  // A device backend made its own copy: host buffers made for this weight since `held` (a tensor-parallel
  // shard's column copy, quantized bytes) are not needed any more.
  if (!(be_->device() == Device::cpu())) store_.resize(held);
  return out;
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

void WeightLoader::skip_linear(const std::string& name) {
  for (const char* suffix : {".weight", ".weight_scale_inv", ".bias"}) ck_.mark_used(name + suffix);
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
  // The head is vocab-parallel: each rank computes logits for its slice of the vocabulary.
  if (cfg_.tie_word_embeddings && !wl.has("lm_head.weight")) {
    const auto [v0, v1] = tp_.size > 1 ? tp_.share(cfg_.vocab_size, "vocab_size") : std::pair<int64_t, int64_t>{0, cfg_.vocab_size};
    lm_head_.w = embed_.rows(v0, v1);
  } else {
    // int8 too under --quant (llama.cpp's Q8_0 does the same).
    lm_head_ = wl.linear("lm_head", cfg_.vocab_size, cfg_.hidden_size, false, Split::Column);
  }
}

MlpWeights CausalLM::load_mlp(WeightLoader& wl, const std::string& prefix, int64_t I, int64_t H, bool bias) {
  MlpWeights m;
  m.gate_up = wl.linear_fused({{prefix + ".gate_proj", I}, {prefix + ".up_proj", I}}, H, bias, Split::Column);
  if (m.gate_up.empty()) {
    m.gate = wl.linear(prefix + ".gate_proj", I, H, bias, Split::Column);
    m.up = wl.linear(prefix + ".up_proj", I, H, bias, Split::Column);
  }
  m.down = wl.linear(prefix + ".down_proj", H, I, bias, Split::Row);
  return m;
}

void CausalLM::mlp(TensorView out, const TensorView& x, const MlpWeights& w) {
  const int64_t T = x.shape[0];
  if (!w.gate_up.empty()) {  // one fused GEMM(V) + SwiGLU  // g [T, I]
    TensorView g = arena_.alloc(DType::F32, {T, w.inter()});
    be_.linear_silu(g, x, w.gate_up);
    be_.linear(out, g, w.down);
    return;
  }
  const int64_t I = w.gate.out_features();
  TensorView g = arena_.alloc(DType::F32, {T, I});
  TensorView u = arena_.alloc(DType::F32, {T, I});
  be_.linear(g, x, w.gate);
  be_.linear(u, x, w.up);
  be_.silu_mul(g, g, u);
  be_.linear(out, g, w.down);
}

void forward_sequence(BatchModel& m, const int32_t* ids, int64_t T, KVCache& cache, float* logits, bool all_logits) {
  DSFUSE_CHECK(T > 0, "forward needs at least one token");
  const int64_t past = cache.length();
  DSFUSE_CHECK(past + T <= cache.max_tokens(), "sequence of ", past + T, " tokens exceeds the KV cache capacity of ",
               cache.max_tokens());
  for (int64_t t = 0; t < T; ++t)
    DSFUSE_CHECK(ids[t] >= 0 && ids[t] < m.vocab_size(), "token id ", ids[t], " at position ", past + t,
                 " is out of range [0, ", m.vocab_size(), ")");
  std::vector<int32_t> positions(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) positions[t] = static_cast<int32_t>(past + t);
  Batch b;
  b.ids = ids;
  b.positions = positions.data();
  b.T = T;
  b.segs.push_back(SeqSegment{0, T, past, PagedRows{}});
  std::vector<int64_t> rows;
  for (int64_t t = all_logits ? 0 : T - 1; t < T; ++t) rows.push_back(t);
  m.forward_batch(b, cache, rows, logits);
  cache.set_length(past + T);
}

void BatchModel::forward_batch_greedy(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                                      int32_t* ids) {
  const size_t V = static_cast<size_t>(vocab_size());
  std::vector<float> logits(logit_rows.size() * V);
  forward_batch(b, pool, logit_rows, logits.data());
  for (size_t i = 0; i < logit_rows.size(); ++i) {
    const float* r = logits.data() + i * V;
    ids[i] = static_cast<int32_t>(std::max_element(r, r + V) - r);
  }
}

void BatchModel::forward_batch_sample(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                                      const SampleRowParams* params, int32_t* ids) {
  const size_t V = static_cast<size_t>(vocab_size());
  std::vector<float> logits(logit_rows.size() * V);
  forward_batch(b, pool, logit_rows, logits.data());
  for (size_t i = 0; i < logit_rows.size(); ++i)
    ids[i] = sample_row_reference(logits.data() + i * V, static_cast<int64_t>(V), params[i]);
}

void CausalLM::forward_batch_sample(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                                    const SampleRowParams* params, int32_t* ids) {
  const TensorView out = forward_logits(b, pool, logit_rows);
  if (out.empty()) return;
  const int64_t L = out.shape[0];
  TensorView d_ids = arena_.alloc(DType::I32, {L});
  be_.sample_rows(d_ids, out, params);
  if (ids) be_.copy_to_host(ids, d_ids.data, d_ids.nbytes());
}

void CausalLM::forward_batch(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows, float* logits) {
  const TensorView out = forward_logits(b, pool, logit_rows);
  if (logits && !out.empty()) be_.copy_to_host(logits, out.data, out.nbytes());
}

void CausalLM::forward_batch_greedy(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows,
                                    int32_t* ids) {
  const TensorView out = forward_logits(b, pool, logit_rows);
  if (out.empty()) return;
  const int64_t L = out.shape[0];
  TensorView d_ids = arena_.alloc(DType::I32, {L});
  be_.argmax_rows(d_ids, out);
  if (ids) be_.copy_to_host(ids, d_ids.data, d_ids.nbytes());
}

TensorView CausalLM::forward_logits(const Batch& b, KVCache& pool, const std::vector<int64_t>& logit_rows) {
  const int64_t T = b.T, H = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t L = static_cast<int64_t>(logit_rows.size());
  int64_t S = 0;
  for (const auto& s : b.segs) S = std::max(S, s.past + s.n);
  arena_.reserve((static_cast<size_t>(T * H + L * (H + 2 * V + 1)) + layer_workspace_floats(T, S)) * sizeof(float) +
                 64 * 64);
  arena_.reset();
  be_.begin_step(b.ids, b.positions, T, &b.segs);
  // Decode steps (one new token per sequence) launch the same kernels on the same buffers whenever the batch
  // size, the logit rows, the arena and the KV pool are the same: the backend may record them once as a
  // graph and replay it (step inputs are read from device memory).
  bool decode = T <= 512 && (!tp_.comm || tp_.comm->graph_capturable()) && L > 0;
  for (const auto& s : b.segs) decode = decode && s.n == 1;
  uint64_t key = 0;
  if (decode) {
    auto mix = [&key](uint64_t v) { key = (key ^ v) * 0x100000001b3ull + 0x9e3779b97f4a7c15ull; };
    mix(static_cast<uint64_t>(T));
    mix(reinterpret_cast<uintptr_t>(arena_.base()));
    mix(reinterpret_cast<uintptr_t>(pool.k(0).data));
    for (int64_t r : logit_rows) mix(static_cast<uint64_t>(r));
  }
  TensorView x = arena_.alloc(DType::F32, {T, H});
  TensorView xl, out;
  auto run = [&] {
    be_.embedding(x, embed_, b.ids, T);
    layers(x, b, pool);
    if (L == 0) return;
    // Final norm and head only for the rows whose logits are wanted.  // xl [L, H] -> out [L, V]
    // One copy per run of consecutive rows (a decode step wants every row: one launch, not one per sequence).
    xl = arena_.alloc(DType::F32, {L, H});
    for (int64_t i = 0, j; i < L; i = j) {
      for (j = i + 1; j < L && logit_rows[j] == logit_rows[j - 1] + 1;) ++j;
      be_.copy_rows(xl, i, x.rows(logit_rows[i], logit_rows[j - 1] + 1));
    }
    be_.rms_norm(xl, xl, final_norm_, static_cast<float>(cfg_.rms_norm_eps));
    out = arena_.alloc(DType::F32, {L, V});
    if (tp_.comm) {  // [L, V / size] per rank -> [L, V]
      TensorView part = arena_.alloc(DType::F32, {L, lm_head_.out_features()});
      be_.linear(part, xl, lm_head_);
      tp_.comm->all_gather_cols(out, part);
    } else {
      be_.linear(out, xl, lm_head_);
    }
  };
  auto it = decode ? graph_out_.find(key) : graph_out_.end();
  if (it != graph_out_.end() && be_.graph_launch(key)) {
    // Replayed: the logits are where the recorded run wrote them (same arena base, same allocations); the
    // arena's high mark is set past them as the recorded run left it.
    out = TensorView(arena_.base() + it->second.first, DType::F32, {L, V}, x.device);
    arena_.reset_to(it->second.second);
  } else {
    if (decode) be_.graph_begin(key);
    run();
    if (decode) be_.graph_end();
    if (decode)
      graph_out_[key] = {static_cast<size_t>(static_cast<char*>(out.data) - arena_.base()), arena_.used()};
  }
  if (L == 0) return TensorView();
  return out;
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

bool is_cuda_device(const std::string& device) { return device == "cuda" || device.rfind("cuda:", 0) == 0; }

// N of "cuda:N" (0 for "cuda").
int cuda_base_index(const std::string& device) {
  int idx = 0;
  if (device.size() > 5) {
    size_t used = 0;
    try {
      idx = std::stoi(device.substr(5), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSFUSE_CHECK(used > 0 && used == device.size() - 5 && idx >= 0, "device '", device, "': expected cuda:N");
  }
  return idx;
}

// The backend of tensor-parallel rank `rank` for `device`: "cpu", "reference", "cuda" or "cuda:N" (rank r of
// a group on "cuda" uses GPU r; on "cuda:N", GPU N + r).
std::unique_ptr<Backend> make_backend(const std::string& device, int rank, int threads) {
  if (device == "cpu") return make_cpu_backend(threads);
  if (device == "reference") return make_reference_backend();
#ifdef DSFUSE_HAVE_CUDA
  if (is_cuda_device(device)) {
    const int idx = cuda_base_index(device) + rank;
    DSFUSE_CHECK(cuda_device_count() > idx, "device '", device, "'", rank ? cat(" (rank ", rank, ")") : "",
                 ": no such CUDA device (", cuda_device_count(), " found)");
    return make_cuda_backend(idx);
  }
  fail(cat("device '", device, "' is not available (this build supports: cpu, reference, cuda, cuda:N)"));
#else
  fail(cat("device '", device, "' is not available (this build supports: cpu, reference; built without CUDA)"));
#endif
}

class ModelImpl final : public Model {
 public:
  ModelImpl(ModelConfig cfg, std::unique_ptr<Checkpoint> ck, const LoadOptions& opts)
      : cfg_(std::move(cfg)), ck_(std::move(ck)) {
    const int n = std::max(1, opts.tensor_parallel);
    auto it = model_registry().find(cfg_.architecture);
    DSFUSE_CHECK(it != model_registry().end(), "no implementation registered for ", cfg_.architecture);
    for (const auto& name : ck_->names())
      if (name.size() > 20 && name.compare(name.size() - 20, 20, ".rotary_emb.inv_freq") == 0) ck_->mark_ignored(name);
    const bool cuda = is_cuda_device(opts.device);
#ifdef DSFUSE_HAVE_CUDA
    if (n > 1 && cuda) {
#ifndef DSFUSE_HAVE_NCCL
      fail(cat("--tensor-parallel ", n, " on device '", opts.device,
               "' needs NCCL, and this build is built without NCCL (install NCCL and rebuild, or use --device cpu)"));
#endif
      const int base = cuda_base_index(opts.device), found = cuda_device_count();
      DSFUSE_CHECK(base + n <= found, "--tensor-parallel ", n, " needs ", n, " CUDA devices starting at cuda:", base,
                   ", found ", found);
    }
#endif
    // Every rank's backend first (a CUDA group's communicators need them all), then the communicators, then
    // the ranks' weights, one rank after another, each with its device bound to this thread.
    const int threads = opts.threads > 0 ? std::max(1, opts.threads / n) : 0;
    for (int r = 0; r < n; ++r) {
      Rank rank;
      rank.be = make_backend(opts.device, r, n > 1 && threads == 0 ? 1 : threads);
      ranks_.push_back(std::move(rank));
    }
    if (n > 1 && cuda) {
#ifdef DSFUSE_HAVE_NCCL
      std::vector<Backend*> bes;
      for (auto& r : ranks_) bes.push_back(r.be.get());
      comms_ = make_nccl_group(bes);
#endif
    } else if (n > 1) {
      comms_ = make_inprocess_group(n);
    }
    for (int r = 0; r < n; ++r) {
      Rank& rank = ranks_[static_cast<size_t>(r)];
      rank.be->bind_thread();
      rank.wl = std::make_unique<WeightLoader>(*ck_, cfg_, parse_quant_type(opts.quant));
      rank.wl->set_backend(rank.be.get());
      if (n > 1) rank.wl->set_tp(TPInfo{r, n, comms_[static_cast<size_t>(r)].get()});
      rank.lm = it->second(cfg_, *rank.wl, *rank.be);
    }
    ranks_[0].be->bind_thread();
    if (n > 1) {
      std::vector<CausalLM*> lms;
      for (auto& r : ranks_) lms.push_back(r.lm.get());
      group_ = std::make_unique<TPGroup>(lms, *ranks_[0].be);
    }
    const auto extra = ck_->unused();
    if (!extra.empty()) {
      std::string list;
      for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", '" : "'") + extra[i] + "'";
      if (extra.size() > 5) list += cat(" and ", extra.size() - 5, " more");
      fail(cat("unexpected tensor", extra.size() > 1 ? "s " : " ", list, " in ", ck_->file_of(extra[0]),
               ": not part of ", cfg_.architecture, " with this config.json"));
    }
    log::info(cat("loaded ", cfg_.architecture, " from ", ck_->root().string(), n > 1 ? cat(", tensor-parallel ", n) : ""));
  }

  ~ModelImpl() override {
    // The group's threads first, then the communicators (an NCCL group waits for each GPU's queued work),
    // then each rank's model, loader and backend with its device bound (device memory and streams are
    // released on the GPU they belong to).
    group_.reset();
    comms_.clear();
    for (auto it = ranks_.rbegin(); it != ranks_.rend(); ++it) {
      try {
        it->be->bind_thread();
      } catch (const std::exception&) {
      }
      it->lm.reset();
      it->wl.reset();
      it->be.reset();
    }
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
    auto probe = model().new_cache(1);
    m.kv_bytes_per_token = static_cast<int64_t>(probe->bytes_per_token());
    m.kv_layout = ranks_[0].lm->kv_layout();
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
    return std::make_unique<SequenceImpl>(model().new_cache(max_tokens));
  }

  BatchModel& model() const { return group_ ? static_cast<BatchModel&>(*group_) : *ranks_[0].lm; }

  void forward(Sequence& seq, std::span<const int32_t> ids, std::vector<float>& logits, bool all_logits) override {
    auto* s = dynamic_cast<SequenceImpl*>(&seq);
    DSFUSE_CHECK(s, "sequence was not created by this model");
    logits.resize(static_cast<size_t>((all_logits ? ids.size() : 1) * cfg_.vocab_size));
    forward_sequence(model(), ids.data(), static_cast<int64_t>(ids.size()), *s->cache, logits.data(), all_logits);
  }

 private:
  struct Rank {
    std::unique_ptr<Backend> be;
    std::unique_ptr<WeightLoader> wl;
    std::unique_ptr<CausalLM> lm;
  };
  ModelConfig cfg_;
  std::unique_ptr<Checkpoint> ck_;
  std::vector<Rank> ranks_;  // members of a rank are destroyed lm -> wl -> be
  std::vector<std::unique_ptr<Communicator>> comms_;  // destroyed before the backends (also when loading fails)
  std::unique_ptr<TPGroup> group_;
};

}  // namespace

std::string resolve_device(const std::string& device) {
  if (device != "auto") return device;
#ifdef DSFUSE_HAVE_CUDA
  if (cuda_device_count() > 0) return "cuda";
#endif
  return "cpu";
}

std::unique_ptr<Backend> make_device_backend(const std::string& device, int rank, int threads) {
  return make_backend(resolve_device(device), rank, threads);
}

BatchModel& batch_model(Model& m) {
  auto* impl = dynamic_cast<ModelImpl*>(&m);
  DSFUSE_CHECK(impl, "model was not created by Model::load");
  return impl->model();
}

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir, const LoadOptions& opts) {
  ModelConfig cfg = load_config(dir);
  LoadOptions o = opts;
  o.device = resolve_device(opts.device);
  return std::make_unique<ModelImpl>(std::move(cfg), std::make_unique<Checkpoint>(dir), o);
}

std::unique_ptr<Model> Model::load_dummy(const std::filesystem::path& config_json, const LoadOptions& opts,
                                         uint64_t seed) {
  ModelConfig cfg = load_config(config_json);
  cfg.quant = QuantConfig{};  // dummy weights are bf16 (then quantized as opts.quant says)
  cfg.num_nextn_predict_layers = 0;
  LoadOptions o = opts;
  o.device = resolve_device(opts.device);
  // A device backend copies every weight to its own memory: the host side can be views of one value buffer.
  const bool views = o.device.rfind("cpu", 0) != 0;
  return std::make_unique<ModelImpl>(std::move(cfg), Checkpoint::synthetic(seed, views), o);
}

}  // namespace dsfuse
