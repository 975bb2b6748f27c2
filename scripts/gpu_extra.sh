#!/usr/bin/env bash
# Second device call after scripts/gpu_session.sh on the same (warm) machine: kernel variants side by side, the
# batch-64 GEMM precision trade-off, the per-op GPU time of a decode step, and the 2-GPU rows. Output only.
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-build-gpu/extra}
mkdir -p "$OUT"
source scripts/gpu_env.sh >/dev/null 2>&1 || { echo "no build dependencies"; exit 2; }
[ -x build-gpu/dsfuse ] || gpu_build "$OUT" dsfuse || exit 1
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  for m in deepseek-r1-distill-qwen-7b deepseek-v2-lite; do
    echo "== tensor-parallel 2: $m"
    timeout 70 build-gpu/dsfuse bench --config ".carry/configs/$m.json" --dummy-weights --device cuda \
      --tensor-parallel 2 --prompt-len 128 --gen-len 64 --repeat 1 2>&1 | grep -E "decode tok|prefill tok|bound|load"
  done
  echo "== tensor-parallel 2: batch 64 x 512-token prompts, 32 decode steps (Qwen-7B)"
  timeout 90 build-gpu/dsfuse bench --config .carry/configs/deepseek-r1-distill-qwen-7b.json --dummy-weights \
    --device cuda --tensor-parallel 2 --batch 64 --prompt-len 512 --gen-len 32 --repeat 1 2>&1 | grep -E "decode tok|prefill tok"
fi
echo "== MLA kernel alone: variants (DSFUSE_CUDA_MLA=tc2, then segs: the FP32 per-head kernel)"
for k in tc2 segs; do
  DSFUSE_CUDA_MLA=$k timeout 30 build-gpu/dsfuse kbench mla --device cuda --seqs 64 --context 4096 2>&1 | tail -1
done
echo "== batch 64 x 512-token prompts, 32 decode steps (Qwen-7B): default, then bf16 activations in every GEMM"
for v in 256 0; do
  DSFUSE_CUDA_SPLIT_MAX_T=$v timeout 80 build-gpu/dsfuse bench --config .carry/configs/deepseek-r1-distill-qwen-7b.json \
    --dummy-weights --device cuda --batch 64 --prompt-len 512 --gen-len 32 --repeat 1 2>&1 | grep -E "decode tok|prefill tok" | sed "s/^/split<=$v /"
done
for m in ${PROFILE_MODELS:-deepseek-r1-distill-qwen-1.5b deepseek-v2-lite}; do
  echo "== per-op GPU time of 16 decode steps (DSFUSE_CUDA_PROFILE=decode): $m"
  DSFUSE_CUDA_PROFILE=decode timeout 70 build-gpu/dsfuse bench --config .carry/configs/$m.json --dummy-weights \
    --device cuda --prompt-len 128 --gen-len 16 --repeat 1 > "$OUT/prof-$m.log" 2>&1
  grep -E "GPU time|^ *[a-z_]+ .*(ms|%)" "$OUT/prof-$m.log" | head -24
done
