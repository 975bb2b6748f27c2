#include "tokenizer/components.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsfuse::tok {

using json = nlohmann::json;
using Matches = std::vector<std::pair<std::pair<uint32_t, uint32_t>, bool>>;

// ------------------------------------------------------------------------------------------------ regex

namespace {
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* js = nullptr;
  MatchState() {
    md = pcre2_match_data_create(1, nullptr);
    mc = pcre2_match_context_create(nullptr);
    js = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    if (mc && js) pcre2_jit_stack_assign(mc, nullptr, js);
  }
  ~MatchState() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    pcre2_jit_stack_free(js);
  }
};
MatchState& match_state() {
  thread_local MatchState st;
  return st;
}

std::string json_str(const json& j, const char* key, const Ctx& ctx) {
  auto it = j.find(key);
  DSFUSE_CHECK(it != j.end() && it->is_string(), ctx.where(), ": missing or non-string field '", key, "'");
  return it->get<std::string>();
}
bool json_bool(const json& j, const char* key, bool dflt, const Ctx& ctx) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  DSFUSE_CHECK(it->is_boolean(), ctx.where(), ": field '", key, "' must be a boolean");
  return it->get<bool>();
}
std::string type_of(const json& j, const Ctx& ctx) {
  DSFUSE_CHECK(j.is_object(), ctx.where(), ": expected an object");
  return json_str(j, "type", ctx);
}
}  // namespace

Regex::Regex(const std::string& pattern, const Ctx& ctx) {
  int err = 0;
  PCRE2_SIZE erroff = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                        &erroff, nullptr);
  if (!code_) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    fail(cat(ctx.where(), ": cannot compile regex /", pattern, "/ at offset ", erroff, ": ",
             reinterpret_cast<const char*>(buf)));
  }
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
}

Regex::~Regex() { pcre2_code_free(code_); }

void Regex::find_matches(std::string_view s, Matches& out) const {
  auto& st = match_state();
  DSFUSE_CHECK(st.md && st.mc, "PCRE2: out of memory");
  const auto* subj = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t n = s.size(), pos = 0, prev = 0;
  size_t last_match_end = SIZE_MAX;
  while (pos <= n) {
    int rc = pcre2_match(code_, subj, n, pos, PCRE2_NO_UTF_CHECK, st.md, st.mc);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof buf);
      fail(cat("regex match failed: ", reinterpret_cast<const char*>(buf)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    size_t ms = ov[0], me = ov[1];
    if (ms == me && last_match_end == me) {  // onig: no empty match right after the previous match
      if (pos >= n) break;
      pos += utf8_len(static_cast<unsigned char>(s[pos]));
      continue;
    }
    if (prev != ms) out.push_back({{uint32_t(prev), uint32_t(ms)}, false});
    out.push_back({{uint32_t(ms), uint32_t(me)}, true});
    prev = me;
    last_match_end = me;
    pos = me;
  }
  if (prev != n) out.push_back({{uint32_t(prev), uint32_t(n)}, false});
}

std::string Regex::replace_all(std::string_view s, std::string_view content) const {
  if (s.empty()) return std::string();
  Matches m;
  find_matches(s, m);
  std::string out;
  out.reserve(s.size());
  for (auto& [o, is_match] : m) {
    if (is_match)
      out.append(content);
    else
      out.append(s.substr(o.first, o.second - o.first));
  }
  return out;
}

std::string regex_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}-#&~ \t\n\r\f\v", c) && c != '\0') {
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
        out.push_back(c);  // literal whitespace is fine without PCRE2_EXTENDED
        continue;
      }
      out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

