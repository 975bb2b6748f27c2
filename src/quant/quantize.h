// Weight quantization at load time: per-output-channel int8, symmetric or with a zero point.
// A quantized Linear has w: I8 [N, K], scale: F32 [N, G] (one per group of K/G consecutive columns of a
// row; G = 1 is per row) and, for int8-asym, zero: F32 [N, G]:
//   W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g],  g = k / (K / G)
// Groups are 128 columns (like llama.cpp's Q8_0 blocks, but 4x longer: 8.25 bits per weight), or the
// largest power of two >= 16 dividing K, else the whole row; $DSFUSE_INT8_GROUP overrides (0: per row).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/arena.h"

namespace dsfuse {

enum class QuantType { None, Int8, Int8Asym };

QuantType parse_quant_type(const std::string& s);  // "none" | "int8" | "int8-asym"
const char* quant_type_name(QuantType q);

// Returns the quantized copy of `w` (any stored format, FP8 blocks included); its bytes are appended
// to `store`, which must outlive the result. Biases are kept as they are.
int64_t int8_group_size(int64_t K);  // columns per scale group for rows of K columns

Linear quantize_linear(const Linear& w, QuantType q, std::vector<std::unique_ptr<Buffer>>& store);

}  // namespace dsfuse
