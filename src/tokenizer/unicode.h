// UTF-8 helpers for the tokenizer: validation, decoding, GPT-2 byte-level alphabet, lossy conversion with
// the same replacement rules as Rust's String::from_utf8_lossy, Unicode character classes.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsfuse::tok {

// Offset of the first byte that is not part of a valid UTF-8 sequence, or npos when the text is valid.
size_t utf8_invalid_offset(std::string_view s);

// Length of the UTF-8 sequence started by lead byte c (1 for invalid leads).
inline size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xe) return 3;
  if ((c >> 3) == 0x1e) return 4;
  return 1;
}

// Decodes the code point at s[i] (assumes valid UTF-8) and advances i.
uint32_t utf8_next(std::string_view s, size_t& i);
void utf8_append(std::string& out, uint32_t cp);

// Bytes -> String exactly like Rust's String::from_utf8_lossy (one U+FFFD per maximal invalid subpart).
std::string utf8_lossy(std::string_view bytes);

// GPT-2 byte-level alphabet: byte -> code point, and UTF-8 of that code point.
struct ByteLevelAlphabet {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<std::string, 256> byte_to_utf8{};
  // code point (< 512 covers the whole alphabet) -> byte, or -1
  std::array<int16_t, 512> cp_to_byte{};
  static const ByteLevelAlphabet& get();
};

// Maps raw bytes to their byte-level characters.
void byte_level_encode(std::string_view bytes, std::string& out);
// Maps a byte-level token back to bytes; returns false (out untouched) when some char is outside the alphabet.
bool byte_level_decode(std::string_view token, std::string& out);

// Rust char predicates (Unicode): char::is_whitespace, is_alphanumeric, is_numeric.
bool is_whitespace_cp(uint32_t cp);
bool is_alphanumeric_cp(uint32_t cp);
bool is_numeric_cp(uint32_t cp);

}  // namespace dsfuse::tok