std::string onig_to_pcre2(std::string_view p) {
  static const char* kWord = "\\p{L}\\p{M}\\p{N}\\p{Pc}";
  static const char* kSpace = "\\t-\\r\\x{85}\\p{Z}";
  std::string out;
  int depth = 0;  // character class nesting
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[++i];
      const char* cls = (n == 'w' || n == 'W') ? kWord : (n == 's' || n == 'S') ? kSpace : nullptr;
      bool neg = n == 'W' || n == 'S';
      if (!cls || (depth > 0 && neg)) {
        out.push_back('\\');
        out.push_back(n);
      } else if (depth > 0) {
        out += cls;
      } else {
        out += neg ? "[^" : "[";
        out += cls;
        out += "]";
      }
      continue;
    }
    if (c == '[') {
      ++depth;
      out.push_back(c);
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);  // literal ] first in a class
      continue;
    }
    if (c == ']' && depth > 0) --depth;
    out.push_back(c);
  }
  return out;
}

std::unique_ptr<Regex> make_pattern(const json& pattern, const Ctx& ctx) {
  DSFUSE_CHECK(pattern.is_object(), ctx.where(), ": pattern must be an object {\"Regex\": ...} or {\"String\": ...}");
  if (auto it = pattern.find("Regex"); it != pattern.end() && it->is_string())
    return std::make_unique<Regex>(onig_to_pcre2(it->get<std::string>()), ctx);
  if (auto it = pattern.find("String"); it != pattern.end() && it->is_string()) {
    std::string lit = it->get<std::string>();
    if (lit.empty()) return nullptr;  // never matches
    return std::make_unique<Regex>(regex_escape(lit), ctx);
  }
  fail(cat(ctx.where(), ": pattern must hold a string \"Regex\" or \"String\""));
}

// -------------------------------------------------------------------------------------------- normalizers

namespace {

class SequenceNormalizer : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> items;
  void normalize(std::string& s, bool& at_start) const override {
    for (auto& n : items) n->normalize(s, at_start);
  }
};

bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c & 0x80) return false;
  return true;
}

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  void normalize(std::string& s, bool& at_start) const override {
    if (is_ascii(s)) return;
    utf8proc_uint8_t* out = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()),
                                      &out, utf8proc_option_t(options_));
    DSFUSE_CHECK(n >= 0, "unicode normalization failed: ", utf8proc_errmsg(n));
    s.assign(reinterpret_cast<char*>(out), size_t(n));
    std::free(out);
  }

 private:
  int options_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void normalize(std::string& s, bool& at_start) const override {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
      uint32_t cp = utf8_next(s, i);
      if (cp == 0x130) {  // Rust: 'İ'.to_lowercase() == "i\u{307}"
        out += "i\xCC\x87";
        continue;
      }
      utf8_append(out, cp < 0x80 ? (cp >= 'A' && cp <= 'Z' ? cp + 32 : cp) : uint32_t(utf8proc_tolower(utf8proc_int32_t(cp))));
    }
    s.swap(out);
  }
};

class StripAccentsNormalizer : public Normalizer {
 public:
  void normalize(std::string& s, bool& at_start) const override {
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
      size_t st = i;
      uint32_t cp = utf8_next(s, i);
      if (cp >= 0x80 && utf8proc_category(utf8proc_int32_t(cp)) == UTF8PROC_CATEGORY_MN) continue;
      out.append(s, st, i - st);
    }
    s.swap(out);
  }
};

class StripNormalizer : public Normalizer {
 public:
  bool left, right;
  StripNormalizer(bool l, bool r) : left(l), right(r) {}
  void normalize(std::string& s, bool& at_start) const override {
    size_t b = 0, e = s.size();
    if (left) {
      while (b < e) {
        size_t i = b;
        if (!is_whitespace_cp(utf8_next(s, i))) break;
        b = i;
      }
    }
    if (right) {
      while (e > b) {
        size_t st = e - 1;
        while (st > b && (static_cast<unsigned char>(s[st]) & 0xc0) == 0x80) --st;
        size_t i = st;
        if (!is_whitespace_cp(utf8_next(s, i))) break;
        e = st;
      }
    }
    if (b > 0) at_start = false;
    s = s.substr(b, e - b);
  }
};

