// Element types and scalar conversions. bf16 is kept as uint16_t (g++ 12 has no __bf16).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace dsfuse {

enum class DType : uint8_t { F32, BF16, F16, F8E4M3, I8, I32, I64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: F32, BF16, F16, F8_E4M3, I8, I32, I64
// Parses a safetensors dtype string; returns false for unknown names.
bool dtype_from_safetensors(std::string_view s, DType* out);

inline float bf16_to_f32(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round-to-nearest-even, NaN preserved (as torch does).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// float8_e4m3fn (no infinities; 0x7f/0xff are NaN), through a 256-entry table.
extern const float kF8E4M3Table[256];
inline float f8e4m3_to_f32(uint8_t v) { return kF8E4M3Table[v]; }
uint8_t f32_to_f8e4m3(float f);  // round to nearest even, saturating to +-448

}  // namespace dsfuse
