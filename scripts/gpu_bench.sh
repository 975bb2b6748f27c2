#!/usr/bin/env bash
# GPU benchmark of the issue "CUDA backend at the memory-bandwidth limit", in one command (run on the GPU machine
# from the repository root): builds build-gpu if needed, then with random (dummy) bf16 weights of real configs
#   1. decode at batch 1: dsfuse bench (decode tok/s, bandwidth bound) and HF Transformers (scripts/hf_bench.py);
#   2. throughput with 64 concurrent sequences, 512-token prompts, 256 generated: dsfuse serve + dsfuse bench
#      serve, and HF generate() on a batch of 64;
#   3. the MLA decode kernel alone (dsfuse kbench mla; n/a until that mode exists);
# and prints a markdown table (dsfuse, bound, % of bound, HF, x HF, llama.cpp's issue figures). Every step runs
# under `timeout` and a failure becomes an error row: the script always goes on and always prints the table.
# Order (most important first, so that the time budget cuts the least): device bandwidth, dsfuse decode rows, MLA
# kernel, HF decode rows, dsfuse throughput rows, HF batch rows. Rows are also JSON lines in bench.jsonl (table
# again: python3 scripts/bench_report.py table bench.jsonl). The bandwidth for the bounds: dsfuse bench's probe
# when it reports a device figure (>= 1000 GB/s), else torch's device copy probe (hf_bench.py --mode bandwidth).
#
# Env: CONFIGS (config .json folder, default .carry/configs), TOKENIZERS (default .carry/tokenizers: qwen3/ for
#   qwen2 configs, deepseek_v3/ for the others; models/default's when missing), LOG_DIR (all logs; default
#   $BUILD_DIR/bench-logs), OUT (when set: bench.jsonl is written there, table.md and bench-logs.tgz copied there
#   at the end),
#   QUICK=1 (fewer rows, shorter runs), HF=0 (skip Transformers), DECODE_MODELS / SERVE_MODELS (config names
#   without .json; HF_DECODE_MODELS: the HF decode rows, default DECODE_MODELS), BUDGET_S (seconds for the whole script, build included, default 570: steps are shortened or
#   skipped to end in time), SERVE_S (load-generator time limit per throughput row; at the limit the row reports
#   the server's own token rate from /metrics), KV_MB (server KV pool, default 60000),
#   SERVE_ARGS (extra `dsfuse serve` flags, e.g. "--tensor-parallel 2"; SERVE_TAG is appended to those rows'
#   names), BENCH_SERVE_ARGS (extra load-generator flags, e.g. "--temperature 0.6 --top-p 0.95"), DEVICE (default cuda), COMMIT (shown when git cannot tell), GPU_BW_GBS (bandwidth for the bounds, overrides
#   the probes), HF_ARGS (extra hf_bench.py flags, e.g. --static-cache), BUILD_ONLY=1 (build and stop),
#   SKIP_BUILD=1, plus gpu_env.sh's DSFUSE_DEBS, BUILD_DIR, JOBS.
set -uo pipefail
cd "$(dirname "$0")/.."
T_START=$(date +%s)
BUDGET_S=${BUDGET_S:-570}
QUICK=${QUICK:-0}
HF=${HF:-1}
DEVICE=${DEVICE:-cuda}
KV_MB=${KV_MB:-60000}
CONFIGS=${CONFIGS:-.carry/configs}
TOKENIZERS=${TOKENIZERS:-.carry/tokenizers}
if [ "$QUICK" = 1 ]; then
  DECODE_MODELS=${DECODE_MODELS-"deepseek-r1-distill-qwen-1.5b deepseek-llm-7b"}
  SERVE_MODELS=${SERVE_MODELS-"deepseek-r1-distill-qwen-1.5b"}
  REPEAT=1 GEN=64 HF_GEN=16 REQUESTS=64 S_GEN=128 SERVE_S=${SERVE_S:-60}
else
  DECODE_MODELS=${DECODE_MODELS-"deepseek-r1-distill-qwen-7b deepseek-llm-7b deepseek-r1-distill-qwen-1.5b deepseek-v2-lite"}
  SERVE_MODELS=${SERVE_MODELS-"deepseek-r1-distill-qwen-7b deepseek-llm-7b"}
  REPEAT=${REPEAT:-3} GEN=128 HF_GEN=32 REQUESTS=${REQUESTS:-128} S_GEN=256 SERVE_S=${SERVE_S:-120}
fi
CONC=64 S_PROMPT=512

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  # dependencies (system or carried .debs), nvcc on PATH, BUILD_DIR, JOBS, gpu_build
  source scripts/gpu_env.sh || { echo "no build dependencies: dsfuse rows will be errors"; SKIP_BUILD=1; }
