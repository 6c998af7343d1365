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

# A real Triton Inference Server for tests/serving/test_triton*.py: nvidia-pytriton pins numpy<2, so it
# gets its own venv (about 2 minutes and 0.6 GB the first time, seconds afterwards).
# CONVCRF_SKIP_TRITON=1 skips it, and the tests say so.
if [ "${CONVCRF_SKIP_TRITON:-0}" != 1 ]; then
  export TRITON_VENV="${TRITON_VENV:-$PWD/.venv-triton}"
  bash scripts/triton_env.sh >/dev/null
  export CONVCRF_TRITON_PYTHON="$TRITON_VENV/bin/python"
fi

# Fail rather than silently testing the pure-PyTorch fallback.
export CONVCRF_REQUIRE_NATIVE=1
# Run from tests/ so that the installed package (with its native libraries) is imported,
# not the source tree.
cd tests
python -m pytest -q -p no:cacheprovider "$@"
