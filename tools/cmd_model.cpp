// `dsfuse logits` and `dsfuse info`: the model-level contract that tools and tests rely on.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <map>
#include <sstream>

#include "cli.h"
#include "core/error.h"
#include "dsfuse/dsfuse.h"
#include "loader/safetensors.h"

namespace {

using namespace dsfuse;

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    size_t a = tok.find_first_not_of(" \t"), b = tok.find_last_not_of(" \t");
    DSFUSE_CHECK(a != std::string::npos, "--ids: empty entry in '", s, "'");
    tok = tok.substr(a, b - a + 1);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSFUSE_CHECK(used == tok.size() && v >= 0 && v < (1ll << 31), "--ids: '", tok, "' is not a token id");
    ids.push_back(static_cast<int32_t>(v));
  }
  DSFUSE_CHECK(!ids.empty(), "--ids: no token ids given");
  return ids;
}

int run_logits(int argc, char** argv) {
  CLI::App app{"Write the logits of token ids to a safetensors file (tensor 'logits', f32 [T, vocab])", "dsfuse logits"};
  std::string model, ids_s, out;
  bool incremental = false;
  int threads = 0;
  std::string device = "auto";
  app.add_option("--model", model, "Hugging Face model directory")->required();
  app.add_option("--ids", ids_s, "comma-separated token ids, e.g. 5,17,42")->required();
  app.add_option("--out", out, "output .safetensors path")->required();
  app.add_flag("--incremental", incremental, "feed the first token, then one token at a time through the KV cache");
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  app.add_option("--device", device, "auto (default: cuda when a GPU is present), cpu, reference (scalar ops), cuda or cuda:N (CUDA builds)");
  int tp = 1;
  app.add_option("--tensor-parallel", tp, "ranks to shard the model over (one backend and thread each)")
      ->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);

  const auto ids = parse_ids(ids_s);
  LoadOptions lo{threads, device};
  lo.tensor_parallel = tp;
  auto m = Model::load(model, lo);
  const int64_t T = static_cast<int64_t>(ids.size()), V = m->vocab_size();
  auto seq = m->new_sequence(T);
  std::vector<float> all(static_cast<size_t>(T * V)), lg;
  const auto t0 = std::chrono::steady_clock::now();
  if (incremental) {
    for (int64_t t = 0; t < T; ++t) {
      m->forward(*seq, std::span<const int32_t>(ids.data() + t, 1), lg, false);
      std::copy(lg.begin(), lg.end(), all.begin() + t * V);
    }
  } else {
    m->forward(*seq, ids, lg, true);
    all = lg;
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  write_safetensors(out, {{"logits", TensorView(all.data(), DType::F32, {T, V})}});
  std::fprintf(stderr, "logits: %lld tokens in %.1f ms (%s)\n", static_cast<long long>(T), ms,
               incremental ? "incremental" : "full forward");
  return 0;
}

int run_info(int argc, char** argv) {
  CLI::App app{"Describe a model directory: family, parameters, dtypes, KV bytes per token", "dsfuse info"};
  std::string model;
  bool json_out = false;
  app.add_option("--model", model, "Hugging Face model directory")->required();
  app.add_flag("--json", json_out, "print one JSON object");
  CLI11_PARSE(app, argc, argv);
  auto m = Model::load(model, LoadOptions{1, "cpu"});
  const ModelInfo i = m->info();
  nlohmann::json j = {{"architecture", i.architecture},
                      {"family", i.family},
                      {"parameters", i.parameters},
                      {"weight_bytes", i.weight_bytes},
                      {"kv_bytes_per_token", i.kv_bytes_per_token},
                      {"kv_layout", i.kv_layout},
                      {"ignored_tensors", i.ignored_tensors},
                      {"vocab_size", i.vocab_size},
                      {"num_layers", i.num_layers},
                      {"hidden_size", i.hidden_size},
                      {"max_position_embeddings", i.max_position_embeddings},
                      {"cpu_features", cpu_features()}};
  for (const auto& [d, n] : i.dtypes) j["dtypes"][d] = n;
  if (json_out) {
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("architecture        %s (%s)\n", i.architecture.c_str(), i.family.c_str());
  std::printf("parameters          %lld\n", static_cast<long long>(i.parameters));
  std::printf("weight bytes        %lld (%.2f MiB)\n", static_cast<long long>(i.weight_bytes), i.weight_bytes / 1048576.0);
  std::printf("dtypes             ");
  for (const auto& [d, n] : i.dtypes) std::printf(" %s:%lld", d.c_str(), static_cast<long long>(n));
  std::printf("\nlayers / hidden     %d / %d\n", i.num_layers, i.hidden_size);
  std::printf("vocab               %d\n", i.vocab_size);
  std::printf("max positions       %d\n", i.max_position_embeddings);
  std::printf("kv bytes per token  %lld (%s)\n", static_cast<long long>(i.kv_bytes_per_token), i.kv_layout.c_str());
  // Ignored tensors, grouped by layer prefix ("model.layers.61." : 67 tensors); --json lists them all.
  std::map<std::string, int> groups;
  for (const auto& n : i.ignored_tensors) {
    size_t p = n.rfind("model.layers.", 0) == 0 ? n.find('.', 13) : std::string::npos;
    groups[p == std::string::npos ? n : n.substr(0, p + 1) + "*"]++;
  }
  std::printf("ignored tensors     %zu", i.ignored_tensors.size());
  for (const auto& [g, c] : groups) std::printf("  %s (%d)", g.c_str(), c);
  std::printf("\n");
  std::printf("cpu features        %s\n", cpu_features().c_str());
  return 0;
}

}  // namespace

DSFUSE_COMMAND("logits", "write logits of token ids to a safetensors file", run_logits);
DSFUSE_COMMAND("info", "describe a model: family, parameters, dtypes, KV bytes per token", run_info);
