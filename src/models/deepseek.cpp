// DeepseekV2ForCausalLM and DeepseekV3ForCausalLM: multi-head latent attention (MLA) and MoE.
//
// MLA per layer (C = kv_lora_rank, R = qk_rope_head_dim, Dn = qk_nope_head_dim, Dv = v_head_dim):
//   q      = q_b(norm(q_a(h))) or q_proj(h)                  // [T, H, Dn + R]
//   kv_a   = kv_a_proj_with_mqa(h)                          // [T, C + R]
//   latent = kv_a_layernorm(kv_a[:, :C])  -> cache          // [T, C]
//   k_pe   = rope(kv_a[:, C:])            -> cache          // [T, R], shared by all heads
//   attention in absorbed form over the cache, kv_b_proj folded into the query (key part) and the
//   output (value part), as DeepSeek's inference code does; only C + R values per token per layer
//   are cached.
// MoE per layer (after first_k_dense_replace, every moe_layer_freq): router -> top-k experts
// (greedy / group_limited_greedy / noaux_tc), experts run over the tokens routed to them, plus the
// shared experts.
#include <cmath>

#include "core/log.h"

#include "models/model.h"
#include "ops/rope.h"

namespace dsfuse {
namespace {

class DeepseekModel final : public CausalLM {
 public:
  // Tensor parallelism: q_a/kv_a (the latent) are replicated and every rank caches the whole latent;
  // q_b and kv_b are split by heads, o_proj is row-parallel; dense and shared-expert MLPs are
  // column/row-parallel; routed experts are split across ranks (expert parallel: each rank runs its own
  // experts on every token); one all-reduce after attention and one after the feed-forward.
  DeepseekModel(const ModelConfig& cfg, WeightLoader& wl, Backend& be) : CausalLM(cfg, be, wl.tp()) {
    load_common(wl);
    const auto& m = *cfg_.mla;
    const int64_t Hd = cfg_.hidden_size, NH = cfg_.num_attention_heads;
    const int64_t Dq = m.qk_nope_head_dim + m.qk_rope_head_dim;
    tp_.share(NH, "num_attention_heads");
    n_heads_ = NH / tp_.size;
    log::Progress progress(wl.progress_label(), cfg_.num_hidden_layers);
    for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      Layer L;
      L.attn_norm = wl.vector(p + "input_layernorm.weight", Hd);
      L.mlp_norm = wl.vector(p + "post_attention_layernorm.weight", Hd);
      if (m.q_lora_rank > 0) {
        L.q_a = wl.linear(p + "self_attn.q_a_proj", m.q_lora_rank, Hd);
        L.q_a_norm = wl.vector(p + "self_attn.q_a_layernorm.weight", m.q_lora_rank);
        L.q_b = wl.linear(p + "self_attn.q_b_proj", NH * Dq, m.q_lora_rank, false, Split::Column);
      } else {
        L.q_b = wl.linear(p + "self_attn.q_proj", NH * Dq, Hd, false, Split::Column);
      }
      L.kv_a = wl.linear(p + "self_attn.kv_a_proj_with_mqa", m.kv_lora_rank + m.qk_rope_head_dim, Hd);
      L.kv_a_norm = wl.vector(p + "self_attn.kv_a_layernorm.weight", m.kv_lora_rank);
      L.kv_b = wl.linear(p + "self_attn.kv_b_proj", NH * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank, false,
                         Split::Column);
      L.o = wl.linear(p + "self_attn.o_proj", Hd, NH * m.v_head_dim, false, Split::Row);
      if (cfg_.is_moe_layer(l)) {
        const auto& e = *cfg_.moe;
        L.moe = true;
        L.router = wl.linear_exact(p + "mlp.gate", e.n_routed_experts, Hd);
        if (e.topk_method == TopkMethod::NoauxTc)
          L.router_bias = wl.vector(p + "mlp.gate.e_score_correction_bias", e.n_routed_experts);
        const auto [e0, e1] = tp_.share(e.n_routed_experts, "n_routed_experts");
        for (int x = 0; x < e.n_routed_experts; ++x) {
          const std::string q = p + "mlp.experts." + std::to_string(x) + ".";
          ExpertWeights w;  // experts of other ranks stay empty here
          if (x >= e0 && x < e1) {
            w.gate = wl.linear(q + "gate_proj", e.moe_intermediate_size, Hd);
            w.up = wl.linear(q + "up_proj", e.moe_intermediate_size, Hd);
            w.down = wl.linear(q + "down_proj", Hd, e.moe_intermediate_size);
          } else {
            for (const char* t : {"gate_proj", "up_proj", "down_proj"}) wl.skip_linear(q + t);
          }
          L.experts.push_back(w);
        }
        if (e.n_shared_experts > 0) {
          const int64_t Is = static_cast<int64_t>(e.moe_intermediate_size) * e.n_shared_experts;
          L.shared = load_mlp(wl, p + "mlp.shared_experts", Is, Hd);
        }
      } else {
        L.mlp = load_mlp(wl, p + "mlp", cfg_.intermediate_size, Hd);
      }
      layers_.push_back(std::move(L));
      progress.update(l + 1);
    }
    // Multi-token-prediction layers (V3: index num_hidden_layers ...) are recognised, not loaded.
    for (int l = cfg_.num_hidden_layers; l < cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      for (const auto& n : wl.checkpoint().names())
        if (n.compare(0, p.size(), p) == 0) wl.checkpoint().mark_ignored(n);
    }
    rope_ = make_rope_table(cfg_.rope, m.qk_rope_head_dim);
    scale_ = mla_softmax_scale(cfg_);
    if (cfg_.moe) {
      const auto& e = *cfg_.moe;
      router_.n_experts = e.n_routed_experts;
      router_.top_k = e.num_experts_per_tok;
      router_.n_group = e.n_group;
      router_.topk_group = e.topk_group;
      router_.method = e.topk_method == TopkMethod::Greedy ? RouterParams::Method::Greedy
                       : e.topk_method == TopkMethod::GroupLimitedGreedy ? RouterParams::Method::GroupLimitedGreedy
                                                                          : RouterParams::Method::NoauxTc;
      router_.sigmoid = e.scoring == ScoringFunc::Sigmoid;
      router_.norm_topk_prob = e.norm_topk_prob;
      router_.routed_scaling_factor = static_cast<float>(e.routed_scaling_factor);
    }
  }

