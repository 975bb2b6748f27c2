// Generation: greedy continuations against Transformers, seeded sampling, streaming, stop strings,
// reasoning split, and the `dsfuse run` command line.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <regex>
#include <fstream>
#include <sys/wait.h>

#include "dsfuse/dsfuse.h"
#include "engine/engine.h"
#include "models/model.h"
#include "engine/text_stream.h"
#include "loader/safetensors.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace dsfuse;
namespace fs = std::filesystem;

namespace {

using test::ref_floats;
using test::ref_ids;

// Greedy decoding with the KV cache reproduces the reference continuation, up to the first step whose
// top-1/top-2 margin is below 1e-3 (where float rounding may legitimately pick the other token).
void check_greedy(Model& model, const fs::path& ref_file, const std::string& label) {
  SafetensorsFile ref(ref_file);
  const auto prompt = ref_ids(ref, "ids_0");
  const auto want = ref_ids(ref, "greedy_0");
  const auto margin = ref_floats(ref, "greedy_margin_0");
  EngineRequest req;
  req.prompt_ids = prompt;
  req.sampling.temperature = 0;
  req.max_new_tokens = static_cast<int>(want.size() - prompt.size());
  req.ignore_eos = true;
  GenerateResult r = Engine(model, nullptr).generate(req);
  size_t checked = 0;
  for (size_t i = 0; i < r.ids.size(); ++i) {
    if (margin[i] < 1e-3f) break;
    EXPECT_EQ(r.ids[i], want[prompt.size() + i]) << label << " greedy step " << i;
    ++checked;
  }
  std::printf("[greedy] %-24s %zu/%zu steps equal to the reference\n", label.c_str(), checked, r.ids.size());
  EXPECT_GE(checked, 1u);
}

class GreedyFixtures : public ::testing::TestWithParam<std::string> {};

TEST_P(GreedyFixtures, MatchesTransformers) {
  DSFUSE_REQUIRE_FIXTURE(dir, "models/" + GetParam());
  auto model = Model::load(dir);
  check_greedy(*model, dir / "reference.safetensors", GetParam());
}

// Greedy decoding on the GPU through the engine (paged KV pool, block tables staged to the device).
TEST_P(GreedyFixtures, CudaMatchesTransformers) {
  if (!test::cuda_available()) GTEST_SKIP() << test::cuda_skip_reason();
  DSFUSE_REQUIRE_FIXTURE(dir, "models/" + GetParam());
  LoadOptions o;
  o.device = "cuda";
  auto model = Model::load(dir, o);
  check_greedy(*model, dir / "reference.safetensors", "cuda " + GetParam());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GreedyFixtures, DSFUSE_FIXTURE_MODELS);

const fs::path kDefaultModel = DSFUSE_SOURCE_MODEL_DIR;
const fs::path kDefaultRef = fs::path(DSFUSE_TEST_DATA) / "default_model_reference.safetensors";

TEST(DefaultModel, LogitsAndGreedyMatchTransformers) {
  auto model = Model::load(kDefaultModel);
  SafetensorsFile ref(kDefaultRef);
  for (const char* k : {"0", "1"}) {
    const auto ids = ref_ids(ref, std::string("ids_") + k);
    const auto want = ref_floats(ref, std::string("logits_") + k);
    auto seq = model->new_sequence(static_cast<int64_t>(ids.size()));
    std::vector<float> out;
    model->forward(*seq, ids, out, true);
    std::printf("[parity] default model logits_%s rel err %.3e\n", k, test::rel_err(out, want));
    EXPECT_LE(test::rel_err(out, want), 1e-4);
  }
  check_greedy(*model, kDefaultRef, "default-model");
}

TEST(DefaultModel, CudaLogitsAndGreedyMatchTransformers) {
  if (!test::cuda_available()) GTEST_SKIP() << test::cuda_skip_reason();
  const double tol = test::cuda_f32_mode() ? 1e-4 : 1e-3;
  LoadOptions o;
  o.device = "cuda";
  auto model = Model::load(kDefaultModel, o);
  SafetensorsFile ref(kDefaultRef);
  for (const char* k : {"0", "1"}) {
    const auto ids = ref_ids(ref, std::string("ids_") + k);
    const auto want = ref_floats(ref, std::string("logits_") + k);
    auto seq = model->new_sequence(static_cast<int64_t>(ids.size()));
    std::vector<float> out;
    model->forward(*seq, ids, out, true);
    std::printf("[parity] cuda default model logits_%s rel err %.3e (tol %.0e)\n", k, test::rel_err(out, want), tol);
    EXPECT_LE(test::rel_err(out, want), tol);
  }
  check_greedy(*model, kDefaultRef, "cuda default-model");
}

TEST(DefaultModel, SeededSamplingIsReproducibleAndSeedsDiffer) {
  auto model = Model::load(kDefaultModel);
  auto tk = tok::Tokenizer::load(kDefaultModel);
  auto gen = [&](uint64_t seed) {
    EngineRequest req;
    req.prompt_ids = tk.encode("ROMEO:", true);
    req.sampling.temperature = 1.0f;
    req.sampling.seed = seed;
    req.max_new_tokens = 24;
    req.ignore_eos = true;
    return Engine(*model, &tk).generate(req).ids;
  };
  EXPECT_EQ(gen(7), gen(7));
  EXPECT_NE(gen(7), gen(8));
  EXPECT_NE(gen(8), gen(9));
}

TEST(DefaultModel, StreamingEqualsFinalText) {
  auto model = Model::load(kDefaultModel);
  auto tk = tok::Tokenizer::load(kDefaultModel);
  EngineRequest req;
  req.prompt_ids = tk.encode("JULIET:\n", true);
  req.sampling.temperature = 0.9f;
  req.sampling.seed = 11;
  req.max_new_tokens = 60;
  req.ignore_eos = true;
  std::string streamed;
  std::string raw;
  GenerateResult r = Engine(*model, &tk).generate(req, [&](const StreamPiece& p) {
    streamed += p.reasoning + p.content;
    raw += p.text;
  });
  EXPECT_EQ(raw, r.text);
  EXPECT_EQ(streamed, r.text);
  EXPECT_EQ(r.text, tk.decode(r.ids, true));
  EXPECT_EQ(r.ids.size(), 60u);
}

// A scripted batched model: its logits always make the next scripted token the argmax.
class ScriptedModel final : public BatchModel {
 public:
  ScriptedModel(std::vector<int32_t> script, int vocab) : script_(std::move(script)), vocab_(vocab) {}
  int vocab_size() const override { return vocab_; }
  int max_context() const override { return 100000; }
  std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const override {
    return std::make_unique<KVCache>(*be_, 1, max_tokens, 1, 1);
  }
  void forward_batch(const Batch& b, KVCache&, const std::vector<int64_t>& rows, float* logits) override {
    for (size_t i = 0; i < rows.size(); ++i) {
      float* row = logits + i * vocab_;
      std::fill(row, row + vocab_, 0.0f);
      const int64_t step = b.positions[rows[i]] + 1 - 1;  // prompt is one token: position p -> step p
      if (step < static_cast<int64_t>(script_.size())) row[script_[step]] = 100.0f;
    }
  }

