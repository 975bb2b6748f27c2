// Tokenizer: loading tokenizer.json / tokenizer_config.json, added-token splitting (the library's
// AddedVocabulary), the encode pipeline and decode.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/components.h"
#include "tokenizer/json_scan.h"
#include "tokenizer/unicode.h"

#include <utf8proc.h>

namespace dsfuse::tok {

using json = nlohmann::json;

struct AddedToken {
  std::string content;
  std::string display;  // id -> token string: the normalized content for normalized tokens (as the library)
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, normalized = true, single_word = false;
};

// Byte trie over added-token contents, leftmost-longest matching like the library's Aho-Corasick
// (MatchKind::LeftmostLongest).
class AddedTrie {
 public:
  void add(const std::string& s, int32_t token_index) {
    if (s.empty()) return;
    if (term_.empty()) term_.push_back(-1);
    uint32_t node = 0;
    for (unsigned char c : s) {
      uint64_t k = (uint64_t(node) << 8) | c;
      auto it = next_.find(k);
      if (it == next_.end()) {
        uint32_t nn = uint32_t(term_.size());
        term_.push_back(-1);
        next_.emplace(k, nn);
        node = nn;
      } else {
        node = it->second;
      }
    }
    term_[node] = token_index;
    first_[static_cast<unsigned char>(s[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }
  // Leftmost-longest match starting at or after `from`; returns false when none.
  bool find(std::string_view s, size_t from, size_t& ms, size_t& me, int32_t& idx) const {
    for (size_t i = from; i < s.size(); ++i) {
      if (!first_[static_cast<unsigned char>(s[i])]) continue;
      uint32_t node = 0;
      int32_t best = -1;
      size_t best_end = 0;
      for (size_t j = i; j < s.size(); ++j) {
        auto it = next_.find((uint64_t(node) << 8) | static_cast<unsigned char>(s[j]));
        if (it == next_.end()) break;
        node = it->second;
        if (term_[node] >= 0) best = term_[node], best_end = j + 1;
      }
      if (best >= 0) {
        ms = i;
        me = best_end;
        idx = best;
        return true;
      }
    }
    return false;
  }

 private:
  std::unordered_map<uint64_t, uint32_t> next_;
  std::vector<int32_t> term_;
  bool first_[256] = {};
  bool empty_ = true;
};

struct TokenizerImpl {
  std::string origin;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre;
  bool defer_bytes = false;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Decoder> decoder;
  std::unique_ptr<PostProcessor> post;

  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  StrMap added_by_content;  // content -> index in `added`
  AddedTrie trie_raw, trie_norm;

  bool decoder_byte_fallback = false;  // the decoder has a ByteFallback step

  bool config_policy = false;  // tokenizer_config.json sets add_bos_token / add_eos_token
  bool add_bos = false, add_eos = false;
  std::optional<std::string> bos_tok, eos_tok;
  std::optional<int32_t> bos_id, eos_id;

  // one segment of the input: either an added token or text for the model
  struct Seg {
    size_t b, e;
    int32_t added_index;  // -1: text
  };
  void split_added(std::string_view s, const AddedTrie& trie, std::vector<Seg>& out) const;
  void encode_text(std::string_view s, bool at_start, std::vector<int32_t>& ids, std::vector<std::string>* toks) const;
  void model_pieces(std::string text, bool at_start, std::vector<int32_t>& ids, std::vector<std::string>* toks) const;
  void encode(std::string_view text, bool add_special, std::vector<int32_t>& ids, std::vector<std::string>* toks) const;
  std::optional<std::string_view> token_of(int32_t id) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return std::string_view(added[it->second].display);
    if (const std::string_view* t = model->id_to_token(id)) return *t;
    return std::nullopt;
  }
};

// ---------------------------------------------------------------------------------- added-token splitting

static uint32_t last_cp(std::string_view s) {
  size_t st = s.size() - 1;
  while (st > 0 && (static_cast<unsigned char>(s[st]) & 0xc0) == 0x80) --st;
  size_t i = st;
  return utf8_next(s, i);
}

// Rust regex \w (what the library's single_word check uses): Alphabetic, marks, Nd, Pc, Join_Control.
static bool is_word_cp(uint32_t cp) {
  if (cp < 0x80) return cp == '_' || (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
  if (cp == 0x200c || cp == 0x200d) return true;
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

void TokenizerImpl::split_added(std::string_view s, const AddedTrie& trie, std::vector<Seg>& out) const {
  size_t start_offset = 0, from = 0, ms, me;
  int32_t idx;
  while (!trie.empty() && trie.find(s, from, ms, me, idx)) {
    from = me;
    const AddedToken& t = added[size_t(idx)];
    size_t start = ms, stop = me;
    if (t.single_word) {
      bool start_space = start == 0 || !is_word_cp(last_cp(s.substr(0, start)));
      size_t k = stop;
      bool stop_space = stop == s.size() || !is_word_cp(utf8_next(s, k));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t ns = start;
      while (ns > 0) {
        size_t st = ns - 1;
        while (st > 0 && (static_cast<unsigned char>(s[st]) & 0xc0) == 0x80) --st;
        size_t k = st;
        if (!is_whitespace_cp(utf8_next(s, k))) break;
        ns = st;
      }
      start = std::max(ns, start_offset);
    }
    if (t.rstrip) {
      while (stop < s.size()) {
        size_t k = stop;
        if (!is_whitespace_cp(utf8_next(s, k))) break;
        stop = k;
      }
    }
    if (stop < start) stop = start;  // rstrip of the previous match ran past this one (the library overlaps too)
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, idx});
    start_offset = stop;
  }
  if (start_offset < s.size()) out.push_back({start_offset, s.size(), -1});
}

void TokenizerImpl::model_pieces(std::string text, bool at_start, std::vector<int32_t>& ids,
                                 std::vector<std::string>* toks) const {
  if (text.empty()) return;
  Pieces p;
  p.buf = std::move(text);
  p.v.push_back({0, uint32_t(p.buf.size()), at_start});
  if (pre) pre->pre_tokenize(p);
  size_t first = ids.size();
  for (const Piece& pc : p.v) model->tokenize(p.view(pc), defer_bytes, ids);
  if (toks)
    for (size_t i = first; i < ids.size(); ++i) toks->emplace_back(*model->id_to_token(ids[i]));
}

void TokenizerImpl::encode_text(std::string_view s, bool at_start, std::vector<int32_t>& ids,
                                std::vector<std::string>* toks) const {
  std::string norm(s);
  if (normalizer) normalizer->normalize(norm, at_start);
  if (trie_norm.empty()) {
    model_pieces(std::move(norm), at_start, ids, toks);
    return;
  }
  std::vector<Seg> segs;
  split_added(norm, trie_norm, segs);
  for (const Seg& g : segs) {
    if (g.added_index >= 0) {
      ids.push_back(added[size_t(g.added_index)].id);
      if (toks) toks->push_back(norm.substr(g.b, g.e - g.b));
    } else {
      model_pieces(norm.substr(g.b, g.e - g.b), at_start && g.b == 0, ids, toks);
    }
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  impl_->encode(text, add_special_tokens, ids, nullptr);
  return ids;
}

Encoding Tokenizer::encode_full(std::string_view text, bool add_special_tokens) const {
  Encoding e;
  impl_->encode(text, add_special_tokens, e.ids, &e.tokens);
  return e;
}

std::vector<int32_t> Tokenizer::post_process(std::vector<int32_t> ids) const {
  impl_->post->process(ids, nullptr);
  return ids;
}

void TokenizerImpl::encode(std::string_view text, bool add_special_tokens, std::vector<int32_t>& ids,
                           std::vector<std::string>* toks) const {
  const TokenizerImpl& m = *this;
  size_t bad = utf8_invalid_offset(text);
  DSFUSE_CHECK(bad == std::string_view::npos, "encode: input text is not valid UTF-8 (invalid byte 0x", std::hex,
               int(static_cast<unsigned char>(text[bad])), std::dec, " at offset ", bad, ")");
  DSFUSE_CHECK(text.size() < (size_t(1) << 29), "encode: input text of ", text.size(), " bytes is too long (max 512 MiB)");
  ids.reserve(text.size() / 3 + 4);
  if (m.trie_raw.empty()) {
    m.encode_text(text, true, ids, toks);
  } else {
    std::vector<TokenizerImpl::Seg> segs;
    m.split_added(text, m.trie_raw, segs);
    for (const auto& g : segs) {
      if (g.added_index >= 0) {
        ids.push_back(m.added[size_t(g.added_index)].id);
        if (toks) toks->emplace_back(text.substr(g.b, g.e - g.b));
      } else {
        m.encode_text(text.substr(g.b, g.e - g.b), g.b == 0, ids, toks);
      }
    }
  }
  if (add_special_tokens) {
    if (m.config_policy) {
      if (m.add_bos) {
        ids.insert(ids.begin(), *m.bos_id);
        if (toks) toks->insert(toks->begin(), *m.bos_tok);
      }
      if (m.add_eos) {
        ids.push_back(*m.eos_id);
        if (toks) toks->push_back(*m.eos_tok);
      }
    } else {
      m.post->process(ids, toks);
    }
  }
}

// ------------------------------------------------------------------------------------------------ decode

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const TokenizerImpl& m = *impl_;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    auto it = m.added_by_id.find(id);
    if (it != m.added_by_id.end()) {
      const AddedToken& t = m.added[it->second];
      if (skip_special_tokens && t.special) continue;
      toks.push_back(t.display);
      continue;
    }
    const std::string_view* t = m.model->id_to_token(id);
    DSFUSE_CHECK(t, "decode: token id ", id, " is not in the vocabulary of ", m.origin, " (vocab size ", vocab_size(), ")");
    toks.emplace_back(*t);
  }
  if (!m.decoder) {
    std::string out;
    for (size_t i = 0; i < toks.size(); ++i) {
      if (i) out.push_back(' ');
      out += toks[i];
    }
    return out;
  }
  m.decoder->decode_chain(toks);
  std::string out;
  for (auto& t : toks) out += t;
  return out;
}

std::vector<std::string> Tokenizer::id_to_token(std::span<const int32_t> ids) const {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int32_t id : ids) out.push_back(id_to_token(id));
  return out;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  auto t = impl_->token_of(id);
  DSFUSE_CHECK(t, "token id ", id, " is not in the vocabulary of ", impl_->origin);
  return std::string(*t);
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->added_by_content.find(token);
  if (it != impl_->added_by_content.end()) return impl_->added[size_t(it->second)].id;
  return impl_->model->token_to_id(token);
}

bool Tokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

size_t Tokenizer::vocab_size() const {
  size_t n = impl_->model->id_limit();
  for (auto& t : impl_->added) n = std::max(n, size_t(t.id) + 1);
  return n;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos_id; }
std::optional<std::string> Tokenizer::bos_token() const { return impl_->bos_tok; }
std::optional<std::string> Tokenizer::eos_token() const { return impl_->eos_tok; }

// -------------------------------------------------------------------------------------------------- load

Tokenizer::Tokenizer() : impl_(std::make_unique<TokenizerImpl>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

static std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  DSFUSE_CHECK(f, "cannot open ", p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  DSFUSE_CHECK(!f.bad(), "cannot read ", p.string());
  return ss.str();
}

Tokenizer Tokenizer::load(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) file = path / "tokenizer.json";
  DSFUSE_CHECK(std::filesystem::is_regular_file(file, ec), "tokenizer: ", file.string(),
               " not found (expected a directory holding tokenizer.json, or the tokenizer.json file)");
  std::string cfg;
  auto cfg_path = file.parent_path() / "tokenizer_config.json";
  if (std::filesystem::is_regular_file(cfg_path, ec)) cfg = read_file(cfg_path);
  return from_json(read_file(file), cfg, file.string());
}

// bos_token / eos_token of tokenizer_config.json: a string, an AddedToken object or null.
static std::optional<std::string> config_token(const json& cfg, const char* key, const std::string& where) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  DSFUSE_CHECK(it->is_object() && it->contains("content") && (*it)["content"].is_string(), where, ": '", key,
               "' must be a string, an object with 'content', or null");
  return (*it)["content"].get<std::string>();
}

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json, const std::string& origin) {
  Tokenizer t;
  TokenizerImpl& m = *t.impl_;
  m.origin = origin;
  TokenizerJson parsed = parse_tokenizer_json(tokenizer_json, origin);
  const json& j = parsed.rest;
  Ctx ctx{origin, ""};

  auto mit = j.find("model");
  DSFUSE_CHECK(mit != j.end() && mit->is_object(), origin, ": missing 'model' object");
  std::string mtype;
  if (auto ti = mit->find("type"); ti != mit->end()) {
    DSFUSE_CHECK(ti->is_string(), origin, ": model.type must be a string");
    mtype = ti->get<std::string>();
  } else if (parsed.bpe.has_merges || mit->contains("merges")) {
    mtype = "BPE";
  }
  DSFUSE_CHECK(mtype == "BPE", origin, ": unsupported model.type '", mtype, "' (only BPE is implemented)");
  m.model = BpeModel::load(*mit, std::move(parsed.bpe), ctx.at("model"));

  auto get = [&](const char* k) -> const json& {
    static const json null_json;
    auto it = j.find(k);
    return it == j.end() ? null_json : *it;
  };
  m.normalizer = make_normalizer(get("normalizer"), ctx.at("normalizer"));
  bool ends_bl = false;
  m.pre = make_pre_tokenizer(get("pre_tokenizer"), ctx.at("pre_tokenizer"), &ends_bl);
  if (ends_bl) {
    set_defer_byte_level(m.pre.get());
    m.defer_bytes = true;
  }
  m.decoder = make_decoder(get("decoder"), ctx.at("decoder"));
  {
    std::function<bool(const json&)> has_bf = [&](const json& d) {
      if (!d.is_object()) return false;
      if (d.value("type", "") == "ByteFallback") return true;
      if (auto it = d.find("decoders"); it != d.end() && it->is_array())
        for (auto& x : *it)
          if (has_bf(x)) return true;
      return false;
    };
    m.decoder_byte_fallback = has_bf(get("decoder"));
  }
  m.post = make_post_processor(get("post_processor"), ctx.at("post_processor"));

  if (auto ait = j.find("added_tokens"); ait != j.end() && !ait->is_null()) {
    DSFUSE_CHECK(ait->is_array(), origin, ": added_tokens must be an array");
    for (size_t i = 0; i < ait->size(); ++i) {
      const json& a = (*ait)[i];
      std::string w = cat(origin, ": added_tokens[", i, "]");
      DSFUSE_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                       a["content"].is_string(),
                   w, ": needs integer 'id' and string 'content'");
      AddedToken at;
      at.id = a["id"].get<int32_t>();
      DSFUSE_CHECK(at.id >= 0, w, ": negative id");
      at.content = a["content"].get<std::string>();
      auto flag = [&](const char* k, bool d) {
        auto it = a.find(k);
        if (it == a.end() || it->is_null()) return d;
        DSFUSE_CHECK(it->is_boolean(), w, ".", k, ": must be a boolean");
        return it->get<bool>();
      };
      at.special = flag("special", false);
      at.lstrip = flag("lstrip", false);
      at.rstrip = flag("rstrip", false);
      at.single_word = flag("single_word", false);
      at.normalized = flag("normalized", !at.special);
      auto prev = m.added_by_content.find(at.content);
      if (prev != m.added_by_content.end()) {  // same content twice: the last one wins
        m.added[size_t(prev->second)] = at;
        m.added_by_id[at.id] = size_t(prev->second);
        continue;
      }
      m.added_by_content.emplace(at.content, int32_t(m.added.size()));
      m.added_by_id[at.id] = m.added.size();
      m.added.push_back(at);
    }
  }
  for (size_t i = 0; i < m.added.size(); ++i) {
    AddedToken& a = m.added[i];
    a.display = a.content;
    if (!a.normalized) {
      m.trie_raw.add(a.content, int32_t(i));
    } else {
      if (m.normalizer) m.normalizer->normalize(a.display);
      m.trie_norm.add(a.display, int32_t(i));
    }
  }

  if (!config_json.empty()) {
    std::string where = (std::filesystem::path(origin).parent_path() / "tokenizer_config.json").string();
    json cfg;
    try {
      cfg = json::parse(config_json);
    } catch (const json::exception& e) {
      fail(cat(where, ": invalid JSON: ", e.what()));
    }
    DSFUSE_CHECK(cfg.is_object(), where, ": top level must be a JSON object");
    m.bos_tok = config_token(cfg, "bos_token", where);
    m.eos_tok = config_token(cfg, "eos_token", where);
    if (m.bos_tok) m.bos_id = t.token_to_id(*m.bos_tok);
    if (m.eos_tok) m.eos_id = t.token_to_id(*m.eos_tok);
    for (const char* k : {"add_bos_token", "add_eos_token"}) {
      auto it = cfg.find(k);
      if (it == cfg.end() || it->is_null()) continue;
      DSFUSE_CHECK(it->is_boolean(), where, ": '", k, "' must be a boolean");
      m.config_policy = true;
      (std::string(k) == "add_bos_token" ? m.add_bos : m.add_eos) = it->get<bool>();
    }
    DSFUSE_CHECK(!m.add_bos || m.bos_id, where, ": add_bos_token is true but bos_token ",
                 m.bos_tok ? "'" + *m.bos_tok + "' is not in the vocabulary" : std::string("is not set"));
    DSFUSE_CHECK(!m.add_eos || m.eos_id, where, ": add_eos_token is true but eos_token ",
                 m.eos_tok ? "'" + *m.eos_tok + "' is not in the vocabulary" : std::string("is not set"));
  }
  return t;
}

