// gaussian_kernel.cpp: the windowed Gaussian kernel (op contract in docs/ops.md) and its
// gradient w.r.t. the features.
//
// float forward, per output row: the feature rows it reads are zero-padded copies
// (row_buffers.h) and a padded 0/1 row marks the image, so every window position is a plain
// shifted vector load; the squared distance of a block of x-vectors stays in registers over
// the D features and goes through the vectorised exp of convcrf_math.h. The double path
// (gradcheck) and the backward keep plain row loops.
#include "convcrf_cpu.h"

#include "cpu_common.h"
#include "row_buffers.h"
#include "thread_pool.h"
#include "validation.h"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace convcrf {
namespace {

struct Scratch {
    PaddedRowRing features;
    std::vector<float> inside;  // padded row: 1 where x is in the image, else 0
    std::vector<float> out;     // [k*k][vectorWidth]: the kernel rows of one output row
};

thread_local Scratch tScratch;

// Two kernels summed in one pass (convcrf_pairwise_kernel_f32): channels [0, split) and
// [split, d) are two feature groups, K = weightA * G(group A) + weightB * G(group B).
struct KernelPair {
    int64_t split;
    float weightA, weightB;
};

template <typename F, int XB, bool paired>
CONVCRF_INLINE void forwardRows(const float* features, int64_t d, int64_t h, int64_t w, int32_t k,
                                float* kernel, int64_t begin, int64_t end, KernelPair pair)
{
    using I = typename IntOf<F>::type;
    constexpr int64_t L = lanesOf<F>();
    const int32_t r = k / 2;
    const int64_t kk = int64_t(k) * k, plane = h * w;
    const RowGeometry geo = makeRowGeometry(d, h, w, r, L * XB);
    Scratch& s = tScratch;
    s.features.reset(geo, k);
    s.inside.assign(static_cast<size_t>(geo.paddedStride), 0.0f);
    std::fill(s.inside.begin() + r, s.inside.begin() + r + w, 1.0f);
    s.out.resize(static_cast<size_t>(kk * geo.vectorWidth));
    for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / h, y = task % h;
        const float* centre = s.features.row(features, n, y) + r;
        std::fill(s.out.begin(), s.out.end(), 0.0f);
        for (int32_t dy = -r; dy <= r; ++dy) {
            const int64_t yy = y + dy;
            if (yy < 0 || yy >= h)
                continue;  // rows outside the image stay zero
            const float* other = s.features.row(features, n, yy) + r;
            for (int32_t dx = -r; dx <= r; ++dx) {
                if (dy == 0 && dx == 0)
                    continue;  // the centre stays zero
                float* out = s.out.data() + offsetChannel(dy, dx, r, k) * geo.vectorWidth;
                const float* inside = s.inside.data() + r + dx;
                for (int64_t x0 = 0; x0 < geo.vectorWidth; x0 += L * XB) {
                    F dist[XB], distB[XB];
#pragma GCC unroll 4
                    for (int j = 0; j < XB; ++j)
                        dist[j] = distB[j] = F{};
                    const int64_t split = paired ? pair.split : d;
                    for (int64_t ch = 0; ch < d; ++ch) {
                        const float* a = centre + ch * geo.paddedStride + x0;
                        const float* b = other + ch * geo.paddedStride + dx + x0;
#pragma GCC unroll 4
                        for (int j = 0; j < XB; ++j) {
                            const F diff = loadAs<F>(a + j * L) - loadAs<F>(b + j * L);
                            if (ch < split)
                                dist[j] += diff * diff;
                            else
                                distB[j] += diff * diff;
                        }
                    }
#pragma GCC unroll 4
                    for (int j = 0; j < XB; ++j) {
                        F value = expPolyGeneric<F, I>(dist[j] * -0.5f);
                        if (paired)
                            value = pair.weightA * value +
                                    pair.weightB * expPolyGeneric<F, I>(distB[j] * -0.5f);
                        storeAs<F>(out + x0 + j * L, value * loadAs<F>(inside + x0 + j * L));
                    }
                }
            }
        }
        float* dst = kernel + (n * kk * h + y) * w;
        for (int64_t o = 0; o < kk; ++o)
            std::memcpy(dst + o * plane, s.out.data() + o * geo.vectorWidth,
                        static_cast<size_t>(w) * sizeof(float));
    }
}

