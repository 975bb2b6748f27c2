// `dsfuse run` (one prompt, streamed) and `dsfuse chat` (interactive multi-turn REPL).
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "cli.h"
#include "core/error.h"
#include "dsfuse/dsfuse.h"
#include "engine/default_model.h"
#include "engine/engine.h"
#include "engine/text_stream.h"
#include "loader/config.h"
#include "sampling/generation_config.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace dsfuse;
using json = nlohmann::json;

std::atomic<bool> g_interrupt{false};
void on_sigint(int) { g_interrupt = true; }

// Flags shared by run and chat.
struct GenFlags {
  std::string model;
  int threads = 0;
  int tensor_parallel = 1;
  std::string device = "auto";
  std::string quant = "none";
  std::optional<int> max_new_tokens;
  std::optional<float> temperature, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty;
  std::optional<int> top_k;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool ignore_eos = false;

  void add(CLI::App& app) {
    app.add_option("--model", model, "Hugging Face model directory (default: the embedded default model)");
    app.add_option("--max-new-tokens,-n", max_new_tokens, "tokens to generate at most (default: generation_config or 256)");
    app.add_option("--temperature", temperature, "sampling temperature, 0 = greedy (default: generation_config)");
    app.add_option("--top-p", top_p, "nucleus sampling mass in (0, 1]");
    app.add_option("--top-k", top_k, "sample among the k most likely tokens (0 = off)");
    app.add_option("--min-p", min_p, "drop tokens below min-p x the top probability");
    app.add_option("--repetition-penalty", repetition_penalty, "HF-style repetition penalty (1 = off)");
    app.add_option("--presence-penalty", presence_penalty, "OpenAI-style presence penalty in [-2, 2]");
    app.add_option("--frequency-penalty", frequency_penalty, "OpenAI-style frequency penalty in [-2, 2]");
    app.add_option("--seed", seed, "random seed (same seed, same text)");
    app.add_option("--stop", stop, "stop string (repeatable)");
    app.add_flag("--ignore-eos", ignore_eos, "keep generating past end-of-sequence tokens");
    app.add_option("--threads", threads, "CPU threads (default: all cores)");
    app.add_option("--tensor-parallel", tensor_parallel, "ranks to shard the model over")->check(CLI::Range(1, 64));
    app.add_option("--device", device, "auto (default: cuda when a GPU is present), cpu, reference, cuda or cuda:N (CUDA builds; ranks on GPUs N, N+1, ...)");
    app.add_option("--quant", quant, "weights in memory: none (as stored), int8, int8-asym");
  }
};

struct Loaded {
  std::filesystem::path dir;
  std::unique_ptr<Model> model;
  tok::Tokenizer tokenizer;
  sampling::GenerationConfig gen;
  std::vector<int32_t> eos;
};

Loaded load_all(const GenFlags& f) {
  const std::filesystem::path dir = f.model.empty() ? default_model_dir() : std::filesystem::path(f.model);
  const ModelConfig cfg = load_config(dir);
  LoadOptions lo{f.threads, f.device, f.quant};
  lo.tensor_parallel = f.tensor_parallel;
  auto model = Model::load(dir, lo);
  tok::Tokenizer tk = tok::Tokenizer::load(dir);
  sampling::GenerationConfig gen = sampling::load_generation_config(dir);
  std::vector<int32_t> eos = gen.eos_token_ids;
  if (eos.empty()) eos.assign(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end());
  if (eos.empty() && tk.eos_id()) eos.push_back(*tk.eos_id());
  return Loaded{dir, std::move(model), std::move(tk), std::move(gen), std::move(eos)};
}

EngineRequest make_request(const GenFlags& f, const Loaded& L) {
  EngineRequest r;
  // Defaults: only what generation_config.json says (vLLM's policy), then the flags.
  r.sampling = L.gen.sampling_params(sampling::DefaultsPolicy::kVllm);
  if (f.temperature) r.sampling.temperature = *f.temperature;
  if (f.top_p) r.sampling.top_p = *f.top_p;
  if (f.top_k) r.sampling.top_k = *f.top_k;
  if (f.min_p) r.sampling.min_p = *f.min_p;
  if (f.repetition_penalty) r.sampling.repetition_penalty = *f.repetition_penalty;
  if (f.presence_penalty) r.sampling.presence_penalty = *f.presence_penalty;
  if (f.frequency_penalty) r.sampling.frequency_penalty = *f.frequency_penalty;
  r.sampling.seed = f.seed;
  r.sampling.validate();
  r.max_new_tokens = f.max_new_tokens ? *f.max_new_tokens : L.gen.max_new_tokens.value_or(256);
  DSFUSE_CHECK(r.max_new_tokens > 0, "--max-new-tokens must be positive, got ", r.max_new_tokens);
  r.eos_ids = L.eos;
  r.ignore_eos = f.ignore_eos;
  r.stop = f.stop;
  return r;
}

