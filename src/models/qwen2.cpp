// Qwen2ForCausalLM (R1-Distill-Qwen): the Llama decoder with q/k/v bias (config sets qkv_bias) and,
// usually, tied embeddings.
#include "models/llama.h"

namespace dsfuse {

std::unique_ptr<CausalLM> make_qwen2(const ModelConfig& cfg, WeightLoader& wl, Backend& be) {
  DSFUSE_CHECK(cfg.qkv_bias, "Qwen2 config must enable q/k/v bias");
  return std::make_unique<LlamaModel>(cfg, wl, be);
}

}  // namespace dsfuse
