// `dsfuse kbench`: one linear layer through the CPU backend (each ISA path), to see the kernels alone:
// GEMV GB/s of weights streamed (decode) and GEMM GFLOP/s (prefill). Wall time, best of --repeat.
#include <CLI/CLI.hpp>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <random>
#include <algorithm>

#include "backend/cpu/kernels.h"
#include "cli.h"
#include "core/arena.h"
#include "core/thread_pool.h"
#include "engine/engine.h"
#include "sampling/sampler.h"
#include "models/model.h"
#include "quant/quantize.h"

namespace {

using namespace dsfuse;

// `dsfuse kbench mla`: the absorbed-MLA decode attention alone on a device: one new token for each of --seqs
// sequences over --context cached positions (paged pool, one block per sequence), DeepSeek-V2/V3 head shapes.
// Reports the cache bytes read (latent + rope key, f32 as dsfuse stores them) per second.
int run_kbench_mla(int argc, char** argv) {
  CLI::App app{"Time the MLA decode attention kernel alone", "dsfuse kbench mla"};
  std::string device = "cuda";
  int64_t seqs = 64, ctx = 4096, heads = 16, C = 512, R = 64, Dn = 128, Dv = 128;
  int repeat = 20;
  bool json_out = false;
  app.add_option("--device", device, "cuda, cuda:N, cpu");
  app.add_option("--seqs", seqs, "sequences (one new token each)")->check(CLI::Range(1, 4096));
  app.add_option("--context", ctx, "cached positions per sequence")->check(CLI::Range(1, 1 << 20));
  app.add_option("--heads", heads, "attention heads (V2-Lite 16, V3 128)")->check(CLI::Range(1, 1024));
  app.add_option("--repeat", repeat, "timed repetitions (mean)")->check(CLI::Range(1, 100000));
  app.add_flag("--json", json_out, "print one JSON line");
  CLI11_PARSE(app, argc, argv);
  auto be = make_device_backend(device);
  const int64_t rows = seqs * ctx;
  std::mt19937 g(7);
  std::normal_distribution<float> nd(0, 0.5f);
  auto dev_tensor = [&](DType dt, std::initializer_list<int64_t> dims) {
    TensorView v(nullptr, dt, dims, be->device());
    const size_t n = static_cast<size_t>(v.numel());
    std::vector<float> h(n);
    for (auto& x : h) x = nd(g);
    v.data = be->alloc(v.nbytes());
    be->copy_to_device(v.data, h.data(), v.nbytes());
    return v;
  };
  TensorView latent = dev_tensor(DType::F32, {rows, C}), kpe = dev_tensor(DType::F32, {rows, R});
  TensorView qn = dev_tensor(DType::F32, {seqs, heads, Dn}), qp = dev_tensor(DType::F32, {seqs, heads, R});
  TensorView out = dev_tensor(DType::F32, {seqs, heads, Dv});
  std::vector<uint16_t> wb(static_cast<size_t>(heads * (Dn + Dv) * C));
  for (auto& w : wb) w = f32_to_bf16(nd(g) * 0.05f);
  Linear kvb;
  kvb.w = TensorView(wb.data(), DType::BF16, {heads * (Dn + Dv), C});
  kvb = be->prepare(kvb);
  std::vector<int32_t> tables(static_cast<size_t>(seqs));
  std::vector<SeqSegment> segs;
  std::vector<int32_t> ids(static_cast<size_t>(seqs), 0), pos(static_cast<size_t>(seqs), static_cast<int32_t>(ctx - 1));
  for (int64_t b = 0; b < seqs; ++b) {
    tables[static_cast<size_t>(b)] = static_cast<int32_t>(b);
    segs.push_back(SeqSegment{b, 1, ctx - 1, PagedRows{&tables[static_cast<size_t>(b)], static_cast<int>(ctx)}});
  }
  be->begin_step(ids.data(), pos.data(), seqs, &segs);
  auto once = [&] { be->mla_attention_segs(out, qn, qp, latent, kpe, kvb, 0.07f, segs); };
  for (int i = 0; i < 3; ++i) once();
  be->synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < repeat; ++i) once();
  be->synchronize();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeat;
  const double bytes = static_cast<double>(rows) * (C + R) * sizeof(float);
  const double bw = be->measure_bandwidth_gbs();
  std::printf("mla decode: %lld seqs x %lld context, %lld heads, C=%lld R=%lld: %.3f ms, %.1f GB/s of cache (%.1f%% of the"
              " %.0f GB/s probe)\n",
              static_cast<long long>(seqs), static_cast<long long>(ctx), static_cast<long long>(heads),
              static_cast<long long>(C), static_cast<long long>(R), s * 1e3, bytes / s / 1e9,
              bw > 0 ? 100 * bytes / s / 1e9 / bw : 0.0, bw);
  if (json_out)
    std::printf("{\"kernel\": \"mla_decode\", \"seqs\": %lld, \"context\": %lld, \"heads\": %lld, \"ms\": %.4f, "
                "\"cache_bytes\": %.0f, \"achieved_gbs\": %.2f, \"bandwidth_gbs\": %.2f, \"fraction_of_bandwidth\": %.4f}\n",
                static_cast<long long>(seqs), static_cast<long long>(ctx), static_cast<long long>(heads), s * 1e3, bytes,
                bytes / s / 1e9, bw, bw > 0 ? bytes / s / 1e9 / bw : 0.0);
  for (void* p : {latent.data, kpe.data, qn.data, qp.data, out.data}) be->free(p);
  return 0;
}

