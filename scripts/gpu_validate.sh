#!/usr/bin/env bash
# One device call for what was written without a GPU (run from the repository root after `source
# scripts/gpu_carried.sh`, or after a build in BUILD_DIR; ~6 min on nvidia-h200-x2):
#   1. the CUDA test set (covers the device sampling kernel, BackendOps.SampleRows and
#      Engine.CudaDeviceSamplingBatchedEqualsAlone, and the persistent GEMV in its own pass);
#   2. decode A/B: the persistent GEMV against the default (and, with OLD=path/to/old/dsfuse, an older binary
#      against this one: the 1.5B/7B decode question of docs/gpu-notes.md run 14);
#   3. the sampled serving row (R1's temperature 0.6 / top-p 0.95, 64 concurrent, Qwen-7B) with the host
#      sampler and with DSFUSE_CUDA_SAMPLING=1.
# Output: summaries on stdout, logs under OUT (default BUILD_DIR/validate).
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
B=${BUILD_DIR:-build-gpu}
OUT=${OUT:-$B/validate}
mkdir -p "$OUT"
t0=$(date +%s)
LOG_DIR=$OUT/t SKIP_BUILD=${SKIP_BUILD:-1} BUILD_DIR=$B timeout 200 bash scripts/gpu_test.sh 2>&1 |
  grep -E "===|sample_rows|Failure|FAILED" | head -30
echo "tests: $(( $(date +%s) - t0 )) s"
ENV_B="DSFUSE_CUDA_GEMV=persist" ROUNDS=2 BIN=$B/dsfuse timeout 240 bash scripts/gpu_ab.sh 2>&1 | tail -3
if [ -n "${OLD:-}" ]; then
  A=$OLD B=$B/dsfuse ROUNDS=2 timeout 240 bash scripts/gpu_ab.sh 2>&1 | tail -3
fi
echo "a/b: $(( $(date +%s) - t0 )) s"
for ds in 0 1; do
  DSFUSE_CUDA_SAMPLING=$ds OUT= SERVE_TAG="-sampled-dev$ds" DECODE_MODELS="" SERVE_MODELS=deepseek-r1-distill-qwen-7b \
    HF=0 SKIP_BUILD=1 BUILD_DIR=$B LOG_DIR=$OUT/serve$ds REQUESTS=64 SERVE_S=90 BUDGET_S=150 \
    BENCH_SERVE_ARGS="--temperature 0.6 --top-p 0.95" bash scripts/gpu_bench.sh 2>&1 | grep -E "\[dsfuse_serve\]" | cut -c1-300
done
echo "total: $(( $(date +%s) - t0 )) s"
