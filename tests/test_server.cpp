// The OpenAI-compatible server on a free loopback port, driven over HTTP: API shapes, streaming, errors,
// auth, backpressure, disconnects, concurrency, metrics and shutdown.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/engine.h"
#include "models/model.h"
#include "sampling/generation_config.h"
#include "server/server.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

using namespace dsfuse;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const fs::path kModel = DSFUSE_SOURCE_MODEL_DIR;

// The default model slowed down to `ms` per forward (a long-running request on a fast machine).
struct SlowModel final : public BatchModel {
  BatchModel& in;
  int ms;
  SlowModel(BatchModel& m, int delay_ms) : in(m), ms(delay_ms) {}
  int vocab_size() const override { return in.vocab_size(); }
  int max_context() const override { return in.max_context(); }
  std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const override { return in.new_cache(max_tokens); }
  void forward_batch(const Batch& b, KVCache& pool, const std::vector<int64_t>& rows, float* logits) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    in.forward_batch(b, pool, rows, logits);
  }
};

// A server over the default model (optionally slowed to `slow_ms` per step), serving on its own thread.
struct TestServer {
  std::unique_ptr<Model> model;
  std::unique_ptr<SlowModel> slow;
  tok::Tokenizer tk;
  tmpl::ChatTemplate ct;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<server::Server> srv;
  std::thread thread;
  int port = 0;

  explicit TestServer(EngineConfig ec = {}, server::ServerOptions so = {}, int slow_ms = 0)
      : model(Model::load(kModel)), tk(tok::Tokenizer::load(kModel)), ct(tmpl::ChatTemplate::from_tokenizer_config(kModel)) {
    server::ModelContext mc;
    mc.name = "dsfuse-default";
    mc.tokenizer = &tk;
    mc.chat_template = &ct;
    mc.defaults = sampling::load_generation_config(kModel).sampling_params(sampling::DefaultsPolicy::kVllm);
    mc.eos_ids = {1};
    mc.max_context = model->max_context();
    mc.vocab_size = model->vocab_size();
    if (slow_ms > 0) {
      slow = std::make_unique<SlowModel>(batch_model(*model), slow_ms);
      engine = std::make_unique<Engine>(*slow, &tk, ec);
    } else {
      engine = std::make_unique<Engine>(*model, &tk, ec);
    }
    so.port = 0;
    srv = std::make_unique<server::Server>(*engine, mc, so);
    port = srv->bind();
    thread = std::thread([this] { srv->serve(); });
  }
  ~TestServer() {
    srv->stop(1);
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    return c;
  }
};

json post(const TestServer& s, const std::string& path, const json& body, int* status = nullptr,
          const httplib::Headers& h = {}) {
  auto c = s.client();
  auto r = c.Post(path.c_str(), h, body.dump(), "application/json");
  EXPECT_TRUE(r) << path;
  if (!r) return {};
  if (status) *status = r->status;
  return json::parse(r->body);
}

// Sends a streaming request; returns the parsed `data:` payloads (the last one is "[DONE]").
std::vector<std::string> stream(const TestServer& s, const std::string& path, const json& body) {
  auto c = s.client();
  std::string buf;
  auto r = c.Post(path.c_str(), {}, body.dump(), "application/json");
  EXPECT_TRUE(r);
  std::vector<std::string> out;
  if (!r) return out;
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  size_t pos = 0;
  while ((pos = r->body.find("data: ", pos)) != std::string::npos) {
    const size_t end = r->body.find("\n\n", pos);
    out.push_back(r->body.substr(pos + 6, end - pos - 6));
    pos = end;
  }
  return out;
}