class ReplaceNormalizer : public Normalizer {
 public:
  std::unique_ptr<Regex> re;
  std::string content;
  void normalize(std::string& s, bool& at_start) const override {
    if (!re || s.empty()) return;
    Matches m;
    re->find_matches(s, m);
    if (m.size() == 1 && !m[0].second) return;
    if (m[0].second) at_start = false;
    std::string out;
    for (auto& [o, is_match] : m) {
      if (is_match)
        out.append(content);
      else
        out.append(s, o.first, o.second - o.first);
    }
    s.swap(out);
  }
};

class PrependNormalizer : public Normalizer {
 public:
  std::string prepend;
  void normalize(std::string& s, bool& at_start) const override {
    if (!s.empty()) s.insert(0, prepend);
  }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j, const Ctx& ctx) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, ctx);
  if (t == "Sequence") {
    auto seq = std::make_unique<SequenceNormalizer>();
    auto it = j.find("normalizers");
    DSFUSE_CHECK(it != j.end() && it->is_array(), ctx.where(), ": Sequence normalizer needs an array 'normalizers'");
    for (size_t i = 0; i < it->size(); ++i) {
      auto n = make_normalizer((*it)[i], ctx.at(cat(".normalizers[", i, "]")));
      if (n) seq->items.push_back(std::move(n));
    }
    return seq;
  }
  if (t == "NFC") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (t == "NFD") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  if (t == "NFKC") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  if (t == "NFKD") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  if (t == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (t == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (t == "Strip")
    return std::make_unique<StripNormalizer>(json_bool(j, "strip_left", true, ctx), json_bool(j, "strip_right", true, ctx));
  if (t == "Replace") {
    auto r = std::make_unique<ReplaceNormalizer>();
    DSFUSE_CHECK(j.contains("pattern"), ctx.where(), ": Replace normalizer needs 'pattern'");
    r->re = make_pattern(j["pattern"], ctx.at(".pattern"));
    r->content = json_str(j, "content", ctx);
    return r;
  }
  if (t == "Prepend") {
    auto p = std::make_unique<PrependNormalizer>();
    p->prepend = json_str(j, "prepend", ctx);
    return p;
  }
  fail(cat(ctx.where(), ": unsupported normalizer type '", t, "'"));
}

// ------------------------------------------------------------------------------------------ pre-tokenizers

namespace {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const json& j, const Ctx& ctx) {
  std::string b = json_str(j, "behavior", ctx);
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  fail(cat(ctx.where(), ": unknown split behavior '", b, "'"));
}

// HF NormalizedString::split: applies the behavior to covering matches and appends the kept non-empty pieces.
void apply_behavior(const Piece& parent, Matches& m, Behavior b, bool invert, std::vector<Piece>& out) {
  if (invert)
    for (auto& x : m) x.second = !x.second;
  // (start, end, remove)
  struct S {
    uint32_t s, e;
    bool remove;
  };
  std::vector<S> r;
  r.reserve(m.size());
  switch (b) {
    case Behavior::Isolated:
      for (auto& [o, mt] : m) r.push_back({o.first, o.second, false});
      break;
    case Behavior::Removed:
      for (auto& [o, mt] : m) r.push_back({o.first, o.second, mt});
      break;
    case Behavior::MergedWithPrevious: {
      bool prev = false;
      for (auto& [o, mt] : m) {
        if (mt && !prev && !r.empty())
          r.back().e = o.second;
        else
          r.push_back({o.first, o.second, false});
        prev = mt;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev = false;
      for (size_t k = m.size(); k-- > 0;) {
        auto& [o, mt] = m[k];
        if (mt && !prev && !r.empty())
          r.back().s = o.first;
        else
          r.push_back({o.first, o.second, false});
        prev = mt;
      }
      std::reverse(r.begin(), r.end());
      break;
    }
    case Behavior::Contiguous: {
      bool prev = false;
      for (auto& [o, mt] : m) {
        if (mt == prev && !r.empty())
          r.back().e = o.second;
        else
          r.push_back({o.first, o.second, false});
        prev = mt;
      }
      break;
    }
  }
  for (auto& x : r)
    if (!x.remove && x.e > x.s) out.push_back({parent.off + x.s, x.e - x.s, parent.at_start && x.s == 0});
}

class SequencePre : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> items;
  void pre_tokenize(Pieces& p) const override {
    for (auto& x : items) x->pre_tokenize(p);
  }
};

class SplitPre : public PreTokenizer {
 public:
  std::unique_ptr<Regex> re;
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  void pre_tokenize(Pieces& p) const override {
    std::vector<Piece> out;
    out.reserve(p.v.size() * 4);
    Matches m;
    for (const Piece& pc : p.v) {
      m.clear();
      if (re)
        re->find_matches(p.view(pc), m);
      else
        m.push_back({{0, pc.len}, false});
      apply_behavior(pc, m, behavior, invert, out);
    }
    p.v.swap(out);
  }
};

// Char-predicate split (Digits, WhitespaceSplit, Metaspace): every matching char is its own match.
template <typename Pred>
void char_matches(std::string_view s, Pred pred, Matches& m) {
  size_t last = 0, i = 0;
  while (i < s.size()) {
    size_t b = i;
    uint32_t cp = utf8_next(s, i);
    if (pred(cp)) {
      if (last < b) m.push_back({{uint32_t(last), uint32_t(b)}, false});
      m.push_back({{uint32_t(b), uint32_t(i)}, true});
      last = i;
    }
  }
  if (last < s.size()) m.push_back({{uint32_t(last), uint32_t(s.size())}, false});
}

class DigitsPre : public PreTokenizer {
 public:
  bool individual = false;
  void pre_tokenize(Pieces& p) const override {
    std::vector<Piece> out;
    Matches m;
    for (const Piece& pc : p.v) {
      m.clear();
      char_matches(p.view(pc), is_numeric_cp, m);
      apply_behavior(pc, m, individual ? Behavior::Isolated : Behavior::Contiguous, false, out);
    }
    p.v.swap(out);
  }
};

class WhitespaceSplitPre : public PreTokenizer {
 public:
  void pre_tokenize(Pieces& p) const override {
    std::vector<Piece> out;
    Matches m;
    for (const Piece& pc : p.v) {
      m.clear();
      char_matches(p.view(pc), is_whitespace_cp, m);
      apply_behavior(pc, m, Behavior::Removed, false, out);
    }
    p.v.swap(out);
  }
};

const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPre : public PreTokenizer {
 public:
  bool add_prefix_space = false;
  std::unique_ptr<Regex> re;  // set when use_regex
  bool defer = false;         // leave raw bytes for the BPE model
  void pre_tokenize(Pieces& p) const override {
    std::vector<Piece> out;
    out.reserve(p.v.size());
    Matches m;
    std::string tmp;
    for (Piece pc : p.v) {
      if (add_prefix_space && !(pc.len && p.buf[pc.off] == ' ')) {
        tmp.assign(" ");
        tmp.append(p.view(pc));
        pc = p.add(tmp, pc.at_start);
      }
      if (re) {
        m.clear();
        re->find_matches(p.view(pc), m);
        apply_behavior(pc, m, Behavior::Isolated, false, out);
      } else if (pc.len) {
        out.push_back(pc);
      }
    }
    if (!defer) {
      for (Piece& pc : out) {
        tmp.clear();
        byte_level_encode(p.view(pc), tmp);
        pc = p.add(tmp, pc.at_start);
      }
    }
    p.v.swap(out);
  }
};

class MetaspacePre : public PreTokenizer {
 public:
  std::string rep = "\xE2\x96\x81";
  uint32_t rep_cp = 0x2581;
  enum { Always, Never, First } scheme = Always;
  bool split = true;
  void pre_tokenize(Pieces& p) const override {
    std::vector<Piece> out;
    Matches m;
    std::string tmp;
    for (Piece pc : p.v) {
      std::string_view s = p.view(pc);
      tmp.clear();
      for (char c : s) {
        if (c == ' ')
          tmp += rep;
        else
          tmp.push_back(c);
      }
      bool starts = tmp.compare(0, rep.size(), rep) == 0;
      if (!starts && (scheme == Always || (scheme == First && pc.at_start))) tmp.insert(0, rep);
      pc = p.add(tmp, pc.at_start);
      if (split) {
        m.clear();
        char_matches(p.view(pc), [this](uint32_t cp) { return cp == rep_cp; }, m);
        apply_behavior(pc, m, Behavior::MergedWithNext, false, out);
      } else if (pc.len) {
        out.push_back(pc);
      }
    }
    p.v.swap(out);
  }
};

}  // namespace

