// dsfuse tokenizer: loads a Hugging Face tokenizer.json (+ tokenizer_config.json) and reproduces the
// `tokenizers` library (0.23) token for token: added-token splitting, normalizers, pre-tokenizers, BPE,
// post-processors and decoders. Every failure on bad input is a dsfuse::Error naming what is wrong.
//
// Supported (anything else is an Error naming the file and JSON path):
//   model: BPE (vocab, merges as "a b" or ["a","b"], ignore_merges, byte_fallback, unk_token/fuse_unk,
//          continuing_subword_prefix, end_of_word_suffix; dropout null)
//   normalizer: Sequence NFC NFD NFKC NFKD Lowercase StripAccents Strip Replace Prepend
//   pre_tokenizer: Sequence Split(all behaviors, invert) ByteLevel Digits Metaspace Whitespace WhitespaceSplit
//   decoder: Sequence ByteLevel Replace Strip Fuse ByteFallback Metaspace
//   post_processor: ByteLevel TemplateProcessing(single) BertProcessing RobertaProcessing Sequence
// Not produced: offsets, type ids, attention masks, pair encodings, truncation/padding. Added-token ids are
// taken from tokenizer.json as written. transformers-level extras (clean_up_tokenization_spaces, chat
// templates) are not applied.
//
// Input text must be valid UTF-8 (the reference library only accepts Unicode strings): encode() throws
// an Error naming the first invalid byte offset. decode() throws on ids outside the vocabulary; bytes that
// do not form UTF-8 after byte-level decoding become U+FFFD exactly like the library (from_utf8_lossy).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsfuse::tok {

struct TokenizerImpl;

// ids with their token strings as the library's Encoding.tokens: the vocabulary string of each model
// token, the matched text of an added token (including whitespace taken by lstrip/rstrip).
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
};

class Tokenizer {
 public:
  // DIR holding tokenizer.json (and optionally tokenizer_config.json), or the tokenizer.json file itself.
  static Tokenizer load(const std::filesystem::path& dir_or_tokenizer_json);
  // Same from in-memory JSON texts (config may be empty). `origin` names the source in error messages.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view tokenizer_config_json = {},
                             const std::string& origin = "tokenizer.json");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_special_tokens: apply the BOS/EOS policy of tokenizer_config.json (add_bos_token/add_eos_token)
  // when it sets one, else the post-processor of tokenizer.json (TemplateProcessing etc.).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  Encoding encode_full(std::string_view text, bool add_special_tokens) const;
  // tokenizer.json's post-processor alone (what the library returns with add_special_tokens=true).
  std::vector<int32_t> post_process(std::vector<int32_t> ids) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Token strings of ids (added tokens first, then the model vocabulary), as Encoding.tokens.
  std::vector<std::string> id_to_token(std::span<const int32_t> ids) const;
  std::string id_to_token(int32_t id) const;       // throws on unknown id
  std::optional<int32_t> token_to_id(std::string_view token) const;
  bool is_special(int32_t id) const;
  // One past the largest id (model vocab and added tokens).
  size_t vocab_size() const;

  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::optional<std::string> bos_token() const;
  std::optional<std::string> eos_token() const;

  const TokenizerImpl& impl() const { return *impl_; }

 private:
  Tokenizer();
  std::unique_ptr<TokenizerImpl> impl_;
};

// Incremental detokenizer: push ids one at a time, get text as soon as it is final. Never emits a partial
// UTF-8 character (held back until completed or flushed); the concatenation of all push() results and
// flush() equals tokenizer.decode(all ids, skip_special_tokens).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  std::string push(int32_t id);
  std::string flush();  // emits whatever is held back; the decoder may be reused afterwards

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // start of the decode window
  size_t read_offset_ = 0;    // ids before this have been emitted
};

}  // namespace dsfuse::tok