// `dsfuse kbench gemv`: the decode linear layers alone on a device backend: for each N x K shape (bf16 weights,
// enough copies that every call streams from HBM, not L2) and token count T, the weight bytes read per second.
// --silu times the fused gate/up + SwiGLU (N = 2I rows stacked). Mean over --repeat calls in a row (the
// launch gaps between back-to-back kernels are included; --graph replays them as one CUDA graph, as a decode
// step runs).
int run_kbench_gemv(int argc, char** argv) {
  CLI::App app{"Time decode linear layers (GEMV) on a device backend", "dsfuse kbench gemv"};
  std::string device = "cuda";
  std::vector<std::string> shapes = {"4096x4096", "12288x4096", "22016x4096", "4096x11008", "2048x1536",
                                     "1536x1536", "17920x1536", "1536x8960", "151936x1536", "102400x4096"};
  std::vector<int64_t> Ts = {1};
  int repeat = 50;
  bool silu = false, graph = false;
  app.add_option("--device", device, "cuda, cuda:N, cpu");
  app.add_option("--shapes", shapes, "NxK weight shapes");
  app.add_option("-T,--tokens", Ts, "token counts");
  app.add_option("--repeat", repeat, "timed calls (mean)")->check(CLI::Range(1, 100000));
  app.add_flag("--silu", silu, "time linear_silu over the stacked [2I, K] weight (SwiGLU fused)");
  app.add_flag("--graph", graph, "record the calls as one CUDA graph and time its replays (no host launch gaps)");
  CLI11_PARSE(app, argc, argv);
  auto be = make_device_backend(device);
  const double bw = be->measure_bandwidth_gbs();
  std::mt19937 g(3);
  std::normal_distribution<float> nd(0, 0.05f);
  for (const std::string& sh : shapes) {
    const auto xpos = sh.find('x');
    DSFUSE_CHECK(xpos != std::string::npos, "--shapes: '", sh, "' is not NxK");
    const int64_t N = std::stoll(sh.substr(0, xpos)), K = std::stoll(sh.substr(xpos + 1));
    const size_t wbytes = static_cast<size_t>(N * K * 2);
    const int64_t copies = std::max<int64_t>(2, static_cast<int64_t>((1ull << 30) / wbytes));
    std::vector<uint16_t> host(static_cast<size_t>(N * K));
    for (auto& w : host) w = f32_to_bf16(nd(g));
    std::vector<Linear> lins;
    for (int64_t c = 0; c < copies; ++c) {
      Linear l;
      l.w = TensorView(host.data(), DType::BF16, {N, K});
      lins.push_back(be->prepare(l));
    }
    for (int64_t T : Ts) {
      const int64_t Ny = silu ? N / 2 : N;
      std::vector<float> xh(static_cast<size_t>(T * K));
      for (auto& v : xh) v = nd(g);
      TensorView x(be->alloc(xh.size() * 4), DType::F32, {T, K}, be->device());
      TensorView y(be->alloc(static_cast<size_t>(T * Ny) * 4), DType::F32, {T, Ny}, be->device());
      be->copy_to_device(x.data, xh.data(), xh.size() * 4);
      auto call = [&](int i) {
        const Linear& l = lins[static_cast<size_t>(i % copies)];
        if (silu) be->linear_silu(y, x, l);
        else be->linear(y, x, l);
      };
      for (int i = 0; i < 3; ++i) call(i);
      be->synchronize();
      double s = 0;
      if (graph) {
        // The `repeat` calls recorded once as a graph (as a decode step is), then replayed 5 times.
        const uint64_t key = 0x6b62656e6368ull ^ static_cast<uint64_t>(N * 131 + K * 7 + T);
        for (int rec = 0; rec < 2; ++rec) {  // first pass runs plainly, the second records
          be->graph_begin(key);
          for (int i = 0; i < repeat; ++i) call(i);
          be->graph_end();
        }
        be->synchronize();
        const auto t0 = std::chrono::steady_clock::now();
        for (int r = 0; r < 5; ++r) DSFUSE_CHECK(be->graph_launch(key), "kbench gemv --graph: no graph recorded");
        be->synchronize();
        s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / (5.0 * repeat);
      } else {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < repeat; ++i) call(i);
        be->synchronize();
        s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeat;
      }
      std::printf("%s %-5s N=%-6lld K=%-6lld T=%-3lld %8.2f us  %7.1f GB/s  (%.1f%% of the %.0f GB/s probe)\n",
                  be->name().c_str(), silu ? "silu" : "gemv", static_cast<long long>(N), static_cast<long long>(K),
                  static_cast<long long>(T), s * 1e6, wbytes / s / 1e9, bw > 0 ? 100 * wbytes / s / 1e9 / bw : 0.0,
                  bw);
      be->free(x.data);
      be->free(y.data);
    }
    for (auto& l : lins)
      if (l.w.data != host.data()) be->free(l.w.data);  // the CPU backend uses the host copy as is
  }
  return 0;
}

