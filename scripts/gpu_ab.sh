#!/usr/bin/env bash
# A/B of decode speed on the GPU machine, interleaved so machine drift hits both sides alike: for each model,
# ROUNDS x (A, B) runs of `dsfuse bench` (dummy weights, prompt 128, GEN tokens), then the medians and B/A.
#   A=BIN_A B=BIN_B                 two binaries (e.g. an old commit's, built here and carried), or
#   ENV_A="X=1" ENV_B="X=2"         one binary (BIN, default $BUILD_DIR/dsfuse) under two environments.
# Env: MODELS (config names in .carry/configs; default 1.5B and LLM-7B), ROUNDS (default 3), GEN (default 128),
# PROMPT (default 128), EXTRA (more bench flags, e.g. "--batch 64"; a flag given twice is refused by the CLI).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-${BUILD_DIR:-build-gpu}/dsfuse}
A=${A:-$BIN}
B=${B:-$BIN}
ENV_A=${ENV_A:-}
ENV_B=${ENV_B:-}
MODELS=${MODELS:-"deepseek-r1-distill-qwen-1.5b deepseek-llm-7b"}
ROUNDS=${ROUNDS:-3}
GEN=${GEN:-128}
PROMPT=${PROMPT:-128}
EXTRA=${EXTRA:-}
echo "A: $A ${ENV_A:+($ENV_A)}"
echo "B: $B ${ENV_B:+($ENV_B)}"
for m in $MODELS; do
  ra=() rb=()
  for r in $(seq 1 "$ROUNDS"); do
    for side in A B; do
      if [ $side = A ]; then bin=$A e=$ENV_A; else bin=$B e=$ENV_B; fi
      v=$(env $e timeout 120 "$bin" bench --config ".carry/configs/$m.json" --dummy-weights --device cuda \
            --prompt-len "$PROMPT" --gen-len "$GEN" --repeat 1 $EXTRA 2>&1 | sed -n 's/^ *decode tok\/s ([0-9]* tok) *\([0-9.]*\).*/\1/p')
      [ $side = A ] && ra+=("${v:-nan}") || rb+=("${v:-nan}")
    done
  done
  python3 - "$m" "${ra[*]}" "${rb[*]}" <<'PY'
import statistics, sys
m, a, b = sys.argv[1], [float(v) for v in sys.argv[2].split()], [float(v) for v in sys.argv[3].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"{m}: A {ma:.1f} tok/s {a}  B {mb:.1f} tok/s {b}  B/A {mb / ma:.3f}")
PY
done
