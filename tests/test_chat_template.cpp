// ChatTemplate: parity with Hugging Face on every fixture chat.jsonl line, tokenizer_config.json
// handling, and the `dsfuse chat-template` CLI.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"

namespace {

namespace fs = std::filesystem;
using dsfuse::tmpl::ChatTemplate;

std::vector<nlohmann::ordered_json> read_jsonl(const fs::path& p) {
  std::ifstream in(p);
  std::vector<nlohmann::ordered_json> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::ordered_json::parse(line));
  return out;
}

// Renders every line of <tokenizer>/chat.jsonl through the C++ API; returns {matching, total}.
std::pair<size_t, size_t> parity(const fs::path& dir) {
  auto tmpl = ChatTemplate::from_tokenizer_config(dir);
  auto cases = read_jsonl(dir / "chat.jsonl");
  size_t ok = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    std::string got = tmpl.render(c["messages"], c["add_generation_prompt"].get<bool>());
    EXPECT_EQ(got, c["rendered"].get<std::string>()) << dir.filename() << " line " << i + 1;
    ok += got == c["rendered"].get<std::string>();
  }
  return {ok, cases.size()};
}

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/dsfuse_chat_XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
    return path / name;
  }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const dsfuse::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ChatTemplate, DeepSeekV3FixtureParity) {
  DSFUSE_REQUIRE_FIXTURE(dir, "tokenizers/deepseek_v3");
  auto [ok, n] = parity(dir);
  EXPECT_EQ(ok, n);
  EXPECT_EQ(n, 8u);
}

TEST(ChatTemplate, Qwen3FixtureParity) {
  DSFUSE_REQUIRE_FIXTURE(dir, "tokenizers/qwen3");
  auto [ok, n] = parity(dir);
  EXPECT_EQ(ok, n);
  EXPECT_EQ(n, 8u);
}

TEST(ChatTemplate, Llama3FixtureParity) {
  DSFUSE_REQUIRE_FIXTURE(dir, "tokenizers/llama3");
  auto [ok, n] = parity(dir);
  EXPECT_EQ(ok, n);
  EXPECT_EQ(n, 8u);
}

TEST(ChatTemplate, SpecialTokensFromAddedTokenDicts) {
  DSFUSE_REQUIRE_FIXTURE(dir, "tokenizers/deepseek_v3");
  auto t = ChatTemplate::from_tokenizer_config(dir / "tokenizer_config.json");
  EXPECT_EQ(t.bos_token(), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(t.eos_token(), "<｜end▁of▁sentence｜>");
}

TEST(ChatTemplate, ConfigVariants) {
  TempDir tmp;
  // A list of named templates: "default" is used; tokens may be plain strings; unset ones are undefined.
  tmp.write("tokenizer_config.json", R"({
    "bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}, "unk_token": null,
    "chat_template": [{"name": "tool_use", "template": "TOOLS"},
                      {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}>{% endif %}{{ eos_token }}{{ unk_token is defined }}{{ tools is none }}{{ flavor }}"}]})");
  auto t = ChatTemplate::from_tokenizer_config(tmp.path);
  nlohmann::ordered_json msgs = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  EXPECT_EQ(t.render(msgs, true), "<s>[user]hi></s>FalseTrue");
  EXPECT_EQ(t.render(msgs, false, {{"flavor", "x"}}), "<s>[user]hi</s>FalseTruex");
  // nlohmann::json overload
  EXPECT_EQ(t.render(nlohmann::json::parse(R"([{"role": "a", "content": "b"}])"), false), "<s>[a]b</s>FalseTrue");

  tmp.write("no_template.json", R"({"bos_token": "<s>"})");
  std::string m = error_of([&] { ChatTemplate::from_tokenizer_config(tmp.path / "no_template.json"); });
  EXPECT_NE(m.find("no 'chat_template'"), std::string::npos) << m;

  tmp.write("no_default.json", R"({"chat_template": [{"name": "rag", "template": "x"}]})");
  m = error_of([&] { ChatTemplate::from_tokenizer_config(tmp.path / "no_default.json"); });
  EXPECT_NE(m.find("no \"default\" entry (has: rag)"), std::string::npos) << m;

  tmp.write("bad_syntax.json", R"({"chat_template": "{% for m in messages %}"})");
  m = error_of([&] { ChatTemplate::from_tokenizer_config(tmp.path / "bad_syntax.json"); });
  EXPECT_NE(m.find("unclosed 'for' block"), std::string::npos) << m;
  EXPECT_NE(m.find("bad_syntax.json"), std::string::npos) << m;

  m = error_of([&] { ChatTemplate::from_tokenizer_config(tmp.path / "missing.json"); });
  EXPECT_NE(m.find("cannot open"), std::string::npos) << m;

  m = error_of([&] { t.render(nlohmann::ordered_json::object(), false); });
  EXPECT_NE(m.find("'messages' must be a JSON array"), std::string::npos) << m;
}

TEST(ChatTemplate, Cli) {
  DSFUSE_REQUIRE_FIXTURE(dir, "tokenizers/qwen3");
  auto r = dsfuse::test::run_dsfuse("chat-template --tokenizer " + dir.string() + " --jsonl " + (dir / "chat.jsonl").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto expected = read_jsonl(dir / "chat.jsonl");
  std::istringstream out(r.out);
  std::string line;
  size_t n = 0;
  while (std::getline(out, line)) {
    ASSERT_LT(n, expected.size());
    auto j = nlohmann::json::parse(line);  // valid JSON, one object per line
    EXPECT_EQ(j["rendered"].get<std::string>(), expected[n]["rendered"].get<std::string>()) << "line " << n + 1;
    ++n;
  }
  EXPECT_EQ(n, expected.size());

  auto bad = dsfuse::test::run_dsfuse("chat-template --tokenizer /nonexistent-dir --jsonl /dev/null");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("cannot open"), std::string::npos) << bad.err;
}
