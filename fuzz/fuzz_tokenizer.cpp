// libFuzzer target for the tokenizer. The first input byte picks a mode:
//   0/1  text: encode (add_special = bit 0); valid UTF-8 must round-trip exactly through decode() and the
//        StreamDecoder; invalid UTF-8 must raise dsfuse::Error (never crash)
//   2    ids: the bytes as little-endian uint32 ids (some out of range) -> decode / StreamDecoder: either a
//        dsfuse::Error or valid UTF-8, and streamed pieces concatenate to decode()
//   3    tokenizer.json loader: the bytes as a tokenizer.json document; must load or raise dsfuse::Error
// Tokenizer: $DSFUSE_FUZZ_TOKENIZER (dir or tokenizer.json), default fixtures/tokenizers/deepseek_v3. Exact
// round trip holds for tokenizers without a normalizer (DeepSeek-V3, Llama 3); set DSFUSE_FUZZ_ROUNDTRIP=0
// for others (Qwen's NFC).
//
// Build (separate build dir; instrument the library too):
//   CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DDSFUSE_FUZZ=ON -DDSFUSE_TESTS=OFF \
//     -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address"
//   cmake --build build-fuzz -j2 --target fuzz_tokenizer && build-fuzz/fuzz_tokenizer -max_total_time=60
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using dsfuse::tok::StreamDecoder;
using dsfuse::tok::Tokenizer;

static const Tokenizer& tokenizer() {
  static Tokenizer t = [] {
    const char* p = std::getenv("DSFUSE_FUZZ_TOKENIZER");
    std::string path = p ? p : std::string(DSFUSE_DEFAULT_FIXTURES) + "/tokenizers/deepseek_v3";
    return Tokenizer::load(path);
  }();
  return t;
}

static bool roundtrip_expected() {
  static bool rt = [] {
    const char* e = std::getenv("DSFUSE_FUZZ_ROUNDTRIP");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return rt;
}

static bool valid_utf8(std::string_view s) { return dsfuse::tok::utf8_invalid_offset(s) == std::string_view::npos; }

static void check(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "fuzz_tokenizer: invariant violated: %s\n", what);
    std::abort();
  }
}

static std::string stream(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  StreamDecoder sd(tok);
  std::string all;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    check(valid_utf8(piece), "stream piece is not valid UTF-8");
    all += piece;
  }
  return all + sd.flush();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Tokenizer& tok = tokenizer();
  int mode = data[0] & 3;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode <= 1) {
    bool valid = valid_utf8(rest);
    std::vector<int32_t> ids;
    try {
      ids = tok.encode(rest, mode == 1);
    } catch (const dsfuse::Error&) {
      check(!valid, "encode threw on valid UTF-8");
      return 0;
    }
    check(valid, "encode accepted invalid UTF-8");
    for (int32_t id : ids) check(id >= 0 && size_t(id) < tok.vocab_size(), "encode produced an out-of-range id");
    std::string back = tok.decode(tok.encode(rest, false));
    if (roundtrip_expected()) check(back == rest, "decode(encode(text)) != text");
    check(stream(tok, ids) == tok.decode(ids), "stream != decode");
  } else if (mode == 2) {
    std::vector<int32_t> ids;
    uint32_t limit = uint32_t(tok.vocab_size()) + 16;
    for (size_t i = 0; i + 4 <= rest.size(); i += 4) {
      uint32_t v;
      std::memcpy(&v, rest.data() + i, 4);
      ids.push_back(int32_t(v % limit));
    }
    std::string text;
    try {
      text = tok.decode(ids, data[0] & 4);
    } catch (const dsfuse::Error&) {
      return 0;
    }
    check(valid_utf8(text), "decode produced invalid UTF-8");
    check(stream(tok, ids) == tok.decode(ids), "stream != decode");
  } else {
    try {
      Tokenizer t = Tokenizer::from_json(rest, {}, "fuzz.json");
      auto ids = t.encode("Hello wörld 123 😀", true);
      (void)t.decode(ids);
    } catch (const dsfuse::Error&) {
    }
  }
  return 0;
}
