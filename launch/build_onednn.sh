#!/usr/bin/env bash
# Build a newer oneDNN (GNU OpenMP, CPU only, convolutions + reorders: all msjax links) for
# msjax's oneDNN convolutions, then point msjax at it:
#
#   launch/build_onednn.sh [VERSION] [PREFIX]        # default v3.12.4 into ~/.local/onednn-<v>
#   export MSJAX_ONEDNN_ROOT=~/.local/onednn-v3.12.4  # msjax builds its extension against it once
#
# PyPI's newest GNU-OpenMP oneDNN is 3.2 (onednn-cpu-gomp 2023.2.0, the default); PyTorch 2.13
# bundles 3.12. Needs git (or an unpacked source in $ONEDNN_SRC), cmake >= 3.13 and g++; under
# 2 h of compilation on 2 cores (measured beside other work). Figures: docs/benchmark.md.
set -euo pipefail
VERSION="${1:-v3.12.4}"
PREFIX="${2:-$HOME/.local/onednn-$VERSION}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
SRC="${ONEDNN_SRC:-$WORK/src}"
if [ -z "${ONEDNN_SRC:-}" ]; then
  git clone --quiet --depth 1 --branch "$VERSION" https://github.com/uxlfoundation/oneDNN "$SRC"
fi
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" \
  -DONEDNN_CPU_RUNTIME=OMP -DONEDNN_GPU_RUNTIME=NONE -DONEDNN_BUILD_GRAPH=OFF \
  -DONEDNN_BUILD_TESTS=OFF -DONEDNN_BUILD_EXAMPLES=OFF -DONEDNN_BUILD_DOC=OFF \
  -DONEDNN_ENABLE_PRIMITIVE="CONVOLUTION;REORDER" -DONEDNN_ENABLE_WORKLOAD=TRAINING
cmake --build "$WORK/build" -j "$(nproc)"
cmake --install "$WORK/build" > /dev/null
echo "oneDNN $VERSION in $PREFIX: export MSJAX_ONEDNN_ROOT=$PREFIX"
