// convcrf_cpu.h: the C API of the CPU library libconvcrf_cpu.
//
// Plain C so that Python loads it with ctypes (no PyTorch or Python headers at build time:
// the library serves PyTorch, the ONNX reference evaluator and C++ users alike). Every
// function validates its sizes before touching memory and returns a convcrf::Status code
// (0 on success). Tensors are contiguous NCHW; see docs/ops.md for the op contract.
//
// `numThreads` <= 0 means "all hardware threads". Work is split over rows of the output.
#pragma once

#include <stdint.h>

#if defined(_WIN32)
#define CONVCRF_API __declspec(dllexport)
#else
#define CONVCRF_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Version of this C API; bumped whenever a signature changes (checked by the Python loader).
CONVCRF_API int32_t convcrf_cpu_api_version(void);

// K[n, (dy+r)*k + (dx+r), y, x] = exp(-0.5 * sum_d (F[n,d,y,x] - F[n,d,y+dy,x+dx])^2),
// zero at the centre and where the neighbour is outside the image.
// features [N, D, H, W] -> kernel [N, k*k, H, W].
CONVCRF_API int32_t convcrf_gaussian_kernel_f32(const float* features, int64_t n, int64_t d,
                                                int64_t h, int64_t w, int32_t filterSize,
                                                float* kernel, int32_t numThreads);
CONVCRF_API int32_t convcrf_gaussian_kernel_f64(const double* features, int64_t n, int64_t d,
                                                int64_t h, int64_t w, int32_t filterSize,
                                                double* kernel, int32_t numThreads);

// Gradient of gaussian_kernel w.r.t. the features, given the forward output `kernel` and the
// incoming gradient `gradKernel` (both [N, k*k, H, W]) -> gradFeatures [N, D, H, W].
CONVCRF_API int32_t convcrf_gaussian_kernel_backward_f32(const float* features, const float* kernel,
                                                         const float* gradKernel, int64_t n,
                                                         int64_t d, int64_t h, int64_t w,
                                                         int32_t filterSize, float* gradFeatures,
                                                         int32_t numThreads);
CONVCRF_API int32_t convcrf_gaussian_kernel_backward_f64(const double* features,
                                                         const double* kernel,
                                                         const double* gradKernel, int64_t n,
                                                         int64_t d, int64_t h, int64_t w,
                                                         int32_t filterSize, double* gradFeatures,
                                                         int32_t numThreads);

// M[n,c,y,x] = sum_{dy,dx} K[n,(dy+r)*k+(dx+r),y,x] * q[n,c,y+dy,x+dx] (outside = 0).
// q [N, C, H, W], kernel [N, k*k, H, W] -> messages [N, C, H, W].
CONVCRF_API int32_t convcrf_message_passing_f32(const float* q, const float* kernel, int64_t n,
                                                int64_t c, int64_t h, int64_t w,
                                                int32_t filterSize, float* messages,
                                                int32_t numThreads);
CONVCRF_API int32_t convcrf_message_passing_f64(const double* q, const double* kernel, int64_t n,
                                                int64_t c, int64_t h, int64_t w,
                                                int32_t filterSize, double* messages,
                                                int32_t numThreads);

// Transposed message passing (the gradient w.r.t. q for any K, symmetric or not):
// G[n,c,y,x] = sum_{dy,dx} K[n,(dy+r)*k+(dx+r),y-dy,x-dx] * g[n,c,y-dy,x-dx].
CONVCRF_API int32_t convcrf_message_passing_transposed_f32(const float* gradMessages,
                                                           const float* kernel, int64_t n,
                                                           int64_t c, int64_t h, int64_t w,
                                                           int32_t filterSize, float* gradQ,
                                                           int32_t numThreads);
CONVCRF_API int32_t convcrf_message_passing_transposed_f64(const double* gradMessages,
                                                           const double* kernel, int64_t n,
                                                           int64_t c, int64_t h, int64_t w,
                                                           int32_t filterSize, double* gradQ,
                                                           int32_t numThreads);

// Gradient w.r.t. the kernel: gK[n,o,y,x] = sum_c g[n,c,y,x] * q[n,c,y+dy,x+dx] (0 outside).
CONVCRF_API int32_t convcrf_message_passing_kernel_grad_f32(const float* gradMessages,
                                                            const float* q, int64_t n, int64_t c,
                                                            int64_t h, int64_t w,
                                                            int32_t filterSize, float* gradKernel,
                                                            int32_t numThreads);
CONVCRF_API int32_t convcrf_message_passing_kernel_grad_f64(const double* gradMessages,
                                                            const double* q, int64_t n, int64_t c,
                                                            int64_t h, int64_t w,
                                                            int32_t filterSize,
                                                            double* gradKernel,
                                                            int32_t numThreads);

// Fused full-resolution step of blurred mean-field inference (inference only, no gradient):
//   U      = logitScale ? logitScale[c] * log_softmax(unary)[c] : unary[c]   [N, C, H, W]
//   logits = U + messageScale[c] * crop(upsample_bilinear(messagesLow, blur))
//   Q      = softmax over C of logits
//   qLow   = avg_pool(Q, blur, ceil_mode, padding excluded)          [N, C, ceil(H/b), ceil(W/b)]
// messagesLow may be null (treated as zero), messageScale null (treated as 1); qLow and/or qFull (the full-resolution Q) may be
// null when not wanted. With outScale non-null, logUnaryOut (full resolution) and/or
// logUnaryLowOut (pooled like qLow) receive outScale[c] * log_softmax(unary)[c], the weighted
// unary term of later steps. Whenever log_softmax(unary) is computed (logitScale or outScale
// given) the call returns kErrorNonFinite (7) if `unary` holds NaN or infinite values.
CONVCRF_API int32_t convcrf_mean_field_step_f32(const float* unary, const float* messagesLow,
                                                const float* messageScale, int64_t n, int64_t c,
                                                int64_t h, int64_t w,
                                                int32_t blur, const float* logitScale,
                                                const float* outScale, float* logUnaryOut,
                                                float* logUnaryLowOut, float* qLow, float* qFull,
                                                int32_t numThreads);

#ifdef __cplusplus
}
#endif
