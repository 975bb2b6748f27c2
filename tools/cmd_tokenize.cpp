// dsfuse tokenize: encode/decode with a Hugging Face tokenizer.json.
//   dsfuse tokenize --tokenizer DIR --jsonl IN.jsonl [--add-special]   one JSON result per {"text": ...} line
//   dsfuse tokenize --tokenizer DIR --text "..." [--add-special]       human readable ids and tokens
//   dsfuse tokenize --tokenizer DIR --bench FILE                       load ms, encode/decode MB/s
#include <CLI/CLI.hpp>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <span>
#include <sstream>

#include "cli.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// CPU time of this thread: robust against other processes competing for the cores.
double thread_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) / 1e6;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DSFUSE_CHECK(f, "cannot open ", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int run_jsonl(const dsfuse::tok::Tokenizer& tok, const std::string& path, bool add_special) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    file.open(path, std::ios::binary);
    DSFUSE_CHECK(file, "cannot open ", path);
    in = &file;
  }
  std::string line;
  size_t lineno = 0;
  while (std::getline(*in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      dsfuse::fail(dsfuse::cat(path, ":", lineno, ": invalid JSON: ", e.what()));
    }
    DSFUSE_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(), path, ":", lineno,
                 ": expected an object with a string field \"text\"");
    auto enc = tok.encode_full(j["text"].get_ref<const std::string&>(), add_special);
    json out;
    out["ids"] = enc.ids;
    out["tokens"] = enc.tokens;
    out["decoded"] = tok.decode(enc.ids, false);
    std::string s = out.dump(-1, ' ', false, json::error_handler_t::replace);
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fputc('\n', stdout);
  }
  return 0;
}

int run_text(const dsfuse::tok::Tokenizer& tok, const std::string& text, bool add_special) {
  auto enc = tok.encode_full(text, add_special);
  const auto& ids = enc.ids;
  std::printf("%zu tokens (index, id, token, decoded piece)\n", ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    json t = enc.tokens[i];
    json piece = tok.decode(std::span<const int32_t>(&ids[i], 1));  // U+FFFD where a character spans tokens
    std::printf("%6zu  %8d  %-24s %s%s\n", i, ids[i], t.dump(-1, ' ', false, json::error_handler_t::replace).c_str(),
                piece.dump(-1, ' ', false, json::error_handler_t::replace).c_str(),
                tok.is_special(ids[i]) ? "  (special)" : "");
  }
  json d = tok.decode(ids, false);
  std::printf("decoded: %s\n", d.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  return 0;
}

int run_bench(const std::string& dir, const std::string& file, int repeat) {
  auto t0 = Clock::now();
  double c0 = thread_cpu_ms();
  auto tok = dsfuse::tok::Tokenizer::load(dir);
  double load_ms = ms_since(t0), load_cpu = thread_cpu_ms() - c0;
  std::string text = slurp(file);
  double mb = double(text.size()) / 1e6;
  std::printf("tokenizer   %s (vocab %zu)\nload        %.1f ms wall, %.1f ms cpu\ninput       %s (%.3f MB)\n",
              dir.c_str(), tok.vocab_size(), load_ms, load_cpu, file.c_str(), mb);
  std::vector<int32_t> ids;
  for (int r = 0; r < repeat; ++r) {
    t0 = Clock::now();
    c0 = thread_cpu_ms();
    ids = tok.encode(text, false);
    double ms = ms_since(t0), cpu = thread_cpu_ms() - c0;
    std::printf("encode %-4s %.1f ms wall %.2f MB/s, %.1f ms cpu %.2f MB/s, %zu tokens (%.2f bytes/token)\n",
                r == 0 ? "cold" : "warm", ms, mb / (ms / 1e3), cpu, mb / (cpu / 1e3), ids.size(),
                double(text.size()) / double(std::max<size_t>(ids.size(), 1)));
  }
  t0 = Clock::now();
  c0 = thread_cpu_ms();
  std::string back = tok.decode(ids);
  double ms = ms_since(t0), cpu = thread_cpu_ms() - c0;
  std::printf("decode      %.1f ms wall %.2f MB/s, %.1f ms cpu %.2f MB/s, round trip %s\n", ms, mb / (ms / 1e3), cpu,
              mb / (cpu / 1e3), back == text ? "exact" : "DIFFERS");
  return back == text ? 0 : 1;
}

int run_tokenize(int argc, char** argv) {
  CLI::App app{"Encode and decode text with a Hugging Face tokenizer.json", "dsfuse tokenize"};
  std::string dir, jsonl, text, bench;
  bool add_special = false;
  int repeat = 3;
  app.add_option("--tokenizer", dir, "model directory holding tokenizer.json (or the file itself)")->required();
  auto* o_jsonl = app.add_option("--jsonl", jsonl, "JSON lines with {\"text\": ...}; '-' reads stdin");
  auto* o_text = app.add_option("--text", text, "text to tokenize (human-readable output)");
  auto* o_bench = app.add_option("--bench", bench, "benchmark: load time and encode/decode speed on FILE");
  app.add_option("--repeat", repeat, "encode passes for --bench (first is cold)")->check(CLI::Range(1, 100));
  app.add_flag("--add-special", add_special, "add special tokens (BOS/EOS policy / post-processor)");
  o_jsonl->excludes(o_text)->excludes(o_bench);
  o_text->excludes(o_bench);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (!bench.empty()) return run_bench(dir, bench, repeat);
  DSFUSE_CHECK(*o_jsonl || *o_text, "tokenize: give one of --jsonl, --text or --bench");
  auto tok = dsfuse::tok::Tokenizer::load(dir);
  if (*o_jsonl) return run_jsonl(tok, jsonl, add_special);
  return run_text(tok, text, add_special);
}

}  // namespace

DSFUSE_COMMAND("tokenize", "encode/decode text with a tokenizer.json (jsonl, text, bench)", run_tokenize);