static std::unique_ptr<PreTokenizer> make_pre(const json& j, const Ctx& ctx, bool* last_is_bl) {
  std::string t = type_of(j, ctx);
  *last_is_bl = false;
  if (t == "Sequence") {
    auto seq = std::make_unique<SequencePre>();
    auto it = j.find("pretokenizers");
    DSFUSE_CHECK(it != j.end() && it->is_array(), ctx.where(), ": Sequence pre-tokenizer needs an array 'pretokenizers'");
    for (size_t i = 0; i < it->size(); ++i) {
      bool bl = false;
      seq->items.push_back(make_pre((*it)[i], ctx.at(cat(".pretokenizers[", i, "]")), &bl));
      *last_is_bl = bl;
    }
    return seq;
  }
  if (t == "Split") {
    auto s = std::make_unique<SplitPre>();
    DSFUSE_CHECK(j.contains("pattern"), ctx.where(), ": Split needs 'pattern'");
    s->re = make_pattern(j["pattern"], ctx.at(".pattern"));
    s->behavior = parse_behavior(j, ctx);
    s->invert = json_bool(j, "invert", false, ctx);
    return s;
  }
  if (t == "ByteLevel") {
    auto b = std::make_unique<ByteLevelPre>();
    b->add_prefix_space = json_bool(j, "add_prefix_space", true, ctx);
    if (json_bool(j, "use_regex", true, ctx)) b->re = std::make_unique<Regex>(kGpt2Regex, ctx);
    *last_is_bl = true;
    return b;
  }
  if (t == "Digits") {
    auto d = std::make_unique<DigitsPre>();
    d->individual = json_bool(j, "individual_digits", false, ctx);
    return d;
  }
  if (t == "Metaspace") {
    auto m = std::make_unique<MetaspacePre>();
    if (j.contains("replacement")) {
      m->rep = json_str(j, "replacement", ctx);
      size_t i = 0;
      DSFUSE_CHECK(!m->rep.empty() && utf8_invalid_offset(m->rep) == std::string_view::npos, ctx.where(),
                   ": Metaspace replacement must be one character");
      m->rep_cp = utf8_next(m->rep, i);
      DSFUSE_CHECK(i == m->rep.size(), ctx.where(), ": Metaspace replacement must be one character");
    }
    if (auto it = j.find("prepend_scheme"); it != j.end() && it->is_string()) {
      std::string s = it->get<std::string>();
      if (s == "always") m->scheme = MetaspacePre::Always;
      else if (s == "never") m->scheme = MetaspacePre::Never;
      else if (s == "first") m->scheme = MetaspacePre::First;
      else fail(cat(ctx.where(), ": unknown Metaspace prepend_scheme '", s, "'"));
    } else {
      m->scheme = json_bool(j, "add_prefix_space", true, ctx) ? MetaspacePre::Always : MetaspacePre::Never;
    }
    m->split = json_bool(j, "split", true, ctx);
    return m;
  }
  if (t == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPre>();
  if (t == "Whitespace") {
    auto s = std::make_unique<SplitPre>();
    // the library uses the regex crate here: \w = Alphabetic, M, Nd, Pc, Join_Control; \s = White_Space
    s->re = std::make_unique<Regex>(
        R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]+|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}\t-\r\x{85}\p{Z}]+)",
        ctx);
    s->behavior = Behavior::Removed;
    s->invert = true;
    return s;
  }
  fail(cat(ctx.where(), ": unsupported pre_tokenizer type '", t, "'"));
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const Ctx& ctx, bool* ends_with_byte_level) {
  *ends_with_byte_level = false;
  if (j.is_null()) return nullptr;
  return make_pre(j, ctx, ends_with_byte_level);
}