TEST(Server, ModelsHealthChatAndCompletions) {
  TestServer s;
  auto c = s.client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto m = json::parse(c.Get("/v1/models")->body);
  EXPECT_EQ(m["object"], "list");
  EXPECT_EQ(m["data"][0]["id"], "dsfuse-default");
  EXPECT_EQ(m["data"][0]["object"], "model");

  int st = 0;
  json r = post(s, "/v1/chat/completions",
                {{"model", "dsfuse-default"}, {"messages", {{{"role", "user"}, {"content", "ROMEO:"}}}}, {"max_tokens", 12},
                 {"seed", 3}, {"logprobs", true}, {"top_logprobs", 2}},
                &st);
  EXPECT_EQ(st, 200);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(r["choices"][0]["message"]["content"].is_string());
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["usage"]["completion_tokens"], 12);
  EXPECT_EQ(r["usage"]["total_tokens"], r["usage"]["prompt_tokens"].get<int>() + 12);
  ASSERT_EQ(r["choices"][0]["logprobs"]["content"].size(), 12u);
  const auto& lp = r["choices"][0]["logprobs"]["content"][0];
  EXPECT_LE(lp["logprob"].get<double>(), 0.0);
  EXPECT_EQ(lp["top_logprobs"].size(), 2u);
  // Same seed, same text.
  json r2 = post(s, "/v1/chat/completions",
                 {{"messages", {{{"role", "user"}, {"content", "ROMEO:"}}}}, {"max_tokens", 12}, {"seed", 3}});
  EXPECT_EQ(r2["choices"][0]["message"]["content"], r["choices"][0]["message"]["content"]);

  json t = post(s, "/v1/completions", {{"prompt", "JULIET:"}, {"max_tokens", 8}, {"temperature", 0}, {"logprobs", 1}}, &st);
  EXPECT_EQ(st, 200);
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_TRUE(t["choices"][0]["text"].is_string());
  EXPECT_EQ(t["choices"][0]["logprobs"]["tokens"].size(), 8u);
  // Stop strings end the text before them.
  json full = post(s, "/v1/completions", {{"prompt", "JULIET:"}, {"max_tokens", 40}, {"temperature", 0}});
  const std::string text = full["choices"][0]["text"];
  ASSERT_GT(text.size(), 10u);
  const std::string stop = text.substr(6, 3);
  json cut = post(s, "/v1/completions", {{"prompt", "JULIET:"}, {"max_tokens", 40}, {"temperature", 0}, {"stop", stop}});
  EXPECT_EQ(cut["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(cut["choices"][0]["text"].get<std::string>(), text.substr(0, text.find(stop)));
  EXPECT_NE(c.Get("/")->body.find("<title>dsfuse chat</title>"), std::string::npos);
}

TEST(Server, StreamingChunksUsageAndDone) {
  TestServer s;
  auto d = stream(s, "/v1/chat/completions",
                  {{"messages", {{{"role", "user"}, {"content", "ROMEO:"}}}}, {"max_tokens", 10}, {"stream", true},
                   {"temperature", 0}, {"stream_options", {{"include_usage", true}}}});
  ASSERT_GE(d.size(), 4u);
  EXPECT_EQ(d.back(), "[DONE]");
  auto first = json::parse(d[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  auto usage = json::parse(d[d.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 10);
  auto fin = json::parse(d[d.size() - 3]);
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "length");
  std::string streamed;
  for (size_t i = 1; i + 3 < d.size() + 0 && i < d.size() - 3; ++i) {
    auto ch = json::parse(d[i]);
    if (ch["choices"][0]["delta"].contains("content")) streamed += ch["choices"][0]["delta"]["content"].get<std::string>();
  }
  json plain = post(s, "/v1/chat/completions",
                    {{"messages", {{{"role", "user"}, {"content", "ROMEO:"}}}}, {"max_tokens", 10}, {"temperature", 0}});
  EXPECT_EQ(streamed, plain["choices"][0]["message"]["content"].get<std::string>());
  auto t = stream(s, "/v1/completions", {{"prompt", "ROMEO:"}, {"max_tokens", 5}, {"stream", true}});
  EXPECT_EQ(t.back(), "[DONE]");
  EXPECT_EQ(json::parse(t[0])["object"], "text_completion");
}

TEST(Server, BadRequestsGetOpenAiErrors) {
  TestServer s;
  auto c = s.client();
  struct Case {
    std::string path, body;
    int status;
    std::string message, param;
  };
  std::string long_prompt;
  for (int i = 0; i < 700; ++i) long_prompt += "ROMEO: ";
  const std::vector<Case> cases = {
      {"/v1/chat/completions", "{not json", 400, "not valid JSON", ""},
      {"/v1/chat/completions", R"({"messages": "hi"})", 400, "'messages'", "messages"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})", 400,
       "'temperature' must be a number", "temperature"},
      {"/v1/chat/completions", R"({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})", 404,
       "does not exist", "model"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", 400,
       "'max_tokens' must be at least 1", "max_tokens"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "n": 2})", 400, "n=1", "n"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "top_p": 2})", 400, "top_p", ""},
      {"/v1/completions", json{{"prompt", long_prompt}}.dump(), 400, "maximum context length is 1024", "prompt"},
      {"/v1/completions", R"({"prompt": [1, 999999]})", 400, "is not an id", "prompt"},
  };
  for (const Case& k : cases) {
    auto r = c.Post(k.path.c_str(), k.body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, k.status) << k.body.substr(0, 80);
    auto j = json::parse(r->body);
    ASSERT_TRUE(j.contains("error")) << r->body;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(k.message), std::string::npos) << r->body;
    EXPECT_TRUE(j["error"].contains("type") && j["error"].contains("param") && j["error"].contains("code"));
    if (!k.param.empty()) EXPECT_EQ(j["error"]["param"], k.param) << r->body;
  }
  auto nf = c.Get("/v1/nothing");
  ASSERT_TRUE(nf);
  EXPECT_EQ(nf->status, 404);
  EXPECT_TRUE(json::parse(nf->body).contains("error"));
}

