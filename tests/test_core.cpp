#include <gtest/gtest.h>

#include <cmath>

#include "core/arena.h"
#include "core/dtype.h"
#include "core/tensor.h"

using namespace dsfuse;

TEST(DType, Bf16RoundTripAndRounding) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(-3.5f)), -3.5f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16) {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f})
    EXPECT_EQ(f16_to_f32(f32_to_f16(v)), v) << v;
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
}

TEST(DType, F8E4M3) {
  EXPECT_EQ(f8e4m3_to_f32(0x00), 0.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7f)));
  for (int i = 0; i < 256; ++i) {
    if ((i & 0x7f) == 0x7f) continue;
    float f = f8e4m3_to_f32(static_cast<uint8_t>(i));
    if (f == 0.0f) continue;
    EXPECT_EQ(f32_to_f8e4m3(f), i) << i;
  }
  EXPECT_EQ(f32_to_f8e4m3(1000.0f), 0x7e);
}

TEST(Tensor, ViewsAndArena) {
  Arena a(1 << 16);
  TensorView t = a.alloc(DType::F32, {4, 8});
  EXPECT_EQ(t.numel(), 32);
  EXPECT_TRUE(t.contiguous());
  EXPECT_EQ(t.stride[0], 8);
  TensorView r = t.rows(1, 3);
  EXPECT_EQ(r.shape[0], 2);
  EXPECT_EQ(r.ptr<float>(), t.ptr<float>() + 8);
  EXPECT_EQ(t.reshape({2, 16}).shape[1], 16);
  EXPECT_THROW(t.reshape({3, 3}), Error);
  EXPECT_THROW(t.rows(3, 5), Error);
  EXPECT_THROW(a.alloc(DType::F32, {1 << 20}), Error);
  a.reset();
  EXPECT_EQ(a.used(), 0u);
}
