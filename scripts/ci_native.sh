#!/usr/bin/env bash
# ci_native.sh: CI step for the CUDA kernels and the TensorRT plugin (called by .ci/run).
#
# - nvcc present: configure + build libconvcrf_cuda for one architecture and run the CUDA host
#   tests (ctest -L cuda: the tiled kernels' indexing emulated on the CPU; no GPU needed).
# - TensorRT headers present ($TensorRT_INCLUDE_DIR): also
#   build libconvcrf_trt_plugin.so, check its exports and that it does not link libnvinfer, and
#   run ctest -L tensorrt (host tests; no GPU, no TensorRT runtime).
# Otherwise prints what was skipped. Exits non-zero on any failure.
#
# Env: CONVCRF_CI_BUILD_DIR (default build-ci-native, gitignored as build-*/),
#      CONVCRF_CI_CUDA_ARCH (default 75: one architecture keeps nvcc time modest on 2 cores).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CONVCRF_CI_BUILD_DIR:-$repo/build-ci-native}"
arch="${CONVCRF_CI_CUDA_ARCH:-75}"

if ! command -v nvcc >/dev/null 2>&1; then
    echo "skipped: no nvcc (CUDA kernels and TensorRT plugin not built)"
    exit 0
fi

trt_include="${TensorRT_INCLUDE_DIR:-}"
if [[ -n "$trt_include" && ! -f "$trt_include/NvInferRuntime.h" ]]; then
    echo "TensorRT_INCLUDE_DIR=$trt_include has no NvInferRuntime.h" >&2
    exit 1
fi

generator=()
if command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi
cmake_args=(-S "$repo" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
            -DCONVCRF_WITH_CUDA=ON -DCONVCRF_BUILD_TESTS=ON "-DCMAKE_CUDA_ARCHITECTURES=$arch")
if [[ -n "$trt_include" ]]; then
    cmake_args+=(-DCONVCRF_WITH_TENSORRT=ON "-DTensorRT_INCLUDE_DIR=$trt_include")
else
    cmake_args+=(-DCONVCRF_WITH_TENSORRT=OFF)
fi

echo "== configure (CUDA arch $arch)"
cmake "${cmake_args[@]}"
echo "== build"
cmake --build "$build" --parallel 2
echo "== ctest -L cuda"
ctest --test-dir "$build" -L cuda --output-on-failure

if [[ -z "$trt_include" ]]; then
    echo "skipped: no TensorRT headers"
    exit 0
fi

plugin="$build/plugins/tensorrt/libconvcrf_trt_plugin.so"
echo "== exports of $plugin"
exports="$(nm -D --defined-only "$plugin")"
for symbol in getCreators setLoggerFinder; do
    if ! grep -qw "$symbol" <<<"$exports"; then
        echo "libconvcrf_trt_plugin.so does not export $symbol" >&2
        exit 1
    fi
done
if readelf -d "$plugin" | grep -q 'NEEDED.*libnvinfer'; then
    echo "libconvcrf_trt_plugin.so links libnvinfer; it must link cudart only" >&2
    exit 1
fi
echo "exports getCreators and setLoggerFinder; no libnvinfer dependency"
echo "== ctest -L tensorrt"
ctest --test-dir "$build" -L tensorrt --output-on-failure
