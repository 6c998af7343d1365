// mean_field.cpp: the fused full-resolution step of blurred mean-field inference
// (convcrf_mean_field_step_f32 in convcrf_cpu.h): upsample the low-resolution messages, add the
// unary term, softmax over classes, pool back, in one pass over the full-resolution pixels.
//
// The pass is bound by the exponentials (one per class and pixel), not by memory: each group
// of pixels (one vector: 16 lanes in the AVX-512 clone, 8 in the others) keeps its logits of
// every class in a small scratch and runs the branch-free polynomial exp of convcrf_math.h.
#include "convcrf_cpu.h"

#include "cpu_common.h"
#include "thread_pool.h"
#include "validation.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace convcrf {
namespace {

struct MeanFieldGeometry {
    int64_t c, h, w, hLow, wLow;
    int32_t blur;
    std::vector<int64_t> x0, x1;   // bilinear source columns of each full-res column
    std::vector<float> lambdaX;    // weight of x1
};

CONVCRF_INLINE float logOf(float x)
{
    return std::log(x);
}

CONVCRF_INLINE bool anyNonFinite(float x)
{
    return !(x - x == 0.0f);  // x - x is 0 only for finite x
}

#if defined(__GNUC__)
// log of a vector of sums of exponentials (each >= 1: the largest term is exp(0)), branch-free
// so that it stays in vector registers: Cephes logf (relative error below 1e-7 on the normal
// range). Not valid for zero, negative, infinite or NaN input; callers only pass such values
// when the unary is non-finite, which they report as an error anyway.
template <typename F, typename = decltype(F{}[0])>
CONVCRF_INLINE F logOf(F x)
{
    using I = typename IntOf<F>::type;
    I bits;
    std::memcpy(&bits, &x, sizeof(F));
    I exponent = ((bits >> 23) & 0xff) - 127;
    const I mantissaBits = (bits & 0x7fffff) | 0x3f800000;  // the mantissa as a float in [1, 2)
    F m;
    std::memcpy(&m, &mantissaBits, sizeof(F));
    const auto upper = m > 1.41421356f;  // move m into [sqrt(1/2), sqrt(2))
    m = upper ? m * 0.5f : m;
    exponent = upper ? exponent + 1 : exponent;
    const F e = __builtin_convertvector(exponent, F);
    const F f = m - 1.0f;
    const F z = f * f;
    F y = F{} + 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    y = y + e * -2.12194440e-4f;
    y = y - 0.5f * z;
    return f + y + e * 0.693359375f;
}

template <typename F, typename = decltype(F{}[0])>
CONVCRF_INLINE bool anyNonFinite(F x)
{
    const auto bad = (x - x) != F{};
    int32_t any = 0;
    for (int lane = 0; lane < lanesOf<F>(); ++lane)
        any |= bad[lane];
    return any != 0;
}
#endif

// Where one group of pixels (one F) of a full-resolution row reads and writes. Pointers are
// at class 0 and advance by `plane` (full-resolution tensors) or `rowStride` (row buffers).
struct SoftmaxGroupIo {
    const float* unary;        // the unary input (logits, or a precomputed unary term)
    const float* msgA;         // messages of the upper low row, upsampled along x (or null)
    const float* msgB;         // ... of the lower low row
    float ly;                  // weight of msgB
    const float* messageScale; // non-null: messages are multiplied by messageScale[c]
    const float* logitScale;   // non-null: the logits use logitScale[c] * log_softmax(unary)
    const float* outScale;     // non-null: emit outScale[c] * log_softmax(unary) ...
    float* logUnaryOut;        // ... at full resolution (or null)
    float* pooledUnary;        // ... into this pooling accumulator row (or null)
    float* qFull;              // full-resolution Q (or null)
    float* pooled;             // pooling accumulator row of Q (or null)
};

// The whole per-pixel update for one group of pixels and all classes, in registers:
//   u_c = logitScale ? logitScale_c * log_softmax(unary)_c : unary_c
//   l_c = u_c + lerp(msgA_c, msgB_c, ly);  Q = softmax_c(l);  pooled_c += Q_c
// Returns true if log_softmax(unary) was needed and the unary held NaN or +-inf.
template <typename F, typename I>
CONVCRF_INLINE bool softmaxGroup(const SoftmaxGroupIo& io, int64_t c, int64_t plane,
                              int64_t rowStride, float* logits)
{
    const bool needLse = io.logitScale || io.outScale;
    // When the logits are the unary itself, its log-sum-exp falls out of the softmax below.
    const bool lseFromSoftmax = needLse && !io.logitScale && !io.msgA;
    F finite{};  // accumulates u - u: NaN exactly when some unary value is NaN or infinite
    F lse{};
    if (needLse && !lseFromSoftmax) {
        F mu{};
        for (int64_t ch = 0; ch < c; ++ch) {
            const F u = loadAs<F>(io.unary + ch * plane);
            finite += u - u;
            mu = ch == 0 ? u : (u > mu ? u : mu);
        }
        F su{};
        for (int64_t ch = 0; ch < c; ++ch)
            su += expPolyGeneric<F, I>(loadAs<F>(io.unary + ch * plane) - mu);
        lse = mu + logOf(su);
    }
    F mx{};
    for (int64_t ch = 0; ch < c; ++ch) {
        const F u = loadAs<F>(io.unary + ch * plane);
        F l = io.logitScale ? io.logitScale[ch] * (u - lse) : u;
        if (lseFromSoftmax)
            finite += u - u;
        if (io.msgA) {
            const F a = loadAs<F>(io.msgA + ch * rowStride);
            const F b = loadAs<F>(io.msgB + ch * rowStride);
            const F m = a + io.ly * (b - a);
            l = io.messageScale ? l + io.messageScale[ch] * m : l + m;
        }
        mx = ch == 0 ? l : (l > mx ? l : mx);
        storeAs<F>(logits + ch * sizeof(F) / sizeof(float), l);
    }
    F sum{};
    for (int64_t ch = 0; ch < c; ++ch) {
        float* slot = logits + ch * sizeof(F) / sizeof(float);
        const F e = expPolyGeneric<F, I>(loadAs<F>(slot) - mx);
        storeAs<F>(slot, e);
        sum += e;
    }
    if (io.outScale) {
        if (lseFromSoftmax)
            lse = mx + logOf(sum);
        for (int64_t ch = 0; ch < c; ++ch) {
            const F v = io.outScale[ch] * (loadAs<F>(io.unary + ch * plane) - lse);
            if (io.logUnaryOut)
                storeAs<F>(io.logUnaryOut + ch * plane, v);
            if (io.pooledUnary)
                storeAs<F>(io.pooledUnary + ch * rowStride,
                           loadAs<F>(io.pooledUnary + ch * rowStride) + v);
        }
    }
    const F inv = (F{} + 1.0f) / sum;
    for (int64_t ch = 0; ch < c; ++ch) {
        const F q = loadAs<F>(logits + ch * sizeof(F) / sizeof(float)) * inv;
        if (io.qFull)
            storeAs<F>(io.qFull + ch * plane, q);
        if (io.pooled)
            storeAs<F>(io.pooled + ch * rowStride, loadAs<F>(io.pooled + ch * rowStride) + q);
    }
    return needLse && anyNonFinite(finite);
}

// Scratch of one thread: the messages of low-resolution rows upsampled along x (a ring of
// three rows, since full-resolution rows of low row i interpolate between rows i-1, i, i+1),
// the logits of one group of pixels and the pooling accumulator.
struct MeanFieldScratch {
    std::vector<float> upsampledX;        // [3][c][w]
    int64_t cachedRow[3] = {-1, -1, -1};  // low row held by each ring slot
    int64_t cachedImage = -1;
    std::vector<float> logits;            // [c][kVecLanes]: one group of pixels
    std::vector<float> pooledFull;        // [c][w]: Q summed over the rows of one low row
    std::vector<float> pooledUnaryFull;   // [c][w]: the same for the weighted log-unary
    bool nonFinite = false;               // the first step saw NaN/inf in the unary

