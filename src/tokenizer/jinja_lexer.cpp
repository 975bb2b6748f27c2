#include "tokenizer/jinja_lexer.h"

#include <cctype>
#include <cstring>

#include "core/error.h"
#include "tokenizer/jinja_value.h"

namespace dsfuse::tmpl {

const char* tok_name(Tok t) {
  switch (t) {
    case Tok::Text: return "text";
    case Tok::VarBegin: return "'{{'";
    case Tok::VarEnd: return "'}}'";
    case Tok::BlockBegin: return "'{%'";
    case Tok::BlockEnd: return "'%}'";
    case Tok::Name: return "name";
    case Tok::Int: return "integer";
    case Tok::Float: return "float";
    case Tok::String: return "string";
    case Tok::Op: return "operator";
    case Tok::Eof: return "end of template";
  }
  return "?";
}

namespace {

// Whitespace as Jinja's regexes (\s) and str.rstrip() see it: Unicode whitespace, UTF-8 encoded.
// Byte length of the whitespace code point starting at p (0 if none).
size_t ws_at(const std::string& s, size_t p) {
  if (p >= s.size()) return 0;
  unsigned char c = static_cast<unsigned char>(s[p]);
  if (c < 0x80) return py_isspace(c) ? 1 : 0;
  size_t n = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 0;
  if (n == 0 || p + n > s.size()) return 0;
  std::u32string u = utf8_decode(std::string_view(s).substr(p, n));
  return u.size() == 1 && py_isspace(u[0]) ? n : 0;
}

// Byte length of the whitespace code point ending just before e (0 if none).
size_t ws_before(const std::string& s, size_t e) {
  for (size_t n = 1; n <= 3 && n <= e; ++n)
    if (ws_at(s, e - n) == n) return n;
  return 0;
}

size_t skip_ws(const std::string& s, size_t p) {
  while (size_t n = ws_at(s, p)) p += n;
  return p;
}

std::string rstrip_ws(const std::string& s) {
  size_t e = s.size();
  while (size_t n = ws_before(s, e)) e -= n;
  return s.substr(0, e);
}

// lstrip_blocks: drops the whitespace between the start of the line and a block tag when nothing
// else is on that line. `line_starting`: `text` itself begins a line.
void lstrip_line(std::string& text, bool line_starting) {
  size_t l_pos = text.rfind('\n');
  l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
  if ((l_pos > 0 || line_starting) && l_pos < text.size() && skip_ws(text, l_pos) == text.size()) text.resize(l_pos);
}

void append_utf8(std::string& out, uint32_t cp) { out += utf8_encode(std::u32string(1, static_cast<char32_t>(cp))); }

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Lexer {
 public:
  Lexer(const std::string& src, const LexOptions& opt) : opt_(opt) {
    // Normalize newlines, drop one trailing newline (keep_trailing_newline=False).
    src_.reserve(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\r') {
        src_ += '\n';
        if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
      } else {
        src_ += src[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t tag = find_tag(pos_);
      std::string text = src_.substr(pos_, (tag == std::string::npos ? src_.size() : tag) - pos_);
      if (tag == std::string::npos) {
        emit_text(text);
        break;
      }
      char kind = src_[tag + 1];  // '{', '%' or '#'
      char sign = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      if (sign != '-' && sign != '+') sign = '\0';
      if (sign == '-') {
        text = rstrip_ws(text);
      } else if (sign != '+' && opt_.lstrip_blocks && kind != '{') {
        lstrip_line(text, line_starting);
      }
      emit_text(text);
      line_ = line_at(tag);
      pos_ = tag + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        line_starting = lex_comment();
      } else if (kind == '%' && lex_raw()) {
        line_starting = last_consumed_newline_;
      } else {
        line_starting = lex_tag(kind == '{');
      }
    }
    tokens_.push_back({Tok::Eof, "", line_at(src_.size())});
    return std::move(tokens_);
  }

 private:
  const LexOptions opt_;
  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  size_t line_pos_ = 0;  // line_ counted up to here
  std::vector<Token> tokens_;
  bool last_consumed_newline_ = false;

  int line_at(size_t p) {
    if (p < line_pos_) {
      line_ = 1;
      line_pos_ = 0;
    }
    for (; line_pos_ < p && line_pos_ < src_.size(); ++line_pos_)
      if (src_[line_pos_] == '\n') ++line_;
    return line_;
  }

  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i)
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return std::string::npos;
  }

