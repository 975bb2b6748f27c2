// Tokenizer parity with the Hugging Face `tokenizers` library on the real DeepSeek-V3 / Qwen3 / Llama3
// tokenizer.json files (fixtures/tokenizers/*/cases.jsonl), BOS policy, corpus round trip, streaming
// detokenizer, error cases and the `dsfuse tokenize` CLI.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using dsfuse::tok::StreamDecoder;
using dsfuse::tok::Tokenizer;
using json = nlohmann::json;

namespace {

const char* kNames[] = {"deepseek_v3", "qwen3", "llama3"};

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<json> read_cases(const std::filesystem::path& dir) {
  std::vector<json> out;
  std::ifstream f(dir / "cases.jsonl");
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// Loading a 128K-vocab file takes ~0.15 s: share one instance per file across tests.
const Tokenizer& cached(const std::filesystem::path& dir) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(dir.string());
  if (it == cache.end()) it = cache.emplace(dir.string(), Tokenizer::load(dir)).first;
  return it->second;
}

bool valid_utf8(const std::string& s) { return dsfuse::tok::utf8_invalid_offset(s) == std::string_view::npos; }

class TokenizerFixture : public ::testing::TestWithParam<const char*> {};

}  // namespace

TEST_P(TokenizerFixture, CasesMatchReferenceLibrary) {
  DSFUSE_REQUIRE_FIXTURE(dir, std::string("tokenizers/") + GetParam());
  const Tokenizer& tok = cached(dir);
  auto cases = read_cases(dir);
  ASSERT_FALSE(cases.empty());
  size_t ok_ids = 0, ok_tokens = 0, ok_decoded = 0, ok_post = 0;
  for (const json& c : cases) {
    const std::string text = c["text"];
    auto want_ids = c["ids"].get<std::vector<int32_t>>();
    auto enc = tok.encode_full(text, false);
    ok_ids += enc.ids == want_ids;
    ok_tokens += enc.tokens == c["tokens"].get<std::vector<std::string>>();
    ok_decoded += tok.decode(enc.ids) == c["decoded"].get<std::string>();
    ok_post += tok.post_process(enc.ids) == c["ids_post"].get<std::vector<int32_t>>();
    EXPECT_EQ(enc.ids, want_ids) << "text: " << json(text).dump();
    EXPECT_EQ(enc.tokens, c["tokens"].get<std::vector<std::string>>()) << "text: " << json(text).dump();
    EXPECT_EQ(tok.encode(text, false), want_ids);
    EXPECT_EQ(tok.id_to_token(enc.ids), enc.tokens);  // no lstrip/rstrip tokens in these files
    EXPECT_EQ(tok.decode(enc.ids), c["decoded"].get<std::string>()) << "text: " << json(text).dump();
    EXPECT_EQ(tok.post_process(enc.ids), c["ids_post"].get<std::vector<int32_t>>());
  }
  std::printf("[ parity ] %s: ids %zu/%zu tokens %zu/%zu decoded %zu/%zu ids_post %zu/%zu\n", GetParam(), ok_ids,
              cases.size(), ok_tokens, cases.size(), ok_decoded, cases.size(), ok_post, cases.size());
}

TEST_P(TokenizerFixture, AddSpecialTokensFollowsConfigPolicy) {
  DSFUSE_REQUIRE_FIXTURE(dir, std::string("tokenizers/") + GetParam());
  const Tokenizer& tok = cached(dir);
  for (const json& c : read_cases(dir)) {
    auto post = c["ids_post"].get<std::vector<int32_t>>();
    auto got = tok.encode(c["text"].get<std::string>(), true);
    if (std::string(GetParam()) == "deepseek_v3") post.insert(post.begin(), 0);  // add_bos_token: true
    EXPECT_EQ(got, post) << c["text"].dump();
  }
}

TEST_P(TokenizerFixture, CorpusRoundTrip) {
  DSFUSE_REQUIRE_FIXTURE(dir, std::string("tokenizers/") + GetParam());
  auto corpus = dsfuse::test::fixtures_dir() / ".." / "corpus" / "tinyshakespeare.txt";
  if (!std::filesystem::exists(corpus)) GTEST_SKIP() << "corpus not found at " << corpus;
  const Tokenizer& tok = cached(dir);
  std::string text = slurp(corpus);
  auto ids = tok.encode(text, false);
  EXPECT_GT(ids.size(), text.size() / 8);
  EXPECT_LT(ids.size(), text.size() / 2);
  EXPECT_TRUE(tok.decode(ids) == text);
  // Line by line too (different added-token / at-start contexts).
  std::istringstream in(text);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line) && n < 2000) {
    ++n;
    ASSERT_EQ(tok.decode(tok.encode(line, false)), line);
  }
}