void set_defer_byte_level(PreTokenizer* p) {
  if (auto* bl = dynamic_cast<ByteLevelPre*>(p)) {
    bl->defer = true;
  } else if (auto* seq = dynamic_cast<SequencePre*>(p)) {
    if (!seq->items.empty()) set_defer_byte_level(seq->items.back().get());
  }
}

// ------------------------------------------------------------------------------------------------ decoders

namespace {

class SequenceDecoder : public Decoder {
 public:
  std::vector<std::unique_ptr<Decoder>> items;
  void decode_chain(std::vector<std::string>& t) const override {
    for (auto& d : items) d->decode_chain(t);
  }
};

class ByteLevelDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& t) const override {
    std::string bytes;
    for (auto& tok : t)
      if (!byte_level_decode(tok, bytes)) bytes += tok;
    t.assign(1, utf8_lossy(bytes));
  }
};

class ReplaceDecoder : public Decoder {
 public:
  std::unique_ptr<Regex> re;
  std::string content;
  void decode_chain(std::vector<std::string>& t) const override {
    if (!re) return;
    for (auto& tok : t) tok = re->replace_all(tok, content);
  }
};

class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& t) const override {
    std::string all;
    for (auto& tok : t) all += tok;
    t.assign(1, std::move(all));
  }
};

