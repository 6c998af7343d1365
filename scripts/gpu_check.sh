#!/usr/bin/env bash
# gpu_check.sh: the GPU check kit. One command on a Linux machine with an NVIDIA GPU and a CUDA
# build of PyTorch; prints a summary and writes JSON. Works offline.
#
#   bash scripts/gpu_check.sh [--json FILE]        (default FILE: gpu_check.json in the cwd)
#
# Steps (each recorded in the JSON with its status and seconds; a failed step fails the run):
#   1. build libconvcrf_cuda (and the TensorRT plugin when TensorRT and its headers are there)
#      for the local GPU's architecture only, and run the C++ host tests (ctest);
#   2. install this checkout into the active Python environment with
#      `pip install --no-deps --no-build-isolation .` (no network needed: PyTorch, numpy,
#      onnx, onnxruntime, OpenCV, scikit-build-core, CMake and ninja must be installed);
#   3. tests/ops/test_cuda_ops.py: both ops' CUDA kernels against the CPU library (fp32 and fp16,
#      borders, odd sizes, windows larger than the image, batch and class counts beyond the
#      CUDA grid limits) and ConvCRF on the GPU against the CPU (pytest, or a built-in runner
#      when pytest is not installed); tests/ops/test_ort_ops_cuda.py: the ONNX Runtime custom ops
#      (libconvcrf_ort_ops_cuda) on ONNX Runtime's CUDA execution provider, when onnxruntime-gpu
#      is installed and the ONNX Runtime headers were found (ONNXRUNTIME_INCLUDE_DIR, else
#      ../shared/third_party beside the checkout), else reported as skipped;
#   4. ConvCRF inference timed on the GPU: k = 7 and 11, 375x500, 21 classes, fp32 and fp16,
#      native CUDA kernels against the F.unfold implementation on the same GPU (ratios);
#   5. scripts/validate_tensorrt.py when `import tensorrt` works (engine with our plugin vs
#      PyTorch).
# Designed to finish within 8 minutes on a big GPU. Exits 2 at once when there is no GPU.
#
# Env: PYTHON (default python3), TensorRT_INCLUDE_DIR (headers for the plugin; default: the
#      ../shared/third_party/tensorrt-<major.minor>/include matching the installed TensorRT),
#      ONNXRUNTIME_INCLUDE_DIR (ONNX Runtime headers for the custom-op library),
#      CONVCRF_GPU_CHECK_BUILD (default build-gpu-check).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
json="$PWD/gpu_check.json"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --json) json="$(cd "$(dirname "${2:?--json needs a file name}")" && pwd)/$(basename "$2")"; shift 2 ;;
        -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (usage: gpu_check.sh [--json FILE])" >&2; exit 2 ;;
    esac
done

die() {
    echo "gpu_check: $1" >&2
    exit 2
}

# ---- 0. the machine ---------------------------------------------------------------------------
[[ "$(uname -s)" == Linux ]] || die "this kit runs on Linux (found $(uname -s))"
command -v nvidia-smi >/dev/null 2>&1 \
    || die "no NVIDIA GPU: nvidia-smi not found; this kit needs a Linux machine with an NVIDIA GPU, its driver and a CUDA build of PyTorch"
gpu_line="$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)"
[[ -n "$gpu_line" ]] || die "no NVIDIA GPU: nvidia-smi lists none (is the driver loaded?)"
IFS=',' read -r gpu_name compute_cap driver <<<"$gpu_line"
trim() {
    local text="$1"
    text="${text#"${text%%[![:space:]]*}"}"
    printf '%s' "${text%"${text##*[![:space:]]}"}"
}
gpu_name="$(trim "$gpu_name")"
compute_cap="$(trim "$compute_cap")"
driver="$(trim "$driver")"
arch="${compute_cap/./}"
[[ "$arch" =~ ^[0-9]+$ ]] || die "cannot read the GPU's compute capability (nvidia-smi said '$compute_cap')"
command -v nvcc >/dev/null 2>&1 || die "nvcc not found: install the CUDA toolkit (or put it on PATH)"
command -v cmake >/dev/null 2>&1 || die "cmake not found"
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
    || die "$python has no CUDA build of PyTorch that sees the GPU (torch.cuda.is_available() is False)"
echo "gpu_check: $gpu_name (sm_$arch, driver $driver), $(nvcc --version | grep -o 'release [0-9.]*')"

build="${CONVCRF_GPU_CHECK_BUILD:-$repo/build-gpu-check}"
logs="$build/logs"
mkdir -p "$logs"
steps="$logs/steps.tsv"
: >"$steps"
failed=0

# step NAME COMMAND...: run, log to $logs/NAME.log, record status and seconds.
step() {
    local name="$1" start=$SECONDS status
    shift
    echo "== $name"
    if "$@" >"$logs/$name.log" 2>&1; then status=ok; else status=failed; failed=1; fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$logs/$name.log" >>"$steps"
    echo "   $status (log: $logs/$name.log)"
    [[ "$status" == ok ]]
}

# ---- 1. build for this GPU and run the host tests ---------------------------------------------
trt_args=(-DCONVCRF_WITH_TENSORRT=OFF)
trt_version="$("$python" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)"
if [[ -n "$trt_version" ]]; then
    trt_include="${TensorRT_INCLUDE_DIR:-$repo/../shared/third_party/tensorrt-$(cut -d. -f1-2 <<<"$trt_version")/include}"
    if [[ -f "$trt_include/NvInferRuntime.h" ]]; then
        trt_args=(-DCONVCRF_WITH_TENSORRT=ON "-DTensorRT_INCLUDE_DIR=$(cd "$trt_include" && pwd)")
    else
        echo "gpu_check: TensorRT $trt_version is installed but no headers at $trt_include: set TensorRT_INCLUDE_DIR" >&2
    fi
fi
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
jobs="$(nproc 2>/dev/null || echo 4)"
# shellcheck disable=SC2317  # called through step
build_and_test() {
    cmake -S "$repo" -B "$build/cmake" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCONVCRF_WITH_CUDA=ON \
        -DCONVCRF_BUILD_TESTS=ON "-DCMAKE_CUDA_ARCHITECTURES=$arch" "${trt_args[@]}" &&
        cmake --build "$build/cmake" --parallel "$jobs" &&
        ctest --test-dir "$build/cmake" --output-on-failure
}
step build_and_host_tests build_and_test || true

# ---- 2. install ---------------------------------------------------------------------------------
# shellcheck disable=SC2317  # called through step
install_package() (
    cd "$repo"
    CMAKE_BUILD_PARALLEL_LEVEL="$jobs" "$python" -m pip install --no-deps --no-build-isolation \
        --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" .
)
if step install install_package; then
    # ---- 3.-5. tests, timing, TensorRT (Python) ------------------------------------------------
    plugin="$build/cmake/plugins/tensorrt/libconvcrf_trt_plugin.so"
    [[ -f "$plugin" ]] || plugin=""
    # From tests/: the installed package is imported, not the source tree.
    (cd "$repo/tests" && "$python" "$repo/scripts/gpu_check.py" --steps "$steps" --logs "$logs" \
        --plugin "$plugin" --gpu "$gpu_name" --arch "$arch" --driver "$driver" --json "$json") || failed=1
else
    (cd "$repo/tests" && "$python" "$repo/scripts/gpu_check.py" --steps "$steps" --logs "$logs" \
        --gpu "$gpu_name" --arch "$arch" --driver "$driver" --json "$json" --report-only) || true
    failed=1
fi
exit "$failed"
