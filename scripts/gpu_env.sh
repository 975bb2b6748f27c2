# Build prologue shared by the GPU scripts (scripts/gpu_test.sh, scripts/gpu_bench.sh); source it from the
# repository root. It makes the build dependencies available (the system's when present, else the carried .debs
# unpacked into /tmp/dsfuse-deps: no root, no apt), puts nvcc on PATH, and defines
#   gpu_build LOG_DIR [TARGET...]   configure BUILD_DIR with CUDA (Ninja, Release) and build the targets (all
#                                   by default) with JOBS jobs; prints the errors and returns 1 on failure.
# Env: DSFUSE_DEBS (folder of .deb dev packages; default ../debs, else .carry/debs), BUILD_DIR (default
# build-gpu), JOBS (default nproc), CUDA_ARCHS (default 90: the lent H100/H200 only, a faster build).
# Returns 2 (and defines no gpu_build) when the dependencies are missing.
BUILD_DIR=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-$(nproc)}

# Build dependencies: use the system's when present, else unpack the carried .debs (no root, no apt).
if ! pkg-config --exists libpcre2-8 libutf8proc libxxhash cpp-httplib 2>/dev/null || [ ! -d /usr/include/nlohmann ] ||
   [ ! -d /usr/include/gtest ] || [ ! -f /usr/include/CLI/CLI.hpp ]; then
  DEBS=${DSFUSE_DEBS:-../debs}
  [ -z "${DSFUSE_DEBS:-}" ] && [ ! -d "$DEBS" ] && [ -d .carry/debs ] && DEBS=.carry/debs
  [ -d "$DEBS" ] || { echo "missing dev packages and no DSFUSE_DEBS folder ($DEBS)"; return 2; }
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

gpu_build() {
  local logs=$1
  shift
  local targets=()
  for t in "$@"; do targets+=(--target "$t"); done
  mkdir -p "$logs"
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSFUSE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" > "$logs/configure.log" 2>&1 ||
    { tail -40 "$logs/configure.log"; return 1; }
  cmake --build "$BUILD_DIR" -j"$JOBS" ${targets[@]+"${targets[@]}"} > "$logs/build.log" 2>&1 ||
    { grep -E "error" -A3 "$logs/build.log" | head -60; return 1; }
}
