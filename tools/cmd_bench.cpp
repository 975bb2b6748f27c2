// `dsfuse bench`: prefill / decode speed, time to first token, peak RSS, and how close decode comes to
// the memory-bandwidth bound of this machine. Tools read the final `--json` line.
#include <CLI/CLI.hpp>
#include <functional>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "backend/cpu/kernels.h"
#include "backend/cpu/stats.h"
#include "bench/probe.h"
#include "cli.h"
#include "models/model.h"
#include "core/error.h"
#include "dsfuse/dsfuse.h"

int run_bench_serve(int argc, char** argv);  // tools/cmd_bench_serve.cpp

namespace {

using namespace dsfuse;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Stat {
  double med = 0, min = 0, max = 0;
};
Stat summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  Stat s;
  if (v.empty()) return s;
  s.min = v.front();
  s.max = v.back();
  const size_t n = v.size();
  s.med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return s;
}
nlohmann::json js(const Stat& s) { return {{"median", s.med}, {"min", s.min}, {"max", s.max}}; }

int run_bench(int argc, char** argv) {
  // `dsfuse bench serve ...` is the load generator for a running server.
  if (argc > 1 && std::string(argv[1]) == "serve") return run_bench_serve(argc - 1, argv + 1);
  CLI::App app{"Measure prefill/decode speed, TTFT, peak RSS and the fraction of the memory-bandwidth bound",
               "dsfuse bench"};
  std::string model, config, quant = "none", device = "auto";
  bool dummy = false, json_out = false;
  int prompt_len = 128, gen_len = 64, batch = 1, threads = 0, repeat = 3, tp = 1;
  double bw_override = 0;
  auto* mo = app.add_option("--model", model, "Hugging Face model directory");
  auto* co = app.add_option("--config", config, "config.json (with --dummy-weights)");
  mo->excludes(co);
  app.add_flag("--dummy-weights", dummy, "random bf16 weights of the config's shapes (then --quant)");
  app.add_option("--quant", quant, "weights in memory: none | int8 | int8-asym");
  app.add_option("--prompt-len", prompt_len, "prefill tokens (one forward)")->check(CLI::Range(1, 1 << 20));
  app.add_option("--gen-len", gen_len, "decoded tokens (single-token forwards)")->check(CLI::Range(1, 1 << 20));
  app.add_option("--batch", batch, "sequences run together (one batched forward per step)")->check(CLI::Range(1, 4096));
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  app.add_option("--repeat", repeat, "repetitions (medians reported)")->check(CLI::Range(1, 1000));
  app.add_option("--device", device, "auto (default: cuda when a GPU is present), cpu, reference, cuda or cuda:N (CUDA builds)");
  app.add_option("--tensor-parallel", tp, "ranks to shard the model over (GPUs N, N+1, ... on cuda:N)")->check(CLI::Range(1, 64));
  app.add_option("--bandwidth-gbs", bw_override, "skip the probe and use this bandwidth (GB/s)");
  app.add_flag("--json", json_out, "print one JSON line at the end");
  CLI11_PARSE(app, argc, argv);

  DSFUSE_CHECK(!model.empty() || !config.empty(), "bench: give --model DIR or --config FILE.json --dummy-weights");
  DSFUSE_CHECK(model.empty() || !dummy, "bench: --dummy-weights goes with --config, not --model");
  DSFUSE_CHECK(config.empty() || dummy, "bench: --config needs --dummy-weights (there are no weights to load)");
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  device = resolve_device(device);
  // Machine probes first (before the model occupies memory). On a GPU the bound is the device memory's
  // streaming-read bandwidth, measured by the backend.
  const bool gpu = device != "cpu" && device != "reference";
  auto probe = [&] {
    if (bw_override > 0) return bw_override;
    if (!gpu) return bench::measure_bandwidth_gbs(threads);
    return make_device_backend(device)->measure_bandwidth_gbs();
  };
  double bw = probe();
  const bench::FmaPeak peak = gpu ? bench::FmaPeak{} : bench::measure_fma_peak(threads);
  bench::reset_peak_rss();  // the probe buffer is not the model's memory

  LoadOptions lo;
  lo.threads = threads;
  lo.device = device;
  lo.tensor_parallel = tp;
  lo.quant = quant;
  const double tl = now_s();
  auto m = dummy ? Model::load_dummy(config, lo, 1) : Model::load(model, lo);
  const double load_s = now_s() - tl;
  const ModelInfo info = m->info();
  const int V = m->vocab_size();

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  std::vector<int32_t> prompt(prompt_len);
  for (auto& t : prompt) t = tok(rng);

  std::vector<double> pre_tps, ttft_ms, dec_tps, bytes_per_tok, pre_macs;
  // `batch` sequences share one KV pool (sequence b owns rows [b*L, (b+1)*L): a one-block table) and
  // run together: one batched forward for all prompts, then one per decode step for all sequences.
  BatchModel& bm = batch_model(*m);
  const int64_t L = prompt_len + gen_len;
  std::vector<int32_t> tables(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) tables[static_cast<size_t>(b)] = b;
  std::vector<int32_t> ids, pos, next(static_cast<size_t>(batch));
  std::vector<int64_t> rows;
  auto run = [&](KVCache& pool, int64_t past, int64_t n, const std::function<int32_t(int, int64_t)>& token) {
    Batch bt;
    ids.clear(), pos.clear(), rows.clear();
    for (int b = 0; b < batch; ++b) {
      const int64_t t0 = static_cast<int64_t>(ids.size());
      for (int64_t i = 0; i < n; ++i) ids.push_back(token(b, i)), pos.push_back(static_cast<int32_t>(past + i));
      bt.segs.push_back(SeqSegment{t0, n, past, PagedRows{&tables[static_cast<size_t>(b)], static_cast<int>(L)}});
      rows.push_back(t0 + n - 1);
    }
    bt.ids = ids.data();
    bt.positions = pos.data();
    bt.T = static_cast<int64_t>(ids.size());
    bm.forward_batch_greedy(bt, pool, rows, next.data());  // greedy on the device: only ids come back
  };
  for (int r = 0; r < repeat; ++r) {
    auto pool = bm.new_cache(L * batch);
    cpu::stats().reset();
    double t0 = now_s();
    run(*pool, 0, prompt_len, [&](int, int64_t i) { return prompt[static_cast<size_t>(i)]; });
    const double tp = now_s() - t0;
    pre_macs.push_back(static_cast<double>(cpu::stats().macs.load()));
    ttft_ms.push_back(tp * 1e3);
    pre_tps.push_back(static_cast<double>(prompt_len) * batch / tp);
    cpu::stats().reset();
    t0 = now_s();
    for (int g = 0; g < gen_len; ++g)
      run(*pool, prompt_len + g, 1, [&](int b, int64_t) { return next[static_cast<size_t>(b)]; });
    const double td = now_s() - t0;
    dec_tps.push_back(static_cast<double>(gen_len) * batch / td);
    // Weights are read once per step for the whole batch: bytes per generated token = step bytes / batch.
    bytes_per_tok.push_back(static_cast<double>(cpu::stats().weight_bytes.load()) / gen_len / batch);
  }
  // The probe again after the runs (the model's memory is in use, but the buffer is far larger than
  // L3 either way): other processes sharing the machine lower single probes, and the bound should be
  // the machine's, so the best of both is kept (both are printed).
  const double bw_after = gpu ? bw : probe();
  const double bw_before = bw;
  bw = std::max(bw_before, bw_after);
  const Stat pre = summarize(pre_tps), dec = summarize(dec_tps), ttft = summarize(ttft_ms);
  const double wbpt = summarize(bytes_per_tok).med;
  // Under tensor parallelism the bytes are every rank's together and each GPU streams its share at once: the
  // bound is the GPUs' bandwidth together (one GPU's probe x ranks) over all ranks' bytes.
  const double bound = wbpt > 0 ? bw * 1e9 * tp / wbpt : 0;
  const double prefill_gflops = summarize(pre_macs).med * 2 / 1e9 * pre.med / (static_cast<double>(prompt_len) * batch);
  const double rss = bench::peak_rss_mb();

  const char* src = dummy ? config.c_str() : model.c_str();
  std::printf("dsfuse bench  %s  (%s, quant %s, batch %d, %d threads, isa %s, load %.1f s)\n", src,
              info.architecture.c_str(), quant.c_str(), batch, threads, cpu::isa_name(cpu::best_isa()), load_s);
  std::printf("  %-26s %10s %10s %10s\n", "", "median", "min", "max");
  std::printf("  %-26s %10.2f %10.2f %10.2f\n", cat("prefill tok/s (", prompt_len, " tok)").c_str(), pre.med, pre.min,
              pre.max);
  std::printf("  %-26s %10.1f %10.1f %10.1f\n", "time to first token ms", ttft.med, ttft.min, ttft.max);
  std::printf("  %-26s %10.2f %10.2f %10.2f\n", cat("decode tok/s (", gen_len, " tok)").c_str(), dec.med, dec.min,
              dec.max);
  std::printf("  weight bytes / token     %.1f MB\n", wbpt / 1e6);
  std::printf("  bandwidth (probe)        %.1f GB/s (best of %.1f before and %.1f after the runs)\n", bw, bw_before,
              bw_after);
  std::printf("  bound (bw / bytes)       %.2f tok/s  -> decode at %.1f%% of the bound%s\n", bound,
              bound > 0 ? 100 * dec.med / bound : 0.0,
              tp > 1 ? cat(" (", tp, " GPUs: bytes of all ranks, bandwidth x ", tp, ")").c_str() : "");
  if (!gpu) {
    std::printf("  FMA peak (%s)          %.1f GFLOP/s measured (%.2f GHz x %d flop/cycle/core x %d cores)\n",
                peak.isa.c_str(), peak.measured_gflops, peak.ghz, peak.flops_per_cycle, threads);
    std::printf("  prefill                  %.1f GFLOP/s = %.1f%% of the FMA peak\n", prefill_gflops,
                100 * prefill_gflops / peak.measured_gflops);
  }
  std::printf("  peak RSS                 %.0f MB\n", rss);

  if (json_out) {
    nlohmann::json j = {{"model", src},
                        {"architecture", info.architecture},
                        {"quant", quant},
                        {"threads", threads},
                        {"batch", batch},
                        {"tensor_parallel", tp},
                        {"prompt_len", prompt_len},
                        {"gen_len", gen_len},
                        {"repeat", repeat},
                        {"isa", cpu::isa_name(cpu::best_isa())},
                        {"prefill_tok_s", pre.med},
                        {"prefill_tok_s_stats", js(pre)},
                        {"decode_tok_s", dec.med},
                        {"decode_tok_s_stats", js(dec)},
                        {"ttft_ms", ttft.med},
                        {"ttft_ms_stats", js(ttft)},
                        {"peak_rss_mb", rss},
                        {"weight_bytes_per_token", wbpt},
                        {"bandwidth_gbs", bw},
                        {"bandwidth_gbs_before", bw_before},
                        {"bandwidth_gbs_after", bw_after},
                        {"effective_decode_gbs", dec.med * wbpt / 1e9},
                        {"bound_tok_s", bound},
                        {"fraction_of_bound", bound > 0 ? dec.med / bound : 0.0},
                        {"fma_peak_gflops", peak.measured_gflops},
                        {"clock_ghz", peak.ghz},
                        {"flops_per_cycle_per_core", peak.flops_per_cycle},
                        {"prefill_gflops", prefill_gflops},
                        {"prefill_fraction_of_fma_peak", gpu ? 0.0 : prefill_gflops / peak.measured_gflops},
                        {"device", device},
                        {"load_s", load_s}};
    std::printf("%s\n", j.dump().c_str());
  }
  return 0;
}

}  // namespace

DSFUSE_COMMAND("bench", "prefill/decode speed, TTFT, peak RSS, fraction of the bandwidth bound", run_bench);