// ---- plain rows: the double forward, and the backward of both types -----------------------

template <typename T>
void referenceGaussianRow(const T* __restrict features, int64_t d, int64_t h, int64_t w,
                       int32_t k, T* __restrict kernel, int64_t row)
{
    const int64_t n = row / h, y = row % h, plane = h * w;
    const int32_t r = k / 2;
    const T* fn = features + n * d * plane;
    T* kn = kernel + n * int64_t(k) * k * plane;
    for (int32_t dy = -r; dy <= r; ++dy) {
        for (int32_t dx = -r; dx <= r; ++dx) {
            T* out = kn + int64_t(offsetChannel(dy, dx, r, k)) * plane + y * w;
            const int64_t yy = y + dy;
            for (int64_t x = 0; x < w; ++x)
                out[x] = T(0);
            if (yy < 0 || yy >= h || (dy == 0 && dx == 0))
                continue;  // the centre and rows outside the image stay zero
            int64_t begin, end;
            shiftedRange(w, dx, begin, end);
            // Accumulate squared distances in the output row, then map them through exp.
            for (int64_t c = 0; c < d; ++c) {
                const T* __restrict a = fn + c * plane + y * w;
                const T* __restrict b = fn + c * plane + yy * w + dx;
                for (int64_t x = begin; x < end; ++x)
                    out[x] += squaredDifference<T, T>(a[x], b[x]);
            }
            for (int64_t x = begin; x < end; ++x)
                out[x] = gaussianWeight<T>(out[x]);
        }
    }
}

// d K[o,p] / d F[:,p] and d K[o,p-o] / d F[:,p], gathered per output pixel p so that rows are
// independent (no atomics, no races).
template <typename T>
CONVCRF_INLINE void gaussianKernelBackwardRow(const T* __restrict features, const T* __restrict kernel,
                               const T* __restrict gradKernel, int64_t d, int64_t h, int64_t w,
                               int32_t k, T* __restrict grad, int64_t row, std::vector<T>& weight)
{
    const int64_t n = row / h, y = row % h, plane = h * w;
    const int32_t r = k / 2;
    const int64_t kk = int64_t(k) * k;
    const T* fn = features + n * d * plane;
    const T* kn = kernel + n * kk * plane;
    const T* gn = gradKernel + n * kk * plane;
    T* out = grad + n * d * plane;
    weight.resize(static_cast<size_t>(w));
    T* wt = weight.data();
    for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x)
            out[c * plane + y * w + x] = T(0);
    for (int32_t dy = -r; dy <= r; ++dy) {
        for (int32_t dx = -r; dx <= r; ++dx) {
            if (dy == 0 && dx == 0)
                continue;
            const int64_t o = offsetChannel(dy, dx, r, k);
            int64_t begin, end;
            // Pairs (p, p + o): this pixel is the centre of the window.
            const int64_t yy = y + dy;
            if (yy >= 0 && yy < h) {
                shiftedRange(w, dx, begin, end);
                const T* kr = kn + o * plane + y * w;
                const T* gr = gn + o * plane + y * w;
                for (int64_t x = begin; x < end; ++x)
                    wt[x] = kr[x] * gr[x];
                for (int64_t c = 0; c < d; ++c) {
                    const T* a = fn + c * plane + y * w;
                    const T* b = fn + c * plane + yy * w + dx;
                    T* g = out + c * plane + y * w;
                    for (int64_t x = begin; x < end; ++x)
                        g[x] -= wt[x] * (a[x] - b[x]);
                }
            }
            // Pairs (p - o, p): this pixel is the neighbour at offset o of pixel p - o.
            const int64_t ys = y - dy;
            if (ys >= 0 && ys < h) {
                shiftedRange(w, -dx, begin, end);
                const T* kr = kn + o * plane + ys * w - dx;
                const T* gr = gn + o * plane + ys * w - dx;
                for (int64_t x = begin; x < end; ++x)
                    wt[x] = kr[x] * gr[x];
                for (int64_t c = 0; c < d; ++c) {
                    const T* a = fn + c * plane + ys * w - dx;
                    const T* b = fn + c * plane + y * w;
                    T* g = out + c * plane + y * w;
                    for (int64_t x = begin; x < end; ++x)
                        g[x] += wt[x] * (a[x] - b[x]);
                }
            }
        }
    }
}

