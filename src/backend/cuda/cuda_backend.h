// CUDA backend factory (declared without CUDA headers; defined only when built with DSFUSE_CUDA).
#pragma once
#include <memory>

#include "backend/backend.h"

namespace dsfuse {

// Number of usable CUDA devices (0 without a driver or GPU).
int cuda_device_count();
// The CUDA backend on device `device`. DSFUSE_CUDA_F32=1 upcasts weights to f32 at prepare() time so every
// GEMM runs in f32 (parity testing); otherwise bf16/f16/FP8 weights are used as stored (bf16 tensor-core
// GEMMs for prefill, an f32-activation streaming GEMV for T <= 8).
std::unique_ptr<Backend> make_cuda_backend(int device = 0);

}  // namespace dsfuse
