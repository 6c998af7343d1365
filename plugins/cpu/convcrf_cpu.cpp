// convcrf_cpu.cpp: multithreaded CPU implementation of the ConvCRF ops (C API in convcrf_cpu.h).
//
// Loops are organised so that the innermost one runs along a contiguous image row with no
// bounds test inside (see convcrf::shiftedRange), which compilers vectorise. On x86-64 the
// row workers are compiled twice (AVX2+FMA and baseline) and picked at load time, so the
// library runs on any x86-64 CPU and uses AVX2 where it exists.
#if defined(__GNUC__)
// The mean-field step passes FloatVec values between always-inlined helpers; GCC's note that
// the by-value ABI of 32-byte vectors differs without AVX never applies to inlined code.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include "convcrf_cpu.h"

#include "../common/convcrf_math.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CONVCRF_NO_MULTIVERSION)
#define CONVCRF_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CONVCRF_MULTIVERSION
#endif

// Row workers are forced inline into the multiversioned loops above them: a separately
// compiled worker would only get the baseline instruction set.
#if defined(__GNUC__)
#define CONVCRF_ROW inline __attribute__((always_inline))
#define CONVCRF_LAMBDA_INLINE __attribute__((always_inline))
#else
#define CONVCRF_ROW inline
#define CONVCRF_LAMBDA_INLINE
#endif

