// message_passing.cpp: message passing, its transposed form (gradient w.r.t. q) and its
// gradient w.r.t. the kernel (op contract and gradients in docs/ops.md).
//
// float path, per output row (one task of the thread pool):
//   * the rows it reads are zero-padded copies (row_buffers.h), so every window position is a
//     plain shifted vector load with no bounds test;
//   * the sum over the k*k window runs with the accumulators of a block of classes x a block
//     of x-vectors in registers (registerBlock below): one kernel load serves CB classes and
//     one q load feeds one FMA, and each output is stored once instead of once per offset.
// The double path (gradcheck only) keeps the plain row loops of referenceRow* below.
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

// One window position of one output row: the kernel row (indexed by output x) and channel 0 of
// the padded input row, both already shifted so that element x is the one output x needs.
struct Term {
    const float* kernel;
    const float* input;
};

// out[c][x] = sum_t terms[t].kernel[x] * terms[t].input[c * inputStride + x] for CB channels
// and XB vectors of x starting at x0, accumulated in registers.
template <typename F, int CB, int XB>
CONVCRF_INLINE void registerBlock(const Term* terms, int64_t count, int64_t inputStride,
                                  int64_t x0, float* out, int64_t outStride)
{
    constexpr int64_t L = lanesOf<F>();
    F acc[CB][XB];
#pragma GCC unroll 16
    for (int cb = 0; cb < CB; ++cb)
#pragma GCC unroll 4
        for (int j = 0; j < XB; ++j)
            acc[cb][j] = F{};
    for (int64_t t = 0; t < count; ++t) {
        const float* kp = terms[t].kernel + x0;
        const float* qp = terms[t].input + x0;
        F kv[XB];
#pragma GCC unroll 4
        for (int j = 0; j < XB; ++j)
            kv[j] = loadAs<F>(kp + j * L);
#pragma GCC unroll 16
        for (int cb = 0; cb < CB; ++cb)
#pragma GCC unroll 4
            for (int j = 0; j < XB; ++j)
                acc[cb][j] += kv[j] * loadAs<F>(qp + cb * inputStride + j * L);
    }
#pragma GCC unroll 16
    for (int cb = 0; cb < CB; ++cb)
#pragma GCC unroll 4
        for (int j = 0; j < XB; ++j)
            storeAs<F>(out + cb * outStride + x0 + j * L, acc[cb][j]);
}

// registerBlock for a run-time channel count `rest` < CB (the last, partial block).
template <typename F, int CB, int XB>
CONVCRF_INLINE void registerBlockTail(int64_t rest, const Term* terms, int64_t count,
                                      int64_t inputStride, int64_t x0, float* out,
                                      int64_t outStride)
{
    if constexpr (CB > 0) {
        if (rest == CB)
            registerBlock<F, CB, XB>(terms, count, inputStride, x0, out, outStride);
        else
            registerBlockTail<F, CB - 1, XB>(rest, terms, count, inputStride, x0, out, outStride);
    }
}

// out[c][0, vectorWidth) for all `channels` (out rows `outStride` apart): the sum over `terms`.
// `shifted` holds the terms with their input pointers moved to channel c0 of each block.
template <typename F, int CB, int XB>
CONVCRF_INLINE void sumTerms(const std::vector<Term>& terms, std::vector<Term>& shifted,
                             int64_t channels, int64_t inputStride, int64_t vectorWidth,
                             float* out, int64_t outStride)
{
    constexpr int64_t block = lanesOf<F>() * XB;
    const int64_t count = static_cast<int64_t>(terms.size());
    shifted.resize(terms.size());
    for (int64_t c0 = 0; c0 < channels; c0 += CB) {
        for (int64_t t = 0; t < count; ++t)
            shifted[t] = {terms[t].kernel, terms[t].input + c0 * inputStride};
        const int64_t rest = std::min<int64_t>(CB, channels - c0);
        for (int64_t x0 = 0; x0 < vectorWidth; x0 += block) {
            if (rest == CB)
                registerBlock<F, CB, XB>(shifted.data(), count, inputStride, x0,
                                         out + c0 * outStride, outStride);
            else
                registerBlockTail<F, CB - 1, XB>(rest, shifted.data(), count, inputStride, x0,
                                                 out + c0 * outStride, outStride);
        }
    }
}

