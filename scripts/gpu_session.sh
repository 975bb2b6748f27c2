#!/usr/bin/env bash
# Everything a device session needs in one call (run from the repository root on the GPU machine, carry
# [".carry/debs", ".carry/configs", ".carry/fixtures", ".carry/tokenizers/qwen3"], timeout_s 570): the CUDA test
# suite (f32 + bf16 modes, candidate defaults; NCCL tests with 2+ GPUs), then the benchmark table
# (scripts/gpu_bench.sh, HF included, time-boxed). Logs and bench.jsonl/table.md go to $OUT. The variant and
# 2-GPU rows are scripts/gpu_extra.sh (a second call on the same warm machine reuses the build).
# Env: COMMIT (shown in the table), BENCH_BUDGET_S (default 290).
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-build-gpu/session}
mkdir -p "$OUT/t"
source scripts/gpu_env.sh >/dev/null 2>&1 || { echo "no build dependencies"; exit 2; }
DSFUSE_FIXTURES=${DSFUSE_FIXTURES:-$PWD/.carry/fixtures} LOG_DIR=$OUT/t timeout 230 bash scripts/gpu_test.sh 2>&1 |
  grep -vE "^\[ops\]|^\[parity\] cuda|^\[cpu\]|^\[cuda\]|^\[greedy\]" | tail -60
grep -hE "^\[tp\]|Failure" "$OUT"/t/tests-*.log | head -16
DECODE_MODELS=${DECODE_MODELS:-"deepseek-r1-distill-qwen-1.5b deepseek-llm-7b deepseek-r1-distill-qwen-7b deepseek-v2-lite"} \
HF_DECODE_MODELS=${HF_DECODE_MODELS:-"deepseek-r1-distill-qwen-1.5b deepseek-llm-7b"} \
SERVE_MODELS=${SERVE_MODELS:-deepseek-r1-distill-qwen-7b} REPEAT=${REPEAT:-2} REQUESTS=${REQUESTS:-64} SKIP_BUILD=1 \
BUDGET_S=${BENCH_BUDGET_S:-275} OUT=$OUT bash scripts/gpu_bench.sh 2>&1 | tail -22
# Everything under $OUT comes back as few files: the test logs as one archive.
tar czf "$OUT/test-logs.tgz" -C "$OUT" t 2>/dev/null && rm -rf "$OUT/t"
