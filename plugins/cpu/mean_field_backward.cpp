// mean_field_backward.cpp: the gradient of the training form of the fused mean-field step,
//   Q = softmax_c(unary + upsample_bilinear(messagesLow, blur)),  qLow = avg_pool(Q, blur),
// so that training runs the full-resolution part of every iteration as two native passes
// instead of about ten full-resolution PyTorch ops (pooling, upsampling, softmax, their
// backwards and the zero-fills they need).
//
// Pass 1 (rows of the image): g = gradQFull + pool^T(gradQLow); gradUnary = Q * (g - <Q, g>_c).
// Pass 2 (rows of the low-resolution grid): gradMessagesLow = upsample^T(gradUnary), gathered
// per output row (each reads the <= 3 blur-rows of gradUnary that interpolate from it), so
// threads never write the same row.
#include "convcrf_cpu.h"

#include "cpu_common.h"
#include "thread_pool.h"
#include "validation.h"

#include <algorithm>
#include <vector>

namespace convcrf {
namespace {

struct BackwardArgs {
    const float* qFull;
    const float* gradQFull;  // may be null
    const float* gradQLow;   // may be null
    int64_t c, h, w, hLow, wLow;
    int32_t blur;
    float* gradUnary;
    float* gradMessagesLow;
};

struct Scratch {
    std::vector<float> expanded;  // [c][w]: gradQLow of one low row spread over its pixels
    std::vector<float> dot;       // [w]
    std::vector<float> rows;      // [c][w]: gradUnary rows summed with their y weights
};

thread_local Scratch tScratch;

// Pass 1 for low row i of image n (the blur full-resolution rows it pools).
CONVCRF_INLINE void softmaxBackwardRows(const BackwardArgs& a, int64_t n, int64_t i, Scratch& s)
{
    const int64_t c = a.c, h = a.h, w = a.w, plane = h * w;
    const int32_t b = a.blur;
    s.dot.resize(static_cast<size_t>(w));
    float* __restrict dot = s.dot.data();
    float* __restrict expanded = nullptr;
    if (a.gradQLow) {
        s.expanded.resize(static_cast<size_t>(c * w));
        expanded = s.expanded.data();
        const float rowCount = static_cast<float>(poolCount(i, b, h));
        for (int64_t ch = 0; ch < c; ++ch) {
            const float* g = a.gradQLow + ((n * c + ch) * a.hLow + i) * a.wLow;
            for (int64_t x = 0; x < w; ++x) {
                const int64_t j = x / b;
                expanded[ch * w + x] = g[j] / (rowCount * static_cast<float>(poolCount(j, b, w)));
            }
        }
    }
    const int64_t yEnd = std::min<int64_t>(h, (i + 1) * b);
    for (int64_t y = i * b; y < yEnd; ++y) {
        const int64_t row = n * c * plane + y * w;
        std::fill(dot, dot + w, 0.0f);
        for (int64_t ch = 0; ch < c; ++ch) {
            const float* __restrict q = a.qFull + row + ch * plane;
            const float* __restrict g1 = a.gradQFull ? a.gradQFull + row + ch * plane : nullptr;
            const float* __restrict g2 = expanded ? expanded + ch * w : nullptr;
            float* __restrict out = a.gradUnary + row + ch * plane;
            // g is stored in gradUnary first and turned into the result in the second loop.
            if (g1 && g2) {
                for (int64_t x = 0; x < w; ++x)
                    out[x] = g1[x] + g2[x];
            } else if (g1) {
                std::copy(g1, g1 + w, out);
            } else if (g2) {
                std::copy(g2, g2 + w, out);
            } else {
                std::fill(out, out + w, 0.0f);
            }
            for (int64_t x = 0; x < w; ++x)
                dot[x] += q[x] * out[x];
        }
        for (int64_t ch = 0; ch < c; ++ch) {
            const float* __restrict q = a.qFull + row + ch * plane;
            float* __restrict out = a.gradUnary + row + ch * plane;
            for (int64_t x = 0; x < w; ++x)
                out[x] = q[x] * (out[x] - dot[x]);
        }
    }
}

// Pass 2 for low row j of image n: the adjoint of bilinear upsampling (upsampleSource) and the
// crop to h x w.
CONVCRF_INLINE void upsampleAdjointRow(const BackwardArgs& a, const std::vector<int64_t>& x0,
                                       const std::vector<int64_t>& x1,
                                       const std::vector<float>& lambdaX, int64_t n, int64_t j,
                                       Scratch& s)
{
    const int64_t c = a.c, h = a.h, w = a.w, plane = h * w, wl = a.wLow;
    const int32_t b = a.blur;
    s.rows.assign(static_cast<size_t>(c * w), 0.0f);
    float* __restrict rows = s.rows.data();
    const int64_t yBegin = std::max<int64_t>(0, (j - 1) * b);
    const int64_t yEnd = std::min<int64_t>(h, (j + 2) * b);
    for (int64_t y = yBegin; y < yEnd; ++y) {
        int64_t y0 = 0, y1 = 0;
        float ly = 0.0f;
        upsampleSource<float>(y, b, a.hLow, y0, y1, ly);
        const float weight = (y0 == j ? 1.0f - ly : 0.0f) + (y1 == j ? ly : 0.0f);
        if (weight == 0.0f)
            continue;
        for (int64_t ch = 0; ch < c; ++ch) {
            const float* __restrict g = a.gradUnary + n * c * plane + ch * plane + y * w;
            float* __restrict r = rows + ch * w;
            for (int64_t x = 0; x < w; ++x)
                r[x] += weight * g[x];
        }
    }
    for (int64_t ch = 0; ch < c; ++ch) {
        float* out = a.gradMessagesLow + ((n * c + ch) * a.hLow + j) * wl;
        std::fill(out, out + wl, 0.0f);
        const float* r = rows + ch * w;
        for (int64_t x = 0; x < w; ++x) {
            out[x0[x]] += (1.0f - lambdaX[x]) * r[x];
            out[x1[x]] += lambdaX[x] * r[x];
        }
    }
}

// ---- instruction-set clones ------------------------------------------------------------------

#define CONVCRF_BACKWARD_CLONE(target, suffix)                                                    \
    target void softmaxPass##suffix(const BackwardArgs& a, int64_t b, int64_t e)                  \
    {                                                                                             \
        for (int64_t t = b; t < e; ++t)                                                           \
            softmaxBackwardRows(a, t / a.hLow, t % a.hLow, tScratch);                             \
    }                                                                                             \
    target void adjointPass##suffix(const BackwardArgs& a, const std::vector<int64_t>& x0,        \
                                    const std::vector<int64_t>& x1, const std::vector<float>& lx, \
                                    int64_t b, int64_t e)                                         \
    {                                                                                             \
        for (int64_t t = b; t < e; ++t)                                                           \
            upsampleAdjointRow(a, x0, x1, lx, t / a.hLow, t % a.hLow, tScratch);                  \
    }

CONVCRF_BACKWARD_CLONE(CONVCRF_TARGET_AVX512, Avx512)
CONVCRF_BACKWARD_CLONE(CONVCRF_TARGET_AVX2, Avx2)
CONVCRF_BACKWARD_CLONE(, Baseline)

}  // namespace
}  // namespace convcrf