// ----------------------------------------------------------------------------------------- StreamDecoder

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tok_(&tokenizer), skip_special_(skip_special_tokens) {}

static bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

// A <0xXX> byte token under a ByteFallback decoder: the library turns a whole run of byte tokens into
// U+FFFD (one per byte) when the run is not valid UTF-8, so text of a run is final only once the run ends.
static bool is_byte_token(const TokenizerImpl& m, int32_t id) {
  if (!m.decoder_byte_fallback) return false;
  auto t = m.token_of(id);
  return t && t->size() == 6 && t->substr(0, 3) == "<0x" && (*t)[5] == '>' &&
         std::isxdigit(static_cast<unsigned char>((*t)[3])) && std::isxdigit(static_cast<unsigned char>((*t)[4]));
}

std::string StreamDecoder::push(int32_t id) {
  // Validate the id now so that an unknown id fails at the push that introduced it.
  if (!tok_->impl().added_by_id.count(id)) tok_->id_to_token(id);
  ids_.push_back(id);
  if (is_byte_token(tok_->impl(), id) && !(skip_special_ && tok_->is_special(id))) return {};
  std::span<const int32_t> all(ids_);
  std::string prefix = tok_->decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_);
  std::string full = tok_->decode(all.subspan(prefix_offset_), skip_special_);
  if (full.size() <= prefix.size() || ends_with_replacement(full)) return {};
  if (full.compare(0, prefix.size(), prefix) != 0) {
    // Context-dependent decoder changed earlier text: fall back to decoding from the start of the stream.
    std::string whole_prev = tok_->decode(all.subspan(0, read_offset_), skip_special_);
    std::string whole = tok_->decode(all, skip_special_);
    if (whole.compare(0, whole_prev.size(), whole_prev) != 0 || ends_with_replacement(whole)) return {};
    prefix_offset_ = 0;
    read_offset_ = ids_.size();
    return whole.substr(whole_prev.size());
  }
  std::string delta = full.substr(prefix.size());
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return delta;
}

std::string StreamDecoder::flush() {
  std::span<const int32_t> all(ids_);
  std::string prefix = tok_->decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_);
  std::string full = tok_->decode(all.subspan(prefix_offset_), skip_special_);
  std::string delta = full.size() > prefix.size() ? full.substr(prefix.size()) : std::string();
  ids_.clear();
  prefix_offset_ = read_offset_ = 0;
  return delta;
}

}  // namespace dsfuse::tok
