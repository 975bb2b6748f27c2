// libFuzzer target: the safetensors header parser must reject any malformed input with dsfuse::Error
// and never crash, hang or read out of bounds. Build: cmake -DDSFUSE_FUZZ=ON with clang (see README).
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "loader/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    uint64_t off = 0;
    auto tensors = dsfuse::parse_safetensors_header(data, size, "fuzz.safetensors", &off);
    // Every accepted tensor must lie inside the input.
    for (const auto& t : tensors)
      if (off + t.end > size) __builtin_trap();
  } catch (const dsfuse::Error&) {
  }
  return 0;
}
