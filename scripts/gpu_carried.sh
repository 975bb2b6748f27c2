# Prologue for device calls that run binaries built here and carried (no build on the GPU machine): source it
# from the repository root. Build them first on this machine (CUDA code for sm_90 only keeps them under the
# carry limit):
#   cmake -S . -B build-sm90 -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSFUSE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
#   cmake --build build-sm90 --target dsfuse dsfuse_tests
# then pack them (4x smaller: the working tree plus carried paths must stay under 64 MiB)
#   tar -cJf .carry/bin.tar.xz build-sm90/dsfuse build-sm90/dsfuse_tests
# and carry [".carry/bin.tar.xz", ".carry/debs", ".carry/configs", ".carry/fixtures"] (+ ".carry/tokenizers/qwen3"
# for serving rows); the archive is unpacked here when present. Sets BUILD_DIR and SKIP_BUILD=1 for the other GPU scripts, puts
# the carried .debs' run-time libraries and CUDA's on LD_LIBRARY_PATH, and links /work/main to this tree (the
# tests have that path compiled in for models/default, tests/data and the CLI binary).
export NCCL_NVLS_ENABLE=0
export BUILD_DIR=${BUILD_DIR:-build-sm90} SKIP_BUILD=1
[ -f .carry/bin.tar.xz ] && tar -xJf .carry/bin.tar.xz
source scripts/gpu_env.sh >/dev/null 2>&1 || echo "gpu_env.sh: dependencies missing"
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib $(dirname "$(ldconfig -p 2>/dev/null | sed -n 's/.*libnccl.so.2 .*=> //p' | head -1)" 2>/dev/null); do
  [ -d "$d" ] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
if [ "$(readlink -f /work/main 2>/dev/null)" != "$PWD" ]; then
  mkdir -p /work 2>/dev/null && rm -f /work/main 2>/dev/null; ln -sfn "$PWD" /work/main 2>/dev/null ||
    echo "could not link /work/main to $PWD (tests using compiled-in paths will skip or fail)"
fi
export DSFUSE_FIXTURES=${DSFUSE_FIXTURES:-$PWD/.carry/fixtures}
"$BUILD_DIR/dsfuse" --version >/dev/null 2>&1 || { echo "carried $BUILD_DIR/dsfuse does not run:"; ldd "$BUILD_DIR/dsfuse" | grep "not found"; }