// Prints streamed pieces: reasoning dimmed on a terminal (after a marker otherwise), answer plain.
class Printer {
 public:
  explicit Printer(FILE* out) : out_(out), tty_(isatty(fileno(out))) {}
  void operator()(const StreamPiece& p) {
    if (!p.reasoning.empty()) {
      if (!in_reasoning_) {
        std::fputs(tty_ ? "\x1b[2m" : "[thinking]\n", out_);
        in_reasoning_ = true;
      }
      std::fputs(p.reasoning.c_str(), out_);
    }
    if (!p.content.empty()) {
      end_reasoning();
      std::fputs(p.content.c_str(), out_);
    }
    std::fflush(out_);
  }
  void end_reasoning() {
    if (!in_reasoning_) return;
    std::fputs(tty_ ? "\x1b[0m" : "\n[/thinking]\n", out_);
    in_reasoning_ = false;
  }

 private:
  FILE* out_;
  bool tty_;
  bool in_reasoning_ = false;
};

// A KV pool just large enough for one request (prompt + budget).
EngineConfig engine_config_for(Model& m, const EngineRequest& r) {
  EngineConfig c;
  const int64_t tokens = std::min<int64_t>(static_cast<int64_t>(r.prompt_ids.size()) + r.max_new_tokens, m.max_context()) + 32;
  c.kv_memory_bytes = static_cast<size_t>(m.info().kv_bytes_per_token) * static_cast<size_t>(tokens);
  c.max_num_seqs = 1;
  return c;
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSFUSE_CHECK(used > 0 && used == tok.size() && v >= 0 && v < (1ll << 31), "--prompt-ids: '", tok,
                 "' is not a token id");
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

void print_stats(const GenerateResult& r, const std::string& extra = "") {
  const double pre = r.prefill_seconds > 0 ? r.prompt_tokens / r.prefill_seconds : 0;
  const double dec = r.decode_seconds > 0 ? (r.ids.size() - 1) / r.decode_seconds : 0;
  std::fprintf(stderr, "\n[%d prompt tokens, prefill %.1f tok/s | %zu generated, decode %.1f tok/s | finish: %s%s]\n",
               r.prompt_tokens, pre, r.ids.size(), dec, finish_reason_name(r.finish), extra.c_str());
}

int run_run(int argc, char** argv) {
  CLI::App app{"Generate text from a prompt, streamed to stdout (timing on stderr)", "dsfuse run"};
  GenFlags f;
  f.add(app);
  std::string prompt, prompt_ids;
  bool chat = false, json_out = false;
  auto* p_opt = app.add_option("-p,--prompt", prompt, "prompt text");
  auto* i_opt = app.add_option("--prompt-ids", prompt_ids, "prompt as comma-separated token ids");
  p_opt->excludes(i_opt);
  app.add_flag("--chat", chat, "wrap the prompt in the model's chat template (as a user message)");
  app.add_flag("--json", json_out, "print one JSON line: ids, text, token counts and speeds");
  CLI11_PARSE(app, argc, argv);
  DSFUSE_CHECK(p_opt->count() || i_opt->count(), "give a prompt: -p TEXT or --prompt-ids 1,2,3");

  Loaded L = load_all(f);
  EngineRequest req = make_request(f, L);
  if (i_opt->count()) {
    DSFUSE_CHECK(!chat, "--chat needs a text prompt (-p), not --prompt-ids");
    req.prompt_ids = parse_ids(prompt_ids);
  } else {
    DSFUSE_CHECK(!prompt.empty(), "the prompt is empty: give some text with -p");
    if (chat) {
      auto tmpl = tmpl::ChatTemplate::from_tokenizer_config(L.dir);
      const std::string rendered = tmpl.render(json::array({{{"role", "user"}, {"content", prompt}}}), true);
      req.prompt_opens_think = prompt_opens_think(rendered);
      req.prompt_ids = L.tokenizer.encode(rendered, /*add_special_tokens=*/false);
    } else {
      req.prompt_ids = L.tokenizer.encode(prompt, /*add_special_tokens=*/true);
    }
  }
  DSFUSE_CHECK(!req.prompt_ids.empty(), "the prompt encodes to no tokens");

  Printer printer(stdout);
  std::function<void(const StreamPiece&)> sink;
  bool echoed = chat || prompt.empty();  // echo the text being continued, once generation has started
  if (!json_out) {
    sink = [&](const StreamPiece& p) {
      if (!echoed) std::fputs(prompt.c_str(), stdout), echoed = true;
      printer(p);
    };
  }
  signal(SIGINT, on_sigint);
  Engine engine(*L.model, &L.tokenizer, engine_config_for(*L.model, req));
  GenerateResult r = engine.generate(req, sink, &g_interrupt);
  printer.end_reasoning();
  if (json_out) {
    json j = {{"ids", r.ids},
              {"text", r.text},
              {"prompt_tokens", r.prompt_tokens},
              {"completion_tokens", r.ids.size()},
              {"prefill_tok_s", r.prefill_seconds > 0 ? r.prompt_tokens / r.prefill_seconds : 0.0},
              {"decode_tok_s", r.decode_seconds > 0 ? (r.ids.size() - 1) / r.decode_seconds : 0.0},
              {"finish_reason", finish_reason_name(r.finish)}};
    if (!r.reasoning.empty()) j["reasoning"] = r.reasoning, j["content"] = r.content;
    std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  } else {
    std::printf("\n");
    print_stats(r, r.finish == FinishReason::ContextLimit
                       ? std::string(" (reached the model's context limit of ") +
                             std::to_string(L.model->max_context()) + " tokens)"
                       : "");
  }
  return r.finish == FinishReason::Cancelled ? 130 : 0;
}

int run_chat(int argc, char** argv) {
  CLI::App app{"Interactive multi-turn chat using the model's chat template (/reset, /exit; Ctrl-C stops an answer)",
               "dsfuse chat"};
  GenFlags f;
  f.add(app);
  std::string system;
  app.add_option("--system", system, "system prompt");
  CLI11_PARSE(app, argc, argv);
  Loaded L = load_all(f);
  auto tmpl = tmpl::ChatTemplate::from_tokenizer_config(L.dir);
  EngineRequest base = make_request(f, L);
  EngineConfig ecfg;
  ecfg.kv_memory_bytes = static_cast<size_t>(L.model->info().kv_bytes_per_token) * L.model->max_context();
  ecfg.kv_memory_bytes = std::min<size_t>(ecfg.kv_memory_bytes, size_t{1} << 30);
  Engine gen(*L.model, &L.tokenizer, ecfg);

  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: Ctrl-C at the prompt interrupts the read
  sigaction(SIGINT, &sa, nullptr);

  const bool tty = isatty(STDIN_FILENO);
  json history = json::array();
  auto reset = [&] {
    history = json::array();
    if (!system.empty()) history.push_back({{"role", "system"}, {"content", system}});
  };
  reset();
  if (tty) std::fprintf(stderr, "dsfuse chat — %s. /reset clears the history, /exit quits, Ctrl-C stops an answer.\n",
                        L.dir.string().c_str());
  std::string line;
  for (;;) {
    if (tty) {
      std::fputs("\n> ", stdout);
      std::fflush(stdout);
    }
    g_interrupt = false;
    if (!std::getline(std::cin, line)) {
      if (g_interrupt) {  // Ctrl-C at the prompt: stay
        std::cin.clear();
        std::fputs("\n(type /exit to quit)", stderr);
        continue;
      }
      break;  // end of input
    }
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      reset();
      std::fputs("(history cleared)\n", stderr);
      continue;
    }
    if (line.empty()) continue;
    history.push_back({{"role", "user"}, {"content", line}});
    EngineRequest req = base;
    const std::string rendered = tmpl.render(history, true);
    req.prompt_opens_think = prompt_opens_think(rendered);
    req.prompt_ids = L.tokenizer.encode(rendered, false);
    if (static_cast<int64_t>(req.prompt_ids.size()) >= L.model->max_context()) {
      std::fprintf(stderr, "the conversation (%zu tokens) no longer fits the context of %d tokens: /reset\n",
                   req.prompt_ids.size(), L.model->max_context());
      history.erase(history.end() - 1);
      continue;
    }
    Printer printer(stdout);
    GenerateResult r = gen.generate(req, [&](const StreamPiece& p) { printer(p); }, &g_interrupt);
    printer.end_reasoning();
    std::printf("\n");
    if (r.finish == FinishReason::Cancelled) std::fputs("(interrupted)\n", stderr);
    history.push_back({{"role", "assistant"}, {"content", r.content}});
  }
  return 0;
}

}  // namespace

DSFUSE_COMMAND("run", "generate text from a prompt (streamed)", run_run);
DSFUSE_COMMAND("chat", "interactive multi-turn chat with the model's chat template", run_chat);
