// `dsfuse bench-serve` (also `dsfuse bench serve ...`): a load generator for an OpenAI-compatible server —
// N concurrent streaming clients, M requests in all; reports output tok/s, TTFT and inter-token latency
// percentiles, and errors.
#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <cstdlib>

#include "cli.h"
#include "core/error.h"

int run_bench_serve(int argc, char** argv);

namespace {

using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
  return v[i];
}

}  // namespace

int run_bench_serve(int argc, char** argv) {
  CLI::App app{"Load-test an OpenAI-compatible server with concurrent streaming requests", "dsfuse bench serve"};
  std::string url = "http://127.0.0.1:8000", model, api_key, system_prompt_file;
  int concurrency = 8, requests = 32, prompt_len = 128, gen_len = 64, shared_prefix = 0;
  float temperature = 0.0f, top_p = 1.0f;
  bool json_out = false;
  app.add_option("--url", url, "server base URL (http://host:port)");
  app.add_option("--model", model, "model id (default: the server's first model)");
  app.add_option("--api-key", api_key, "bearer token");
  app.add_option("--concurrency", concurrency, "parallel clients")->check(CLI::Range(1, 4096));
  app.add_option("--requests", requests, "requests in all")->check(CLI::Range(1, 1 << 20));
  app.add_option("--prompt-len", prompt_len, "approximate prompt length in tokens")->check(CLI::Range(1, 1 << 20));
  app.add_option("--gen-len", gen_len, "tokens generated per request (ignore_eos)")->check(CLI::Range(1, 1 << 20));
  app.add_option("--shared-prefix", shared_prefix, "words of a system prompt shared by every request (prefix cache)");
  app.add_option("--temperature", temperature, "sampling temperature of every request (0: greedy)")
      ->check(CLI::Range(0.0f, 100.0f));
  app.add_option("--top-p", top_p, "nucleus sampling of every request (1: off)")->check(CLI::Range(0.0f, 1.0f));
  app.add_flag("--json", json_out, "print one JSON line");
  CLI11_PARSE(app, argc, argv);

  httplib::Client probe(url);
  probe.set_connection_timeout(10, 0);
  httplib::Headers headers;
  if (!api_key.empty()) headers.emplace("Authorization", "Bearer " + api_key);
  if (model.empty()) {
    auto r = probe.Get("/v1/models", headers);
    DSFUSE_CHECK(r && r->status == 200, "bench serve: cannot list models at ", url, r ? "" : " (no answer)");
    model = json::parse(r->body)["data"][0]["id"];
  }
  // Synthetic prompts: distinct per request, about one token per word.
  auto prompt_of = [&](int i) {
    std::string p;
    for (int w = 0; w < shared_prefix; ++w) p += "the ";
    for (int w = 0; w < prompt_len; ++w) p += (w % 7 == 0 ? std::to_string(i) + " " : "and ");
    return p;
  };
  std::mutex mu;
  std::vector<double> ttft, itl, e2e;
  std::atomic<int> next{0}, errors{0};
  std::atomic<int64_t> out_tokens{0};
  const auto t0 = clock_type::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c)
    clients.emplace_back([&] {
      httplib::Client cl(url);
      cl.set_connection_timeout(30, 0);
      cl.set_read_timeout(600, 0);
      for (int i; (i = next++) < requests;) {
        json body = {{"model", model}, {"prompt", prompt_of(i)}, {"max_tokens", gen_len}, {"stream", true},
                     {"ignore_eos", true}, {"temperature", temperature}, {"top_p", top_p},
                     {"stream_options", {{"include_usage", true}}}};
        const auto start = clock_type::now();
        auto last = start;
        bool first = true;
        std::vector<double> my_itl;
        double my_ttft = 0;
        int64_t toks = 0, usage_tokens = -1;
        std::string buf;
        httplib::Request req;
        req.method = "POST";
        req.path = "/v1/completions";
        req.headers = headers;
        req.body = body.dump();
        req.set_header("Content-Type", "application/json");
        req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
          buf.append(d, n);
          size_t pos;
          while ((pos = buf.find("\n\n")) != std::string::npos) {
            const std::string ev = buf.substr(0, pos);
            buf.erase(0, pos + 2);
            if (ev.rfind("data: {", 0) != 0) continue;
            const auto now = clock_type::now();
            auto j = json::parse(ev.substr(6), nullptr, false);
            if (!j.is_discarded() && j.contains("usage") && j["usage"].is_object())
              usage_tokens = j["usage"]["completion_tokens"].get<int64_t>();
            // Timing from chunks that carry text (a token whose bytes are not yet a whole character
            // arrives with a later chunk); the token count from the final usage.
            if (j.is_discarded() || j["choices"].empty() || j["choices"][0]["text"].get<std::string>().empty()) continue;
            ++toks;
            if (first) my_ttft = std::chrono::duration<double>(now - start).count(), first = false;
            else my_itl.push_back(std::chrono::duration<double>(now - last).count());
            last = now;
          }
          return true;
        };
        auto res = cl.send(req);
        if (!res || res->status != 200) {
          ++errors;
          continue;
        }
        out_tokens += usage_tokens >= 0 ? usage_tokens : toks;
        if (std::getenv("DSFUSE_BENCH_DEBUG")) std::fprintf(stderr, "request %d: %lld text chunks, usage %lld\n", i, static_cast<long long>(toks), static_cast<long long>(usage_tokens));
        std::lock_guard<std::mutex> lk(mu);
        ttft.push_back(my_ttft);
        itl.insert(itl.end(), my_itl.begin(), my_itl.end());
        e2e.push_back(std::chrono::duration<double>(clock_type::now() - start).count());
      }
    });
  for (auto& t : clients) t.join();
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  json j = {{"url", url},
            {"model", model},
            {"concurrency", concurrency},
            {"requests", requests},
            {"prompt_len", prompt_len},
            {"gen_len", gen_len},
            {"temperature", temperature},
            {"top_p", top_p},
            {"errors", errors.load()},
            {"seconds", secs},
            {"output_tok_s", static_cast<double>(out_tokens.load()) / secs},
            {"requests_per_s", static_cast<double>(requests - errors.load()) / secs},
            {"ttft_ms_p50", pct(ttft, 50) * 1e3},
            {"ttft_ms_p99", pct(ttft, 99) * 1e3},
            {"itl_ms_p50", pct(itl, 50) * 1e3},
            {"itl_ms_p99", pct(itl, 99) * 1e3},
            {"e2e_s_p50", pct(e2e, 50)}};
  std::printf("bench serve %s (%s): %d requests, concurrency %d, prompt ~%d, gen %d\n", url.c_str(), model.c_str(),
              requests, concurrency, prompt_len, gen_len);
  std::printf("  output tok/s %.1f | TTFT p50 %.1f ms p99 %.1f ms | ITL p50 %.2f ms p99 %.2f ms | errors %d | %.1f s\n",
              j["output_tok_s"].get<double>(), j["ttft_ms_p50"].get<double>(), j["ttft_ms_p99"].get<double>(),
              j["itl_ms_p50"].get<double>(), j["itl_ms_p99"].get<double>(), errors.load(), secs);
  if (json_out) std::printf("%s\n", j.dump().c_str());
  return errors.load() == 0 ? 0 : 1;
}

DSFUSE_COMMAND("bench-serve", "load-test an OpenAI-compatible server (also: dsfuse bench serve ...)", run_bench_serve);
