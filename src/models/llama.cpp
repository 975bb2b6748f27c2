#include "models/llama.h"

#include <cmath>

#include "core/log.h"

namespace dsfuse {

// Tensor parallelism: q/k/v and gate/up are column-parallel (heads and intermediate units split across
// ranks), o and down row-parallel (partial sums all-reduced); each rank caches its own KV heads.
LlamaModel::LlamaModel(const ModelConfig& cfg, WeightLoader& wl, Backend& be) : CausalLM(cfg, be, wl.tp()) {
  load_common(wl);
  const int64_t H = cfg_.hidden_size, D = cfg_.head_dim, I = cfg_.intermediate_size;
  const int n = tp_.size;
  tp_.share(cfg_.num_attention_heads, "num_attention_heads");
  tp_.share(cfg_.num_key_value_heads, "num_key_value_heads");
  n_heads_ = cfg_.num_attention_heads / n;
  n_kv_heads_ = cfg_.num_key_value_heads / n;
  const int64_t q_full = cfg_.num_attention_heads * D, kv_full = cfg_.num_key_value_heads * D;
  q_dim_ = n_heads_ * D;
  kv_dim_ = n_kv_heads_ * D;
  log::Progress progress(wl.progress_label(), cfg_.num_hidden_layers);
  for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer L;
    L.attn_norm = wl.vector(p + "input_layernorm.weight", H);
    L.mlp_norm = wl.vector(p + "post_attention_layernorm.weight", H);
    L.qkv = wl.linear_fused({{p + "self_attn.q_proj", q_full}, {p + "self_attn.k_proj", kv_full},
                             {p + "self_attn.v_proj", kv_full}},
                            H, cfg_.qkv_bias, Split::Column);
    if (L.qkv.empty()) {
      L.q = wl.linear(p + "self_attn.q_proj", q_full, H, cfg_.qkv_bias, Split::Column);
      L.k = wl.linear(p + "self_attn.k_proj", kv_full, H, cfg_.qkv_bias, Split::Column);
      L.v = wl.linear(p + "self_attn.v_proj", kv_full, H, cfg_.qkv_bias, Split::Column);
    }
    L.o = wl.linear(p + "self_attn.o_proj", H, q_full, cfg_.attention_bias, Split::Row);
    L.mlp = load_mlp(wl, p + "mlp", I, H, cfg_.mlp_bias);
    layers_.push_back(std::move(L));
    progress.update(l + 1);
  }
  rope_ = make_rope_table(cfg_.rope, static_cast<int>(D));
}

std::unique_ptr<KVCache> LlamaModel::new_cache(int64_t max_tokens) const {
  return std::make_unique<KVCache>(be_, cfg_.num_hidden_layers, max_tokens, kv_dim_, kv_dim_);
}

std::string LlamaModel::kv_layout() const {
  return cat("K and V: ", n_kv_heads_, " kv heads x ", cfg_.head_dim, " per layer", tp_.size > 1 ? " per rank" : "", ", f32");
}

size_t LlamaModel::layer_workspace_floats(int64_t T, int64_t S) const {
  const int64_t H = cfg_.hidden_size;
  return static_cast<size_t>(T * (H + q_dim_ + 2 * kv_dim_ + q_dim_ + H + 2 * cfg_.intermediate_size + H));
}

