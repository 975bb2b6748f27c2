#!/usr/bin/env bash
# Where a decode step's time goes inside the replayed step graph: decode b=1 with each op kind left out
# (DSFUSE_CUDA_SKIP; wrong results, timing only). The time an op costs in the step is the difference in ms per
# token; divided by the layers it is the op's cost per layer (what fusing it away could save).
# Env: MODELS (config names in .carry/configs, default the 1.5B, LLM-7B and V2-Lite shapes), LAYERS (layers kept,
# default 8: loads stay fast, the lm_head weighs more), SKIPS (op sets; default per family), GEN (default 128),
# BIN (default $BUILD_DIR/dsfuse).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-${BUILD_DIR:-build-gpu}/dsfuse}
MODELS=${MODELS:-"deepseek-r1-distill-qwen-1.5b deepseek-llm-7b deepseek-v2-lite"}
LAYERS=${LAYERS:-8}
GEN=${GEN:-128}
tmp=$(mktemp -d)
for m in $MODELS; do
  python3 - ".carry/configs/$m.json" "$tmp/$m.json" "$LAYERS" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["num_hidden_layers"] = min(int(sys.argv[3]), c["num_hidden_layers"])
json.dump(c, open(sys.argv[2], "w"))
PY
  if grep -q kv_lora_rank "$tmp/$m.json"; then
    sets=${SKIPS:-"none mla_attention_segs mla_store_kv moe_experts add_rms_norm linear rms_norm moe_experts,moe_route"}
  else
    sets=${SKIPS:-"none attention_segs rope_store_kv add_rms_norm linear_silu linear"}
  fi
  base=""
  for s in $sets; do
    e=""; [ "$s" != none ] && e="DSFUSE_CUDA_SKIP=$s"
    v=$(env $e timeout 120 "$BIN" bench --config "$tmp/$m.json" --dummy-weights --device cuda --prompt-len 128 \
          --gen-len "$GEN" --repeat 2 2>&1 | sed -n 's/^ *decode tok\/s ([0-9]* tok) *\([0-9.]*\).*/\1/p' | tail -1)
    [ "$s" = none ] && base=$v
    python3 - "$m" "$s" "${v:-nan}" "${base:-nan}" "$LAYERS" <<'PY'
import sys
m, s, v, b, L = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
d = 1e3 / b - 1e3 / v if v == v and b == b else float("nan")
print(f"[skip] {m} L={L} {s:<32} {v:8.1f} tok/s  saves {d * 1e3:7.1f} us/token  {d * 1e3 / L:6.1f} us/layer")
PY
  done
done
rm -rf "$tmp"
