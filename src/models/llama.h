// Llama-style dense decoder (DeepSeek-LLM/Coder, R1-Distill-Llama; Qwen2 reuses it with q/k/v bias).
#pragma once
#include "models/model.h"
#include "ops/rope.h"

namespace dsfuse {

class LlamaModel : public CausalLM {
 public:
  LlamaModel(const ModelConfig& cfg, WeightLoader& wl, Backend& be);
  std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const override;
  std::string kv_layout() const override;

 protected:
  void layers(TensorView x, const Batch& b, KVCache& kv) override;
  size_t layer_workspace_floats(int64_t T, int64_t S) const override;

 private:
  struct Layer {
    TensorView attn_norm, mlp_norm;
    Linear q, k, v, o;
    Linear qkv;  // [q + 2 kv, H] on device backends (q/k/v then empty)
    MlpWeights mlp;
  };
  std::vector<Layer> layers_;
  RopeTable rope_;
  int64_t n_heads_, n_kv_heads_;  // on this rank
  int64_t q_dim_, kv_dim_;
};

}  // namespace dsfuse