template <typename T>
CONVCRF_INLINE void gaussianKernelBackwardRows(const T* f, const T* kernel, const T* gk, int64_t d, int64_t h,
                                int64_t w, int32_t k, T* grad, int64_t b, int64_t e)
{
    std::vector<T> scratch;
    for (int64_t row = b; row < e; ++row)
        gaussianKernelBackwardRow<T>(f, kernel, gk, d, h, w, k, grad, row, scratch);
}

// ---- instruction-set clones ------------------------------------------------------------------

CONVCRF_TARGET_AVX512 void forwardRowsF32Avx512(const float* f, int64_t d, int64_t h, int64_t w,
                                                int32_t k, float* out, int64_t b, int64_t e)
{
    forwardRows<FloatVec16, 2, false>(f, d, h, w, k, out, b, e, KernelPair{});
}

CONVCRF_TARGET_AVX2 void forwardRowsF32Avx2(const float* f, int64_t d, int64_t h, int64_t w,
                                            int32_t k, float* out, int64_t b, int64_t e)
{
    forwardRows<FloatVec, 2, false>(f, d, h, w, k, out, b, e, KernelPair{});
}

void forwardRowsF32Baseline(const float* f, int64_t d, int64_t h, int64_t w, int32_t k,
                            float* out, int64_t b, int64_t e)
{
    forwardRows<FloatVec, 1, false>(f, d, h, w, k, out, b, e, KernelPair{});
}

CONVCRF_TARGET_AVX512 void pairRowsF32Avx512(const float* f, int64_t d, int64_t h, int64_t w,
                                             int32_t k, float* out, int64_t b, int64_t e,
                                             KernelPair pair)
{
    forwardRows<FloatVec16, 2, true>(f, d, h, w, k, out, b, e, pair);
}

CONVCRF_TARGET_AVX2 void pairRowsF32Avx2(const float* f, int64_t d, int64_t h, int64_t w,
                                         int32_t k, float* out, int64_t b, int64_t e,
                                         KernelPair pair)
{
    forwardRows<FloatVec, 2, true>(f, d, h, w, k, out, b, e, pair);
}

void pairRowsF32Baseline(const float* f, int64_t d, int64_t h, int64_t w, int32_t k, float* out,
                         int64_t b, int64_t e, KernelPair pair)
{
    forwardRows<FloatVec, 1, true>(f, d, h, w, k, out, b, e, pair);
}

using BackwardF32 = void (*)(const float*, const float*, const float*, int64_t, int64_t, int64_t,
                             int32_t, float*, int64_t, int64_t);

CONVCRF_TARGET_AVX512 void backwardRowsF32Avx512(const float* f, const float* kernel,
                                                 const float* gk, int64_t d, int64_t h, int64_t w,
                                                 int32_t k, float* grad, int64_t b, int64_t e)
{
    gaussianKernelBackwardRows<float>(f, kernel, gk, d, h, w, k, grad, b, e);
}