// `dsfuse kbench sample`: the host sampler alone on random logits of a real vocabulary size: time per row on
// one thread, and a batch of --rows rows drawn in parallel as the engine does (one Sampler per sequence).
int run_kbench_sample(int argc, char** argv) {
  CLI::App app{"Time the token sampler (per row, and a batch of rows in parallel)", "dsfuse kbench sample"};
  int64_t V = 152064;
  int rows = 64, threads = 0, repeat = 20;
  float scale = 2.0f;
  app.add_option("--vocab", V, "vocabulary size")->check(CLI::Range(2, 1 << 24));
  app.add_option("--rows", rows, "rows per batch (sequences sampled in one step)")->check(CLI::Range(1, 4096));
  app.add_option("--threads", threads, "threads for the batch (0: as the engine, up to 16)");
  app.add_option("--scale", scale, "std of the random logits (larger = peakier distribution)");
  app.add_option("--repeat", repeat, "repetitions (mean)")->check(CLI::Range(1, 100000));
  CLI11_PARSE(app, argc, argv);
  std::mt19937 g(5);
  std::normal_distribution<float> nd(0, scale);
  std::vector<float> base(static_cast<size_t>(V));
  for (auto& v : base) v = nd(g);
  std::vector<int32_t> ids(1024);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919) % static_cast<size_t>(V));
  struct Cfg {
    const char* name;
    sampling::SamplingParams p;
  };
  std::vector<Cfg> cfgs;
  auto add = [&](const char* name, float T, int k, float top_p, float rep, int logprobs) {
    sampling::SamplingParams p;
    p.temperature = T, p.top_k = k, p.top_p = top_p, p.repetition_penalty = rep, p.logprobs = logprobs, p.seed = 1;
    cfgs.push_back({name, p});
  };
  add("greedy", 0.0f, 0, 1.0f, 1.0f, -1);
  add("temperature 1", 1.0f, 0, 1.0f, 1.0f, -1);
  add("T 0.6, top_p 0.95 (R1's)", 0.6f, 0, 0.95f, 1.0f, -1);
  add("T 0.7, top_k 50, top_p 0.9", 0.7f, 50, 0.9f, 1.0f, -1);
  add("T 0.6, top_p 0.95, rep 1.1, logprobs 5", 0.6f, 0, 0.95f, 1.1f, 5);
  ThreadPool pool(threads > 0 ? threads : sampling_threads());
  std::printf("vocab %lld, logits ~ N(0, %.1f), %d rows per batch on %d threads\n", static_cast<long long>(V), scale,
              rows, pool.size());
  for (const Cfg& c : cfgs) {
    std::vector<sampling::Sampler> ss;
    for (int r = 0; r < rows; ++r) ss.emplace_back(c.p);
    std::vector<std::vector<float>> buf(static_cast<size_t>(rows), base);
    std::vector<sampling::SampleResult> res(static_cast<size_t>(rows));
    auto one = [&](int r) {
      auto& b = buf[static_cast<size_t>(r)];
      std::copy(base.begin(), base.end(), b.begin());
      ss[static_cast<size_t>(r)].sample(b, ids, 512, c.p.logprobs >= 0 ? &res[static_cast<size_t>(r)] : nullptr);
    };
    one(0);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < repeat; ++i) one(0);
    const double row_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / repeat;
    t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < repeat; ++i)
      pool.parallel_for(rows, [&](int64_t b, int64_t e, int) {
        for (int64_t r = b; r < e; ++r) one(static_cast<int>(r));
      });
    const double batch_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / repeat;
    std::printf("  %-40s %9.1f us per row   %8.2f ms per batch of %d\n", c.name, row_us, batch_ms, rows);
  }
  return 0;
}