TEST_P(TokenizerFixture, ConcurrentEncodeIsConsistent) {
  DSFUSE_REQUIRE_FIXTURE(dir, std::string("tokenizers/") + GetParam());
  auto cases = read_cases(dir);
  Tokenizer tok = Tokenizer::load(dir);  // fresh word cache, filled by both threads at once
  std::vector<std::vector<int32_t>> got[2];
  auto work = [&](int t) {
    for (int rep = 0; rep < 20; ++rep)
      for (const json& c : cases) got[t].push_back(tok.encode(c["text"].get<std::string>(), false));
  };
  std::thread a(work, 0), b(work, 1);
  a.join();
  b.join();
  ASSERT_EQ(got[0].size(), got[1].size());
  for (size_t i = 0; i < got[0].size(); ++i) {
    EXPECT_EQ(got[0][i], cases[i % cases.size()]["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(got[1][i], got[0][i]);
  }
}

TEST_P(TokenizerFixture, StreamDecoderMatchesDecode) {
  DSFUSE_REQUIRE_FIXTURE(dir, std::string("tokenizers/") + GetParam());
  const Tokenizer& tok = cached(dir);
  std::vector<std::string> texts = {"a😀中文🇨🇳 👍🏽 end", "Emoji 😀🚀👍🏽 and flags 🇨🇳🇺🇸", "नमस्ते दुनिया",
                                    "<｜begin▁of▁sentence｜>Hi<|im_start|>日本語のテキスト<think>\n</think>"};
  for (const json& c : read_cases(dir)) texts.push_back(c["text"]);
  size_t held = 0;
  for (const auto& text : texts) {
    for (bool skip : {false, true}) {
      auto ids = tok.encode(text, false);
      StreamDecoder sd(tok, skip);
      std::string all;
      for (int32_t id : ids) {
        std::string piece = sd.push(id);
        EXPECT_TRUE(valid_utf8(piece));
        EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "partial character emitted for " << json(text).dump();
        held += piece.empty();
        all += piece;
      }
      all += sd.flush();
      EXPECT_EQ(all, tok.decode(ids, skip)) << json(text).dump();
    }
  }
  EXPECT_GT(held, 0u);  // some characters were split across tokens and held back
}

TEST_P(TokenizerFixture, StreamDecoderHoldsIncompleteBytesAndFlushes) {
  DSFUSE_REQUIRE_FIXTURE(dir, std::string("tokenizers/") + GetParam());
  const Tokenizer& tok = cached(dir);
  // Find a character the vocabulary splits into several byte-level pieces.
  std::string ch;
  std::vector<int32_t> ids;
  for (const char* c : {"😀", "🦩", "𓀀", "𝔘", "ð«¨"}) {
    ids = tok.encode(std::string("x") + c, false);
    ch = c;
    if (ids.size() >= 3) break;
  }
  ASSERT_GE(ids.size(), 3u);
  StreamDecoder sd(tok);
  std::string got = sd.push(ids[0]);
  EXPECT_EQ(got, "x");
  EXPECT_EQ(sd.push(ids[1]), "");  // an incomplete UTF-8 sequence is held back
  // Stopping mid-character: flush emits what decode() gives (U+FFFD for the incomplete bytes).
  std::vector<int32_t> partial(ids.begin(), ids.begin() + 2);
  EXPECT_EQ(got + sd.flush(), tok.decode(partial));
  // Reused after flush.
  std::string all;
  for (int32_t id : ids) all += sd.push(id);
  all += sd.flush();
  EXPECT_EQ(all, "x" + ch);
}

TEST_P(TokenizerFixture, VocabularyAccessors) {
  DSFUSE_REQUIRE_FIXTURE(dir, std::string("tokenizers/") + GetParam());
  const Tokenizer& tok = cached(dir);
  std::string name = GetParam();
  if (name == "deepseek_v3") {
    EXPECT_EQ(tok.vocab_size(), 128815u);
    EXPECT_EQ(tok.bos_id(), 0);
    EXPECT_EQ(tok.eos_id(), 1);
    EXPECT_EQ(tok.bos_token(), "<｜begin▁of▁sentence｜>");
    EXPECT_EQ(tok.eos_token(), "<｜end▁of▁sentence｜>");
    EXPECT_TRUE(tok.is_special(0));
    EXPECT_FALSE(tok.is_special(128803));  // <｜User｜> is an added, non-special token
    EXPECT_EQ(tok.token_to_id("<｜User｜>"), 128803);
    EXPECT_EQ(tok.encode("<｜begin▁of▁sentence｜>", true), (std::vector<int32_t>{0, 0}));
    EXPECT_EQ(tok.decode(tok.encode("<｜User｜>Hi<｜end▁of▁sentence｜>", true), true), "<｜User｜>Hi");
  } else if (name == "qwen3") {
    EXPECT_EQ(tok.vocab_size(), 151669u);
    EXPECT_FALSE(tok.bos_id().has_value());
    EXPECT_EQ(tok.eos_token(), "<|im_end|>");
    EXPECT_EQ(tok.eos_id(), 151645);
    EXPECT_EQ(tok.encode("hi", true), tok.encode("hi", false));  // add_bos_token: false
  } else {
    EXPECT_EQ(tok.vocab_size(), 128256u);
    EXPECT_EQ(tok.bos_id(), 128000);
    EXPECT_EQ(tok.eos_id(), 128001);
    // No add_bos_token in tokenizer_config.json and a ByteLevel-only post-processor: nothing is added,
    // as the reference library does for this file.
    EXPECT_EQ(tok.encode("hi", true), tok.encode("hi", false));
  }
  EXPECT_EQ(tok.token_to_id("definitely-not-a-token-\xF0\x9F\x98\x80\xF0\x9F\x98\x80"), std::nullopt);
  EXPECT_EQ(tok.id_to_token(tok.encode("Hello", false)), std::vector<std::string>{"Hello"});
}

TEST_P(TokenizerFixture, BadInputIsAnError) {
  DSFUSE_REQUIRE_FIXTURE(dir, std::string("tokenizers/") + GetParam());
  const Tokenizer& tok = cached(dir);
  try {
    tok.encode(std::string("ok \xC3\x28 bad"), false);
    FAIL() << "invalid UTF-8 accepted";
  } catch (const dsfuse::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("offset 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tok.encode(std::string("\xED\xA0\x80"), false), dsfuse::Error);  // surrogate
  EXPECT_THROW(tok.encode(std::string("\xF0\x9F\x98"), false), dsfuse::Error);  // truncated
  std::vector<int32_t> bad = {1, 2, 99999999};
  try {
    tok.decode(bad);
    FAIL() << "unknown id accepted";
  } catch (const dsfuse::Error& e) {
    EXPECT_NE(std::string(e.what()).find("99999999"), std::string::npos) << e.what();
  }
  std::vector<int32_t> neg = {-1};
  EXPECT_THROW(tok.decode(neg), dsfuse::Error);
  EXPECT_THROW(tok.id_to_token(-5), dsfuse::Error);
  StreamDecoder sd(tok);
  EXPECT_THROW(sd.push(int32_t(tok.vocab_size())), dsfuse::Error);
  EXPECT_EQ(sd.push(tok.encode("a", false)[0]), "a");  // still usable after the error
  // Empty input.
  EXPECT_TRUE(tok.encode("", false).empty());
  EXPECT_EQ(tok.decode(std::vector<int32_t>{}), "");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerFixture, ::testing::ValuesIn(kNames),
                         [](const auto& info) { return std::string(info.param); });

// ------------------------------------------------------------------------------------------ bad files

namespace {

std::string expect_load_error(const std::string& tokenizer_json, const std::string& config = "") {
  try {
    Tokenizer::from_json(tokenizer_json, config, "/models/x/tokenizer.json");
  } catch (const dsfuse::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for " << tokenizer_json.substr(0, 200);
  return "";
}

const char* kMinimal = R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})";

}  // namespace

TEST(TokenizerLoad, MinimalModelWorks) {
  auto t = Tokenizer::from_json(kMinimal);
  // Expected values from the reference library (tokenizers 0.23.2).
  EXPECT_EQ(t.encode("abab", false), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(t.encode("aba", false), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(t.encode("axb", false), (std::vector<int32_t>{2}));  // unknown char, no unk token: dropped
  EXPECT_EQ(t.decode(std::vector<int32_t>{2, 0}), "ab a");           // no decoder: joined with spaces
  EXPECT_EQ(t.vocab_size(), 3u);
}

TEST(TokenizerLoad, MalformedFilesNameTheProblem) {
  auto has = [](const std::string& msg, const std::string& what) {
    EXPECT_NE(msg.find(what), std::string::npos) << "message: " << msg << "\nexpected to mention: " << what;
  };
  std::string m;
  m = expect_load_error("{\"model\": {");
  has(m, "/models/x/tokenizer.json");
  has(m, "invalid JSON");
  m = expect_load_error("[1, 2]");
  has(m, "top level must be a JSON object");
  m = expect_load_error("{\"version\": \"1.0\"}");
  has(m, "missing 'model'");
  m = expect_load_error(R"({"model": {"type": "Unigram", "vocab": []}})");
  has(m, "unsupported model.type 'Unigram'");
  m = expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}}})");
  has(m, "model.merges: missing");
  m = expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a c"]}})");
  has(m, "model.merges[0]");
  has(m, "'c' is not in the vocab");
  m = expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})");
  has(m, "model.vocab[\"a\"]");
  m = expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}})");
  has(m, "model.merges[0]");
  m = expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "dropout": 0.1}})");
  has(m, "dropout");
  std::string base = R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, )";
  m = expect_load_error(base + R"("normalizer": {"type": "Precompiled", "precompiled_charsmap": ""}})");
  has(m, "normalizer");
  has(m, "unsupported normalizer type 'Precompiled'");
  m = expect_load_error(base + R"("pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "BertPreTokenizer"}]}})");
  has(m, "pre_tokenizer.pretokenizers[0]");
  has(m, "'BertPreTokenizer'");
  m = expect_load_error(base + R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false}})");
  has(m, "cannot compile regex");
  m = expect_load_error(base + R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways", "invert": false}})");
  has(m, "unknown split behavior 'Sideways'");
  m = expect_load_error(base + R"("decoder": {"type": "WordPiece"}})");
  has(m, "unsupported decoder type 'WordPiece'");
  m = expect_load_error(base + R"("post_processor": {"type": "Nope"}})");
  has(m, "unsupported post_processor type 'Nope'");
  m = expect_load_error(base + R"("added_tokens": [{"content": "x"}]})");
  has(m, "added_tokens[0]");
  m = expect_load_error(kMinimal, "{not json");
  has(m, "tokenizer_config.json");
  m = expect_load_error(kMinimal, R"({"add_bos_token": true, "bos_token": "<s>"})");
  has(m, "add_bos_token is true but bos_token '<s>' is not in the vocabulary");
  try {
    Tokenizer::load("/nonexistent/dir");
    ADD_FAILURE();
  } catch (const dsfuse::Error& e) {
    has(e.what(), "/nonexistent/dir");
    has(e.what(), "not found");
  }
}