 private:
  std::unique_ptr<Backend> be_ = make_cpu_backend(1);
  std::vector<int32_t> script_;
  int vocab_;
};

TEST(Streaming, MultiByteReasoningAndStopStrings) {
  DSFUSE_REQUIRE_FIXTURE(tdir, "tokenizers/deepseek_v3");
  auto tk = tok::Tokenizer::load(tdir);
  const std::string answer = "<think>\nDenke: 世界 😀 über\n</think>\n\nAntwort: 42 ✓ déjà vu. ENDE und mehr";
  ScriptedModel m(tk.encode(answer, false), static_cast<int>(tk.vocab_size()));
  Engine engine(m, &tk);
  EngineRequest req;
  req.prompt_ids = {0};
  req.sampling.temperature = 0;
  req.max_new_tokens = 200;
  std::string content, reasoning;
  auto sink = [&](const StreamPiece& p) {
    content += p.content;
    reasoning += p.reasoning;
  };
  GenerateResult r = engine.generate(req, sink);
  EXPECT_EQ(r.text, answer);
  EXPECT_EQ(reasoning, "\nDenke: 世界 😀 über\n");
  EXPECT_EQ(content, "\n\nAntwort: 42 ✓ déjà vu. ENDE und mehr");
  EXPECT_EQ(r.reasoning, reasoning);
  EXPECT_EQ(r.content, content);
  // Stop string: output ends right before it; streamed pieces never contain any part of it.
  content.clear(), reasoning.clear();
  req.stop = {"ENDE", "never"};
  r = engine.generate(req, sink);
  EXPECT_EQ(r.finish, FinishReason::StopString);
  EXPECT_EQ(r.content, "\n\nAntwort: 42 ✓ déjà vu. ");
  EXPECT_EQ(content, r.content);
  // EOS ends generation.
  req.stop.clear();
  req.eos_ids = {tk.encode("42", false)[0]};
  r = engine.generate(req);
  EXPECT_EQ(r.finish, FinishReason::Eos);
  EXPECT_EQ(r.content, "\n\nAntwort: ");
}

// Checkpoints pad vocab_size past the tokenizer (R1-Distill-Qwen: 151,936 vs ~151,665 tokens): a sampled
// padding id has no text and must not fail the request (or, before this was fixed, every running request).
TEST(Streaming, IdsPastTheTokenizerVocabularyHaveNoText) {
  DSFUSE_REQUIRE_FIXTURE(tdir, "tokenizers/deepseek_v3");
  auto tk = tok::Tokenizer::load(tdir);
  const int32_t pad = static_cast<int32_t>(tk.vocab_size()) + 3;
  std::vector<int32_t> script = tk.encode("Hello there", false);
  script.insert(script.begin() + 1, pad);
  ScriptedModel m(script, static_cast<int>(tk.vocab_size()) + 16);
  Engine engine(m, &tk);
  EngineRequest req;
  req.prompt_ids = {0};
  req.sampling.temperature = 0;
  req.max_new_tokens = static_cast<int>(script.size());
  GenerateResult r = engine.generate(req);
  EXPECT_EQ(r.ids, script);
  EXPECT_EQ(r.text, "Hello there");
  EXPECT_EQ(r.finish, FinishReason::Length);
}

TEST(TextStream, StopMatcherHoldsBackPartialMatches) {
  StopMatcher s({"</end>", "STOP"});
  EXPECT_EQ(s.push("hello </e"), "hello ");
  EXPECT_EQ(s.push("nx ST"), "</enx ");
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(s.push("OP tail"), "");
  EXPECT_TRUE(s.stopped());
  StopMatcher t({"ab"});
  EXPECT_EQ(t.push("xa"), "x");
  EXPECT_EQ(t.flush(), "a");
}

TEST(TextStream, ThinkSplitter) {
  std::string r, c;
  ThinkSplitter a;
  for (const char* piece : {"  <th", "ink>plan", " A</thi", "nk>answer <think> literal"}) a.push(piece, r, c);
  a.flush(r, c);
  EXPECT_EQ(r, "plan A");
  EXPECT_EQ(c, "answer <think> literal");
  r.clear(), c.clear();
  ThinkSplitter b(/*start_in_reasoning=*/true);  // R1 templates open <think> in the prompt
  b.push("reason</think>done", r, c);
  EXPECT_EQ(r, "reason");
  EXPECT_EQ(c, "done");
  r.clear(), c.clear();
  ThinkSplitter d;
  d.push("plain text, no tags", r, c);
  d.flush(r, c);
  EXPECT_EQ(r, "");
  EXPECT_EQ(c, "plain text, no tags");
  EXPECT_TRUE(prompt_opens_think("<｜Assistant｜><think>\n"));
  EXPECT_FALSE(prompt_opens_think("<think>x</think>"));
}

TEST(RunCli, ShakespeareFromTheDefaultModel) {
  auto r = test::run_dsfuse("run -p \"ROMEO:\" --max-new-tokens 120 --seed 5");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("ROMEO:", 0), 0u) << r.out;
  // Speaker names in capitals on their own line, as in the play.
  EXPECT_TRUE(std::regex_search(r.out, std::regex("\n[A-Z][A-Z ]+:\n"))) << r.out;
  EXPECT_NE(r.err.find("decode"), std::string::npos);
}