TEST(Server, ApiKey) {
  server::ServerOptions so;
  so.api_key = "sekret";
  TestServer s({}, so);
  auto c = s.client();
  EXPECT_EQ(c.Get("/v1/models")->status, 401);
  EXPECT_EQ(c.Get("/v1/models", {{"Authorization", "Bearer wrong"}})->status, 401);
  EXPECT_EQ(c.Get("/v1/models", {{"Authorization", "Bearer sekret"}})->status, 200);
  EXPECT_EQ(c.Get("/health")->status, 200);  // health stays open for load balancers
}

TEST(Server, FullQueueAnswers429AndDisconnectFreesBlocks) {
  EngineConfig ec;
  ec.max_num_seqs = 1;
  ec.max_queue = 1;
  TestServer s(ec);
  // A long stream that the client abandons after a few chunks.
  std::atomic<int> chunks{0};
  std::thread a([&] {
    auto c = s.client();
    json body = {{"prompt", "ROMEO:"}, {"max_tokens", 1000}, {"stream", true}, {"ignore_eos", true}};
    httplib::Request req;
    c.Post("/v1/completions", {}, body.dump(), "application/json");  // fills the running slot (aborted below)
  });
  // Wait until it runs, then one more waits in the queue and a third is refused.
  for (int i = 0; i < 200 && s.engine->stats().running == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::thread b([&] {
    auto c = s.client();
    c.Post("/v1/completions", json{{"prompt", "JULIET:"}, {"max_tokens", 3}}.dump(), "application/json");
  });
  for (int i = 0; i < 200 && s.engine->stats().waiting == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto c = s.client();
  auto r = c.Post("/v1/completions", json{{"prompt", "NURSE:"}, {"max_tokens", 3}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  // A streaming client that disconnects mid-stream: its sequence and blocks are released at once.
  s.engine->cancel(1);  // let the first long request end so the next stream runs
  b.join();
  a.join();
  {
    httplib::Client cc("127.0.0.1", s.port);
    json body = {{"prompt", "ROMEO:"}, {"max_tokens", 1000}, {"stream", true}, {"ignore_eos", true}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
    cc.send(req);
  }
  EXPECT_GE(chunks.load(), 3);
  EngineStats st{};
  for (int i = 0; i < 300; ++i) {
    st = s.engine->stats();
    if (st.running == 0 && st.kv_blocks_used == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.kv_blocks_used, 0);
  EXPECT_LT(st.generated_tokens, 1000 + 3) << "the abandoned stream should not run to its 1000 tokens";
}

// A non-streaming request that runs longer than a second gets a chunked body with keep-alive spaces; when its
// client goes away the next space fails to send and the request is cancelled (it would run ~30 s otherwise).
TEST(Server, NonStreamingClientDisconnectCancels) {
  TestServer s({}, {}, /*slow_ms=*/30);
  std::atomic<bool> got_bytes{false};
  std::thread client([&] {
    httplib::Client c("127.0.0.1", s.port);
    c.set_read_timeout(60, 0);
    json body = {{"prompt", "ROMEO:"}, {"max_tokens", 1000}, {"ignore_eos", true}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      got_bytes = true;
      EXPECT_EQ(std::string(d, n).find_first_not_of(' '), std::string::npos) << "only keep-alive spaces so far";
      return false;  // the client gives up: the connection closes
    };
    c.send(req);
  });
  client.join();
  EXPECT_TRUE(got_bytes.load()) << "a keep-alive byte within the request's life";
  const auto t0 = std::chrono::steady_clock::now();
  while (s.engine->stats().running > 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const EngineStats st = s.engine->stats();
  EXPECT_EQ(st.running, 0) << "the abandoned request is still running";
  EXPECT_LT(st.generated_tokens, 500) << "it ran to the end instead of being cancelled";
  std::printf("[server] non-streaming disconnect: cancelled after %lld generated tokens\n",
              static_cast<long long>(st.generated_tokens));
  // A long non-streaming request that is not abandoned still gets its whole JSON (leading spaces are JSON
  // whitespace).
  auto c = s.client();
  auto r = c.Post("/v1/completions", json{{"prompt", "ROMEO:"}, {"max_tokens", 100}, {"ignore_eos", true}}.dump(),
                  "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  const json j = json::parse(r->body);
  EXPECT_EQ(j["usage"]["completion_tokens"], 100);
  EXPECT_EQ(r->body.front(), ' ') << "the 100-step (~3 s) request went through the keep-alive path";
}

TEST(Server, SixtyFourConcurrentStreamsAndMetrics) {
  TestServer s;
  std::atomic<int> ok{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 64; ++i)
    ts.emplace_back([&, i] {
      auto d = stream(s, "/v1/completions",
                      {{"prompt", "ROMEO:"}, {"max_tokens", 8}, {"stream", true}, {"seed", i}, {"ignore_eos", true}});
      if (!d.empty() && d.back() == "[DONE]") ++ok;
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(ok.load(), 64);
  auto c = s.client();
  const std::string m = c.Get("/metrics")->body;
  for (const char* name : {"dsfuse_requests_total{status=\"200\"} 64", "dsfuse_time_to_first_token_seconds_bucket",
                           "dsfuse_inter_token_latency_seconds_bucket", "dsfuse_queue_length", "dsfuse_running_sequences",
                           "dsfuse_kv_blocks_used", "dsfuse_kv_blocks_free", "dsfuse_prefix_cache_hit_rate",
                           "dsfuse_generation_tokens_total 512"})
    EXPECT_NE(m.find(name), std::string::npos) << name << "\n" << m.substr(0, 2000);
  // 64 identical prompts: later ones find its blocks in the prefix cache only if they fill a block; the
  // counters are exposed either way.
  EXPECT_NE(m.find("dsfuse_prefix_cache_queries_total"), std::string::npos);
}

TEST(Server, SigtermStopsWithinSecondsAndBindsLoopback) {
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    execl(DSFUSE_BIN, DSFUSE_BIN, "serve", "--port", "0", "--drain-seconds", "2", nullptr);
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buf[512];
  const auto t0 = std::chrono::steady_clock::now();
  while (text.find("listening on port") == std::string::npos &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30)) {
    const ssize_t n = read(out[0], buf, sizeof(buf));
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ASSERT_NE(text.find("listening on port"), std::string::npos) << text;
  EXPECT_NE(text.find("http://127.0.0.1:"), std::string::npos) << text;
  const int port = std::stoi(text.substr(text.find("listening on port") + 18));
  httplib::Client c("127.0.0.1", port);
  EXPECT_EQ(c.Get("/health")->status, 200);
  // A long request in flight, then SIGTERM: the process exits within seconds.
  std::thread inflight([&] {
    httplib::Client c2("127.0.0.1", port);
    c2.Post("/v1/completions", json{{"prompt", "ROMEO:"}, {"max_tokens", 900}, {"ignore_eos", true}}.dump(),
            "application/json");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto t1 = std::chrono::steady_clock::now();
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  inflight.join();
  close(out[0]);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_LT(secs, 6.0);
}

}  // namespace

namespace {

// The chat page at "/" in headless Chromium (playwright-core drives Debian's chromium): a message is typed
// and sent, and the answer is seen growing as it streams in. SKIPPED with the reason when Chromium, node or
// the npm packages are missing.
TEST(ServerWebPage, HeadlessChromiumStreamsAnAnswer) {
  const char* candidates[] = {"/usr/bin/chromium", "/usr/bin/chromium-browser"};
  std::string browser;
  for (const char* c : candidates)
    if (fs::exists(c)) browser = c;
  if (browser.empty()) GTEST_SKIP() << "no Chromium at /usr/bin/chromium (apt-get install chromium)";
  std::string why;
  const fs::path js = test::npm_test_dir(&why);
  if (js.empty()) GTEST_SKIP() << why;
  // Tokens 20 ms apart: on a loaded machine a fast model's whole answer could reach the page in one network
  // read and be rendered once (seen once in a parallel ctest run), which is not what this test is about.
  TestServer s({}, {}, /*slow_ms=*/20);
  int rc = 0;
  const std::string out = test::shell("cd " + js.string() + " && timeout 120 node web_page.mjs http://127.0.0.1:" +
                                          std::to_string(s.port) + "/ " + browser,
                                      &rc);
  std::printf("%s", out.c_str());
  ASSERT_EQ(rc, 0) << out;
  const auto line = out.substr(out.rfind('{'));
  const json r = json::parse(line.substr(0, line.find('\n')));
  EXPECT_TRUE(r["done"].get<bool>());
  EXPECT_EQ(r["user"], "You: ROMEO:");
  EXPECT_GT(r["final"].get<std::string>().size(), 5u);
  EXPECT_GE(r["partials"].get<int>(), 2) << "the answer should appear in pieces as it streams";
}

}  // namespace
