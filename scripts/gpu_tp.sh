#!/usr/bin/env bash
# The 2-GPU rows of the issue "tensor-parallel multi-GPU inference" on nvidia-h200-x2 (from the repository root,
# after a build or with carried binaries: `source scripts/gpu_carried.sh` first). For each model (dummy bf16
# weights of .carry/configs/NAME.json): decode at batch 1, a batch of 64 (512-token prompts, 32 decode steps) and
# 64 concurrent requests through `dsfuse serve` (512 prompt / 256 generated, `dsfuse bench serve`), each on one GPU
# and with --tensor-parallel 2, then a table with the scaling efficiency (TP rate / (2 x one-GPU rate)).
# Env: MODELS (default "deepseek-r1-distill-qwen-7b deepseek-v2-lite"), ROWS (default "b1 b64 serve"), BUILD_DIR,
# OUT (logs and tp.jsonl).
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
B=${BUILD_DIR:-build-gpu}
OUT=${OUT:-$B/tp}
mkdir -p "$OUT"
J=$OUT/tp.jsonl
: > "$J"
MODELS=${MODELS:-"deepseek-r1-distill-qwen-7b deepseek-v2-lite"}
ROWS=${ROWS:-"b1 b64 serve"}
nvidia-smi -L
# bench_row MODEL ROW TP: one `dsfuse bench` run, its decode tok/s as a JSON line.
bench_row() {
  local m=$1 row=$2 tp=$3 args
  if [ "$row" = b1 ]; then args="--prompt-len 128 --gen-len 128 --repeat 2"; else
    args="--batch 64 --prompt-len 512 --gen-len 32 --repeat 1"; fi
  local log=$OUT/$m-$row-tp$tp.log
  timeout 150 "$B/dsfuse" bench --config ".carry/configs/$m.json" --dummy-weights --device cuda --tensor-parallel $tp \
    $args --json > "$log" 2>&1
  python3 - "$log" "$m" "$row" "$tp" "$args" >> "$J" <<'PY'
import json, sys
log, m, row, tp, args = sys.argv[1:]
rec = {"model": m, "row": row, "tp": int(tp), "cmd": f"dsfuse bench --config {m}.json --dummy-weights --tensor-parallel {tp} {args}"}
for line in open(log, errors="replace"):
    if line.startswith("{"):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        rec["tok_s"] = d.get("decode_tok_s")
        rec["prefill_tok_s"] = d.get("prefill_tok_s")
        rec["pct_bound"] = d.get("decode_pct_of_bound")
if "tok_s" not in rec:
    rec["error"] = open(log, errors="replace").read()[-400:]
print(json.dumps(rec))
PY
  tail -1 "$J"
}
for m in $MODELS; do
  for row in $ROWS; do
    for tp in 1 2; do
      if [ "$row" = serve ]; then
        lo=$OUT/serve-$m-tp$tp
        mkdir -p "$lo"
        OUT= SERVE_ARGS="--tensor-parallel $tp" SERVE_TAG="-tp$tp" DECODE_MODELS="" SERVE_MODELS=$m HF=0 SKIP_BUILD=1 \
          BUILD_DIR=$B LOG_DIR=$lo REQUESTS=64 SERVE_S=120 BUDGET_S=200 bash scripts/gpu_bench.sh > "$lo/run.log" 2>&1
        python3 - "$lo/bench.jsonl" "$m" "$tp" >> "$J" <<'PY'
import json, sys
p, m, tp = sys.argv[1:]
rec = {"model": m, "row": "serve", "tp": int(tp), "cmd": "dsfuse serve --tensor-parallel %s + dsfuse bench serve --concurrency 64 --requests 64 --prompt-len 512 --gen-len 256" % tp}
try:
    for line in open(p):
        d = json.loads(line)
        if d.get("kind") == "dsfuse_serve":
            data = d.get("data") or {}
            rec.update({k: data.get(k) for k in ("output_tok_s", "itl_ms_p50", "itl_ms_p99", "ttft_ms_p50", "errors")
                        if data.get(k) is not None})
            rec.update({k: d[k] for k in ("error", "note", "server") if k in d})
            rec["tok_s"] = data.get("output_tok_s") or (d.get("server") or {}).get("tok_s")
except OSError as e:
    rec["error"] = str(e)
print(json.dumps(rec))
PY
        tail -1 "$J"
      else
        bench_row "$m" "$row" "$tp"
      fi
    done
  done
done
python3 - "$J" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["model"], r["row"], r["tp"]): r for r in rows}
print("| model | row | 1 GPU (tok/s) | 2 GPUs TP=2 (tok/s) | speed-up | scaling efficiency |")
print("|---|---|---:|---:|---:|---:|")
names = {"b1": "decode batch 1", "b64": "batch 64 x 512 prompt, decode", "serve": "serve 64 concurrent (512 -> 256), output"}
for (m, row, tp), r in by.items():
    if tp != 1:
        continue
    a, b = r.get("tok_s"), by.get((m, row, 2), {}).get("tok_s")
    f = lambda v: "%.1f" % v if isinstance(v, (int, float)) else "error"
    s = b / a if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 else None
    print(f"| {m} | {names[row]} | {f(a)} | {f(b)} | {'%.2fx' % s if s else '-'} | {'%.0f %%' % (50 * s) if s else '-'} |")
PY