TEST(RunCli, JsonContractAndGreedyDeterminism) {
  auto a = test::run_dsfuse("run --prompt-ids 0,5,6,7 --temperature 0 -n 12 --json --ignore-eos");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  auto j = nlohmann::json::parse(a.out);
  EXPECT_EQ(j["ids"].size(), 12u);
  EXPECT_EQ(j["prompt_tokens"], 4);
  EXPECT_EQ(j["completion_tokens"], 12);
  EXPECT_GT(j["decode_tok_s"].get<double>(), 0);
  EXPECT_GT(j["prefill_tok_s"].get<double>(), 0);
  EXPECT_TRUE(j["text"].is_string());
  auto b = test::run_dsfuse("run --prompt-ids 0,5,6,7 --temperature 0 -n 12 --json --ignore-eos");
  EXPECT_EQ(nlohmann::json::parse(b.out)["ids"], j["ids"]);
  auto c = test::run_dsfuse("run -p \"ROMEO:\" --chat -n 8 --seed 1 --json");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_GT(nlohmann::json::parse(c.out)["prompt_tokens"].get<int>(), 3);  // template tokens added
}

TEST(RunCli, BadInputIsAClearError) {
  struct Case {
    std::string args, message;
  };
  std::string long_prompt;
  for (int i = 0; i < 700; ++i) long_prompt += "ROMEO: ";
  for (const Case& c : std::vector<Case>{
           {"run -p \"\"", "the prompt is empty"},
           {"run", "give a prompt"},
           {"run -p x --temperature -1", "temperature"},
           {"run -p x --top-p 2", "top_p"},
           {"run -p x --bogus-flag", "--bogus-flag"},
           {"run -p x --max-new-tokens 0", "--max-new-tokens must be positive"},
           {"run --prompt-ids 1,x,3", "'x' is not a token id"},
           {"run --prompt-ids 1,99999", "out of range"},
           {"run -p \"" + long_prompt + "\"", "context is 1024 tokens"},
           {"run -p x --model /nonexistent/dir", "/nonexistent/dir"},
       }) {
    auto r = test::run_dsfuse(c.args);
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args.substr(0, 60) << "\nstderr: " << r.err;
    EXPECT_EQ(r.out.find("ROMEO: ROMEO: ROMEO:"), std::string::npos) << "nothing printed on error";
  }
}

}  // namespace