    // Before each chunk of a call: sized for this call, and nothing cached from the last one
    // (the scratch belongs to the thread and outlives calls).
    void begin(int64_t c, int64_t w)
    {
        cachedImage = -1;
        cachedRow[0] = cachedRow[1] = cachedRow[2] = -1;
        nonFinite = false;
        upsampledX.resize(static_cast<size_t>(3 * c * w));
        logits.resize(static_cast<size_t>(c * 16));  // up to 16 lanes
        pooledFull.resize(static_cast<size_t>(c * w));
        pooledUnaryFull.resize(static_cast<size_t>(c * w));
    }
};

// One row upsampled along x: o[x] = m[x0] + lambda * (m[x1] - m[x0]) (upsampleSource).
// For blur 4 the interior has the fixed phase pattern x = 4j + s -> (j-1, j, 0.625),
// (j-1, j, 0.875), (j, j+1, 0.125), (j, j+1, 0.375), written out so that it vectorises;
// the generic gather handles the borders and other blur factors with identical results.
CONVCRF_INLINE void upsampleRowX(const MeanFieldGeometry& geo, const float* __restrict m,
                         float* __restrict o)
{
    const int64_t w = geo.w, wl = geo.wLow;
    const int64_t* x0 = geo.x0.data();
    const int64_t* x1 = geo.x1.data();
    const float* lx = geo.lambdaX.data();
    int64_t interiorBegin = 0, interiorEnd = 0;  // in low-res columns j
    if (geo.blur == 4) {
        interiorBegin = 1;
        interiorEnd = std::min<int64_t>(wl - 1, w / 4);
        if (interiorEnd < interiorBegin)
            interiorEnd = interiorBegin;
    }
    for (int64_t x = 0; x < 4 * interiorBegin && x < w; ++x)
        o[x] = m[x0[x]] + lx[x] * (m[x1[x]] - m[x0[x]]);
    for (int64_t j = interiorBegin; j < interiorEnd; ++j) {
        const float left = m[j - 1], mid = m[j], right = m[j + 1];
        o[4 * j + 0] = left + 0.625f * (mid - left);
        o[4 * j + 1] = left + 0.875f * (mid - left);
        o[4 * j + 2] = mid + 0.125f * (right - mid);
        o[4 * j + 3] = mid + 0.375f * (right - mid);
    }
    for (int64_t x = std::max<int64_t>(4 * interiorEnd, 4 * interiorBegin); x < w; ++x)
        o[x] = m[x0[x]] + lx[x] * (m[x1[x]] - m[x0[x]]);
}

// Messages of low row `row` of image `n`, upsampled along x for every class ([c][w]).
// Each low row is upsampled once per thread and reused by the full rows of three low rows,
// so this gather runs on 1/blur of the full-resolution pixels.
CONVCRF_INLINE const float* upsampledMessageRow(const MeanFieldGeometry& geo, const float* messagesLow,
                                 int64_t n, int64_t row, MeanFieldScratch& s)
{
    const int64_t slot = row % 3, c = geo.c, w = geo.w, wl = geo.wLow;
    float* out = s.upsampledX.data() + slot * c * w;
    if (s.cachedImage == n && s.cachedRow[slot] == row)
        return out;
    if (s.cachedImage != n) {
        s.cachedImage = n;
        s.cachedRow[0] = s.cachedRow[1] = s.cachedRow[2] = -1;
    }
    for (int64_t ch = 0; ch < c; ++ch)
        upsampleRowX(geo, messagesLow + ((n * c + ch) * geo.hLow + row) * wl, out + ch * w);
    s.cachedRow[slot] = row;
    return out;
}

// Sum groups of `blur` consecutive values: out[j] = sum_{x in window j} p[x] / divisor(j).
// The blur == 4 case (the paper's default) has a constant stride that GCC vectorises.
inline void poolRow(const float* __restrict p, float* __restrict out, int64_t w, int64_t wl,
                    int32_t b, float rowCount)
{
    int64_t j = 0;
    if (b == 4) {
        const float inv = 1.0f / (4.0f * rowCount);
        for (; j < w / 4; ++j)
            out[j] = (p[4 * j] + p[4 * j + 1] + p[4 * j + 2] + p[4 * j + 3]) * inv;
    }
    for (; j < wl; ++j) {
        const int64_t xEnd = std::min<int64_t>(w, (j + 1) * b);
        float sum = 0.0f;
        for (int64_t x = j * b; x < xEnd; ++x)
            sum += p[x];
        out[j] = sum / (rowCount * static_cast<float>(xEnd - j * b));
    }
}

// Arguments of one fused mean-field step (see convcrf_mean_field_step_f32).
struct MeanFieldStepArgs {
    const float* unary;
    const float* messagesLow;
    const float* messageScale;
    const float* logitScale;
    const float* outScale;
    float* logUnaryOut;
    float* logUnaryLowOut;
    float* qLow;
    float* qFull;
};

// One low-resolution row `i` of image `n`: the `blur` full-resolution rows it pools.
// The float type of one group of pixels (a vector, or one float for the row's tail).
template <typename V>
struct Lanes {
    using F = V;
    using I = typename IntOf<V>::type;
};

template <typename V>
CONVCRF_INLINE void meanFieldLowRow(const MeanFieldGeometry& geo, const MeanFieldStepArgs& args,
                                    int64_t n, int64_t i, MeanFieldScratch& s)
{
    const int64_t c = geo.c, h = geo.h, w = geo.w, wl = geo.wLow, hl = geo.hLow;
    const int64_t plane = h * w, planeLow = hl * wl;
    const int32_t b = geo.blur;
    float* pooled = args.qLow ? s.pooledFull.data() : nullptr;
    float* pooledUnary = args.logUnaryLowOut ? s.pooledUnaryFull.data() : nullptr;
    if (pooled)
        std::fill(s.pooledFull.begin(), s.pooledFull.end(), 0.0f);
    if (pooledUnary)
        std::fill(s.pooledUnaryFull.begin(), s.pooledUnaryFull.end(), 0.0f);
    bool nonFinite = false;

    const int64_t yEnd = std::min<int64_t>(h, (i + 1) * b);
    for (int64_t y = i * b; y < yEnd; ++y) {
        SoftmaxGroupIo io{};
        if (args.messagesLow) {
            int64_t y0 = 0, y1 = 0;
            upsampleSource<float>(y, b, hl, y0, y1, io.ly);
            io.msgA = upsampledMessageRow(geo, args.messagesLow, n, y0, s);
            io.msgB = upsampledMessageRow(geo, args.messagesLow, n, y1, s);
        }
        io.messageScale = args.messageScale;
        io.logitScale = args.logitScale;
        io.outScale = args.outScale;
        const int64_t rowOffset = n * c * plane + y * w;
        // Forced inline like the row workers: an outlined lambda would lose the AVX2 clone.
        auto group = [&](int64_t x, auto lanes) CONVCRF_LAMBDA_INLINE {
            using F = typename decltype(lanes)::F;
            using I = typename decltype(lanes)::I;
            SoftmaxGroupIo at = io;
            at.unary = args.unary + rowOffset + x;
            if (at.msgA) {
                at.msgA += x;
                at.msgB += x;
            }
            at.logUnaryOut = args.logUnaryOut ? args.logUnaryOut + rowOffset + x : nullptr;
            at.pooledUnary = pooledUnary ? pooledUnary + x : nullptr;
            at.qFull = args.qFull ? args.qFull + rowOffset + x : nullptr;
            at.pooled = pooled ? pooled + x : nullptr;
            nonFinite |= softmaxGroup<F, I>(at, c, plane, w, s.logits.data());
        };
        int64_t x = 0;
#if defined(__GNUC__)
        for (; x + lanesOf<V>() <= w; x += lanesOf<V>())
            group(x, Lanes<V>{});
#endif
        for (; x < w; ++x)
            group(x, Lanes<float>{});
    }
    const float rowCount = static_cast<float>(poolCount(i, b, h));
    for (int64_t ch = 0; ch < c; ++ch) {
        const int64_t lowRow = (n * c + ch) * planeLow + i * wl;
        if (pooled)
            poolRow(pooled + ch * w, args.qLow + lowRow, w, wl, b, rowCount);
        if (pooledUnary)
            poolRow(pooledUnary + ch * w, args.logUnaryLowOut + lowRow, w, wl, b, rowCount);
    }
    if (nonFinite)
        s.nonFinite = true;
}


// ---- instruction-set clones ------------------------------------------------------------------

CONVCRF_TARGET_AVX512 void lowRowsAvx512(const MeanFieldGeometry& geo,
                                         const MeanFieldStepArgs& args, int64_t b, int64_t e,
                                         MeanFieldScratch& s)
{
    for (int64_t task = b; task < e; ++task)
        meanFieldLowRow<FloatVec16>(geo, args, task / geo.hLow, task % geo.hLow, s);
}

CONVCRF_TARGET_AVX2 void lowRowsAvx2(const MeanFieldGeometry& geo, const MeanFieldStepArgs& args,
                                     int64_t b, int64_t e, MeanFieldScratch& s)
{
    for (int64_t task = b; task < e; ++task)
        meanFieldLowRow<FloatVec>(geo, args, task / geo.hLow, task % geo.hLow, s);
}

void lowRowsBaseline(const MeanFieldGeometry& geo, const MeanFieldStepArgs& args, int64_t b,
                     int64_t e, MeanFieldScratch& s)
{
    for (int64_t task = b; task < e; ++task)
        meanFieldLowRow<FloatVec>(geo, args, task / geo.hLow, task % geo.hLow, s);
}

using LowRows = void (*)(const MeanFieldGeometry&, const MeanFieldStepArgs&, int64_t, int64_t,
                         MeanFieldScratch&);

thread_local MeanFieldScratch tScratch;

}  // namespace
}  // namespace convcrf

