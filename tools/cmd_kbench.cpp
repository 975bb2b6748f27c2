// `dsfuse kbench`: one linear layer through the CPU backend (each ISA path), to see the kernels alone:
// GEMV GB/s of weights streamed (decode) and GEMM GFLOP/s (prefill). Wall time, best of --repeat.
#include <CLI/CLI.hpp>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <random>

#include "backend/cpu/kernels.h"
#include "cli.h"
#include "core/arena.h"
#include "quant/quantize.h"

namespace {

using namespace dsfuse;

int run_kbench(int argc, char** argv) {
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

DSFUSE_COMMAND("kbench", "time one linear layer on the CPU kernels (GEMV GB/s, GEMM GFLOP/s)", run_kbench);
