// libFuzzer target: parse + render arbitrary template text. Any dsfuse::Error is a fine outcome;
// a crash, sanitizer report, other exception type or timeout is a bug.
//   CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DDSFUSE_FUZZ=ON -DDSFUSE_TESTS=OFF \
//     -DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link,address && cmake --build build-fuzz -j2 --target fuzz_jinja
//   ./build-fuzz/fuzz_jinja -dict=fuzz/jinja.dict -max_total_time=60 CORPUS_DIR
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/jinja.h"

namespace {

const nlohmann::ordered_json& context() {
  static const nlohmann::ordered_json ctx = nlohmann::ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "You are helpful."},
      {"role": "user", "content": "héllo\n<tool_response>x</tool_response>"},
      {"role": "assistant", "content": "<think>\nhm\n</think>\n\nok", "reasoning_content": null,
       "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": [1, 2.5, null, true]}}}]},
      {"role": "tool", "content": "{\"t\": 1}"},
      {"role": "assistant", "content": null}
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>", "n": 3, "f": 0.5
  })");
  return ctx;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;
  std::string src(reinterpret_cast<const char*>(data), size);
  try {
    dsfuse::tmpl::Template t(src);
    t.limits.max_output = 1 << 20;
    t.limits.max_steps = 20000;
    t.limits.max_call_depth = 30;
    t.render(context());
  } catch (const dsfuse::Error&) {
  }
  return 0;
}