// Per-thread buffers, kept across calls (pool workers live as long as the process).
struct Scratch {
    PaddedRowRing ringA, ringB;   // padded rows of the input(s)
    std::vector<float> kernelRows;  // kernel rows of the current output row, vector-padded
    std::vector<float> out;         // the output row of every channel, vector-padded
    std::vector<Term> terms, shifted;
};

thread_local Scratch tScratch;

// Where one output row's results go: channel c of row `row` of image `image`.
void storeRows(const float* rows, int64_t rowStride, int64_t channels, int64_t h, int64_t w,
               int64_t image, int64_t row, float* dst)
{
    float* base = dst + (image * channels * h + row) * w;
    for (int64_t c = 0; c < channels; ++c)
        std::memcpy(base + c * h * w, rows + c * rowStride, static_cast<size_t>(w) * sizeof(float));
}

// ---- forward: M[c,y,x] = sum_o K[o,y,x] q[c,y+dy,x+dx] -------------------------------------

template <typename F, int CB, int XB>
CONVCRF_INLINE void forwardRows(const float* q, const float* kernel, int64_t c, int64_t h,
                                int64_t w, int32_t k, float* messages, int64_t begin, int64_t end)
{
    const int32_t r = k / 2;
    const int64_t kk = int64_t(k) * k, plane = h * w;
    const RowGeometry geo = makeRowGeometry(c, h, w, r, lanesOf<F>() * XB);
    Scratch& s = tScratch;
    s.ringA.reset(geo, k);
    s.kernelRows.resize(static_cast<size_t>(kk * geo.vectorWidth));
    s.out.resize(static_cast<size_t>(c * geo.vectorWidth));
    for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / h, y = task % h;
        const float* kn = kernel + (n * kk * h + y) * w;
        for (int64_t o = 0; o < kk; ++o)
            copyRowZeroTail(kn + o * plane, w, s.kernelRows.data() + o * geo.vectorWidth,
                            geo.vectorWidth);
        s.terms.clear();
        for (int32_t dy = -r; dy <= r; ++dy) {
            const int64_t yy = y + dy;
            if (yy < 0 || yy >= h)
                continue;  // a row outside the image contributes zeros
            const float* padded = s.ringA.row(q, n, yy);
            for (int32_t dx = -r; dx <= r; ++dx)
                s.terms.push_back({s.kernelRows.data() + offsetChannel(dy, dx, r, k) * geo.vectorWidth,
                                   padded + r + dx});
        }
        sumTerms<F, CB, XB>(s.terms, s.shifted, c, geo.paddedStride, geo.vectorWidth,
                            s.out.data(), geo.vectorWidth);
        storeRows(s.out.data(), geo.vectorWidth, c, h, w, n, y, messages);
    }
}

// ---- transposed: G[c,y,x] = sum_o K[o,y-dy,x-dx] g[c,y-dy,x-dx] ----------------------------

template <typename F, int CB, int XB>
CONVCRF_INLINE void transposedRows(const float* g, const float* kernel, int64_t c, int64_t h,
                                   int64_t w, int32_t k, float* out, int64_t begin, int64_t end)
{
    const int32_t r = k / 2;
    const int64_t kk = int64_t(k) * k, plane = h * w;
    const RowGeometry geo = makeRowGeometry(c, h, w, r, lanesOf<F>() * XB);
    Scratch& s = tScratch;
    s.ringA.reset(geo, k);
    // Kernel rows padded like the input: both are read at x - dx.
    s.kernelRows.assign(static_cast<size_t>(kk * geo.paddedStride), 0.0f);
    s.out.resize(static_cast<size_t>(c * geo.vectorWidth));
    for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / h, y = task % h;
        s.terms.clear();
        for (int32_t dy = -r; dy <= r; ++dy) {
            const int64_t ys = y - dy;  // the row whose window reaches row y at offset dy
            if (ys < 0 || ys >= h)
                continue;
            const float* padded = s.ringA.row(g, n, ys);
            for (int32_t dx = -r; dx <= r; ++dx) {
                const int64_t o = offsetChannel(dy, dx, r, k);
                float* kp = s.kernelRows.data() + o * geo.paddedStride;
                std::memcpy(kp + r, kernel + (n * kk + o) * plane + ys * w,
                            static_cast<size_t>(w) * sizeof(float));
                s.terms.push_back({kp + r - dx, padded + r - dx});
            }
        }
        sumTerms<F, CB, XB>(s.terms, s.shifted, c, geo.paddedStride, geo.vectorWidth,
                            s.out.data(), geo.vectorWidth);
        storeRows(s.out.data(), geo.vectorWidth, c, h, w, n, y, out);
    }
}