  std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const override {
    const auto& m = *cfg_.mla;
    return std::make_unique<KVCache>(be_, cfg_.num_hidden_layers, max_tokens, m.kv_lora_rank, m.qk_rope_head_dim);
  }

  std::string kv_layout() const override {
    const auto& m = *cfg_.mla;
    return cat("MLA latent ", m.kv_lora_rank, " + rope key ", m.qk_rope_head_dim, " per layer, f32");
  }

 protected:
  size_t layer_workspace_floats(int64_t T, int64_t S) const override {
    const auto& m = *cfg_.mla;
    const int64_t NH = cfg_.num_attention_heads, Hd = cfg_.hidden_size;
    int64_t inter = cfg_.intermediate_size;
    int64_t moe = 0;
    if (cfg_.moe) {
      const auto& e = *cfg_.moe;
      inter = std::max<int64_t>(inter, static_cast<int64_t>(e.moe_intermediate_size) * std::max(1, e.n_shared_experts));
      moe = T * (e.n_routed_experts + 2 * e.num_experts_per_tok + Hd);
    }
    return static_cast<size_t>(T * (Hd + m.q_lora_rank + NH * (m.qk_nope_head_dim + m.qk_rope_head_dim) +
                                    2 * m.kv_lora_rank + m.qk_rope_head_dim + NH * m.v_head_dim + Hd + 2 * inter + Hd) +
                               moe);
  }