class StripDecoder : public Decoder {
 public:
  uint32_t content = ' ';
  size_t start = 0, stop = 0;
  void decode_chain(std::vector<std::string>& t) const override {
    for (auto& tok : t) {
      std::vector<size_t> bounds;  // byte offset of each char, plus end
      std::vector<uint32_t> cps;
      size_t i = 0;
      while (i < tok.size()) {
        bounds.push_back(i);
        cps.push_back(utf8_next(tok, i));
      }
      bounds.push_back(tok.size());
      size_t n = cps.size(), sc = 0, ec = n;
      for (size_t k = 0; k < start && k < n; ++k) {
        if (cps[k] != content) break;
        sc = k + 1;
      }
      for (size_t k = 0; k < stop && k < n; ++k) {
        size_t idx = n - k - 1;
        if (cps[idx] != content) break;
        ec = idx;
      }
      if (ec < sc) ec = sc;
      tok = tok.substr(bounds[sc], bounds[ec] - bounds[sc]);
    }
  }
};

class ByteFallbackDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& t) const override {
    std::vector<std::string> out;
    std::string bytes;
    auto flush = [&] {
      if (bytes.empty()) return;
      if (utf8_invalid_offset(bytes) == std::string_view::npos)
        out.push_back(bytes);
      else
        for (size_t k = 0; k < bytes.size(); ++k) out.push_back("\xEF\xBF\xBD");
      bytes.clear();
    };
    for (auto& tok : t) {
      int v = -1;
      if (tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>') {
        char* end = nullptr;
        std::string hex = tok.substr(3, 2);
        long x = std::strtol(hex.c_str(), &end, 16);
        if (end == hex.c_str() + 2 && std::isxdigit(static_cast<unsigned char>(hex[0]))) v = int(x);
      }
      if (v >= 0) {
        bytes.push_back(char(v));
      } else {
        flush();
        out.push_back(std::move(tok));
      }
    }
    flush();
    t.swap(out);
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  uint32_t rep_cp = 0x2581;
  bool strip_first = true;  // prepend_scheme != never
  void decode_chain(std::vector<std::string>& t) const override {
    for (size_t k = 0; k < t.size(); ++k) {
      std::string out;
      size_t i = 0;
      const std::string& tok = t[k];
      while (i < tok.size()) {
        size_t b = i;
        uint32_t cp = utf8_next(tok, i);
        if (cp == rep_cp) {
          if (!(k == 0 && strip_first)) out.push_back(' ');
        } else {
          out.append(tok, b, i - b);
        }
      }
      t[k].swap(out);
    }
  }
};

