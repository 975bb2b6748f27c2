#include "tokenizer/unicode.h"

#include <utf8proc.h>

namespace dsfuse::tok {

// Length of the valid UTF-8 sequence at s[i], or 0 when invalid; `maximal` receives the length of the
// maximal subpart of an ill-formed sequence (>= 1) as defined by Unicode (what from_utf8_lossy replaces).
static size_t utf8_valid_at(std::string_view s, size_t i, size_t* maximal) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size();
  unsigned char c = p[i];
  if (c < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    need = 1;
  } else if (c >= 0xe0 && c <= 0xef) {
    need = 2;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    need = 3;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    if (maximal) *maximal = 1;
    return 0;
  }
  size_t k = 1;
  for (; k <= need; ++k) {
    if (i + k >= n) break;
    unsigned char b = p[i + k];
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) break;
  }
  if (k == need + 1) return need + 1;
  if (maximal) *maximal = k;
  return 0;
}

size_t utf8_invalid_offset(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    // ASCII fast path, 8 bytes at a time
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    size_t len = utf8_valid_at(s, i, nullptr);
    if (!len) return i;
    i += len;
  }
  return std::string_view::npos;
}

uint32_t utf8_next(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  unsigned char c = p[i];
  size_t len = utf8_len(c);
  if (i + len > s.size()) len = 1;
  uint32_t cp;
  switch (len) {
    case 1: cp = c; break;
    case 2: cp = ((c & 0x1fu) << 6) | (p[i + 1] & 0x3fu); break;
    case 3: cp = ((c & 0x0fu) << 12) | ((p[i + 1] & 0x3fu) << 6) | (p[i + 2] & 0x3fu); break;
    default: cp = ((c & 0x07u) << 18) | ((p[i + 1] & 0x3fu) << 12) | ((p[i + 2] & 0x3fu) << 6) | (p[i + 3] & 0x3fu);
  }
  i += len;
  return cp;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xc0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xe0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3f)));
    out.push_back(char(0x80 | (cp & 0x3f)));
  } else {
    out.push_back(char(0xf0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3f)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3f)));
    out.push_back(char(0x80 | (cp & 0x3f)));
  }
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0, n = s.size();
  while (i < n) {
    size_t maximal = 1;
    size_t len = utf8_valid_at(s, i, &maximal);
    if (len) {
      out.append(s.data() + i, len);
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      i += maximal;
    }
  }
  return out;
}

const ByteLevelAlphabet& ByteLevelAlphabet::get() {
  static const ByteLevelAlphabet a = [] {
    ByteLevelAlphabet t;
    t.cp_to_byte.fill(-1);
    uint32_t extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      uint32_t cp = keep ? uint32_t(b) : 256 + extra++;
      t.byte_to_cp[b] = cp;
      utf8_append(t.byte_to_utf8[b], cp);
      t.cp_to_byte[cp] = int16_t(b);
    }
    return t;
  }();
  return a;
}

void byte_level_encode(std::string_view bytes, std::string& out) {
  const auto& a = ByteLevelAlphabet::get();
  for (unsigned char c : bytes) out += a.byte_to_utf8[c];
}

bool byte_level_decode(std::string_view token, std::string& out) {
  const auto& a = ByteLevelAlphabet::get();
  size_t start = out.size();
  size_t i = 0;
  while (i < token.size()) {
    uint32_t cp = utf8_next(token, i);
    if (cp >= 512 || a.cp_to_byte[cp] < 0) {
      out.resize(start);
      return false;
    }
    out.push_back(char(a.cp_to_byte[cp]));
  }
  return true;
}

bool is_whitespace_cp(uint32_t c) {
  // Rust char::is_whitespace: White_Space property.
  return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
         c == 0x3000;
}

bool is_numeric_cp(uint32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  auto cat = utf8proc_category(utf8proc_int32_t(c));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

bool is_alphanumeric_cp(uint32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  auto cat = utf8proc_category(utf8proc_int32_t(c));
  switch (cat) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

}  // namespace dsfuse::tok