namespace {

TEST(ChatCli, MultiTurnResetExitAndCtrlCInterruptsOnlyTheAnswer) {
  // Two turns, a reset, a third turn, then /exit (stdin from a file).
  const fs::path in = fs::temp_directory_path() / ("dsfuse_chat_in_" + std::to_string(::getpid()));
  {
    std::ofstream f(in);
    f << "ROMEO:\nJULIET:\n/reset\nNURSE:\n/exit\nnever read\n";
  }
  auto r = test::run_dsfuse("chat -n 12 --seed 1 --threads 1", in.string());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(history cleared)"), std::string::npos) << r.err;
  // Three answers were printed (one line each at least).
  EXPECT_GE(std::count(r.out.begin(), r.out.end(), '\n'), 3) << r.out;
  // Ctrl-C during a long answer stops that answer; the program goes on to read /exit and exits 0.
  {
    std::ofstream f(in);
    f << "ROMEO:\n/exit\n";
  }
  // The signal goes out once the answer has started streaming (a fixed delay raced the whole answer, which the
  // 1024-token context ends in ~0.4 s on a fast machine).
  const std::string o_path = in.string() + ".out";
  // (The output file exists before the loop polls it: a missing file ended the loop at once, and a SIGINT sent
  // before the chat installs its handler is ignored, since sh starts background jobs with SIGINT ignored.)
  const std::string cmd = std::string("sh -c ': > ") + o_path + "; " + DSFUSE_BIN +
                          " chat --max-new-tokens 100000 --ignore-eos --threads 1 < " +
                          in.string() + " > " + o_path + " 2>&1 & pid=$!; " +
                          "while kill -0 $pid 2>/dev/null && [ $(wc -c < " + o_path + ") -lt 20 ]; do sleep 0.005; done; " +
                          "kill -INT $pid; wait $pid'";
  const int rc = std::system(cmd.c_str());
  std::ifstream o(in.string() + ".out");
  const std::string out((std::istreambuf_iterator<char>(o)), std::istreambuf_iterator<char>());
  EXPECT_EQ(WEXITSTATUS(rc), 0) << out;
  EXPECT_NE(out.find("(interrupted)"), std::string::npos) << out;
  fs::remove(in);
  fs::remove(in.string() + ".out");
}

}  // namespace
