// convcrf_cpu.h: the C API of the CPU library libconvcrf_cpu.
//
// Plain C so that Python loads it with ctypes (no PyTorch or Python headers at build time:
// the library serves PyTorch, the ONNX reference evaluator and C++ users alike). Every
// function validates its sizes before touching memory and returns a convcrf::Status code
// (0 on success). Tensors are contiguous NCHW; see docs/ops.md for the op contract.
//
// Threads: `numThreads` <= 0 means "every CPU this process may run on" (its affinity mask, see
// convcrf_cpu_available_cpus); requests above 256 run on 256. Work is split over rows of the
// output and runs on one persistent pool whose idle workers sleep (never spin); a call made
// while another thread's call holds the pool runs on its calling thread alone. When workers
// cannot be started (memory or process limits) a call returns kErrorThreadStart (9) without
// touching its outputs; no failure aborts the process or throws across this API.
//
// Sizes: every entry point checks that sizes are >= 0 and that every product of them it forms
// (elements and bytes of each tensor, scratch) fits in int64, returning kErrorSizeOverflow (8)
// otherwise, before it allocates or touches memory.
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

// Version of this C API; bumped whenever a signature changes or functions are added (checked
// by the Python loader). 3 added the instruction-set and CPU-count functions below,
// convcrf_pairwise_kernel_f32 and convcrf_mean_field_step_backward_f32; 4 added
// convcrf_status_message and kErrorOutOfMemory (11), which 6 used to share.
CONVCRF_API int32_t convcrf_cpu_api_version(void);

// What a status code returned by any function here means: a static, NUL-terminated line
// (the table is convcrf::statusMessage in plugins/common/convcrf_math.h). (API version 4.)
CONVCRF_API const char* convcrf_status_message(int32_t status);

// Instruction-set clone the kernels run: 0 baseline x86-64 (or non-x86), 1 AVX2+FMA, 2 AVX-512
// (F/BW/DQ/VL). Chosen at load time as the widest the CPU has, or $CONVCRF_CPU_ISA
// (baseline | avx2 | avx512) when the CPU has that one. Results of the clones agree within
// fp32 rounding (summation order and FMA contraction differ).
CONVCRF_API int32_t convcrf_cpu_isa(void);
// The widest instruction set this CPU (and OS) supports, as above.
CONVCRF_API int32_t convcrf_cpu_best_isa(void);
// Run clone `isa` from now on (-1: the widest supported). Returns 0, or
// kErrorIsaUnavailable (10) when the CPU lacks it (nothing changes then). Process-wide.
CONVCRF_API int32_t convcrf_cpu_set_isa(int32_t isa);
// CPUs this process may run on (sched_getaffinity on Linux), the default thread count.
CONVCRF_API int32_t convcrf_cpu_available_cpus(void);

// K[n, (dy+r)*k + (dx+r), y, x] = exp(-0.5 * sum_d (F[n,d,y,x] - F[n,d,y+dy,x+dx])^2),
// zero at the centre and where the neighbour is outside the image.
// features [N, D, H, W] -> kernel [N, k*k, H, W].
CONVCRF_API int32_t convcrf_gaussian_kernel_f32(const float* features, int64_t n, int64_t d,
                                                int64_t h, int64_t w, int32_t filterSize,
                                                float* kernel, int32_t numThreads);
CONVCRF_API int32_t convcrf_gaussian_kernel_f64(const double* features, int64_t n, int64_t d,
                                                int64_t h, int64_t w, int32_t filterSize,
                                                double* kernel, int32_t numThreads);

// Two weighted Gaussian kernels in one pass (the pairwise kernel of inference):
// K = weightA * gaussian_kernel(features[:, :split]) + weightB * gaussian_kernel(features[:, split:]),
// features [N, D, H, W] with 0 <= split <= D -> kernel [N, k*k, H, W]. (API version 3.)
CONVCRF_API int32_t convcrf_pairwise_kernel_f32(const float* features, int64_t n, int64_t d,
                                                int64_t h, int64_t w, int32_t filterSize,
                                                int64_t split, float weightA, float weightB,
                                                float* kernel, int32_t numThreads);

// The whole pairwise kernel of ConvCRF inference from the image, with no feature transform
// (model/convcrf.py, ConvCRF.pairwise_kernel): rgb = avg_pool(image [N, 3, H, W], blur, ceil
// mode, windows cut at the border), (x, y) = mean full-resolution coordinate of each window,
// K = weightA * G((x, y) / thetaAlpha, rgb / thetaBeta) + weightB * G((x, y) / thetaGamma)
// -> kernel [N, k*k, ceil(H/blur), ceil(W/blur)]. (API version 3.)
CONVCRF_API int32_t convcrf_pairwise_kernel_from_image_f32(
    const float* image, int64_t n, int64_t height, int64_t width, int32_t blur,
    int32_t filterSize, float thetaAlpha, float thetaBeta, float thetaGamma, float weightA,
    float weightB, float* kernel, int32_t numThreads);

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

// Gradient of the training form of the step above (messageScale, logitScale, outScale null):
//   Q = softmax over C of (unary + crop(upsample_bilinear(messagesLow, blur))),  qLow = avg_pool(Q)
// Given the forward's Q (`qFull`) and the gradients of the loss w.r.t. Q (`gradQFull`, null
// when Q was not used beyond pooling) and qLow (`gradQLow`, null when unused):
//   gradUnary [N, C, H, W] = dL/d unary,  gradMessagesLow [N, C, ceil(H/b), ceil(W/b)] = dL/d messagesLow.
CONVCRF_API int32_t convcrf_mean_field_step_backward_f32(const float* qFull, const float* gradQFull,
                                                         const float* gradQLow, int64_t n,
                                                         int64_t c, int64_t h, int64_t w,
                                                         int32_t blur, float* gradUnary,
                                                         float* gradMessagesLow,
                                                         int32_t numThreads);

#ifdef __cplusplus
}
#endif
