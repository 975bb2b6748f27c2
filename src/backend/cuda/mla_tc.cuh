// MLA decode attention (absorbed form) on tensor cores: see mla_tc.cu.
#pragma once
#include <cstdint>

#include "backend/cuda/common.cuh"

namespace dsfuse::cuda {

// Whether mla_tc handles these shapes on the current device: C % 8 == 0, C <= 512, R % 8 == 0, R <= 64,
// compute capability >= 8.0 and enough opt-in shared memory per block (~157 KiB).
bool mla_tc_supported(int64_t H, int R, int C);
// cp.async needs 16-byte aligned cache rows.
inline bool mla_tc_aligned(const void* lat, int64_t ll0, const void* kpe, int64_t lk0) {
  return reinterpret_cast<uintptr_t>(lat) % 16 == 0 && reinterpret_cast<uintptr_t>(kpe) % 16 == 0 && ll0 % 4 == 0 &&
         lk0 % 4 == 0;
}
// Key splits for T tokens of H heads whose longest context is max_keys (cached + new) on `sms` SMs; max_keys
// <= 0: unknown (a CUDA graph being recorded is replayed at longer contexts). Any split count is correct for
// any context (splits past the end are empty); this only picks a fast one.
int mla_tc_splits(int64_t T, int64_t H, int64_t max_keys, int R, int C, int sms);
// Scratch (floats): the absorbed queries [T, H, C + R] and the split partials [T, H, nsplit, C + 2].
inline int64_t mla_tc_q_floats(int64_t T, int64_t H, int R, int C) { return T * H * (C + R); }
inline int64_t mla_tc_part_floats(int64_t T, int64_t H, int C, int nsplit) { return T * H * nsplit * (C + 2); }
// Same arguments as mla_segs: out [T, H, Dv] = MLA attention of every token over its segment's cache
// (latent [rows, C] stride ll0, k_pe [rows, R] stride lk0), W_UK / W_UV from kv_b `w`; part and qcat are
// scratch of the sizes above.
void mla_tc(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
            const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0, const float* kpe,
            int64_t lk0, const WDesc& w, int64_t T, int64_t H, int Dn, int Dv, int R, int C, float scale,
            const SegMeta& m, float* part, int nsplit, float* qcat);

// tc2 (DSFUSE_CUDA_MLA=tc2): the same computation with 8 warps per block, 16-key tiles in a 5-stage cp.async
// ring and 2 barriers per tile (see mla_tc.cu). Same scratch layout (qcat, part with mla_tc_part_floats) and
// the same alignment rule; its own split heuristic (~189 KB of shared memory per block: 1 block per SM).
bool mla_tc2_supported(int64_t H, int R, int C);
int mla_tc2_splits(int64_t T, int64_t H, int64_t max_keys, int R, int C, int sms);
void mla_tc2(cudaStream_t st, float* out, int64_t lo0, int64_t lo1, const float* qn, int64_t lqn0, int64_t lqn1,
             const float* qpe, int64_t lqp0, int64_t lqp1, const float* lat, int64_t ll0, const float* kpe,
             int64_t lk0, const WDesc& w, int64_t T, int64_t H, int Dn, int Dv, int R, int C, float scale,
             const SegMeta& m, float* part, int nsplit, float* qcat);

}  // namespace dsfuse::cuda
