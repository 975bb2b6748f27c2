#!/usr/bin/env bash
# GPU test set (run on a machine with an NVIDIA GPU): builds with CUDA, then runs every CUDA test (backend ops vs
# the reference backend, parity of every fixture full + incremental, greedy equality through the engine, the
# default model) in f32 mode (DSFUSE_CUDA_F32=1) and in bf16 mode, and prints a summary.
# Env: DSFUSE_FIXTURES (fixture root), DSFUSE_DEBS (folder of .deb dev packages to unpack into /tmp/dsfuse-deps
# when this machine lacks them), BUILD_DIR (default build-gpu), JOBS (default nproc), LOG_DIR (keeps the logs).
set -uo pipefail
# NVLink multicast stays off (on shared machines it can take the host's GPUs out of service); the NCCL
# communicator forces it off too.
export NCCL_NVLS_ENABLE=0
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-$(nproc)}
LOG_DIR=${LOG_DIR:-$BUILD_DIR/gpu-logs}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"

# Build dependencies: use the system's when present, else unpack the carried .debs (no root, no apt).
if ! pkg-config --exists libpcre2-8 libutf8proc libxxhash cpp-httplib 2>/dev/null || [ ! -d /usr/include/nlohmann ] ||
   [ ! -d /usr/include/gtest ] || [ ! -f /usr/include/CLI/CLI.hpp ]; then
  DEBS=${DSFUSE_DEBS:-../debs}
  [ -d "$DEBS" ] || { echo "missing dev packages and no DSFUSE_DEBS folder ($DEBS)"; exit 2; }
  P=/tmp/dsfuse-deps
  for f in "$DEBS"/*.deb; do dpkg -x "$f" "$P"; done
  ML=$P/usr/lib/x86_64-linux-gnu
  sed -i "s|^prefix=/usr\$|prefix=$P/usr|" "$ML"/pkgconfig/*.pc "$P"/usr/share/pkgconfig/*.pc 2>/dev/null
  export PKG_CONFIG_PATH=$ML/pkgconfig:$P/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  export CMAKE_PREFIX_PATH=$P/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export CPATH=$P/usr/include${CPATH:+:$CPATH}
  export LIBRARY_PATH=$ML${LIBRARY_PATH:+:$LIBRARY_PATH}
  export LD_LIBRARY_PATH=$ML${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  command -v pkg-config >/dev/null || ln -sf "$P/usr/bin/pkgconf" "$P/usr/bin/pkg-config"
  export PATH=$PATH:$P/usr/bin
  echo "dependencies: unpacked $(ls "$DEBS"/*.deb | wc -l) packages into $P"
fi
export PATH=$PATH:/usr/local/cuda/bin

mkdir -p "$LOG_DIR"
t0=$(date +%s)
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSFUSE_CUDA=ON > "$LOG_DIR/configure.log" 2>&1 ||
  { tail -40 "$LOG_DIR/configure.log"; exit 1; }
cmake --build "$BUILD_DIR" -j"$JOBS" > "$LOG_DIR/build.log" 2>&1 || { grep -E "error" -A3 "$LOG_DIR/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"

FILTER='Backends/BackendOps.*/1:*Cuda*'
status=0
for mode in f32 bf16; do
  if [ $mode = f32 ]; then export DSFUSE_CUDA_F32=1; else unset DSFUSE_CUDA_F32; fi
  t1=$(date +%s)
  "$BUILD_DIR/dsfuse_tests" --gtest_filter="$FILTER" > "$LOG_DIR/tests-$mode.log" 2>&1 || status=1
  echo "=== cuda $mode mode ($(( $(date +%s) - t1 )) s) ==="
  grep -E "^\[(parity|greedy|ops|tp)\]" "$LOG_DIR/tests-$mode.log" | grep -E "cuda|\[greedy\]|\[ops\]" |
    grep -vE "^\[parity\] (cpu|reference)" || true
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]|Failure|error" "$LOG_DIR/tests-$mode.log" | head -40
done
unset DSFUSE_CUDA_F32
# Rough timings (not a benchmark): the default model, 128 tokens, full forward and token by token.
echo "=== timing: models/default, 128 tokens ==="
IDS=$(seq -s, 1 128)
for dev in cpu cuda; do
  for inc in "" --incremental; do
    "$BUILD_DIR/dsfuse" logits --model models/default --ids "$IDS" --out "$BUILD_DIR/timing.safetensors" \
      --device $dev $inc 2>&1 | grep -E "^logits:" | sed "s/^/[$dev] /"
  done
done
echo "=== summary: $([ $status = 0 ] && echo ALL CUDA TESTS PASSED || echo FAILURES) ==="
exit $status