// ---- kernel gradient: gK[o,y,x] = sum_c g[c,y,x] q[c,y+dy,x+dx] ------------------------------
// The same register block with the roles swapped: the "kernel" of a term is the gradient row
// of one class, the "channels" are window positions, and the terms run over classes.

template <typename F, int CB, int XB>
CONVCRF_INLINE void kernelGradRows(const float* g, const float* q, int64_t c, int64_t h,
                                   int64_t w, int32_t k, float* gradKernel, int64_t begin,
                                   int64_t end)
{
    const int32_t r = k / 2;
    const int64_t kk = int64_t(k) * k, plane = h * w;
    const RowGeometry geo = makeRowGeometry(c, h, w, r, lanesOf<F>() * XB);
    Scratch& s = tScratch;
    s.ringA.reset(geo, k);
    s.kernelRows.resize(static_cast<size_t>(c * geo.vectorWidth));  // g rows of all classes
    s.out.resize(static_cast<size_t>(kk * geo.vectorWidth));
    for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / h, y = task % h;
        const float* gn = g + (n * c * h + y) * w;
        for (int64_t ch = 0; ch < c; ++ch)
            copyRowZeroTail(gn + ch * plane, w, s.kernelRows.data() + ch * geo.vectorWidth,
                            geo.vectorWidth);
        std::fill(s.out.begin(), s.out.end(), 0.0f);
        // The k window positions of one kernel row (fixed dy) are consecutive output channels
        // o(dy, -r + j) and read the same padded q row at x + j: a block of k "channels" whose
        // input stride is 1 float. Each class contributes one term.
        for (int32_t dy = -r; dy <= r; ++dy) {
            const int64_t yy = y + dy;
            if (yy < 0 || yy >= h)
                continue;  // stays zero
            const float* padded = s.ringA.row(q, n, yy);
            s.terms.clear();
            for (int64_t ch = 0; ch < c; ++ch)
                s.terms.push_back({s.kernelRows.data() + ch * geo.vectorWidth,
                                   padded + ch * geo.paddedStride});
            float* outRow = s.out.data() + offsetChannel(dy, -r, r, k) * geo.vectorWidth;
            sumTerms<F, CB, XB>(s.terms, s.shifted, k, 1, geo.vectorWidth, outRow,
                                geo.vectorWidth);
        }
        storeRows(s.out.data(), geo.vectorWidth, kk, h, w, n, y, gradKernel);
    }
}

// ---- double path (gradcheck): plain row loops of the op contract ----------------------------

template <typename T>
void referenceForwardRow(const T* q, const T* kernel, int64_t c, int64_t h, int64_t w, int32_t k,
                         T* messages, int64_t row)
{
    const int64_t n = row / h, y = row % h, plane = h * w;
    const int32_t r = k / 2;
    const T* qn = q + n * c * plane;
    const T* kn = kernel + n * int64_t(k) * k * plane;
    T* mn = messages + n * c * plane + y * w;
    for (int64_t ch = 0; ch < c; ++ch)
        std::fill(mn + ch * plane, mn + ch * plane + w, T(0));
    for (int32_t dy = -r; dy <= r; ++dy) {
        const int64_t yy = y + dy;
        if (yy < 0 || yy >= h)
            continue;
        for (int32_t dx = -r; dx <= r; ++dx) {
            int64_t b, e;
            shiftedRange(w, dx, b, e);
            const T* kr = kn + int64_t(offsetChannel(dy, dx, r, k)) * plane + y * w;
            for (int64_t ch = 0; ch < c; ++ch) {
                const T* qr = qn + ch * plane + yy * w + dx;
                T* mr = mn + ch * plane;
                for (int64_t x = b; x < e; ++x)
                    mr[x] += kr[x] * qr[x];
            }
        }
    }
}

