#!/usr/bin/env bash
# Set up a virtual environment, build and install convcrf-deploy with its native libraries,
# and run the test suite. This is the command the README gives and the one CI runs.
#
#   bash scripts/test.sh              # all tests
#   bash scripts/test.sh -k export    # extra arguments go to pytest
#
# Environment: VENV (default .venv), CONVCRF_CUDA_ARCHITECTURES (default 75: one
# architecture keeps nvcc quick; the CUDA objects are compile-checked, no GPU is needed).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# Without a GPU take PyTorch's CPU build first: an unpinned torch would download a CUDA build
# of several GB.
if ! command -v nvidia-smi >/dev/null 2>&1 && ! python -c "import torch" 2>/dev/null; then
  python -m pip install torch==2.13.0
fi
python -m pip install ".[test]" \
  --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES="${CONVCRF_CUDA_ARCHITECTURES:-75}"

# Fail rather than silently testing the pure-PyTorch fallback.
export CONVCRF_REQUIRE_NATIVE=1
# Run from tests/ so that the installed package (with its native libraries) is imported,
# not the source tree.
cd tests
python -m pytest -q -p no:cacheprovider "$@"