  void emit_text(const std::string& t) {
    if (!t.empty()) tokens_.push_back({Tok::Text, t, line_at(pos_)});
  }

  [[noreturn]] void error(const std::string& msg, int line) { fail(cat("template syntax error (line ", line, "): ", msg)); }

  // After a tag's closing delimiter at `p` (just past it): apply `-`/`+`/trim_blocks.
  // Returns whether the consumed text ended with a newline (Jinja's line_starting).
  bool finish_tag(size_t p, char sign, bool is_block) {
    size_t q = p;
    if (sign == '-') {
      q = skip_ws(src_, q);
    } else if (sign != '+' && is_block && opt_.trim_blocks && q < src_.size() && src_[q] == '\n') {
      ++q;
    }
    pos_ = q;
    return q > 0 && src_[q - 1] == '\n';
  }

  bool lex_comment() {
    int start_line = line_;
    size_t e = src_.find("#}", pos_);
    if (e == std::string::npos) error("missing end of comment tag '#}'", start_line);
    char sign = (e > pos_ && (src_[e - 1] == '-' || src_[e - 1] == '+')) ? src_[e - 1] : '\0';
    return finish_tag(e + 2, sign, true);
  }

  // `{% raw %}...{% endraw %}`: the body is text, untouched.
  bool lex_raw() {
    size_t p = pos_;
    p = skip_ws(src_, p);
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    p = skip_ws(src_, p);
    char sign = '\0';
    if (p < src_.size() && src_[p] == '-') sign = '-', ++p;
    if (src_.compare(p, 2, "%}") != 0) return false;
    int start_line = line_;
    p += 2;
    if (sign == '-')
      p = skip_ws(src_, p);
    // find {%[-+]? endraw [-+]?%}
    for (size_t s = src_.find("{%", p); s != std::string::npos; s = src_.find("{%", s + 2)) {
      size_t q = s + 2;
      char bsign = '\0';
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) bsign = src_[q++];
      q = skip_ws(src_, q);
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q += 6;
      q = skip_ws(src_, q);
      char esign = '\0';
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) esign = src_[q++];
      if (src_.compare(q, 2, "%}") != 0) continue;
      std::string body = src_.substr(p, s - p);
      if (bsign == '-') {
        body = rstrip_ws(body);
      } else if (bsign != '+' && opt_.lstrip_blocks) {  // lstrip_blocks applies to {% endraw %} too
        lstrip_line(body, p > 0 && src_[p - 1] == '\n');
      }
      pos_ = p;
      emit_text(body);
      last_consumed_newline_ = finish_tag(q + 2, esign, true);
      return true;
    }
    error("missing '{% endraw %}' for '{% raw %}'", start_line);
  }

  // Expression tokens up to the closing `}}` / `%}` (recognized only with balanced brackets).
  bool lex_tag(bool is_var) {
    int start_line = line_;
    tokens_.push_back({is_var ? Tok::VarBegin : Tok::BlockBegin, "", start_line});
    std::string brackets;
    const char* end = is_var ? "}}" : "%}";
    while (true) {
      pos_ = skip_ws(src_, pos_);
      if (pos_ >= src_.size())
        error(cat("unexpected end of template, expected '", end, "' to close the tag opened here"), start_line);
      int line = line_at(pos_);
      char c = src_[pos_];
      if (brackets.empty()) {
        char sign = '\0';
        size_t p = pos_;
        if (c == '-' || c == '+') sign = c, ++p;
        if (src_.compare(p, 2, end) == 0 && !(sign == '+' && is_var)) {
          tokens_.push_back({is_var ? Tok::VarEnd : Tok::BlockEnd, "", line});
          return finish_tag(p + 2, sign, !is_var);
        }
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t s = pos_;
        while (pos_ < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) ++pos_;
        tokens_.push_back({Tok::Name, src_.substr(s, pos_ - s), line});
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number(line);
      } else if (c == '\'' || c == '"') {
        lex_string(line);
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "(", ")", "[",
                                    "]", "{", "}", ",", ".", ":", "|", "=", "<", ">", ";"};
        const char* op = nullptr;
        for (const char* o : ops)
          if (src_.compare(pos_, std::strlen(o), o) == 0) {
            op = o;
            break;
          }
        if (!op) error(cat("unexpected character '", std::string(1, c), "' in tag"), line);
        std::string o(op);
        if (o == "(" || o == "[" || o == "{") {
          if (brackets.size() > 1000) error("brackets nested too deeply", line);
          brackets += o == "(" ? ')' : o == "[" ? ']' : '}';
        } else if (o == ")" || o == "]" || o == "}") {
          if (brackets.empty() || brackets.back() != o[0]) error(cat("unexpected '", o, "'"), line);
          brackets.pop_back();
        }
        pos_ += o.size();
        tokens_.push_back({Tok::Op, o, line});
      }
    }
  }

  void lex_number(int line) {
    size_t s = pos_;
    if (src_[pos_] == '0' && pos_ + 2 < src_.size()) {  // 0x1f, 0o17, 0b101 (underscores allowed)
      char k = static_cast<char>(std::tolower(static_cast<unsigned char>(src_[pos_ + 1])));
      int base = k == 'x' ? 16 : k == 'o' ? 8 : k == 'b' ? 2 : 0;
      auto digit_ok = [&](char c) { int v = hexval(c); return v >= 0 && v < base; };
      if (base && (digit_ok(src_[pos_ + 2]) || (src_[pos_ + 2] == '_' && pos_ + 3 < src_.size() && digit_ok(src_[pos_ + 3])))) {
        pos_ += 2;
        uint64_t v = 0;
        while (pos_ < src_.size() && (digit_ok(src_[pos_]) || (src_[pos_] == '_' && pos_ + 1 < src_.size() && digit_ok(src_[pos_ + 1])))) {
          if (src_[pos_] != '_') {
            v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(hexval(src_[pos_]));
            if (v > static_cast<uint64_t>(INT64_MAX)) error("integer literal out of range", line);
          }
          ++pos_;
        }
        tokens_.push_back({Tok::Int, std::to_string(v), line});
        return;
      }
    }
    auto digits = [&] {
      while (pos_ < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[pos_])) ||
                                    (src_[pos_] == '_' && pos_ + 1 < src_.size() &&
                                     std::isdigit(static_cast<unsigned char>(src_[pos_ + 1])))))
        ++pos_;
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' && std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      ++pos_;
      digits();
      is_float = true;
    }
    if (pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t p = pos_ + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && std::isdigit(static_cast<unsigned char>(src_[p]))) {
        pos_ = p;
        digits();
        is_float = true;
      }
    }
    std::string v;
    for (size_t i = s; i < pos_; ++i)
      if (src_[i] != '_') v += src_[i];
    tokens_.push_back({is_float ? Tok::Float : Tok::Int, v, line});
  }

  // Python string literal escapes, as Jinja decodes them (unicode-escape).
  void lex_string(int line) {
    char q = src_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= src_.size()) error("unterminated string literal", line);
      char c = src_[pos_++];
      if (c == q) break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= src_.size()) error("unterminated string literal", line);
      char e = src_[pos_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case 'a': out += '\a'; break;
        case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': {
          uint32_t v = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && pos_ < src_.size() && src_[pos_] >= '0' && src_[pos_] <= '7'; ++k)
            v = v * 8 + static_cast<uint32_t>(src_[pos_++] - '0');
          append_utf8(out, v);
          break;
        }
        case 'x': case 'u': case 'U': {
          int n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t v = 0;
          for (int k = 0; k < n; ++k) {
            int h = pos_ < src_.size() ? hexval(src_[pos_]) : -1;
            if (h < 0) error(cat("truncated \\", std::string(1, e), " escape in string literal"), line);
            v = v * 16 + static_cast<uint32_t>(h);
            ++pos_;
          }
          if (v > 0x10ffff) error("illegal Unicode character in string literal", line);
          append_utf8(out, v);
          break;
        }
        case '\n': break;  // line continuation
        case '\\': case '\'': case '"': out += e; break;
        default:
          out += '\\';
          out += e;
      }
    }
    tokens_.push_back({Tok::String, out, line});
  }
};

}  // namespace

std::vector<Token> lex(const std::string& source, const LexOptions& opt) { return Lexer(source, opt).run(); }

}  // namespace dsfuse::tmpl
