// DeepSeek MoE gate: expert choice for one token (shared by every CPU-side backend).
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace dsfuse {

// logits [E] f32; bias [E] or nullptr (V3 e_score_correction_bias, used for selection only).
// Writes top_k expert ids and their weights. `scratch` holds at least 3*E + n_group floats.
void route_token(const float* logits, const float* bias, const RouterParams& p, int32_t* ids, float* weights,
                 float* scratch);

}  // namespace dsfuse