template <typename T>
void referenceTransposedRow(const T* g, const T* kernel, int64_t c, int64_t h, int64_t w,
                            int32_t k, T* out, int64_t row)
{
    const int64_t n = row / h, y = row % h, plane = h * w;
    const int32_t r = k / 2;
    const T* gn = g + n * c * plane;
    const T* kn = kernel + n * int64_t(k) * k * plane;
    T* on = out + n * c * plane + y * w;
    for (int64_t ch = 0; ch < c; ++ch)
        std::fill(on + ch * plane, on + ch * plane + w, T(0));
    for (int32_t dy = -r; dy <= r; ++dy) {
        const int64_t ys = y - dy;
        if (ys < 0 || ys >= h)
            continue;
        for (int32_t dx = -r; dx <= r; ++dx) {
            int64_t b, e;
            shiftedRange(w, -dx, b, e);
            const T* kr = kn + int64_t(offsetChannel(dy, dx, r, k)) * plane + ys * w - dx;
            for (int64_t ch = 0; ch < c; ++ch) {
                const T* gr = gn + ch * plane + ys * w - dx;
                T* orow = on + ch * plane;
                for (int64_t x = b; x < e; ++x)
                    orow[x] += kr[x] * gr[x];
            }
        }
    }
}

template <typename T>
void referenceKernelGradRow(const T* g, const T* q, int64_t c, int64_t h, int64_t w, int32_t k,
                            T* gradKernel, int64_t row)
{
    const int64_t n = row / h, y = row % h, plane = h * w;
    const int32_t r = k / 2;
    const T* gn = g + n * c * plane + y * w;
    const T* qn = q + n * c * plane;
    T* kn = gradKernel + n * int64_t(k) * k * plane + y * w;
    for (int32_t dy = -r; dy <= r; ++dy) {
        for (int32_t dx = -r; dx <= r; ++dx) {
            T* out = kn + int64_t(offsetChannel(dy, dx, r, k)) * plane;
            std::fill(out, out + w, T(0));
            const int64_t yy = y + dy;
            if (yy < 0 || yy >= h)
                continue;
            int64_t b, e;
            shiftedRange(w, dx, b, e);
            for (int64_t ch = 0; ch < c; ++ch) {
                const T* gr = gn + ch * plane;
                const T* qr = qn + ch * plane + yy * w + dx;
                for (int64_t x = b; x < e; ++x)
                    out[x] += gr[x] * qr[x];
            }
        }
    }
}

// ---- instruction-set clones ------------------------------------------------------------------
// Block shapes: AVX-512 has 32 registers of 16 floats (8 classes x 2 vectors of accumulators),
// AVX2 16 registers of 8 floats (6 x 2), baseline SSE2 16 registers of 4 floats (3 x 1 pairs).

enum class Kind { kForward, kTransposed, kKernelGrad };

template <Kind kind, typename F, int CB, int XB>
CONVCRF_INLINE void rowsOf(const float* a, const float* b, int64_t c, int64_t h, int64_t w,
                           int32_t k, float* out, int64_t begin, int64_t end)
{
    if constexpr (kind == Kind::kForward)
        forwardRows<F, CB, XB>(a, b, c, h, w, k, out, begin, end);
    else if constexpr (kind == Kind::kTransposed)
        transposedRows<F, CB, XB>(a, b, c, h, w, k, out, begin, end);
    else
        kernelGradRows<F, CB, XB>(a, b, c, h, w, k, out, begin, end);
}

#define CONVCRF_MP_CLONES(kind, name)                                                             \
    CONVCRF_TARGET_AVX512 void name##Avx512(const float* a, const float* b, int64_t c, int64_t h, \
                                            int64_t w, int32_t k, float* o, int64_t s, int64_t e) \
    {                                                                                             \
        rowsOf<kind, FloatVec16, 8, 2>(a, b, c, h, w, k, o, s, e);                                \
    }                                                                                             \
    CONVCRF_TARGET_AVX2 void name##Avx2(const float* a, const float* b, int64_t c, int64_t h,     \
                                        int64_t w, int32_t k, float* o, int64_t s, int64_t e)     \
    {                                                                                             \
        rowsOf<kind, FloatVec, 6, 2>(a, b, c, h, w, k, o, s, e);                                  \
    }                                                                                             \
    void name##Baseline(const float* a, const float* b, int64_t c, int64_t h, int64_t w,          \
                        int32_t k, float* o, int64_t s, int64_t e)                                \
    {                                                                                             \
        rowsOf<kind, FloatVec, 3, 1>(a, b, c, h, w, k, o, s, e);                                  \
    }