TEST(TokenizerLoad, JsonEscapesInVocab) {
  // \u escapes (including a surrogate pair) in vocab keys and merges are decoded.
  auto t = Tokenizer::from_json(
      R"({"model": {"type": "BPE", "vocab": {"\u00e9": 0, "\ud83d\ude00": 1, "\u00e9\ud83d\ude00": 2, "\"": 3},
          "merges": [["\u00e9", "\ud83d\ude00"]]}})");
  EXPECT_EQ(t.encode("é😀\"", false), (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(t.token_to_id("\""), 3);
}

// ------------------------------------------------------------------------------------------------ CLI

TEST(TokenizeCli, JsonlMatchesCases) {
  DSFUSE_REQUIRE_FIXTURE(dir, "tokenizers/deepseek_v3");
  auto cases = read_cases(dir);
  auto in = std::filesystem::temp_directory_path() / "dsfuse_tok_cli_in.jsonl";
  {
    std::ofstream f(in);
    for (const json& c : cases) f << json{{"text", c["text"]}}.dump() << "\n";
  }
  auto r = dsfuse::test::run_dsfuse("tokenize --tokenizer " + dir.string() + " --jsonl " + in.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream out(r.out);
  std::string line;
  size_t i = 0;
  while (std::getline(out, line)) {
    ASSERT_LT(i, cases.size());
    json j = json::parse(line);
    EXPECT_EQ(j["ids"], cases[i]["ids"]);
    EXPECT_EQ(j["tokens"], cases[i]["tokens"]);
    EXPECT_EQ(j["decoded"], cases[i]["decoded"]);
    ++i;
  }
  EXPECT_EQ(i, cases.size());

  r = dsfuse::test::run_dsfuse("tokenize --tokenizer " + dir.string() + " --jsonl " + in.string() + " --add-special");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json first = json::parse(r.out.substr(0, r.out.find('\n')));
  EXPECT_EQ(first["ids"][0], 0);
  EXPECT_EQ(first["tokens"][0], "<｜begin▁of▁sentence｜>");

  r = dsfuse::test::run_dsfuse("tokenize --tokenizer " + dir.string() + " --text 'Hello world'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("19923"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"Ġworld\""), std::string::npos) << r.out;

  {
    std::ofstream f(in);
    f << "{\"text\": \"ok\"}\n{\"txt\": 1}\n";
  }
  r = dsfuse::test::run_dsfuse("tokenize --tokenizer " + dir.string() + " --jsonl " + in.string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(":2: expected an object with a string field \"text\""), std::string::npos) << r.err;
  std::filesystem::remove(in);

  r = dsfuse::test::run_dsfuse("tokenize --tokenizer /nonexistent --text hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("not found"), std::string::npos) << r.err;
  r = dsfuse::test::run_dsfuse("tokenize --tokenizer " + dir.string());
  EXPECT_NE(r.exit_code, 0);
}
