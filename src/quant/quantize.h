// Weight quantization at load time: per-output-channel int8, symmetric or with a zero point.
// A quantized Linear has w: I8 [N, K], scale: F32 [N] (one per row) and, for int8-asym, zero: F32 [N]:
//   W[n, k] = (q[n, k] - zero[n]) * scale[n]
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
Linear quantize_linear(const Linear& w, QuantType q, std::vector<std::unique_ptr<Buffer>>& store);

}  // namespace dsfuse