fi
BUILD_DIR=${BUILD_DIR:-build-gpu}
LOG_DIR=${LOG_DIR:-$BUILD_DIR/bench-logs}
mkdir -p "$LOG_DIR"
JSONL=$LOG_DIR/bench.jsonl
# With $OUT (the device runner's result folder) the rows go straight there: they come back even if the command
# is killed at its time limit.
[ -n "${OUT:-}" ] && mkdir -p "$OUT" 2>/dev/null && JSONL=$OUT/bench.jsonl
: > "$JSONL"
DSFUSE=$BUILD_DIR/dsfuse
REPORT=(python3 scripts/bench_report.py)

GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
COMMIT_ID=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "=== dsfuse GPU benchmark: ${GPU:-no nvidia-smi} · commit $COMMIT_ID · QUICK=$QUICK HF=$HF · budget ${BUDGET_S} s ==="
"${REPORT[@]}" meta --out "$JSONL" "gpu=${GPU:-unknown}" "commit=$COMMIT_ID" "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  "quick=$QUICK" "hf=$HF" "device=$DEVICE" "concurrency=$CONC" "serve_prompt=$S_PROMPT" "serve_gen=$S_GEN"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  t0=$(date +%s)
  if gpu_build "$LOG_DIR" dsfuse; then
    echo "build: $(( $(date +%s) - t0 )) s"
  else
    echo "build FAILED ($(( $(date +%s) - t0 )) s): dsfuse rows will be errors; logs in $LOG_DIR"
    "${REPORT[@]}" meta --out "$JSONL" "build=failed"
  fi
fi
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0

left() { echo $(( BUDGET_S - ($(date +%s) - T_START) )); }
# cap WANT: the step's timeout, clipped so that the table still gets printed in the budget (0: skip the step)
cap() {
  local want=$1 l
  l=$(( $(left) - 20 ))
  [ "$l" -lt "$want" ] && want=$l
  [ "$want" -lt 30 ] && want=0
  echo "$want"
}

# run KIND NAME TIMEOUT CMD...: one guarded step, its record appended to bench.jsonl
run() {
  local kind=$1 name=$2 t=$3
  shift 3
  local base=$LOG_DIR/$kind-$name
  if [ "$t" -le 0 ]; then
    "${REPORT[@]}" record --out "$JSONL" --kind "$kind" --name "$name" --rc 0 --skipped "time budget" --cmd "$*"
    return 0
  fi
  local s=$(date +%s)
  timeout -k 10 "$t" "$@" > "$base.out" 2> "$base.err"
  local rc=$?
  "${REPORT[@]}" record --out "$JSONL" --kind "$kind" --name "$name" --rc $rc --secs $(( $(date +%s) - s )) \
    --stdout "$base.out" --stderr "$base.err" --cmd "$*"
}

# The tokenizer served with a config's dummy weights (text in and out of the server).
tokenizer_for() {
  local t=$TOKENIZERS/deepseek_v3
  grep -q '"model_type": *"qwen2"' "$1" 2>/dev/null && t=$TOKENIZERS/qwen3
  if [ -f "$t/tokenizer.json" ]; then echo "$t"; else echo models/default; fi
}