  void layers(TensorView x, const Batch& b, KVCache& kv) override {
    const int32_t* pos = b.positions;
    const auto& m = *cfg_.mla;
    const int64_t T = x.shape[0], Hd = cfg_.hidden_size, NH = n_heads_;
    const int64_t Dn = m.qk_nope_head_dim, R = m.qk_rope_head_dim, Dv = m.v_head_dim, C = m.kv_lora_rank;
    const float eps = static_cast<float>(cfg_.rms_norm_eps);
    // h: the normed input of the next block, one buffer for all layers (residual add and norm are fused);
    // released at the end, so the arena is left as it was found.
    const size_t start = arena_.used();
    TensorView h = arena_.alloc(DType::F32, {T, Hd});
    const size_t mark = arena_.used();
    if (!layers_.empty()) be_.rms_norm(h, x, layers_[0].attn_norm, eps);
    for (size_t l = 0; l < layers_.size(); ++l) {
      const Layer& L = layers_[l];

      // Queries  // q [T, NH, Dn + R]
      TensorView q = arena_.alloc(DType::F32, {T, NH, Dn + R});
      if (!L.q_a.empty()) {
        TensorView qa = arena_.alloc(DType::F32, {T, m.q_lora_rank});
        be_.linear(qa, h, L.q_a);
        be_.rms_norm(qa, qa, L.q_a_norm, eps);
        be_.linear(q.reshape({T, NH * (Dn + R)}), qa, L.q_b);
      } else {
        be_.linear(q.reshape({T, NH * (Dn + R)}), h, L.q_b);
      }
      be_.rope(q, static_cast<int>(Dn), rope_, RopeStyle::Interleaved, pos);

      // Compressed KV  // kv_a [T, C + R] -> latent cache [S, C], rope-key cache [S, R]
      TensorView kv_a = arena_.alloc(DType::F32, {T, C + R});
      be_.linear(kv_a, h, L.kv_a);
      TensorView lat_c = kv.k(static_cast<int>(l)), kpe_c = kv.v(static_cast<int>(l));  // pools [rows, C], [rows, R]
      TensorView latent = arena_.alloc(DType::F32, {T, C});
      be_.mla_store_kv(kv_a, C, L.kv_a_norm, eps, rope_, pos, latent, lat_c, kpe_c, b.segs);

      // Attention (absorbed), every sequence in one call  // q_nope [T, NH, Dn], q_pe [T, NH, R] -> out [T, NH, Dv]
      TensorView q_nope = q;
      q_nope.shape[2] = Dn;
      TensorView q_pe = q;
      q_pe.data = q.ptr<float>() + Dn;
      q_pe.shape[2] = R;
      TensorView attn = arena_.alloc(DType::F32, {T, NH, Dv});
      be_.mla_attention_segs(attn, q_nope, q_pe, lat_c, kpe_c, L.kv_b, scale_, b.segs);
      TensorView o = arena_.alloc(DType::F32, {T, Hd});
      be_.linear(o, attn.reshape({T, NH * Dv}), L.o);
      all_reduce(o);
      be_.add_rms_norm(x, o, h, L.mlp_norm, eps);  // x += o; h = norm(x)

      // Feed-forward
      if (L.moe) {
        const int64_t E = router_.n_experts, K = router_.top_k;
        TensorView logits = arena_.alloc(DType::F32, {T, E});
        be_.linear(logits, h, L.router);
        TensorView ids = arena_.alloc(DType::I32, {T, K});
        TensorView wts = arena_.alloc(DType::F32, {T, K});
        be_.moe_route(ids, wts, logits, L.router_bias, router_);
        be_.moe_experts(o, h, ids, wts, L.experts);
        if (!L.shared.down.empty()) {
          TensorView so = arena_.alloc(DType::F32, {T, Hd});
          mlp(so, h, L.shared);
          be_.add(o, so);
        }
      } else {
        mlp(o, h, L.mlp);
      }
      all_reduce(o);
      if (l + 1 < layers_.size()) be_.add_rms_norm(x, o, h, layers_[l + 1].attn_norm, eps);
      else be_.add(x, o);
      arena_.reset_to(mark);
    }
    arena_.reset_to(start);
  }

 private:
  struct Layer {
    TensorView attn_norm, mlp_norm, q_a_norm, kv_a_norm;
    Linear q_a, q_b, kv_a, kv_b, o;
    bool moe = false;
    MlpWeights mlp, shared;
    Linear router;
    TensorView router_bias;
    std::vector<ExpertWeights> experts;
  };
  std::vector<Layer> layers_;
  RopeTable rope_;
  int64_t n_heads_ = 0;  // attention heads on this rank
  float scale_ = 1.0f;
  RouterParams router_;
};

}  // namespace

std::unique_ptr<CausalLM> make_deepseek(const ModelConfig& cfg, WeightLoader& wl, Backend& be) {
  return std::make_unique<DeepseekModel>(cfg, wl, be);
}

}  // namespace dsfuse
