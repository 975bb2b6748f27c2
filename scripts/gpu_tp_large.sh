#!/usr/bin/env bash
# The largest DeepSeek-shaped dummy model two GPUs hold and one cannot (issue: tensor parallel over NCCL):
# DeepSeek-V3's shapes (../shared/configs/deepseek-v3.json, carried as .carry/configs) cut to LAYERS layers
# (default 14: 3 dense + 11 MoE layers of 256 experts = 130 B parameters, 260 GB of bf16 weights; one H200 holds
# ~149 GB; measured on 2 H200s: 126 / 119 GiB used of 140; a 15th layer adds ~10.5 GiB per GPU, untested), run with
# --tensor-parallel 2: decode at batch 1 (BATCHES="1 64" adds a batch of 64; each loads the model again). Dummy weights are bf16 (the FP8 quantization_config is not
# applied to dummy weights). Run from the repository root on nvidia-h200-x2 after a build (build-gpu).
# Measured: docs/PERFORMANCE.md ("Two GPUs"). The GPU memory peak per GPU is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
LAYERS=${LAYERS:-14}
B=${BUILD_DIR:-build-gpu}
CFG=$B/deepseek-v3-${LAYERS}l.json
python3 - "$LAYERS" "$CFG" <<'PY'
import json, sys
layers, out = int(sys.argv[1]), sys.argv[2]
c = json.load(open(".carry/configs/deepseek-v3.json"))
c["num_hidden_layers"] = layers
c["num_nextn_predict_layers"] = 0
H, E, I, Id = c["hidden_size"], c["n_routed_experts"], c["moe_intermediate_size"], c["intermediate_size"]
nh, V = c["num_attention_heads"], c["vocab_size"]
attn = (H * c["q_lora_rank"] + c["q_lora_rank"] * nh * (c["qk_nope_head_dim"] + c["qk_rope_head_dim"])
        + H * (c["kv_lora_rank"] + c["qk_rope_head_dim"])
        + c["kv_lora_rank"] * nh * (c["qk_nope_head_dim"] + c["v_head_dim"]) + nh * c["v_head_dim"] * H)
moe = (E + c["n_shared_experts"]) * 3 * H * I + H * E
k = c["first_k_dense_replace"]
total = k * (attn + 3 * H * Id) + (layers - k) * (attn + moe) + 2 * V * H
print(f"config: DeepSeek-V3 shapes, {layers} layers ({k} dense + {layers - k} MoE x {E} experts), "
      f"{total / 1e9:.1f} B parameters = {2 * total / 1e9:.0f} GB bf16")
json.dump(c, open(out, "w"), indent=1)
PY
# GPU memory in use, every 5 s, while the runs go (the peak is printed at the end).
( while sleep 5; do nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits; done ) \
  > "$B/tp-large-mem.csv" 2>/dev/null &
MEMPID=$!
for batch in ${BATCHES:-1}; do
  echo "== tensor-parallel 2, batch $batch"
  timeout 420 "$B/dsfuse" bench --config "$CFG" --dummy-weights --device cuda --tensor-parallel 2 --batch $batch \
    --prompt-len 128 --gen-len 32 --repeat 1 2>&1 | grep -E "load|prefill tok|decode tok|weight bytes|bound|RSS|rror"
done
kill $MEMPID 2>/dev/null
python3 - "$B/tp-large-mem.csv" <<'PY'
import sys
peak = {}
for line in open(sys.argv[1]):
    try:
        i, used, total = [int(v) for v in line.split(",")]
    except ValueError:
        continue
    peak[i] = max(peak.get(i, (0, total))[0], used), total
for i, (u, t) in sorted(peak.items()):
    print(f"GPU {i}: peak {u} MiB used of {t} MiB")
PY
