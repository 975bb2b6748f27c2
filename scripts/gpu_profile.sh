#!/usr/bin/env bash
# Diagnosis run for the CUDA decode path (one device call, ~7 min on nvidia-h200-x2; carry as gpu_session.sh):
# the CUDA test suite, then the kernels alone (dsfuse kbench gemv / mla), the per-op GPU time of a decode
# (DSFUSE_CUDA_PROFILE=1) and quick decode rows (graphs on and off). Logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-build-gpu/profile}
mkdir -p "$OUT/t"
source scripts/gpu_env.sh >/dev/null 2>&1 || { echo "no build dependencies"; exit 2; }
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  DSFUSE_FIXTURES=${DSFUSE_FIXTURES:-$PWD/.carry/fixtures} LOG_DIR=$OUT/t timeout 200 bash scripts/gpu_test.sh 2>&1 |
    grep -vE "^\[ops\]|^\[parity\] cuda|^\[cpu\]|^\[cuda\]|^\[greedy\]" | tail -30
else
  gpu_build "$OUT/t" dsfuse || exit 1
fi
D=build-gpu/dsfuse
C=.carry/configs
echo "== GEMV alone (T=1, then T=8)"
timeout 60 $D kbench gemv --device cuda -T 1 8 2>&1 | tail -20
timeout 30 $D kbench gemv --device cuda --silu --shapes 22016x4096 37888x3584 17920x1536 -T 1 2>&1 | tail -3
echo "== MLA alone (default kernel, then DSFUSE_CUDA_MLA=segs)"
timeout 30 $D kbench mla --device cuda --seqs 64 --context 4096 2>&1 | tail -1
DSFUSE_CUDA_MLA=segs timeout 30 $D kbench mla --device cuda --seqs 64 --context 4096 2>&1 | tail -1
for m in ${PROFILE_MODELS:-deepseek-r1-distill-qwen-1.5b deepseek-llm-7b deepseek-v2-lite}; do
  echo "== per-op GPU time, decode: $m"
  DSFUSE_CUDA_PROFILE=1 timeout 60 $D bench --config $C/$m.json --dummy-weights --device cuda --prompt-len 128 \
    --gen-len 32 --repeat 1 > "$OUT/prof-$m.log" 2>&1
  grep -E "decode tok|^ *[a-z_]+ .*(ms|%)" "$OUT/prof-$m.log" | head -30
done
for m in ${DECODE_MODELS:-deepseek-r1-distill-qwen-1.5b deepseek-llm-7b deepseek-r1-distill-qwen-7b deepseek-v2-lite}; do
  echo "== decode: $m (default, then PDL off)"
  timeout 60 $D bench --config $C/$m.json --dummy-weights --device cuda --prompt-len 128 --gen-len 64 --repeat 2 2>&1 |
    grep -E "decode tok|bound"
  DSFUSE_CUDA_PDL=0 timeout 60 $D bench --config $C/$m.json --dummy-weights --device cuda --prompt-len 128 \
    --gen-len 64 --repeat 1 2>&1 | grep -E "decode tok"
done
if [ -n "${BATCH_MODEL:-deepseek-r1-distill-qwen-7b}" ]; then
  m=${BATCH_MODEL:-deepseek-r1-distill-qwen-7b}
  echo "== batch 64 x (512 prompt), per-op GPU time of 16 decode steps: $m"
  DSFUSE_CUDA_PROFILE=decode timeout 90 $D bench --config $C/$m.json --dummy-weights --device cuda --batch 64 \
    --prompt-len 512 --gen-len 16 --repeat 1 > "$OUT/prof-b64.log" 2>&1
  grep -E "decode tok|prefill tok|^ *[a-z_]+ .*(ms|%)" "$OUT/prof-b64.log" | head -24
  echo "== batch 64 x (512 prompt), 32 decode steps, graphs on"
  timeout 90 $D bench --config $C/$m.json --dummy-weights --device cuda --batch 64 --prompt-len 512 --gen-len 32 \
    --repeat 1 2>&1 | grep -E "decode tok|prefill tok"
fi