CONVCRF_TARGET_AVX2 void backwardRowsF32Avx2(const float* f, const float* kernel, const float* gk,
                                             int64_t d, int64_t h, int64_t w, int32_t k,
                                             float* grad, int64_t b, int64_t e)
{
    gaussianKernelBackwardRows<float>(f, kernel, gk, d, h, w, k, grad, b, e);
}

void backwardRowsF32Baseline(const float* f, const float* kernel, const float* gk, int64_t d,
                             int64_t h, int64_t w, int32_t k, float* grad, int64_t b, int64_t e)
{
    gaussianKernelBackwardRows<float>(f, kernel, gk, d, h, w, k, grad, b, e);
}

template <typename T>
int32_t gaussianKernelImpl(const T* f, int64_t n, int64_t d, int64_t h, int64_t w, int32_t k,
                           T* out, int32_t threads)
{
    if (Status s = checkWindowedShapes(n, d, h, w, k, sizeof(T)))
        return s;
    if (n == 0 || h == 0 || w == 0)
        return kSuccess;
    if ((d > 0 && !f) || !out)
        return kErrorNullPointer;
    auto rows = pickClone(forwardRowsF32Avx512, forwardRowsF32Avx2, forwardRowsF32Baseline);
    return parallelFor(n * h, threads, [&](int64_t b, int64_t e) {
        if constexpr (std::is_same<T, float>::value) {
            rows(f, d, h, w, k, out, b, e);
        } else {
            for (int64_t row = b; row < e; ++row)
                referenceGaussianRow<T>(f, d, h, w, k, out, row);
        }
    });
}

template <typename T>
int32_t gaussianKernelBackwardImpl(const T* f, const T* kernel, const T* gk, int64_t n,
                                   int64_t d, int64_t h, int64_t w, int32_t k, T* grad,
                                   int32_t threads)
{
    if (Status s = checkWindowedShapes(n, d, h, w, k, sizeof(T)))
        return s;
    if (n == 0 || d == 0 || h == 0 || w == 0)
        return kSuccess;
    if (!f || !kernel || !gk || !grad)
        return kErrorNullPointer;
    auto rows = pickClone<BackwardF32>(backwardRowsF32Avx512, backwardRowsF32Avx2,
                                       backwardRowsF32Baseline);
    return parallelFor(n * h, threads, [&](int64_t b, int64_t e) {
        if constexpr (std::is_same<T, float>::value)
            rows(f, kernel, gk, d, h, w, k, grad, b, e);
        else
            gaussianKernelBackwardRows<T>(f, kernel, gk, d, h, w, k, grad, b, e);
    });
}

}  // namespace
}  // namespace convcrf

using namespace convcrf;

