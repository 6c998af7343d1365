#!/usr/bin/env bash
# Create the Python environment that runs a real Triton Inference Server on the CPU, for the
# tests in tests/serving/test_triton*.py and benchmarks/bench_triton.py (docs/serving.md).
#
#   bash scripts/triton_env.sh            # creates/updates .venv-triton, prints its path
#
# Why a separate environment: the nvidia-pytriton wheel (which bundles a stock `tritonserver`
# binary and its Python backend) pins numpy<2, and so do the packages the Python-backend model
# imports inside the server (onnxruntime, opencv-python-headless<4.12 are the numpy-1 builds).
# convcrf_deploy itself is not installed there: the server is started with PYTHONPATH reaching
# the copy under test (convcrf_deploy.serving.server.TritonServer does this), so the server runs
# exactly the code the tests import. Environment: TRITON_VENV (default .venv-triton), PYTHON
# (default python3; its minor version must have a stub in the wheel: 3.8 .. 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."

TRITON_VENV=${TRITON_VENV:-.venv-triton}
PYTHON=${PYTHON:-python3}
[ -x "$TRITON_VENV/bin/python" ] || "$PYTHON" -m venv "$TRITON_VENV"
"$TRITON_VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "nvidia-pytriton==0.7.0" "numpy>=1.22,<2" "onnxruntime>=1.17" "onnx>=1.16" \
  "opencv-python-headless>=4.6,<4.12"
# Fail here, not inside the server, when the numpy-1 stack does not import together.
"$TRITON_VENV/bin/python" -c "import numpy, onnxruntime, cv2, onnx, pytriton; assert numpy.__version__ < '2'"
echo "$TRITON_VENV"
