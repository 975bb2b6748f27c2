// `dsfuse perplexity`: mean negative log-likelihood of a text under a model (every token a target once:
// windows of [BOS] + ctx-1 tokens), as perplexity per token and bits per character.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli.h"
#include "core/error.h"
#include "core/log.h"
#include "dsfuse/dsfuse.h"
#include "engine/default_model.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace dsfuse;

// Byte offset of code point number `n` in UTF-8 `s` (or s.size()).
size_t codepoint_offset(const std::string& s, size_t n) {
  size_t cp = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (cp == n) return i;
      ++cp;
    }
  }
  return s.size();
}

size_t count_codepoints(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

int run_perplexity(int argc, char** argv) {
  CLI::App app{"Perplexity of a text file under a model", "dsfuse perplexity"};
  std::string model, file, quant = "none";
  double tail = 1.0;
  int ctx = 256, threads = 0;
  bool json_out = false;
  app.add_option("--model", model, "model directory (default: the embedded default model)");
  app.add_option("--file", file, "UTF-8 text file")->required();
  app.add_option("--tail", tail, "evaluate only the last fraction of the file's characters (0.1 = held-out 10%)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--ctx", ctx, "window length in tokens (BOS + ctx-1 context)")->check(CLI::Range(2, 1 << 20));
  app.add_option("--quant", quant, "weights in memory: none, int8, int8-asym");
  app.add_option("--threads", threads, "CPU threads");
  app.add_flag("--json", json_out, "print one JSON line");
  CLI11_PARSE(app, argc, argv);

  const std::filesystem::path dir = model.empty() ? default_model_dir() : std::filesystem::path(model);
  std::ifstream f(file, std::ios::binary);
  DSFUSE_CHECK(f.good(), file, ": cannot read");
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  const size_t total_cp = count_codepoints(text);
  text = text.substr(codepoint_offset(text, static_cast<size_t>(static_cast<double>(total_cp) * (1.0 - tail))));
  const size_t chars = count_codepoints(text);
  DSFUSE_CHECK(chars > 0, file, ": nothing to evaluate");

  auto m = Model::load(dir, LoadOptions{threads, "cpu", quant});
  auto tk = tok::Tokenizer::load(dir);
  DSFUSE_CHECK(ctx <= m->max_context(), "--ctx ", ctx, " exceeds the model's context of ", m->max_context());
  const std::vector<int32_t> ids = tk.encode(text, false);
  DSFUSE_CHECK(!ids.empty(), file, ": encodes to no tokens");
  const int32_t bos = tk.bos_id().value_or(ids[0]);
  const int V = m->vocab_size();
  double nll = 0;
  size_t count = 0;
  log::Progress progress("perplexity", static_cast<double>(ids.size()));
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> x;
  std::vector<float> logits;
  for (size_t start = 0; start < ids.size(); start += static_cast<size_t>(ctx)) {
    const size_t L = std::min(ids.size() - start, static_cast<size_t>(ctx));
    x.assign(1, bos);
    x.insert(x.end(), ids.begin() + static_cast<std::ptrdiff_t>(start), ids.begin() + static_cast<std::ptrdiff_t>(start + L - 1));
    auto seq = m->new_sequence(static_cast<int64_t>(L));
    m->forward(*seq, x, logits, true);
    for (size_t t = 0; t < L; ++t) {
      const float* row = logits.data() + t * V;
      float mx = row[0];
      for (int v = 1; v < V; ++v) mx = std::max(mx, row[v]);
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
      nll += (std::log(sum) + mx) - row[ids[start + t]];
      ++count;
    }
    progress.update(static_cast<double>(start + L));
  }
  progress.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double loss = nll / static_cast<double>(count);
  nlohmann::json j = {{"tokens", count},        {"chars", chars},
                      {"loss_per_token", loss}, {"perplexity", std::exp(loss)},
                      {"bits_per_char", nll / std::log(2.0) / static_cast<double>(chars)},
                      {"quant", quant},         {"ctx", ctx},
                      {"tok_s", static_cast<double>(count) / secs}};
  if (json_out) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("tokens %zu  chars %zu  loss/token %.4f  perplexity %.2f  bits/char %.4f  (quant %s, ctx %d, %.0f tok/s)\n",
                count, chars, loss, std::exp(loss), j["bits_per_char"].get<double>(), quant.c_str(), ctx,
                j["tok_s"].get<double>());
  }
  return 0;
}

}  // namespace

DSFUSE_COMMAND("perplexity", "perplexity of a text file under a model", run_perplexity);
