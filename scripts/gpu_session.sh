#!/usr/bin/env bash
# Everything a device session needs in one call (run from the repository root on the GPU machine, carry
# [".carry/debs", ".carry/configs", ".carry/fixtures", ".carry/tokenizers/qwen3"], timeout_s 560): the CUDA test
# suite (f32 + bf16 modes; NCCL tests with 2+ GPUs), then the benchmark table (scripts/gpu_bench.sh, HF included,
# time-boxed), then the 2-GPU decode rows when two GPUs are present. Logs and bench.jsonl/table.md go to $OUT.
# Env: COMMIT (shown in the table), BENCH_BUDGET_S (default 290).
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-build-gpu/session}
mkdir -p "$OUT/t"
source scripts/gpu_env.sh >/dev/null 2>&1 || { echo "no build dependencies"; exit 2; }
DSFUSE_FIXTURES=${DSFUSE_FIXTURES:-$PWD/.carry/fixtures} LOG_DIR=$OUT/t timeout 170 bash scripts/gpu_test.sh 2>&1 |
  grep -vE "^\[ops\]|^\[parity\] cuda|^\[cpu\]|^\[cuda\]|^\[greedy\]" | tail -30
grep -hE "^\[tp\]|Failure" "$OUT"/t/tests-*.log | head -16
DECODE_MODELS=${DECODE_MODELS:-"deepseek-r1-distill-qwen-1.5b deepseek-llm-7b deepseek-r1-distill-qwen-7b deepseek-v2-lite"} \
HF_DECODE_MODELS=${HF_DECODE_MODELS:-"deepseek-r1-distill-qwen-1.5b deepseek-llm-7b"} \
SERVE_MODELS=${SERVE_MODELS:-deepseek-r1-distill-qwen-7b} REPEAT=${REPEAT:-2} REQUESTS=${REQUESTS:-64} SKIP_BUILD=1 \
BUDGET_S=${BENCH_BUDGET_S:-290} OUT=$OUT bash scripts/gpu_bench.sh 2>&1 | tail -22
echo "== MLA kernel alone, opt-in all-heads kernel (DSFUSE_CUDA_MLA_HEADS=1)"
DSFUSE_CUDA_MLA_HEADS=1 timeout 60 build-gpu/dsfuse kbench mla --device cuda --seqs 64 --context 4096 2>&1 | tail -1
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  for m in deepseek-r1-distill-qwen-7b deepseek-v2-lite; do
    echo "== tensor-parallel 2: $m"
    timeout 70 build-gpu/dsfuse bench --config ".carry/configs/$m.json" --dummy-weights --device cuda \
      --tensor-parallel 2 --prompt-len 128 --gen-len 64 --repeat 1 2>&1 | grep -E "decode tok|prefill tok|bound|load"
  done
fi
