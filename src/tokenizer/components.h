// Tokenizer pipeline components of tokenizer.json: regex patterns (PCRE2), normalizers, pre-tokenizers,
// decoders and post-processors. Internal to src/tokenizer.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace dsfuse::tok {

// Where a component comes from, for error messages: "<file>: <json path>".
struct Ctx {
  std::string file;
  std::string path;
  Ctx at(const std::string& sub) const { return {file, path + sub}; }
  std::string where() const { return file + ": " + path; }
};

// A compiled PCRE2 pattern (UTF | UCP, JIT). Subjects must be valid UTF-8 (checked once by the caller).
class Regex {
 public:
  Regex(const std::string& pattern, const Ctx& ctx);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // HF Pattern::find_matches: covering list of ((start, end), is_match), non-empty input.
  void find_matches(std::string_view s, std::vector<std::pair<std::pair<uint32_t, uint32_t>, bool>>& out) const;
  // Replaces every match with `content` (HF NormalizedString::replace semantics).
  std::string replace_all(std::string_view s, std::string_view content) const;

 private:
  pcre2_real_code_8* code_ = nullptr;
};

std::string regex_escape(std::string_view s);
// Rewrites Oniguruma's Unicode \w \W \s \S (what the library's Split regexes mean) for PCRE2.
std::string onig_to_pcre2(std::string_view pattern);

// Either a Regex or a literal String pattern (compiled to an escaped regex, as the library does).
std::unique_ptr<Regex> make_pattern(const nlohmann::json& pattern, const Ctx& ctx);

// ---- pieces: views into one buffer (zero-copy splitting) ----
struct Piece {
  uint32_t off, len;
  bool at_start;  // starts at original offset 0 (Metaspace prepend_scheme "first")
};
struct Pieces {
  std::string buf;
  std::vector<Piece> v;
  std::string_view view(const Piece& p) const { return std::string_view(buf).substr(p.off, p.len); }
  // Appends text to the buffer and returns a piece for it.
  Piece add(std::string_view s, bool at_start) {
    Piece p{uint32_t(buf.size()), uint32_t(s.size()), at_start};
    buf.append(s);
    return p;
  }
};

// ---- normalizers ----
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // at_start: the text starts at original offset 0; cleared when the first char no longer maps there
  // (needed by Metaspace prepend_scheme "first").
  virtual void normalize(std::string& s, bool& at_start) const = 0;
  void normalize(std::string& s) const {
    bool a = false;
    normalize(s, a);
  }
};
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const Ctx& ctx);  // null for json null

// ---- pre-tokenizers ----
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(Pieces& p) const = 0;
};
// `defer_byte_level`: a trailing ByteLevel step leaves raw bytes (the BPE model maps them itself).
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const Ctx& ctx, bool* ends_with_byte_level);
void set_defer_byte_level(PreTokenizer* p);

// ---- decoders ----
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const Ctx& ctx);

// ---- post-processors (single sequence) ----
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // tokens may be null (ids only)
  virtual void process(std::vector<int32_t>& ids, std::vector<std::string>* tokens) const = 0;
};
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j, const Ctx& ctx);

}  // namespace dsfuse::tok
