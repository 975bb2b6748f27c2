#!/usr/bin/env bash
# Fresh machine -> dependencies, Release build, and the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSFUSE_TESTS=OFF
cmake --build build -j"$(nproc)" --target dsfuse
if [ -f models/default/config.json ]; then
  ./build/dsfuse run -p "ROMEO:" --max-new-tokens 80
else
  ./build/dsfuse info --model "${DSFUSE_FIXTURES:-../shared/fixtures}/models/deepseek-v3-tiny"
fi
