#!/usr/bin/env bash
# ci_native.sh: CI step for the CUDA kernels and the TensorRT plugin (called by .ci/run).
#
# - nvcc present: configure + build libconvcrf_cuda for one architecture and run the CUDA host
#   tests (ctest -L cuda: the tiled kernels' indexing emulated on the CPU, the default
#   architecture list, static cudart; no GPU needed).
# - For EACH set of TensorRT headers found: build libconvcrf_trt_plugin.so against it, check its
#   exports and that it needs neither libcudart nor libnvinfer (readelf), and run
#   ctest -L tensorrt (host tests; no GPU, no TensorRT runtime).
#   Header sets: $TensorRT_INCLUDE_DIR (one folder, or several separated by ':'), else every
#   ../shared/third_party/tensorrt-*/include beside the checkout (TensorRT 11.1 and 10.3, the
#   one of JetPack 6). They are never copied into the repository.
# - ONNX Runtime custom ops: the CUDA build also builds libconvcrf_ort_ops(_cuda).so when the
#   ONNX Runtime headers are found ($ONNXRUNTIME_INCLUDE_DIR, else ../shared/third_party beside
#   the checkout); checks that they export only RegisterCustomOps and need neither
#   libonnxruntime nor libcudart. (Their tests run with the Python suite: tests/ops/test_ort_ops*.py.)
# Otherwise prints what was skipped; with CONVCRF_CI_STRICT=1 (set by .ci/run) a missing nvcc
# or missing TensorRT headers is an error. Exits non-zero on any failure.
#
# Env: CONVCRF_CI_BUILD_DIR (default build-ci-native, gitignored as build-*/),
#      CONVCRF_CI_CUDA_ARCH (default 75: ONE architecture keeps nvcc time modest on 2 cores;
#      users' builds get the full default list of plugins/cuda/CudaArchitectures.cmake).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CONVCRF_CI_BUILD_DIR:-$repo/build-ci-native}"
arch="${CONVCRF_CI_CUDA_ARCH:-75}"
strict="${CONVCRF_CI_STRICT:-0}"

skip() {
    if [[ "$strict" == 1 ]]; then
        echo "error: $1" >&2
        exit 1
    fi
    echo "skipped: $1"
    exit 0
}

if ! command -v nvcc >/dev/null 2>&1; then
    skip "no nvcc (CUDA kernels and TensorRT plugin not built)"
fi

trt_dirs=()
if [[ -n "${TensorRT_INCLUDE_DIR:-}" ]]; then
    IFS=: read -r -a trt_dirs <<<"$TensorRT_INCLUDE_DIR"
else
    for dir in "$repo"/../shared/third_party/tensorrt-*/include; do
        [[ -f "$dir/NvInferRuntime.h" ]] && trt_dirs+=("$(cd "$dir" && pwd)")
    done
fi
for dir in "${trt_dirs[@]}"; do
    if [[ ! -f "$dir/NvInferRuntime.h" ]]; then
        echo "TensorRT headers: $dir has no NvInferRuntime.h" >&2
        exit 1
    fi
done

generator=()
if command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi

# needs_none LIBRARY REGEX: fail when readelf -d lists a NEEDED entry matching REGEX.
needs_none() {
    local needed
    needed="$(readelf -d "$1" | grep '(NEEDED)' || true)"
    if grep -Eq "$2" <<<"$needed"; then
        echo "$(basename "$1") needs $(grep -E "$2" <<<"$needed" | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')" \
             "at run time; it must not (static cudart, no libnvinfer)" >&2
        exit 1
    fi
}

configure() {  # configure BUILD_DIR [TensorRT include dir]
    local args=(-S "$repo" -B "$1" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
                -DCONVCRF_WITH_CUDA=ON -DCONVCRF_BUILD_TESTS=ON "-DCMAKE_CUDA_ARCHITECTURES=$arch")
    if [[ -n "${2:-}" ]]; then
        args+=(-DCONVCRF_WITH_TENSORRT=ON "-DTensorRT_INCLUDE_DIR=$2")
    else
        args+=(-DCONVCRF_WITH_TENSORRT=OFF)
    fi
    cmake "${args[@]}"
}

echo "== CUDA kernels (architecture $arch)"
configure "$build/cuda"
cmake --build "$build/cuda" --parallel 2
needs_none "$build/cuda/plugins/cuda/libconvcrf_cuda.so" libcudart
ctest --test-dir "$build/cuda" -L cuda --output-on-failure

# ---- ONNX Runtime custom-op libraries (plugins/onnxruntime), built by the configure above ----
ort_dir="$build/cuda/plugins/onnxruntime"
if [[ -f "$ort_dir/libconvcrf_ort_ops_cuda.so" ]]; then
    for lib in libconvcrf_ort_ops.so libconvcrf_ort_ops_cuda.so; do
        exports="$(nm -D --defined-only "$ort_dir/$lib" | awk '{print $3}' | sort -u | tr '\n' ' ')"
        if [[ "$exports" != "RegisterCustomOps " ]]; then
            echo "$lib must export RegisterCustomOps only; it exports: $exports" >&2
            exit 1
        fi
        needs_none "$ort_dir/$lib" 'libonnxruntime|libcudart'
    done
    echo "ONNX Runtime custom ops: export RegisterCustomOps only; need neither libonnxruntime nor libcudart"
elif [[ "$strict" == 1 ]]; then
    echo "error: libconvcrf_ort_ops_cuda.so was not built: ONNX Runtime headers not found (set ONNXRUNTIME_INCLUDE_DIR or provide ../shared/third_party)" >&2
    exit 1
else
    echo "skipped: ONNX Runtime custom ops (no ONNX Runtime headers)"
fi

if [[ ${#trt_dirs[@]} -eq 0 ]]; then
    skip "no TensorRT headers (set TensorRT_INCLUDE_DIR or provide ../shared/third_party)"
fi

for include in "${trt_dirs[@]}"; do
    name="$(basename "$(dirname "$include")")"
    dir="$build/$name"
    echo "== TensorRT plugin against $include"
    configure "$dir" "$include"
    # Only the plugin and its tests: the CUDA library and its tests were built above.
    cmake --build "$dir" --parallel 2 --target convcrf_trt_plugin convcrf_trt_plugin_tests \
        convcrf_trt_register_tests
    plugin="$dir/plugins/tensorrt/libconvcrf_trt_plugin.so"
    exports="$(nm -D --defined-only "$plugin")"
    for symbol in getCreators setLoggerFinder; do
        if ! grep -qw "$symbol" <<<"$exports"; then
            echo "libconvcrf_trt_plugin.so does not export $symbol" >&2
            exit 1
        fi
    done
    needs_none "$plugin" 'libcudart|libnvinfer'
    echo "exports getCreators and setLoggerFinder; needs neither libcudart nor libnvinfer"
    ctest --test-dir "$dir" -L tensorrt --output-on-failure
done
echo "TensorRT plugin built and host-tested against: ${trt_dirs[*]}"