uint32_t single_char(const std::string& s, const Ctx& ctx, const char* field) {
  size_t i = 0;
  DSFUSE_CHECK(!s.empty() && utf8_invalid_offset(s) == std::string_view::npos, ctx.where(), ": '", field,
               "' must be one character");
  uint32_t cp = utf8_next(s, i);
  DSFUSE_CHECK(i == s.size(), ctx.where(), ": '", field, "' must be one character");
  return cp;
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j, const Ctx& ctx) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, ctx);
  if (t == "Sequence") {
    auto seq = std::make_unique<SequenceDecoder>();
    auto it = j.find("decoders");
    DSFUSE_CHECK(it != j.end() && it->is_array(), ctx.where(), ": Sequence decoder needs an array 'decoders'");
    for (size_t i = 0; i < it->size(); ++i) {
      auto d = make_decoder((*it)[i], ctx.at(cat(".decoders[", i, "]")));
      if (d) seq->items.push_back(std::move(d));
    }
    return seq;
  }
  if (t == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (t == "Fuse") return std::make_unique<FuseDecoder>();
  if (t == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (t == "Replace") {
    auto r = std::make_unique<ReplaceDecoder>();
    DSFUSE_CHECK(j.contains("pattern"), ctx.where(), ": Replace decoder needs 'pattern'");
    r->re = make_pattern(j["pattern"], ctx.at(".pattern"));
    r->content = json_str(j, "content", ctx);
    return r;
  }
  if (t == "Strip") {
    auto s = std::make_unique<StripDecoder>();
    s->content = single_char(json_str(j, "content", ctx), ctx, "content");
    auto num = [&](const char* k) -> size_t {
      auto it = j.find(k);
      if (it == j.end()) return 0;
      DSFUSE_CHECK(it->is_number_unsigned(), ctx.where(), ": '", k, "' must be a non-negative integer");
      return it->get<size_t>();
    };
    s->start = num("start");
    s->stop = num("stop");
    return s;
  }
  if (t == "Metaspace") {
    auto m = std::make_unique<MetaspaceDecoder>();
    if (j.contains("replacement")) m->rep_cp = single_char(json_str(j, "replacement", ctx), ctx, "replacement");
    if (auto it = j.find("prepend_scheme"); it != j.end() && it->is_string())
      m->strip_first = it->get<std::string>() != "never";
    else
      m->strip_first = json_bool(j, "add_prefix_space", true, ctx);
    return m;
  }
  fail(cat(ctx.where(), ": unsupported decoder type '", t, "'"));
}

// ---------------------------------------------------------------------------------------- post-processors

namespace {

class NoopPost : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, std::vector<std::string>*) const override {}
};

class SequencePost : public PostProcessor {
 public:
  std::vector<std::unique_ptr<PostProcessor>> items;
  void process(std::vector<int32_t>& ids, std::vector<std::string>* tokens) const override {
    for (auto& p : items) p->process(ids, tokens);
  }
};

// Prefix ids, the sequence, suffix ids (TemplateProcessing single / Bert / Roberta).
class WrapPost : public PostProcessor {
 public:
  std::vector<int32_t> prefix, suffix;
  std::vector<std::string> prefix_tok, suffix_tok;
  void process(std::vector<int32_t>& ids, std::vector<std::string>* tokens) const override {
    if (!prefix.empty()) ids.insert(ids.begin(), prefix.begin(), prefix.end());
    ids.insert(ids.end(), suffix.begin(), suffix.end());
    if (tokens) {
      tokens->insert(tokens->begin(), prefix_tok.begin(), prefix_tok.end());
      tokens->insert(tokens->end(), suffix_tok.begin(), suffix_tok.end());
    }
  }
};