# serve_row NAME: dsfuse serve with dummy weights on $DEVICE, load generator, SIGTERM.
serve_row() {
  local cfg=$CONFIGS/$1.json name=$1${SERVE_TAG:-}
  local base=$LOG_DIR/serve-$name tok
  tok=$(tokenizer_for "$cfg")
  local t
  t=$(cap 420)
  if [ "$t" -le 0 ]; then
    "${REPORT[@]}" record --out "$JSONL" --kind dsfuse_serve --name "$name" --skipped "time budget"
    return 0
  fi
  local s=$(date +%s)
  timeout -k 10 "$t" "$DSFUSE" serve --config "$cfg" --dummy-weights --tokenizer "$tok" --device "$DEVICE" --port 0 \
    --max-num-seqs $CONC --kv-memory-mb "$KV_MB" --drain-seconds 2 ${SERVE_ARGS:-} > "$base.out" 2> "$base.err" &
  local spid=$! port="" up=0
  # "listening on port N" (tools/cmd_serve.cpp) once the weights are loaded and the KV pool allocated.
  while [ $(( $(date +%s) - s )) -lt $(( t - 30 )) ] && kill -0 $spid 2>/dev/null; do
    port=$(sed -n 's/^listening on port \([0-9][0-9]*\)$/\1/p' "$base.out" | head -1)
    if [ -n "$port" ] && python3 -c "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:$port/health', timeout=2).status == 200 else 1)" 2>/dev/null; then
      up=1
      break
    fi
    sleep 1
  done
  if [ $up = 1 ]; then
    local load=$(( $(date +%s) - s ))
    echo "[dsfuse_serve] $name: server up on port $port after $load s (tokenizer $tok)"
    local tb=$(( t - load - 15 ))
    [ $tb -gt "$SERVE_S" ] && tb=$SERVE_S
    [ $tb -lt 20 ] && tb=20
    local url=http://127.0.0.1:$port s2=$(date +%s)
    "${REPORT[@]}" scrape "$url" "$base.metrics0.json"
    timeout -k 5 $tb "$DSFUSE" bench serve --url "$url" --concurrency $CONC --requests $REQUESTS \
      --prompt-len $S_PROMPT --gen-len $S_GEN ${BENCH_SERVE_ARGS:-} --json > "$base.bench.out" 2> "$base.bench.err"
    local rc=$?
    "${REPORT[@]}" scrape "$url" "$base.metrics1.json"
    "${REPORT[@]}" record --out "$JSONL" --kind dsfuse_serve --name "$name" --rc $rc --secs $(( $(date +%s) - s2 )) \
      --stdout "$base.bench.out" --stderr "$base.bench.err" --metrics-before "$base.metrics0.json" \
      --metrics-after "$base.metrics1.json" --note "server load ${load} s, tokenizer $tok, kv ${KV_MB} MiB${SERVE_ARGS:+, serve $SERVE_ARGS}" \
      --cmd "dsfuse bench serve --concurrency $CONC --requests $REQUESTS --prompt-len $S_PROMPT --gen-len $S_GEN"
  else
    "${REPORT[@]}" record --out "$JSONL" --kind dsfuse_serve --name "$name" --rc 1 --secs $(( $(date +%s) - s )) \
      --stdout /dev/null --stderr "$base.err" --note "server did not come up"
  fi
  kill -TERM $spid 2>/dev/null
  for _ in $(seq 1 20); do kill -0 $spid 2>/dev/null || break; sleep 0.5; done
  kill -KILL $spid 2>/dev/null
  wait $spid 2>/dev/null
}

echo "=== device bandwidth (torch copy probe; dsfuse bench reports its own) ==="
if python3 -c 'import torch' 2>/dev/null; then
  run bandwidth device "$(cap 60)" python3 scripts/hf_bench.py --mode bandwidth
else
  echo "(no torch: the bounds use dsfuse's probe or GPU_BW_GBS)"
fi
echo "=== decode, batch 1 (dsfuse) ==="
for m in $DECODE_MODELS; do
  run dsfuse_decode "$m" "$(cap 180)" "$DSFUSE" bench --config "$CONFIGS/$m.json" --dummy-weights --device "$DEVICE" \
    --prompt-len 128 --gen-len $GEN --repeat $REPEAT --json
done
echo "=== MLA decode kernel alone (dsfuse kbench) ==="
# The absorbed-MLA decode kernel over a 64-sequence, 4096-token paged latent cache (V2-Lite's 16 heads).
run kbench_mla mla "$(cap 60)" "$DSFUSE" kbench mla --device "$DEVICE" --seqs 64 --context 4096 --json
if [ "$HF" = 1 ]; then
  echo "=== decode, batch 1 (HF Transformers $(python3 -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo '(not importable)')) ==="
  for m in ${HF_DECODE_MODELS-$DECODE_MODELS}; do
    run hf_decode "$m" "$(cap 150)" python3 scripts/hf_bench.py --config "$CONFIGS/$m.json" --mode decode \
      --prompt-len 128 --gen-len $HF_GEN --no-bw-probe ${HF_ARGS:-}
  done
fi
echo "=== throughput: $CONC sequences, $S_PROMPT prompt / $S_GEN generated (dsfuse serve) ==="
for m in $SERVE_MODELS; do serve_row "$m"; done
if [ "$HF" = 1 ]; then
  echo "=== throughput: batch of $CONC (HF Transformers generate) ==="
  for m in $SERVE_MODELS; do
    run hf_batch "$m" "$(cap 240)" python3 scripts/hf_bench.py --config "$CONFIGS/$m.json" --mode batch --batch $CONC \
      --prompt-len $S_PROMPT --gen-len $S_GEN --no-bw-probe ${HF_ARGS:-}
  done
fi

echo
echo "=== results ($(( $(date +%s) - T_START )) s; rows in $JSONL) ==="
"${REPORT[@]}" table "$JSONL" --configs "$CONFIGS" | tee "$LOG_DIR/table.md"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp "$LOG_DIR/table.md" "$OUT/" 2>/dev/null
  tar -czf "$OUT/bench-logs.tgz" -C "$LOG_DIR" . 2>/dev/null
fi