namespace convcrf {
namespace {

constexpr int32_t kCpuApiVersion = 2;

// Flush denormals to zero in this thread while the object lives. exp() of strongly negative
// logits (large messages make most classes ~1e-38 after softmax) yields denormal floats, and
// every operation on them costs ~100 cycles on x86: without this the fused mean-field step
// ran 4x slower on real inputs than on mild ones. Values below 1.2e-38 become 0.
class FlushDenormals {
public:
    FlushDenormals()
    {
#if defined(__SSE__) || defined(__x86_64__)
        saved_ = _mm_getcsr();
        _mm_setcsr(saved_ | 0x8040);  // FTZ (bit 15) | DAZ (bit 6)
#endif
    }
    ~FlushDenormals()
    {
#if defined(__SSE__) || defined(__x86_64__)
        _mm_setcsr(saved_);
#endif
    }
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;

private:
    unsigned int saved_ = 0;
};

// Run fn(begin, end) over [0, total) split into contiguous chunks on up to numThreads threads.
// Threads are started per call rather than pooled: a call costs tens of microseconds more, but
// the library stays safe across fork() (PyTorch DataLoader workers) and holds no global state.
template <typename Fn>
void parallelFor(int64_t total, int32_t numThreads, Fn fn)
{
    if (total <= 0)
        return;
    int64_t threads = numThreads > 0 ? numThreads : static_cast<int64_t>(std::thread::hardware_concurrency());
    threads = std::max<int64_t>(1, std::min<int64_t>(threads, total));
    if (threads == 1) {
        FlushDenormals flush;
        fn(int64_t(0), total);
        return;
    }
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(threads - 1));
    int64_t chunk = (total + threads - 1) / threads;
    for (int64_t t = 1; t < threads; ++t) {
        int64_t begin = t * chunk;
        int64_t end = std::min(total, begin + chunk);
        if (begin >= end)
            break;
        workers.emplace_back([=] {
            FlushDenormals flush;
            fn(begin, end);
        });
    }
    {
        FlushDenormals flush;
        fn(int64_t(0), std::min(total, chunk));
    }
    for (auto& worker : workers)
        worker.join();
}

Status checkCommon(int64_t n, int64_t channels, int64_t h, int64_t w, int32_t filterSize)
{
    if (!isValidFilterSize(filterSize))
        return kErrorInvalidFilterSize;
    if (n < 0 || channels < 0 || h < 0 || w < 0)
        return kErrorInvalidShape;
    return kSuccess;
}

bool isEmpty(int64_t n, int64_t channels, int64_t h, int64_t w)
{
    return n == 0 || channels == 0 || h == 0 || w == 0;
}

// ---- gaussian kernel -------------------------------------------------------------------

template <typename T>
CONVCRF_ROW void gaussianKernelRow(const T* __restrict features, int64_t d, int64_t h, int64_t w,
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

CONVCRF_MULTIVERSION void gaussianKernelRowsF32(const float* f, int64_t d, int64_t h, int64_t w,
                                                int32_t k, float* out, int64_t b, int64_t e)
{
    for (int64_t row = b; row < e; ++row)
        gaussianKernelRow<float>(f, d, h, w, k, out, row);
}

void gaussianKernelRowsF64(const double* f, int64_t d, int64_t h, int64_t w, int32_t k,
                           double* out, int64_t b, int64_t e)
{
    for (int64_t row = b; row < e; ++row)
        gaussianKernelRow<double>(f, d, h, w, k, out, row);
}

// d K[o,p] / d F[:,p] and d K[o,p-o] / d F[:,p], gathered per output pixel p so that rows are
// independent (no atomics, no races).
template <typename T>
CONVCRF_ROW void gaussianKernelBackwardRow(const T* __restrict features, const T* __restrict kernel,
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
CONVCRF_ROW void gaussianKernelBackwardRows(const T* f, const T* kernel, const T* gk, int64_t d, int64_t h,
                                int64_t w, int32_t k, T* grad, int64_t b, int64_t e)
{
    std::vector<T> scratch;
    for (int64_t row = b; row < e; ++row)
        gaussianKernelBackwardRow<T>(f, kernel, gk, d, h, w, k, grad, row, scratch);
}

// ---- message passing -------------------------------------------------------------------

template <typename T>
CONVCRF_ROW void messagePassingRow(const T* __restrict q, const T* __restrict kernel, int64_t c, int64_t h,
                       int64_t w, int32_t k, T* __restrict messages, int64_t row)
{
    const int64_t n = row / h, y = row % h, plane = h * w;
    const int32_t r = k / 2;
    const T* qn = q + n * c * plane;
    const T* kn = kernel + n * int64_t(k) * k * plane;
    T* mn = messages + n * c * plane + y * w;
    for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t x = 0; x < w; ++x)
            mn[ch * plane + x] = T(0);
    for (int32_t dy = -r; dy <= r; ++dy) {
        const int64_t yy = y + dy;
        if (yy < 0 || yy >= h)
            continue;
        for (int32_t dx = -r; dx <= r; ++dx) {
            int64_t begin, end;
            shiftedRange(w, dx, begin, end);
            const T* __restrict kr = kn + int64_t(offsetChannel(dy, dx, r, k)) * plane + y * w;
            for (int64_t ch = 0; ch < c; ++ch) {
                const T* __restrict qr = qn + ch * plane + yy * w + dx;
                T* __restrict mr = mn + ch * plane;
                for (int64_t x = begin; x < end; ++x)
                    mr[x] += kr[x] * qr[x];
            }
        }
    }
}

CONVCRF_MULTIVERSION void messagePassingRowsF32(const float* q, const float* kernel, int64_t c,
                                                int64_t h, int64_t w, int32_t k, float* out,
                                                int64_t b, int64_t e)
{
    for (int64_t row = b; row < e; ++row)
        messagePassingRow<float>(q, kernel, c, h, w, k, out, row);
}

template <typename T>
CONVCRF_ROW void messagePassingTransposedRow(const T* __restrict g, const T* __restrict kernel, int64_t c,
                                 int64_t h, int64_t w, int32_t k, T* __restrict out, int64_t row)
{
    const int64_t n = row / h, y = row % h, plane = h * w;
    const int32_t r = k / 2;
    const T* gn = g + n * c * plane;
    const T* kn = kernel + n * int64_t(k) * k * plane;
    T* on = out + n * c * plane + y * w;
    for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t x = 0; x < w; ++x)
            on[ch * plane + x] = T(0);
    for (int32_t dy = -r; dy <= r; ++dy) {
        const int64_t ys = y - dy;  // the pixel whose window reaches this one at offset (dy, dx)
        if (ys < 0 || ys >= h)
            continue;
        for (int32_t dx = -r; dx <= r; ++dx) {
            int64_t begin, end;
            shiftedRange(w, -dx, begin, end);
            const T* __restrict kr = kn + int64_t(offsetChannel(dy, dx, r, k)) * plane + ys * w - dx;
            for (int64_t ch = 0; ch < c; ++ch) {
                const T* __restrict gr = gn + ch * plane + ys * w - dx;
                T* __restrict orow = on + ch * plane;
                for (int64_t x = begin; x < end; ++x)
                    orow[x] += kr[x] * gr[x];
            }
        }
    }
}

template <typename T>
CONVCRF_ROW void messagePassingKernelGradRow(const T* __restrict g, const T* __restrict q, int64_t c,
                                 int64_t h, int64_t w, int32_t k, T* __restrict gradKernel,
                                 int64_t row)
{
    const int64_t n = row / h, y = row % h, plane = h * w;
    const int32_t r = k / 2;
    const T* gn = g + n * c * plane + y * w;
    const T* qn = q + n * c * plane;
    T* kn = gradKernel + n * int64_t(k) * k * plane + y * w;
    for (int32_t dy = -r; dy <= r; ++dy) {
        for (int32_t dx = -r; dx <= r; ++dx) {
            T* __restrict out = kn + int64_t(offsetChannel(dy, dx, r, k)) * plane;
            for (int64_t x = 0; x < w; ++x)
                out[x] = T(0);
            const int64_t yy = y + dy;
            if (yy < 0 || yy >= h)
                continue;
            int64_t begin, end;
            shiftedRange(w, dx, begin, end);
            for (int64_t ch = 0; ch < c; ++ch) {
                const T* __restrict gr = gn + ch * plane;
                const T* __restrict qr = qn + ch * plane + yy * w + dx;
                for (int64_t x = begin; x < end; ++x)
                    out[x] += gr[x] * qr[x];
            }
        }
    }
}

// Float entry points of the backward rows, compiled per instruction set like the forward ones.
CONVCRF_MULTIVERSION void messagePassingTransposedRowsF32(const float* g, const float* kernel,
                                                          int64_t c, int64_t h, int64_t w,
                                                          int32_t k, float* out, int64_t b,
                                                          int64_t e)
{
    for (int64_t row = b; row < e; ++row)
        messagePassingTransposedRow<float>(g, kernel, c, h, w, k, out, row);
}

CONVCRF_MULTIVERSION void messagePassingKernelGradRowsF32(const float* g, const float* q,
                                                          int64_t c, int64_t h, int64_t w,
                                                          int32_t k, float* out, int64_t b,
                                                          int64_t e)
{
    for (int64_t row = b; row < e; ++row)
        messagePassingKernelGradRow<float>(g, q, c, h, w, k, out, row);
}

CONVCRF_MULTIVERSION void gaussianKernelBackwardRowsF32(const float* f, const float* kernel,
                                                        const float* gk, int64_t d, int64_t h,
                                                        int64_t w, int32_t k, float* grad,
                                                        int64_t b, int64_t e)
{
    gaussianKernelBackwardRows<float>(f, kernel, gk, d, h, w, k, grad, b, e);
}

// ---- fused mean-field step -------------------------------------------------------------

struct MeanFieldGeometry {
    int64_t c, h, w, hLow, wLow;
    int32_t blur;
    std::vector<int64_t> x0, x1;   // bilinear source columns of each full-res column
    std::vector<float> lambdaX;    // weight of x1
};

// Load/store of F (float, or FloatVec = 8 floats) from unaligned float memory.
template <typename F>
CONVCRF_ROW F loadAs(const float* p)
{
    F v;
    std::memcpy(&v, p, sizeof(F));
    return v;
}

template <typename F>
CONVCRF_ROW void storeAs(float* p, F v)
{
    std::memcpy(p, &v, sizeof(F));
}

CONVCRF_ROW float logOf(float x)
{
    return std::log(x);
}

CONVCRF_ROW bool anyNonFinite(float x)
{
    return !(x - x == 0.0f);  // x - x is 0 only for finite x
}

#if defined(__GNUC__)
CONVCRF_ROW FloatVec logOf(FloatVec x)
{
    FloatVec out;
    for (int lane = 0; lane < kVecLanes; ++lane)
        out[lane] = std::log(x[lane]);
    return out;
}

CONVCRF_ROW bool anyNonFinite(FloatVec x)
{
    IntVec bad = (x - x) != FloatVec{};
    int32_t any = 0;
    for (int lane = 0; lane < kVecLanes; ++lane)
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
CONVCRF_ROW bool softmaxGroup(const SoftmaxGroupIo& io, int64_t c, int64_t plane,
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

    void resize(int64_t c, int64_t w)
    {
        upsampledX.resize(static_cast<size_t>(3 * c * w));
        logits.resize(static_cast<size_t>(c * kVecLanes));
        pooledFull.resize(static_cast<size_t>(c * w));
        pooledUnaryFull.resize(static_cast<size_t>(c * w));
    }
};

// One row upsampled along x: o[x] = m[x0] + lambda * (m[x1] - m[x0]) (upsampleSource).
// For blur 4 the interior has the fixed phase pattern x = 4j + s -> (j-1, j, 0.625),
// (j-1, j, 0.875), (j, j+1, 0.125), (j, j+1, 0.375), written out so that it vectorises;
// the generic gather handles the borders and other blur factors with identical results.
CONVCRF_ROW void upsampleRowX(const MeanFieldGeometry& geo, const float* __restrict m,
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
CONVCRF_ROW const float* upsampledMessageRow(const MeanFieldGeometry& geo, const float* messagesLow,
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
CONVCRF_MULTIVERSION void meanFieldLowRowF32(const MeanFieldGeometry& geo,
                                             const MeanFieldStepArgs& args, int64_t n, int64_t i,
                                             MeanFieldScratch& s)
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
        struct VecLanes { using F = FloatVec; using I = IntVec; };
        for (; x + kVecLanes <= w; x += kVecLanes)
            group(x, VecLanes{});
#endif
        struct ScalarLanes { using F = float; using I = int32_t; };
        for (; x < w; ++x)
            group(x, ScalarLanes{});
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

// Wraps a C API body: validation has already happened, so the only exceptions left are
// std::bad_alloc and thread creation failures; none may cross the C boundary.
template <typename Fn>
int32_t guarded(Fn fn)
{
    try {
        fn();
        return kSuccess;
    } catch (...) {
        return kErrorUnsupported;
    }
}

template <typename T>
int32_t gaussianKernelImpl(const T* f, int64_t n, int64_t d, int64_t h, int64_t w, int32_t k,
                           T* out, int32_t threads)
{
    if (Status s = checkCommon(n, d, h, w, k))
        return s;
    if (n == 0 || h == 0 || w == 0)
        return kSuccess;
    if ((d > 0 && !f) || !out)
        return kErrorNullPointer;
    return guarded([&] {
        parallelFor(n * h, threads, [&](int64_t b, int64_t e) {
            if constexpr (std::is_same<T, float>::value)
                gaussianKernelRowsF32(f, d, h, w, k, out, b, e);
            else
                gaussianKernelRowsF64(f, d, h, w, k, out, b, e);
        });
    });
}

template <typename T>
int32_t gaussianKernelBackwardImpl(const T* f, const T* kernel, const T* gk, int64_t n,
                                   int64_t d, int64_t h, int64_t w, int32_t k, T* grad,
                                   int32_t threads)
{
    if (Status s = checkCommon(n, d, h, w, k))
        return s;
    if (isEmpty(n, d, h, w))
        return kSuccess;
    if (!f || !kernel || !gk || !grad)
        return kErrorNullPointer;
    return guarded([&] {
        parallelFor(n * h, threads, [&](int64_t b, int64_t e) {
            if constexpr (std::is_same<T, float>::value)
                gaussianKernelBackwardRowsF32(f, kernel, gk, d, h, w, k, grad, b, e);
            else
                gaussianKernelBackwardRows<T>(f, kernel, gk, d, h, w, k, grad, b, e);
        });
    });
}

template <typename T>
int32_t messagePassingImpl(const T* q, const T* kernel, int64_t n, int64_t c, int64_t h,
                           int64_t w, int32_t k, T* out, int32_t threads)
{
    if (Status s = checkCommon(n, c, h, w, k))
        return s;
    if (isEmpty(n, c, h, w))
        return kSuccess;
    if (!q || !kernel || !out)
        return kErrorNullPointer;
    return guarded([&] {
        parallelFor(n * h, threads, [&](int64_t b, int64_t e) {
            if constexpr (std::is_same<T, float>::value) {
                messagePassingRowsF32(q, kernel, c, h, w, k, out, b, e);
            } else {
                for (int64_t row = b; row < e; ++row)
                    messagePassingRow<T>(q, kernel, c, h, w, k, out, row);
            }
        });
    });
}

template <typename T>
int32_t messagePassingTransposedImpl(const T* g, const T* kernel, int64_t n, int64_t c,
                                     int64_t h, int64_t w, int32_t k, T* out, int32_t threads)
{
    if (Status s = checkCommon(n, c, h, w, k))
        return s;
    if (isEmpty(n, c, h, w))
        return kSuccess;
    if (!g || !kernel || !out)
        return kErrorNullPointer;
    return guarded([&] {
        parallelFor(n * h, threads, [&](int64_t b, int64_t e) {
            if constexpr (std::is_same<T, float>::value) {
                messagePassingTransposedRowsF32(g, kernel, c, h, w, k, out, b, e);
            } else {
                for (int64_t row = b; row < e; ++row)
                    messagePassingTransposedRow<T>(g, kernel, c, h, w, k, out, row);
            }
        });
    });
}

template <typename T>
int32_t messagePassingKernelGradImpl(const T* g, const T* q, int64_t n, int64_t c, int64_t h,
                                     int64_t w, int32_t k, T* out, int32_t threads)
{
    if (Status s = checkCommon(n, c, h, w, k))
        return s;
    if (n == 0 || h == 0 || w == 0)
        return kSuccess;
    if ((c > 0 && (!g || !q)) || !out)
        return kErrorNullPointer;
    return guarded([&] {
        parallelFor(n * h, threads, [&](int64_t b, int64_t e) {
            if constexpr (std::is_same<T, float>::value) {
                messagePassingKernelGradRowsF32(g, q, c, h, w, k, out, b, e);
            } else {
                for (int64_t row = b; row < e; ++row)
                    messagePassingKernelGradRow<T>(g, q, c, h, w, k, out, row);
            }
        });
    });
}

}  // namespace
}  // namespace convcrf

using namespace convcrf;

extern "C" {

int32_t convcrf_cpu_api_version(void)
{
    return kCpuApiVersion;
}

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

int32_t convcrf_message_passing_f32(const float* q, const float* kernel, int64_t n, int64_t c,
                                    int64_t h, int64_t w, int32_t k, float* out, int32_t threads)
{
    return messagePassingImpl<float>(q, kernel, n, c, h, w, k, out, threads);
}

int32_t convcrf_message_passing_f64(const double* q, const double* kernel, int64_t n, int64_t c,
                                    int64_t h, int64_t w, int32_t k, double* out, int32_t threads)
{
    return messagePassingImpl<double>(q, kernel, n, c, h, w, k, out, threads);
}

int32_t convcrf_message_passing_transposed_f32(const float* g, const float* kernel, int64_t n,
                                               int64_t c, int64_t h, int64_t w, int32_t k,
                                               float* out, int32_t threads)
{
    return messagePassingTransposedImpl<float>(g, kernel, n, c, h, w, k, out, threads);
}

int32_t convcrf_message_passing_transposed_f64(const double* g, const double* kernel, int64_t n,
                                               int64_t c, int64_t h, int64_t w, int32_t k,
                                               double* out, int32_t threads)
{
    return messagePassingTransposedImpl<double>(g, kernel, n, c, h, w, k, out, threads);
}

int32_t convcrf_message_passing_kernel_grad_f32(const float* g, const float* q, int64_t n,
                                                int64_t c, int64_t h, int64_t w, int32_t k,
                                                float* out, int32_t threads)
{
    return messagePassingKernelGradImpl<float>(g, q, n, c, h, w, k, out, threads);
}

int32_t convcrf_message_passing_kernel_grad_f64(const double* g, const double* q, int64_t n,
                                                int64_t c, int64_t h, int64_t w, int32_t k,
                                                double* out, int32_t threads)
{
    return messagePassingKernelGradImpl<double>(g, q, n, c, h, w, k, out, threads);
}

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
    if (isEmpty(n, c, h, w))
        return kSuccess;
    if (!unary)
        return kErrorNullPointer;
    if ((logUnaryOut || logUnaryLowOut) && !outScale)
        return kErrorNullPointer;  // the log-unary outputs are defined by their scale
    const MeanFieldStepArgs args{unary, messagesLow, messageScale, logitScale, outScale,
                                 logUnaryOut, logUnaryLowOut, qLow, qFull};
    int32_t status = kSuccess;
    int32_t failure = guarded([&] {
        MeanFieldGeometry geo;
        geo.c = c;
        geo.h = h;
        geo.w = w;
        geo.blur = blur;
        geo.hLow = pooledSize(h, blur);
        geo.wLow = pooledSize(w, blur);
        geo.x0.resize(static_cast<size_t>(w));
        geo.x1.resize(static_cast<size_t>(w));
        geo.lambdaX.resize(static_cast<size_t>(w));
        for (int64_t x = 0; x < w; ++x)
            upsampleSource<float>(x, blur, geo.wLow, geo.x0[x], geo.x1[x], geo.lambdaX[x]);
        std::atomic<bool> nonFinite{false};
        parallelFor(n * geo.hLow, threads, [&](int64_t b, int64_t e) {
            MeanFieldScratch scratch;
            scratch.resize(c, w);
            for (int64_t task = b; task < e; ++task)
                meanFieldLowRowF32(geo, args, task / geo.hLow, task % geo.hLow, scratch);
            if (scratch.nonFinite)
                nonFinite = true;
        });
        status = nonFinite ? kErrorNonFinite : kSuccess;
    });
    return failure != kSuccess ? failure : status;
}

}  // extern "C"
