#include "tokenizer/json_scan.h"

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsfuse::tok {

using json = nlohmann::json;

namespace {

class Scanner {
 public:
  Scanner(std::string_view text, const std::string& origin)
      : b_(text.data()), p_(text.data()), e_(text.data() + text.size()), origin_(origin) {}

  [[noreturn]] void error(const std::string& what) const {
    fail(cat(origin_, ": invalid JSON at byte ", p_ - b_, ": ", what));
  }
  void ws() {
    while (p_ < e_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  char peek() {
    ws();
    return p_ < e_ ? *p_ : '\0';
  }
  bool eat(char c) {
    if (peek() == c) {
      ++p_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) error(cat("expected '", c, "'"));
  }
  bool at_end() {
    ws();
    return p_ >= e_;
  }

  // Decodes a JSON string at the cursor, appending to out.
  void string(std::string& out) {
    if (peek() != '"') error("expected a string");
    ++p_;
    while (true) {
      const char* s = p_;
      while (p_ < e_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20) ++p_;
      out.append(s, size_t(p_ - s));
      if (p_ >= e_) error("unterminated string");
      if (*p_ == '"') {
        ++p_;
        return;
      }
      if (static_cast<unsigned char>(*p_) < 0x20) error("control character in string");
      ++p_;
      if (p_ >= e_) error("unterminated escape");
      char c = *p_++;
      switch (c) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xd800 && cp <= 0xdbff) {
            if (e_ - p_ < 6 || p_[0] != '\\' || p_[1] != 'u') error("unpaired surrogate in \\u escape");
            p_ += 2;
            uint32_t lo = hex4();
            if (lo < 0xdc00 || lo > 0xdfff) error("invalid low surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            error("unpaired surrogate in \\u escape");
          }
          utf8_append(out, cp);
          break;
        }
        default:
          error(cat("invalid escape '\\", c, "'"));
      }
    }
  }

  uint32_t hex4() {
    if (e_ - p_ < 4) error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = *p_++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') v |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= uint32_t(c - 'A' + 10);
      else error("invalid \\u escape");
    }
    return v;
  }

  // Raw text of the value at the cursor (validated later by nlohmann).
  std::string_view skip_value() {
    ws();
    const char* s = p_;
    if (p_ >= e_) error("expected a value");
    if (*p_ == '"') {
      skip_string();
    } else if (*p_ == '{' || *p_ == '[') {
      int depth = 0;
      while (p_ < e_) {
        char c = *p_;
        if (c == '"') {
          skip_string();
          continue;
        }
        ++p_;
        if (c == '{' || c == '[') ++depth;
        else if ((c == '}' || c == ']') && --depth == 0) break;
      }
      if (depth != 0) error("unterminated object or array");
    } else {
      while (p_ < e_ && *p_ != ',' && *p_ != '}' && *p_ != ']' && *p_ != ' ' && *p_ != '\n' && *p_ != '\r' &&
             *p_ != '\t')
        ++p_;
    }
    return std::string_view(s, size_t(p_ - s));
  }

  void skip_string() {
    ++p_;
    while (p_ < e_ && *p_ != '"') p_ += (*p_ == '\\') ? 2 : 1;
    if (p_ >= e_) error("unterminated string");
    ++p_;
  }

  // An integer value; false (cursor after the value) when the value is something else.
  bool integer(int64_t& v) {
    ws();
    const char* s = p_;
    bool neg = false;
    if (p_ < e_ && *p_ == '-') neg = true, ++p_;
    int64_t x = 0;
    int digits = 0;
    while (p_ < e_ && *p_ >= '0' && *p_ <= '9' && digits < 18) x = x * 10 + (*p_++ - '0'), ++digits;
    if (digits == 0 || (p_ < e_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E' || (*p_ >= '0' && *p_ <= '9')))) {
      p_ = s;
      skip_value();
      return false;
    }
    v = neg ? -x : x;
    return true;
  }

  const char* pos() const { return p_; }

 private:
  const char* b_;
  const char* p_;
  const char* e_;
  const std::string& origin_;
};

json parse_part(std::string_view raw, const std::string& origin, const std::string& field) {
  try {
    return json::parse(raw);
  } catch (const json::exception& e) {
    fail(cat(origin, ": invalid JSON in '", field, "': ", e.what()));
  }
}

void parse_vocab(Scanner& sc, BpeData& d, const std::string& origin) {
  d.has_vocab = true;
  sc.expect('{');
  if (sc.eat('}')) return;
  std::string key;
  while (true) {
    key.clear();
    sc.string(key);
    sc.expect(':');
    int64_t id;
    if (!sc.integer(id)) fail(cat(origin, ": model.vocab[\"", key, "\"]: id must be an integer"));
    d.vocab.push_back({d.add(key), id});
    if (sc.eat(',')) continue;
    sc.expect('}');
    return;
  }
}

void parse_merges(Scanner& sc, BpeData& d) {
  d.has_merges = true;
  sc.expect('[');
  if (sc.eat(']')) return;
  while (true) {
    char c = sc.peek();
    if (c == '"') {
      StrRef r{uint32_t(d.arena.size()), 0};
      sc.string(d.arena);
      r.len = uint32_t(d.arena.size() - r.off);
      std::string_view s = d.str(r);
      size_t sp = s.find(' ');
      bool ok = sp != std::string_view::npos && s.find(' ', sp + 1) == std::string_view::npos;
      if (ok)
        d.merges.push_back({{r.off, uint32_t(sp)}, {uint32_t(r.off + sp + 1), uint32_t(r.len - sp - 1)}, true});
      else
        d.merges.push_back({r, r, false});
    } else if (c == '[') {
      sc.expect('[');
      StrRef a{uint32_t(d.arena.size()), 0};
      sc.string(d.arena);
      a.len = uint32_t(d.arena.size() - a.off);
      sc.expect(',');
      StrRef b{uint32_t(d.arena.size()), 0};
      sc.string(d.arena);
      b.len = uint32_t(d.arena.size() - b.off);
      sc.expect(']');
      d.merges.push_back({a, b, true});
    } else {
      sc.skip_value();
      d.merges.push_back({{0, 0}, {0, 0}, false});
    }
    if (sc.eat(',')) continue;
    sc.expect(']');
    return;
  }
}

}  // namespace

TokenizerJson parse_tokenizer_json(std::string_view text, const std::string& origin) {
  TokenizerJson out;
  out.rest = json::object();
  Scanner sc(text, origin);
  if (sc.peek() != '{') {
    // Not an object: let nlohmann produce the precise message (or report the top-level type).
    json j = parse_part(text, origin, "<top level>");
    fail(cat(origin, ": top level must be a JSON object, got ", j.type_name()));
  }
  sc.expect('{');
  std::string key, mkey;
  if (!sc.eat('}')) {
    while (true) {
      key.clear();
      sc.string(key);
      sc.expect(':');
      if (key == "model" && sc.peek() == '{') {
        json& model = out.rest["model"] = json::object();
        sc.expect('{');
        if (!sc.eat('}')) {
          while (true) {
            mkey.clear();
            sc.string(mkey);
            sc.expect(':');
            if (mkey == "vocab" && sc.peek() == '{')
              parse_vocab(sc, out.bpe, origin);
            else if (mkey == "merges" && sc.peek() == '[')
              parse_merges(sc, out.bpe);
            else
              model[mkey] = parse_part(sc.skip_value(), origin, "model." + mkey);
            if (sc.eat(',')) continue;
            sc.expect('}');
            break;
          }
        }
      } else {
        out.rest[key] = parse_part(sc.skip_value(), origin, key);
      }
      if (sc.eat(',')) continue;
      sc.expect('}');
      break;
    }
  }
  if (!sc.at_end()) sc.error("unexpected characters after the top-level object");
  size_t bad = utf8_invalid_offset(out.bpe.arena);
  DSFUSE_CHECK(bad == std::string_view::npos, origin, ": model vocab/merges contain invalid UTF-8");
  return out;
}

}  // namespace dsfuse::tok