void LlamaModel::layers(TensorView x, const Batch& b, KVCache& kv) {
  const int64_t T = x.shape[0], H = cfg_.hidden_size, D = cfg_.head_dim;
  const int64_t Hq = n_heads_, Hkv = n_kv_heads_;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  // h: the normed input of the next block, one buffer for all layers (residual add and norm are fused);
  // released at the end, so the arena is left as it was found.
  const size_t start = arena_.used();
  TensorView h = arena_.alloc(DType::F32, {T, H});
  const size_t mark = arena_.used();
  // Decode steps on a backend that folds the norms into the next projection and the residual adds into the
  // previous one's output (2 kernels fewer per layer; CUDA: bf16 models with a fused q/k/v weight under 16 MB,
  // or as DSFUSE_CUDA_FUSE_NORM says): x stays the residual stream throughout.
  const bool fuse = !layers_.empty() && !tp_.comm && !layers_[0].qkv.empty() && !layers_[0].mlp.gate_up.empty() &&
                    be_.fuses_norm_linear(T, layers_[0].qkv);
  if (!layers_.empty() && !fuse) be_.rms_norm(h, x, layers_[0].attn_norm, eps);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    TensorView q, k, v;  // [T, Hq, D], [T, Hkv, D] x 2
    if (!L.qkv.empty()) {  // one GEMM, then strided views of its columns  // qkv [T, (Hq + 2 Hkv) * D]
      const int64_t W = (Hq + 2 * Hkv) * D;
      TensorView qkv = arena_.alloc(DType::F32, {T, W});
      if (fuse) be_.rms_norm_linear(qkv, x, L.attn_norm, eps, L.qkv, h);
      else be_.linear(qkv, h, L.qkv);
      auto heads = [&](int64_t c0, int64_t n) {
        TensorView t = qkv;
        t.data = qkv.ptr<float>() + c0;
        t.ndim = 3;
        t.shape = {T, n, D, 0};
        t.stride = {W, D, 1, 0};
        return t;
      };
      q = heads(0, Hq);
      k = heads(Hq * D, Hkv);
      v = heads((Hq + Hkv) * D, Hkv);
    } else {
      q = arena_.alloc(DType::F32, {T, Hq, D});
      k = arena_.alloc(DType::F32, {T, Hkv, D});
      v = arena_.alloc(DType::F32, {T, Hkv, D});
      be_.linear(q.reshape({T, Hq * D}), h, L.q);  // [T, Hq*D]
      be_.linear(k.reshape({T, Hkv * D}), h, L.k);  // [T, Hkv*D]
      be_.linear(v.reshape({T, Hkv * D}), h, L.v);  // [T, Hkv*D]
      be_.rope(q, 0, rope_, RopeStyle::Neox, b.positions);
      be_.rope(k, 0, rope_, RopeStyle::Neox, b.positions);
    }
    TensorView kc = kv.k(static_cast<int>(l)), vc = kv.v(static_cast<int>(l));  // pool [rows, Hkv*D]
    const int64_t R = kc.shape[0];
    TensorView attn = arena_.alloc(DType::F32, {T, Hq, D});
    auto flat = [&](TensorView t) {  // [T, Hkv, D] (row stride kept) -> [T, Hkv * D]
      t.ndim = 2;
      t.shape = {T, Hkv * D, 0, 0};
      t.stride = {t.stride[0], 1, 0, 0};
      return t;
    };
    if (!L.qkv.empty()) {  // q and k heads are adjacent: rope and both cache writes in one op
      TensorView qk = q;
      qk.shape[1] = Hq + Hkv;
      be_.rope_store_kv(qk, Hq, rope_, b.positions, kc, vc, v, b.segs);
    } else {
      be_.copy_rows_segs(kc, flat(k), b.segs);
      be_.copy_rows_segs(vc, flat(v), b.segs);
    }
    be_.attention_segs(attn, q, kc.reshape({R, Hkv, D}), vc.reshape({R, Hkv, D}), scale, b.segs);
    TensorView o = arena_.alloc(DType::F32, {T, H});
    if (fuse) {  // x += attn Wo^T; g = SwiGLU(norm(x)); x += g Wd^T  // g [T, I]
      be_.linear_add(x, attn.reshape({T, Hq * D}), L.o, o);
      TensorView g = arena_.alloc(DType::F32, {T, L.mlp.inter()});
      be_.rms_norm_linear_silu(g, x, L.mlp_norm, eps, L.mlp.gate_up, h);
      be_.linear_add(x, g, L.mlp.down, o);
      arena_.reset_to(mark);
      continue;
    }
    be_.linear(o, attn.reshape({T, Hq * D}), L.o);
    all_reduce(o);
    be_.add_rms_norm(x, o, h, L.mlp_norm, eps);  // x += o; h = norm(x)
    mlp(o, h, L.mlp);
    all_reduce(o);
    if (l + 1 < layers_.size()) be_.add_rms_norm(x, o, h, layers_[l + 1].attn_norm, eps);
    else be_.add(x, o);
    arena_.reset_to(mark);  // release this layer's activations (the arena is a stack)
  }
  arena_.reset_to(start);
}

std::unique_ptr<CausalLM> make_llama(const ModelConfig& cfg, WeightLoader& wl, Backend& be) {
  return std::make_unique<LlamaModel>(cfg, wl, be);
}

}  // namespace dsfuse
