#include "core/dtype.h"

#include <cmath>

namespace dsfuse {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::F8E4M3: return 1;
    case DType::I8: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F8E4M3: return "F8_E4M3";
    case DType::I8: return "I8";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

bool dtype_from_safetensors(std::string_view s, DType* out) {
  static const struct { const char* n; DType t; } kMap[] = {
      {"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16}, {"F8_E4M3", DType::F8E4M3},
      {"I8", DType::I8},   {"I32", DType::I32},   {"I64", DType::I64}};
  for (const auto& m : kMap)
    if (s == m.n) {
      *out = m.t;
      return true;
    }
  return false;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(man), -24);
  else if (exp == 31) v = man ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(man | 0x400u), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

uint16_t f32_to_f16(float f) {
  // Through the hardware-independent path: round to nearest even.
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (x < 0x38800000u) {                                                // subnormal or zero
    float a;
    std::memcpy(&a, &x, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t r = x + 0xfffu + ((x >> 13) & 1u) - (112u << 23);
  return static_cast<uint16_t>(sign | (r >> 13));
}

namespace {
struct F8Table {
  float v[256];
  F8Table() {
    for (int i = 0; i < 256; ++i) {
      const int sign = (i >> 7) & 1, exp = (i >> 3) & 0xf, man = i & 7;
      float f;
      if (exp == 15 && man == 7) f = NAN;
      else if (exp == 0) f = std::ldexp(static_cast<float>(man), -9);
      else f = std::ldexp(static_cast<float>(8 + man), exp - 10);
      v[i] = sign ? -f : f;
    }
  }
};
const F8Table kTable;
}  // namespace

const float kF8E4M3Table[256] = {
#define R(i) kTable.v[i]
#define R8(i) R(i), R(i + 1), R(i + 2), R(i + 3), R(i + 4), R(i + 5), R(i + 6), R(i + 7)
#define R64(i) R8(i), R8(i + 8), R8(i + 16), R8(i + 24), R8(i + 32), R8(i + 40), R8(i + 48), R8(i + 56)
    R64(0), R64(64), R64(128), R64(192)
#undef R64
#undef R8
#undef R
};

uint8_t f32_to_f8e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;
  // Search the positive half of the table for the nearest value (ties to even code).
  int best = 0;
  float bd = INFINITY;
  for (int i = 0; i < 0x7f; ++i) {
    float d = std::fabs(kTable.v[i] - a);
    if (d < bd || (d == bd && (i & 1) == 0)) {
      bd = d;
      best = i;
    }
  }
  return static_cast<uint8_t>(sign | best);
}

}  // namespace dsfuse