void add_pair(const json& j, const Ctx& ctx, const char* field, std::vector<int32_t>& ids, std::vector<std::string>& toks) {
  DSFUSE_CHECK(j.is_array() && j.size() == 2 && j[0].is_string() && j[1].is_number_integer(), ctx.where(), ": '",
               field, "' must be [token, id]");
  toks.push_back(j[0].get<std::string>());
  ids.push_back(j[1].get<int32_t>());
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const Ctx& ctx) {
  if (j.is_null()) return std::make_unique<NoopPost>();
  std::string t = type_of(j, ctx);
  if (t == "ByteLevel") return std::make_unique<NoopPost>();  // only trims offsets
  if (t == "Sequence") {
    auto seq = std::make_unique<SequencePost>();
    auto it = j.find("processors");
    DSFUSE_CHECK(it != j.end() && it->is_array(), ctx.where(), ": Sequence post_processor needs an array 'processors'");
    for (size_t i = 0; i < it->size(); ++i)
      seq->items.push_back(make_post_processor((*it)[i], ctx.at(cat(".processors[", i, "]"))));
    return seq;
  }
  if (t == "BertProcessing" || t == "RobertaProcessing") {
    auto w = std::make_unique<WrapPost>();
    DSFUSE_CHECK(j.contains("cls") && j.contains("sep"), ctx.where(), ": ", t, " needs 'cls' and 'sep'");
    add_pair(j["cls"], ctx, "cls", w->prefix, w->prefix_tok);
    add_pair(j["sep"], ctx, "sep", w->suffix, w->suffix_tok);
    return w;
  }
  if (t == "TemplateProcessing") {
    auto w = std::make_unique<WrapPost>();
    auto single = j.find("single");
    DSFUSE_CHECK(single != j.end() && single->is_array(), ctx.where(), ": TemplateProcessing needs an array 'single'");
    auto specials = j.find("special_tokens");
    bool seen_seq = false;
    for (size_t i = 0; i < single->size(); ++i) {
      const json& item = (*single)[i];
      Ctx ic = ctx.at(cat(".single[", i, "]"));
      DSFUSE_CHECK(item.is_object(), ic.where(), ": expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      if (item.contains("Sequence")) {
        DSFUSE_CHECK(!seen_seq, ic.where(), ": more than one Sequence in the single template");
        seen_seq = true;
        continue;
      }
      auto st = item.find("SpecialToken");
      DSFUSE_CHECK(st != item.end() && st->is_object(), ic.where(), ": expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      std::string name = json_str(*st, "id", ic);
      DSFUSE_CHECK(specials != j.end() && specials->contains(name), ctx.where(), ": special token '", name,
                   "' of the template is missing from 'special_tokens'");
      const json& sp = (*specials)[name];
      DSFUSE_CHECK(sp.contains("ids") && sp["ids"].is_array(), ctx.where(), ".special_tokens.", name, ": needs 'ids'");
      DSFUSE_CHECK(sp.contains("tokens") && sp["tokens"].is_array() && sp["tokens"].size() == sp["ids"].size(),
                   ctx.where(), ".special_tokens.", name, ": needs 'tokens' as long as 'ids'");
      for (size_t k = 0; k < sp["ids"].size(); ++k) {
        const json& id = sp["ids"][k];
        const json& tk = sp["tokens"][k];
        DSFUSE_CHECK(id.is_number_integer() && tk.is_string(), ctx.where(), ".special_tokens.", name,
                     ": ids must be integers and tokens strings");
        (seen_seq ? w->suffix : w->prefix).push_back(id.get<int32_t>());
        (seen_seq ? w->suffix_tok : w->prefix_tok).push_back(tk.get<std::string>());
      }
    }
    return w;
  }
  fail(cat(ctx.where(), ": unsupported post_processor type '", t, "'"));
}

}  // namespace dsfuse::tok