using namespace convcrf;

extern "C" {

int32_t convcrf_mean_field_step_f32(const float* unary, const float* messagesLow,
                                    const float* messageScale, int64_t n, int64_t c, int64_t h,
                                    int64_t w, int32_t blur, const float* logitScale,
                                    const float* outScale,
                                    float* logUnaryOut, float* logUnaryLowOut, float* qLow,
                                    float* qFull, int32_t threads)
{
    if (blur < 1)
        return kErrorInvalidBlur;
    if (n < 0 || c < 0 || h < 0 || w < 0)
        return kErrorInvalidShape;
    // Every size product the pass forms (the tensors, the per-thread scratch of a few [c][w]
    // rows, the geometry tables) must fit before anything is allocated.
    if (!productFits({n, c, h, w}, sizeof(float)) || !productFits({8, c, w}, sizeof(float)) ||
        !productFits({w}, sizeof(int64_t) * 3) || !productFits({blur}, 2))
        return kErrorSizeOverflow;
    if (n == 0 || c == 0 || h == 0 || w == 0)
        return kSuccess;
    if (!unary)
        return kErrorNullPointer;
    if ((logUnaryOut || logUnaryLowOut) && !outScale)
        return kErrorNullPointer;  // the log-unary outputs are defined by their scale
    const MeanFieldStepArgs args{unary, messagesLow, messageScale, logitScale, outScale,
                                 logUnaryOut, logUnaryLowOut, qLow, qFull};
    MeanFieldGeometry geo;
    try {
        geo.c = c;
        geo.h = h;
        geo.w = w;
        geo.blur = blur;
        geo.hLow = pooledSize(h, blur);
        geo.wLow = pooledSize(w, blur);
        geo.x0.resize(static_cast<size_t>(w));
        geo.x1.resize(static_cast<size_t>(w));
        geo.lambdaX.resize(static_cast<size_t>(w));
    } catch (...) {
        return kErrorOutOfMemory;
    }
    for (int64_t x = 0; x < w; ++x)
        upsampleSource<float>(x, blur, geo.wLow, geo.x0[x], geo.x1[x], geo.lambdaX[x]);
    std::atomic<bool> nonFinite{false};
    const LowRows lowRows = pickClone<LowRows>(lowRowsAvx512, lowRowsAvx2, lowRowsBaseline);
    const Status status = parallelFor(n * geo.hLow, threads, [&](int64_t b, int64_t e) {
        MeanFieldScratch& scratch = tScratch;
        scratch.begin(c, w);  // may throw bad_alloc: the pool turns it into a status
        lowRows(geo, args, b, e, scratch);
        if (scratch.nonFinite)
            nonFinite = true;
    });
    if (status != kSuccess)
        return status;
    return nonFinite ? kErrorNonFinite : kSuccess;
}

}  // extern "C"

