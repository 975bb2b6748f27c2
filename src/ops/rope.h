// Rotary-embedding frequency tables for every rope_type we support (default, linear, llama3, YaRN),
// computed as Hugging Face computes them (float32 inverse frequencies).
#pragma once
#include "backend/backend.h"
#include "loader/config.h"

namespace dsfuse {

// rot_dim: rotated dimensions per head (head_dim for Llama/Qwen2, qk_rope_head_dim for MLA).
RopeTable make_rope_table(const RopeConfig& rope, int rot_dim);

// YaRN's mscale: 0.1 * m * ln(factor) + 1 for factor > 1, else 1.
double yarn_get_mscale(double factor, double m);

// Softmax scale of MLA attention: (qk_nope + qk_rope)^-0.5, times mscale² under YaRN with
// mscale_all_dim (DeepSeek's own code, vLLM, SGLang).
float mla_softmax_scale(const ModelConfig& c);

}  // namespace dsfuse