int run_kbench(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "mla") return run_kbench_mla(argc - 1, argv + 1);
  if (argc > 1 && std::string(argv[1]) == "gemv") return run_kbench_gemv(argc - 1, argv + 1);
  if (argc > 1 && std::string(argv[1]) == "sample") return run_kbench_sample(argc - 1, argv + 1);
  CLI::App app{"Time one linear layer (N x K weights, T tokens) on the CPU backend", "dsfuse kbench"};
  int64_t N = 8960, K = 1536;
  int threads = 0, repeat = 20;
  std::vector<int64_t> Ts = {1, 128};
  std::string isa_s = "best";
  app.add_option("-N", N, "output features");
  app.add_option("-K", K, "input features");
  app.add_option("-T,--tokens", Ts, "token counts");
  app.add_option("--threads", threads, "threads");
  app.add_option("--repeat", repeat, "repetitions (best taken)");
  app.add_option("--isa", isa_s, "best | scalar | avx2 | avx512");
  CLI11_PARSE(app, argc, argv);
  cpu::Isa isa = isa_s == "scalar" ? cpu::Isa::Scalar : isa_s == "avx2" ? cpu::Isa::Avx2
               : isa_s == "avx512" ? cpu::Isa::Avx512 : cpu::best_isa();
  auto be = cpu::make_cpu_backend_isa(threads, isa);
  // bf16 weights; several copies so that a decode GEMV never hits L3 (> 64 MB in all).
  const int64_t copies = std::max<int64_t>(1, (256ll << 20) / (N * K * 2));
  std::vector<Buffer> wb;
  std::vector<Linear> lin_bf, lin_i8;
  std::vector<std::unique_ptr<Buffer>> store;
  std::mt19937 g(1);
  std::normal_distribution<float> nd(0, 0.05f);
  for (int64_t c = 0; c < copies; ++c) {
    wb.emplace_back(static_cast<size_t>(N * K * 2));
    uint16_t* p = static_cast<uint16_t*>(wb.back().data());
    for (int64_t i = 0; i < N * K; ++i) p[i] = f32_to_bf16(nd(g));
    Linear l;
    l.w = TensorView(p, DType::BF16, {N, K});
    lin_bf.push_back(l);
    lin_i8.push_back(quantize_linear(l, QuantType::Int8, store));
  }
  for (int64_t T : Ts) {
    std::vector<float> x(T * K), y(T * N);
    for (auto& v : x) v = nd(g);
    TensorView xv(x.data(), DType::F32, {T, K}), yv(y.data(), DType::F32, {T, N});
    for (auto* set : {&lin_bf, &lin_i8}) {
      double best = 1e30, best_cpu = 1e30;
      for (int r = 0; r < repeat; ++r) {
        const auto& l = (*set)[r % copies];
        timespec c0, c1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
        const auto t0 = std::chrono::steady_clock::now();
        be->linear(yv, xv, l);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
        best_cpu = std::min(best_cpu, (c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) * 1e-9);
      }
      const double bytes = static_cast<double>((*set)[0].bytes());
      std::printf("%-7s %-5s N=%-6lld K=%-6lld T=%-4lld  %8.3f ms  %7.1f GB/s  %7.1f GFLOP/s  (cpu time %.3f ms: %.1f GFLOP/s per busy core)\n",
                  be->name().c_str(), set == &lin_bf ? "bf16" : "int8", (long long)N, (long long)K, (long long)T,
                  best * 1e3, bytes / best / 1e9, 2.0 * N * K * T / best / 1e9, best_cpu * 1e3,
                  2.0 * N * K * T / best_cpu / 1e9);
    }
  }
  return 0;
}

}  // namespace

DSFUSE_COMMAND("kbench", "time kernels alone: a linear layer on the CPU (GEMV GB/s, GEMM GFLOP/s); gemv|mla on a device; sample (the token sampler)", run_kbench);