using namespace convcrf;

extern "C" {

int32_t convcrf_mean_field_step_backward_f32(const float* qFull, const float* gradQFull,
                                             const float* gradQLow, int64_t n, int64_t c,
                                             int64_t h, int64_t w, int32_t blur,
                                             float* gradUnary, float* gradMessagesLow,
                                             int32_t threads)
{
    if (blur < 1)
        return kErrorInvalidBlur;
    if (n < 0 || c < 0 || h < 0 || w < 0)
        return kErrorInvalidShape;
    if (!productFits({n, c, h, w}, sizeof(float)) || !productFits({4, c, w}, sizeof(float)) ||
        !productFits({w}, sizeof(int64_t) * 3) || !productFits({blur}, 3))
        return kErrorSizeOverflow;
    if (n == 0 || c == 0 || h == 0 || w == 0)
        return kSuccess;
    if (!qFull || !gradUnary || !gradMessagesLow)
        return kErrorNullPointer;
    BackwardArgs args{qFull, gradQFull, gradQLow, c, h, w, pooledSize(h, blur),
                      pooledSize(w, blur), blur, gradUnary, gradMessagesLow};
    std::vector<int64_t> x0, x1;
    std::vector<float> lambdaX;
    try {
        x0.resize(static_cast<size_t>(w));
        x1.resize(static_cast<size_t>(w));
        lambdaX.resize(static_cast<size_t>(w));
    } catch (...) {
        return kErrorOutOfMemory;
    }
    for (int64_t x = 0; x < w; ++x)
        upsampleSource<float>(x, blur, args.wLow, x0[x], x1[x], lambdaX[x]);
    const auto softmaxPass =
        pickClone(&softmaxPassAvx512, &softmaxPassAvx2, &softmaxPassBaseline);
    const auto adjointPass =
        pickClone(&adjointPassAvx512, &adjointPassAvx2, &adjointPassBaseline);
    const int64_t tasks = n * args.hLow;
    Status status = parallelFor(tasks, threads, [&](int64_t b, int64_t e) { softmaxPass(args, b, e); });
    if (status != kSuccess)
        return status;
    return parallelFor(tasks, threads,
                       [&](int64_t b, int64_t e) { adjointPass(args, x0, x1, lambdaX, b, e); });
}

}  // extern "C"
