// convcrf_cuda.h: plain C launcher API of the CUDA kernels (library libconvcrf_cuda).
//
// No TensorRT and no PyTorch types: the same launchers serve the TensorRT plugin, the
// PyTorch CUDA path (through ctypes, with torch's current stream) and C++ users. Each call
// validates its sizes, launches asynchronously on `stream` (a cudaStream_t passed as void*),
// never synchronises or allocates, and returns a convcrf::Status code (0 on success;
// kErrorCuda when the launch failed). Empty tensors launch nothing and return 0.
//
// `dtype` is CONVCRF_CUDA_FLOAT32 (0) or CONVCRF_CUDA_FLOAT16 (1); inputs and outputs share
// it and arithmetic is accumulated in fp32 either way. Layouts are contiguous NCHW and the
// semantics are the op contract of docs/ops.md.
#pragma once

#include <stdint.h>

// CONVCRF_CUDA_STATIC: the launchers are linked into another library (the TensorRT plugin)
// and must not be exported from it.
#if defined(CONVCRF_CUDA_STATIC)
#define CONVCRF_CUDA_API
#elif defined(_WIN32)
#define CONVCRF_CUDA_API __declspec(dllexport)
#else
#define CONVCRF_CUDA_API __attribute__((visibility("default")))
#endif

#define CONVCRF_CUDA_FLOAT32 0
#define CONVCRF_CUDA_FLOAT16 1

#ifdef __cplusplus
extern "C" {
#endif

// features [N, D, H, W] -> kernel [N, k*k, H, W].
CONVCRF_CUDA_API int32_t convcrf_cuda_gaussian_kernel(const void* features, int32_t dtype,
                                                      int64_t n, int64_t d, int64_t h, int64_t w,
                                                      int32_t filterSize, void* kernel,
                                                      void* stream);

// q [N, C, H, W], kernel [N, k*k, H, W] -> messages [N, C, H, W].
CONVCRF_CUDA_API int32_t convcrf_cuda_message_passing(const void* q, const void* kernel,
                                                      int32_t dtype, int64_t n, int64_t c,
                                                      int64_t h, int64_t w, int32_t filterSize,
                                                      void* messages, void* stream);

#ifdef __cplusplus
}
#endif