CONVCRF_MP_CLONES(Kind::kForward, forwardRowsF32)
CONVCRF_MP_CLONES(Kind::kTransposed, transposedRowsF32)
CONVCRF_MP_CLONES(Kind::kKernelGrad, kernelGradRowsF32)

using RowsF32 = void (*)(const float*, const float*, int64_t, int64_t, int64_t, int32_t, float*,
                         int64_t, int64_t);

// One entry point: validation before anything is allocated or touched, then the rows on the
// pool. `rowsF32` runs blocks of rows in float; `referenceRow` one row in double.
template <typename T, typename ReferenceRow>
int32_t runWindowed(const T* a, const T* b, int64_t n, int64_t c, int64_t h, int64_t w, int32_t k,
                    T* out, int32_t threads, bool emptyWhenNoChannels, RowsF32 rowsF32,
                    ReferenceRow referenceRow)
{
    if (Status s = checkWindowedShapes(n, c, h, w, k, sizeof(T)))
        return s;
    if (n == 0 || h == 0 || w == 0 || (emptyWhenNoChannels && c == 0))
        return kSuccess;
    if ((c > 0 && (!a || !b)) || !out)
        return kErrorNullPointer;
    return parallelFor(n * h, threads, [&](int64_t begin, int64_t end) {
        if constexpr (std::is_same<T, float>::value) {
            rowsF32(a, b, c, h, w, k, out, begin, end);
        } else {
            for (int64_t row = begin; row < end; ++row)
                referenceRow(a, b, c, h, w, k, out, row);
        }
    });
}

}  // namespace
}  // namespace convcrf

using namespace convcrf;

extern "C" {

int32_t convcrf_message_passing_f32(const float* q, const float* kernel, int64_t n, int64_t c,
                                    int64_t h, int64_t w, int32_t k, float* out, int32_t threads)
{
    return runWindowed<float>(q, kernel, n, c, h, w, k, out, threads, true,
                              pickClone(forwardRowsF32Avx512, forwardRowsF32Avx2,
                                        forwardRowsF32Baseline),
                              referenceForwardRow<float>);
}

int32_t convcrf_message_passing_f64(const double* q, const double* kernel, int64_t n, int64_t c,
                                    int64_t h, int64_t w, int32_t k, double* out, int32_t threads)
{
    return runWindowed<double>(q, kernel, n, c, h, w, k, out, threads, true, nullptr,
                               referenceForwardRow<double>);
}

int32_t convcrf_message_passing_transposed_f32(const float* g, const float* kernel, int64_t n,
                                               int64_t c, int64_t h, int64_t w, int32_t k,
                                               float* out, int32_t threads)
{
    return runWindowed<float>(g, kernel, n, c, h, w, k, out, threads, true,
                              pickClone(transposedRowsF32Avx512, transposedRowsF32Avx2,
                                        transposedRowsF32Baseline),
                              referenceTransposedRow<float>);
}

int32_t convcrf_message_passing_transposed_f64(const double* g, const double* kernel, int64_t n,
                                               int64_t c, int64_t h, int64_t w, int32_t k,
                                               double* out, int32_t threads)
{
    return runWindowed<double>(g, kernel, n, c, h, w, k, out, threads, true, nullptr,
                               referenceTransposedRow<double>);
}

// The kernel gradient is [N, k*k, H, W]: with no classes it is all zeros, not empty.
int32_t convcrf_message_passing_kernel_grad_f32(const float* g, const float* q, int64_t n,
                                                int64_t c, int64_t h, int64_t w, int32_t k,
                                                float* out, int32_t threads)
{
    return runWindowed<float>(g, q, n, c, h, w, k, out, threads, false,
                              pickClone(kernelGradRowsF32Avx512, kernelGradRowsF32Avx2,
                                        kernelGradRowsF32Baseline),
                              referenceKernelGradRow<float>);
}

int32_t convcrf_message_passing_kernel_grad_f64(const double* g, const double* q, int64_t n,
                                                int64_t c, int64_t h, int64_t w, int32_t k,
                                                double* out, int32_t threads)
{
    return runWindowed<double>(g, q, n, c, h, w, k, out, threads, false, nullptr,
                               referenceKernelGradRow<double>);
}

}  // extern "C"