extern "C" {

int32_t convcrf_gaussian_kernel_f32(const float* f, int64_t n, int64_t d, int64_t h, int64_t w,
                                    int32_t k, float* out, int32_t threads)
{
    return gaussianKernelImpl<float>(f, n, d, h, w, k, out, threads);
}

int32_t convcrf_gaussian_kernel_f64(const double* f, int64_t n, int64_t d, int64_t h, int64_t w,
                                    int32_t k, double* out, int32_t threads)
{
    return gaussianKernelImpl<double>(f, n, d, h, w, k, out, threads);
}

int32_t convcrf_pairwise_kernel_f32(const float* f, int64_t n, int64_t d, int64_t h, int64_t w,
                                    int32_t k, int64_t split, float weightA, float weightB,
                                    float* out, int32_t threads)
{
    if (Status s = checkWindowedShapes(n, d, h, w, k, sizeof(float)))
        return s;
    if (split < 0 || split > d)
        return kErrorInvalidShape;
    if (n == 0 || h == 0 || w == 0)
        return kSuccess;
    if ((d > 0 && !f) || !out)
        return kErrorNullPointer;
    auto rows = pickClone(pairRowsF32Avx512, pairRowsF32Avx2, pairRowsF32Baseline);
    const KernelPair pair{split, weightA, weightB};
    return parallelFor(n * h, threads,
                       [&](int64_t b, int64_t e) { rows(f, d, h, w, k, out, b, e, pair); });
}

int32_t convcrf_pairwise_kernel_from_image_f32(const float* image, int64_t n, int64_t height,
                                               int64_t width, int32_t blur, int32_t k,
                                               float thetaAlpha, float thetaBeta,
                                               float thetaGamma, float weightA, float weightB,
                                               float* out, int32_t threads)
{
    if (blur < 1)
        return kErrorInvalidBlur;
    if (n < 0 || height < 0 || width < 0)
        return kErrorInvalidShape;
    if (!productFits({n, 3, height, width}, sizeof(float)))
        return kErrorSizeOverflow;
    const int64_t h = pooledSize(height, blur), w = pooledSize(width, blur);
    if (Status s = checkWindowedShapes(n, 7, h, w, k, sizeof(float)))
        return s;
    if (n == 0 || h == 0 || w == 0)
        return kSuccess;
    if (!image || !out)
        return kErrorNullPointer;
    std::vector<float> features;
    try {
        features.resize(static_cast<size_t>(n * 7 * h * w));
    } catch (...) {
        return kErrorOutOfMemory;
    }
    // Features of model/convcrf.py: appearance (x, y) / thetaAlpha, rgb / thetaBeta and
    // smoothness (x, y) / thetaGamma, where rgb is the image average-pooled by blur (windows
    // cut at the border) and (x, y) the mean full-resolution coordinate of each window.
    const int64_t plane = h * w, imagePlane = height * width;
    Status status = parallelFor(n * h, threads, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / h, i = task % h;
            const int64_t y0 = i * blur, y1 = std::min<int64_t>(height, y0 + blur);
            const float ys = static_cast<float>(y0 + y1 - 1) / 2.0f;
            float* f = features.data() + b * 7 * plane + i * w;
            for (int64_t j = 0; j < w; ++j) {
                const int64_t x0 = j * blur, x1 = std::min<int64_t>(width, x0 + blur);
                const float xs = static_cast<float>(x0 + x1 - 1) / 2.0f;
                const float count = static_cast<float>((y1 - y0) * (x1 - x0));
                f[0 * plane + j] = xs / thetaAlpha;
                f[1 * plane + j] = ys / thetaAlpha;
                for (int64_t ch = 0; ch < 3; ++ch) {
                    const float* src = image + (b * 3 + ch) * imagePlane;
                    float sum = 0.0f;
                    for (int64_t y = y0; y < y1; ++y)
                        for (int64_t x = x0; x < x1; ++x)
                            sum += src[y * width + x];
                    f[(2 + ch) * plane + j] = sum / count / thetaBeta;
                }
                f[5 * plane + j] = xs / thetaGamma;
                f[6 * plane + j] = ys / thetaGamma;
            }
        }
    });
    if (status != kSuccess)
        return status;
    return convcrf_pairwise_kernel_f32(features.data(), n, 7, h, w, k, 5, weightA, weightB, out,
                                       threads);
}

int32_t convcrf_gaussian_kernel_backward_f32(const float* f, const float* kernel, const float* gk,
                                             int64_t n, int64_t d, int64_t h, int64_t w,
                                             int32_t k, float* grad, int32_t threads)
{
    return gaussianKernelBackwardImpl<float>(f, kernel, gk, n, d, h, w, k, grad, threads);
}

int32_t convcrf_gaussian_kernel_backward_f64(const double* f, const double* kernel,
                                             const double* gk, int64_t n, int64_t d, int64_t h,
                                             int64_t w, int32_t k, double* grad, int32_t threads)
{
    return gaussianKernelBackwardImpl<double>(f, kernel, gk, n, d, h, w, k, grad, threads);
}

}  // extern "C"
