// message_passing.cpp: message passing, its transposed form (gradient w.r.t. q) and its
// gradient w.r.t. the kernel (op contract and gradients in docs/ops.md).
//
// float path, per output row (one task of the thread pool), in blocks of x (XB vectors):
//   * the rows of q (or g) it reads are zero-padded copies (row_buffers.h), so every window
//     position is a plain shifted vector load with no bounds test;
//   * the kernel (or g, for the kernel gradient) is read in place and the results are stored
//     in place; only the blocks that overhang the row (the image's last columns, and for the
//     transposed pass the first and last blocks, whose kernel reads are shifted) go through a
//     small zero-padded scratch. Copying whole rows instead cost 30 % of the time (perf);
//     the next row's kernel and input rows are prefetched;
//   * the sum over the k*k window keeps the accumulators of CB channels x XB vectors in
//     registers (accumulate below): one kernel load serves CB channels, one input load feeds
//     one FMA, each output is stored once. The window positions of one window row are a
//     loop with two pointer increments, so the CB input rows need only CB - 1 offset
//     registers (an arbitrary list of positions made GCC spill its 16 addresses).
// The double path (gradcheck only) keeps the plain row loops of referenceRow* below.
#include "convcrf_cpu.h"

#include "cpu_common.h"
#include "row_buffers.h"
#include "thread_pool.h"
#include "validation.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#if CONVCRF_X86_CLONES
#include <immintrin.h>
#endif

namespace convcrf {
namespace {

// acc[cb][j] += sum over t < count of kernel(t)[j] * input(t, cb)[j], vectors j of L floats:
// window position t reads the kernel at kp + t * kStep + j * L and input row cb at
// qp + t * qStep + cb * qStride + j * L, with qStride = 1 when kUnitStride.
// Otherwise one pointer per input row, each moved by qStep: left to itself GCC turned the
// CB x XB addresses into as many loop-invariant offsets and spilled them (extra loads on the
// ports this loop is bound by); the empty asm keeps each row pointer a register of its own,
// and the XB vectors of a row become displacements of one address.
template <typename F, int CB, int XB, bool kUnitStride = false>
CONVCRF_INLINE void accumulate(F (&acc)[CB][XB], const float* kp, int64_t kStep, const float* qp,
                               int64_t qStep, int64_t qStride, int64_t count)
{
    constexpr int64_t L = lanesOf<F>();
    const float* row[CB];
#pragma GCC unroll 16
    for (int cb = 0; cb < CB; ++cb)
        row[cb] = qp + (kUnitStride ? cb : cb * qStride);
    for (int64_t t = 0; t < count; ++t, kp += kStep, qp += qStep) {
        F kv[XB];
#pragma GCC unroll 4
        for (int j = 0; j < XB; ++j)
            kv[j] = loadAs<F>(kp + j * L);
#pragma GCC unroll 16
        for (int cb = 0; cb < CB; ++cb) {
#pragma GCC unroll 4
            for (int j = 0; j < XB; ++j) {
                const float* in = kUnitStride ? qp + cb + j * L : row[cb] + j * L;
                acc[cb][j] += kv[j] * loadAs<F>(in);
            }
            if constexpr (!kUnitStride) {
                row[cb] += qStep;
                CONVCRF_OPAQUE_POINTER(row[cb]);
            }
        }
    }
}

template <typename F, int CB, int XB>
CONVCRF_INLINE void zero(F (&acc)[CB][XB])
{
#pragma GCC unroll 16
    for (int cb = 0; cb < CB; ++cb)
#pragma GCC unroll 4
        for (int j = 0; j < XB; ++j)
            acc[cb][j] = F{};
}

// Row cb of the block goes to out + cb * outStride: all XB vectors when `columns` covers the
// block, else only the first `columns` floats (through `spill`, CB x XB vectors of scratch).
template <typename F, int CB, int XB>
CONVCRF_INLINE void store(const F (&acc)[CB][XB], float* out, int64_t outStride, int64_t columns,
                          float* spill)
{
    constexpr int64_t L = lanesOf<F>(), block = L * XB;
    float* dst = columns >= block ? out : spill;
    const int64_t stride = columns >= block ? outStride : block;
#pragma GCC unroll 16
    for (int cb = 0; cb < CB; ++cb)
#pragma GCC unroll 4
        for (int j = 0; j < XB; ++j)
            storeAs<F>(dst + cb * stride + j * L, acc[cb][j]);
    if (columns < block)
        for (int cb = 0; cb < CB; ++cb)
            std::memcpy(out + cb * outStride, spill + cb * block,
                        static_cast<size_t>(columns) * sizeof(float));
}

// fn(std::integral_constant<int, R>) with R = rows (1 <= rows <= CB): the register block for
// a run-time number of rows, every size compiled.
template <int CB, typename Fn>
CONVCRF_INLINE void withRows(int64_t rows, Fn&& fn)
{
    if constexpr (CB > 1) {
        if (rows < CB) {
            withRows<CB - 1>(rows, fn);
            return;
        }
    }
    fn(std::integral_constant<int, CB>{});
}

// Splits `count` rows into ceil(count / most) blocks of nearly equal size (21 classes in
// blocks of at most 8 are 7 + 7 + 7, not 8 + 8 + 5: every block keeps its registers busy).
struct Blocks {
    int64_t count, blocks, base, extra;
    Blocks(int64_t count, int64_t most)
        : count(count), blocks(count > 0 ? (count + most - 1) / most : 0),
          base(blocks ? count / blocks : 0), extra(blocks ? count % blocks : 0) {}
    int64_t begin(int64_t b) const { return b * base + std::min(b, extra); }
    int64_t size(int64_t b) const { return base + (b < extra ? 1 : 0); }
};

// Per-thread buffers, kept across calls (pool workers live as long as the process).
struct Scratch {
    PaddedRowRing ring;        // padded rows of q (forward, kernel gradient) or g (transposed)
    std::vector<float> edge;   // kernel (or g) columns of the blocks that overhang the row
    std::vector<float> spill;  // one register block of output columns beyond the image
};

thread_local Scratch tScratch;

// dst[i] = src[begin + i] for i in [0, count), zero where begin + i is outside [0, w).
inline void copyClipped(const float* src, int64_t w, int64_t begin, int64_t count, float* dst)
{
    const int64_t lo = std::min(count, std::max<int64_t>(0, -begin));
    const int64_t hi = std::max(lo, std::min(count, w - begin));
    std::fill(dst, dst + lo, 0.0f);
    std::memcpy(dst + lo, src + begin + lo, static_cast<size_t>(hi - lo) * sizeof(float));
    std::fill(dst + hi, dst + count, 0.0f);
}

// Asks for the w floats at p[0, w) ahead of use: the kernel's k*k planes and the input rows
// of the next output row are more streams than the hardware prefetcher follows (perf showed
// the loop waiting on the kernel's loads).
inline void prefetchRow(const float* p, int64_t w)
{
    for (int64_t x = 0; x < w; x += 16)
        __builtin_prefetch(p + x);
    __builtin_prefetch(p + w - 1);
}

// Row y of `channels` planes of image n of a [N, channels, h, w] tensor.
inline void prefetchPlanes(const float* tensor, int64_t n, int64_t channels, int64_t h, int64_t w,
                           int64_t y)
{
    if (y < 0 || y >= h)
        return;
    const float* base = tensor + (n * channels * h + y) * w;
    for (int64_t ch = 0; ch < channels; ++ch)
        prefetchRow(base + ch * h * w, w);
}

// ---- forward: M[c,y,x] = sum_o K[o,y,x] q[c,y+dy,x+dx] -------------------------------------
// The kernel is indexed by the output column: read in place except in the last, partial block.

template <typename F, int CB, int XB>
CONVCRF_INLINE void forwardRows(const float* q, const float* kernel, int64_t c, int64_t h,
                                int64_t w, int32_t k, float* messages, int64_t begin, int64_t end)
{
    constexpr int64_t block = lanesOf<F>() * XB;
    const int32_t r = k / 2;
    const int64_t kk = int64_t(k) * k, plane = h * w;
    const RowGeometry geo = makeRowGeometry(c, h, w, r, block);
    const int64_t fullEnd = w / block * block;  // blocks before this column lie inside the row
    const Blocks classes(c, CB);
    Scratch& s = tScratch;
    s.ring.reset(geo, k);
    s.edge.resize(static_cast<size_t>(kk * block));
    s.spill.resize(static_cast<size_t>(CB * block));
    const float* rows[kMaxFilterSize];
    for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / h, y = task % h;
        const float* kn = kernel + (n * kk * h + y) * w;  // offset plane 0, row y
        float* mn = messages + (n * c * h + y) * w;
        const int32_t dyBegin = static_cast<int32_t>(std::max<int64_t>(-r, -y));
        const int32_t dyEnd = static_cast<int32_t>(std::min<int64_t>(r, h - 1 - y));
        for (int32_t dy = dyBegin; dy <= dyEnd; ++dy)
            rows[dy + r] = s.ring.row(q, n, y + dy);
        if (fullEnd < w)
            for (int64_t o = 0; o < kk; ++o)
                copyRowZeroTail(kn + o * plane + fullEnd, w - fullEnd, s.edge.data() + o * block,
                                block);
        if (task + 1 < end && y + 1 < h) {  // the next row's kernel and new q row
            prefetchPlanes(kernel, n, kk, h, w, y + 1);
            prefetchPlanes(q, n, c, h, w, y + 1 + r);
        }
        for (int64_t x0 = 0; x0 < w; x0 += block) {
            const bool inside = x0 < fullEnd;
            const float* kBase = inside ? kn + x0 : s.edge.data();
            const int64_t kPlane = inside ? plane : block;
            for (int64_t b = 0; b < classes.blocks; ++b) {
                const int64_t c0 = classes.begin(b);
                withRows<CB>(classes.size(b), [&](auto rowsTag) CONVCRF_LAMBDA_INLINE {
                    constexpr int R = decltype(rowsTag)::value;
                    F acc[R][XB];
                    zero(acc);
                    for (int32_t dy = dyBegin; dy <= dyEnd; ++dy)  // dx = -r .. r: kernel planes
                        accumulate(acc, kBase + offsetChannel(dy, -r, r, k) * kPlane, kPlane,
                                   rows[dy + r] + c0 * geo.paddedStride + x0, 1,
                                   geo.paddedStride, k);
                    store(acc, mn + c0 * plane + x0, plane, w - x0, s.spill.data());
                });
            }
        }
    }
}

// ---- transposed: G[c,y,x] = sum_o K[o,y-dy,x-dx] g[c,y-dy,x-dx] ----------------------------
// Both the kernel and g are read at x - dx. Blocks at least r columns away from both ends of
// the row read the kernel in place; the first and last blocks copy the shifted kernel columns
// they need (zeros outside the image) into `edge`.

template <typename F, int CB, int XB>
CONVCRF_INLINE void transposedRows(const float* g, const float* kernel, int64_t c, int64_t h,
                                   int64_t w, int32_t k, float* out, int64_t begin, int64_t end)
{
    constexpr int64_t block = lanesOf<F>() * XB;
    const int32_t r = k / 2;
    const int64_t kk = int64_t(k) * k, plane = h * w;
    const RowGeometry geo = makeRowGeometry(c, h, w, r, block);
    const Blocks classes(c, CB);
    Scratch& s = tScratch;
    s.ring.reset(geo, k);
    s.edge.resize(static_cast<size_t>(kk * block));
    s.spill.resize(static_cast<size_t>(CB * block));
    const float* rows[kMaxFilterSize];
    for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / h, y = task % h;
        const float* kn = kernel + n * kk * plane;
        float* on = out + (n * c * h + y) * w;
        // Window row dy reads source row y - dy.
        const int32_t dyBegin = static_cast<int32_t>(std::max<int64_t>(-r, y - (h - 1)));
        const int32_t dyEnd = static_cast<int32_t>(std::min<int64_t>(r, y));
        for (int32_t dy = dyBegin; dy <= dyEnd; ++dy)
            rows[dy + r] = s.ring.row(g, n, y - dy);
        if (task + 1 < end && y + 1 < h) {  // plane o(dy, dx) at row y + 1 - dy, new g row
            for (int32_t dy = -r; dy <= r; ++dy)
                if (y + 1 - dy >= 0 && y + 1 - dy < h)
                    for (int32_t dx = -r; dx <= r; ++dx)
                        prefetchRow(kn + offsetChannel(dy, dx, r, k) * plane + (y + 1 - dy) * w, w);
            prefetchPlanes(g, n, c, h, w, y + 1 + r);
        }
        for (int64_t x0 = 0; x0 < w; x0 += block) {
            const bool inPlace = x0 >= r && x0 + block + r <= w;
            if (!inPlace)  // edge[o][i] = K[o, y-dy, x0+i-dx], zero outside the row
                for (int32_t dy = dyBegin; dy <= dyEnd; ++dy)
                    for (int32_t dx = -r; dx <= r; ++dx) {
                        const int64_t o = offsetChannel(dy, dx, r, k);
                        copyClipped(kn + o * plane + (y - dy) * w, w, x0 - dx, block,
                                    s.edge.data() + o * block);
                    }
            for (int64_t b = 0; b < classes.blocks; ++b) {
                const int64_t c0 = classes.begin(b);
                withRows<CB>(classes.size(b), [&](auto rowsTag) CONVCRF_LAMBDA_INLINE {
                    constexpr int R = decltype(rowsTag)::value;
                    F acc[R][XB];
                    zero(acc);
                    for (int32_t dy = dyBegin; dy <= dyEnd; ++dy) {
                        // Position dx = -r + t: kernel plane o(dy, -r) + t, column x0 + r - t.
                        const int64_t o = offsetChannel(dy, -r, r, k);
                        const float* kp = inPlace ? kn + o * plane + (y - dy) * w + x0 + r
                                                  : s.edge.data() + o * block;
                        accumulate(acc, kp, inPlace ? plane - 1 : block,
                                   rows[dy + r] + c0 * geo.paddedStride + 2 * r + x0, -1,
                                   geo.paddedStride, k);
                    }
                    store(acc, on + c0 * plane + x0, plane, w - x0, s.spill.data());
                });
            }
        }
    }
}

// ---- kernel gradient: gK[o,y,x] = sum_c g[c,y,x] q[c,y+dy,x+dx] ------------------------------
// The same register block with the roles swapped: its rows are the window positions dx of one
// window row (input stride 1 float: each reads the padded q row one column further), the sum
// runs over classes, and g plays the kernel (read in place except in the last, partial block).

template <typename F, int CB, int XB>
CONVCRF_INLINE void kernelGradRows(const float* g, const float* q, int64_t c, int64_t h,
                                   int64_t w, int32_t k, float* gradKernel, int64_t begin,
                                   int64_t end)
{
    constexpr int64_t block = lanesOf<F>() * XB;
    const int32_t r = k / 2;
    const int64_t kk = int64_t(k) * k, plane = h * w;
    const RowGeometry geo = makeRowGeometry(c, h, w, r, block);
    const int64_t fullEnd = w / block * block;
    const Blocks positions(k, CB);
    Scratch& s = tScratch;
    s.ring.reset(geo, k);
    s.edge.resize(static_cast<size_t>(c * block));
    s.spill.resize(static_cast<size_t>(CB * block));
    for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / h, y = task % h;
        const float* gn = g + (n * c * h + y) * w;  // class 0, row y
        float* kn = gradKernel + (n * kk * h + y) * w;
        if (fullEnd < w)
            for (int64_t ch = 0; ch < c; ++ch)
                copyRowZeroTail(gn + ch * plane + fullEnd, w - fullEnd,
                                s.edge.data() + ch * block, block);
        if (task + 1 < end && y + 1 < h) {  // the next row's g and new q row
            prefetchPlanes(g, n, c, h, w, y + 1);
            prefetchPlanes(q, n, c, h, w, y + 1 + r);
        }
        for (int64_t x0 = 0; x0 < w; x0 += block) {
            const bool inside = x0 < fullEnd;
            const int64_t columns = std::min(block, w - x0);
            const float* gBase = inside ? gn + x0 : s.edge.data();
            const int64_t gPlane = inside ? plane : block;
            for (int32_t dy = -r; dy <= r; ++dy) {
                float* outRow = kn + offsetChannel(dy, -r, r, k) * plane + x0;
                const int64_t yy = y + dy;
                if (yy < 0 || yy >= h) {  // the whole window row is outside: zeros
                    for (int32_t j = 0; j < k; ++j)
                        std::fill(outRow + j * plane, outRow + j * plane + columns, 0.0f);
                    continue;
                }
                const float* padded = s.ring.row(q, n, yy) + x0;  // dx = -r at x0
                for (int64_t b = 0; b < positions.blocks; ++b) {
                    const int64_t j0 = positions.begin(b);
                    withRows<CB>(positions.size(b), [&](auto rowsTag) CONVCRF_LAMBDA_INLINE {
                        constexpr int R = decltype(rowsTag)::value;
                        F acc[R][XB];
                        zero(acc);
                        accumulate<F, R, XB, true>(acc, gBase, gPlane, padded + j0, geo.paddedStride, 1, c);
                        store(acc, outRow + j0 * plane, plane, w - x0, s.spill.data());
                    });
                }
            }
        }
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

#if CONVCRF_X86_CLONES
// ---- AVX-512, k <= 7: column sums --------------------------------------------------------
// The window sum regrouped so that no input vector is loaded across a cache line:
//   forward     M[c,y,x] = sum_dx S_dx[c, x+dx],  S_dx[c,u] = sum_dy K[o(dy,dx), y, u-dx] q[c, y+dy, u]
//   transposed  G[c,y,x] = sum_dx S_dx[c, x-dx],  S_dx[c,u] = sum_dy K[o(dy,dx), y-dy, u] g[c, y-dy, u]
// u runs over whole 16-float vectors of 64-byte-aligned padded rows: each input vector is
// loaded once per window row and feeds k FMAs, each kernel vector (unaligned) feeds CB classes,
// and the k x CB sums stay in registers; the sums over dx then read k shifted vectors per
// output vector. In the loop above every FMA loaded an input vector that straddled two cache
// lines (16 floats at a shift of dx), and such loads, not the FMAs, bounded it: in a
// micro-benchmark the regrouped core ran at 2x the rate; with the stores and shifted reads of
// the sums, the passes gain up to 1.6x for k <= 7 (figures at columnRowsFor).
// The last vector of each row reads its kernel columns through lane masks (zero outside the
// row, nothing read there). Before it, the forward's kernel reads at u - dx may leave the row
// into a neighbouring row (never the tensor: plane o >= dx + r), and only reach sums S_dx[u]
// whose output u - dx is outside the image; the transposed reads stay inside the row. Inputs
// outside the image are the ring's zeros, so every sum an output uses is the contract's.

// S[t][cb] = sum over window rows dy of kernel(dy, t) * input row (dy, class cb) at vector u,
// t = dx + r. The kernel vector of (dy, t) is read at
//   kBase + o(dy, -r) * kPlane + (dy - dyBegin) * kRowStep + t * kStep
// (the callers set the four so that this is column u - dx of row y, or column u of row y - dy),
// with kMasked only the lanes of masks[t] (the columns inside the row; the others read as 0
// and, AVX-512 masked loads suppressing faults, never touch memory).
template <int K, int CB, bool kMasked>
CONVCRF_TARGET_AVX512 CONVCRF_INLINE void columnSums(
    FloatVec16 (&S)[K][CB], const float* const* rows, int32_t dyBegin, int32_t dyEnd,
    int64_t channelStride, int64_t u, const float* kBase, int64_t kPlane, int64_t kRowStep,
    int64_t kStep, const __mmask16* masks)
{
    constexpr int r = K / 2;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t)
#pragma GCC unroll 8
        for (int cb = 0; cb < CB; ++cb)
            S[t][cb] = FloatVec16{};
    for (int32_t dy = dyBegin; dy <= dyEnd; ++dy) {
        FloatVec16 in[CB];
        const float* row = rows[dy + r] + u;
#pragma GCC unroll 8
        for (int cb = 0; cb < CB; ++cb)
            in[cb] = loadAs<FloatVec16>(row + cb * channelStride);
        const float* kp = kBase + offsetChannel(dy, -r, r, K) * kPlane + (dy - dyBegin) * kRowStep;
#pragma GCC unroll 16
        for (int t = 0; t < K; ++t) {
            FloatVec16 kv;
            if constexpr (kMasked)
                kv = _mm512_maskz_loadu_ps(masks[t], kp + t * kStep);
            else
                kv = loadAs<FloatVec16>(kp + t * kStep);
            asm("" : "+v"(kv));  // one load serves CB classes (GCC would fold it into each FMA)
#pragma GCC unroll 8
            for (int cb = 0; cb < CB; ++cb)
                S[t][cb] += kv * in[cb];
        }
    }
}

// Lanes [lo, hi) of a 16-lane mask (clamped to 0..16).
inline __mmask16 laneMask(int64_t lo, int64_t hi)
{
    lo = std::max<int64_t>(0, lo);
    hi = std::min<int64_t>(16, hi);
    if (hi <= lo)
        return 0;
    return static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

// The per-thread scratch of the column sums: S_dx rows ([CB][K][sumStride], zero padding of
// `pad` on both sides), 64-byte aligned.
struct ColumnScratch {
    std::vector<float> storage;
    float* sums = nullptr;
    void reset(int64_t count)
    {
        storage.assign(static_cast<size_t>(count + 16), 0.0f);
        const uintptr_t address = reinterpret_cast<uintptr_t>(storage.data());
        sums = storage.data() + (((address + 63) & ~uintptr_t(63)) - address) / sizeof(float);
    }
};

thread_local ColumnScratch tColumns;

// What the register blocks of one output row share (columnBlock).
struct ColumnRow {
    const float* rows[kMaxFilterSize];  // padded input rows by dy + r, at column 0
    int32_t dyBegin, dyEnd;
    const float* kBase;  // kernel vector (dy, t) of vector u: kBase + u + o(dy,-r) * plane
    int64_t kRowStep, kStep;  //   + (dy - dyBegin) * kRowStep + t * kStep
    int64_t plane, w, channelStride, vw, tail, pad, sumStride;
    const __mmask16* masks;  // kernel lanes inside the row, vector `tail`
    __mmask16 outMask;       // output lanes inside the row, vector `tail`
    float* sums;
    float* out;  // output row, class 0
};

// Classes [c0, c0 + R) of one output row: the column sums of every vector, then the outputs.
template <int K, int R, bool kTransposed>
CONVCRF_TARGET_AVX512 CONVCRF_INLINE void columnBlock(const ColumnRow& row, int64_t c0)
{
    constexpr int64_t L = 16;
    constexpr int r = K / 2;
    const float* blockRows[kMaxFilterSize];
    for (int32_t dy = row.dyBegin; dy <= row.dyEnd; ++dy)
        blockRows[dy + r] = row.rows[dy + r] + c0 * row.channelStride;
    for (int64_t u = 0; u < row.vw; u += L) {
        FloatVec16 S[K][R];
        if (u == row.tail)
            columnSums<K, R, true>(S, blockRows, row.dyBegin, row.dyEnd, row.channelStride, u,
                                   row.kBase + u, row.plane, row.kRowStep, row.kStep, row.masks);
        else
            columnSums<K, R, false>(S, blockRows, row.dyBegin, row.dyEnd, row.channelStride, u,
                                    row.kBase + u, row.plane, row.kRowStep, row.kStep, row.masks);
        float* sums = row.sums + row.pad + u;
#pragma GCC unroll 8
        for (int cb = 0; cb < R; ++cb)
#pragma GCC unroll 16
            for (int t = 0; t < K; ++t)
                storeAs<FloatVec16>(sums + (cb * K + t) * row.sumStride, S[t][cb]);
    }
    // Outputs: the k shifted sums (x + dx forward, x - dx transposed).
    for (int cb = 0; cb < R; ++cb) {
        const float* sum = row.sums + cb * K * row.sumStride + row.pad;
        float* dst = row.out + (c0 + cb) * row.plane;
        for (int64_t x = 0; x < row.w; x += L) {
            FloatVec16 total{};
#pragma GCC unroll 16
            for (int t = 0; t < K; ++t)
                total += loadAs<FloatVec16>(sum + t * row.sumStride + x +
                                            (kTransposed ? r - t : t - r));
            if (x + L <= row.w)
                storeAs<FloatVec16>(dst + x, total);
            else
                _mm512_mask_storeu_ps(dst + x, row.outMask, total);
        }
    }
}

// columnBlock for a run-time number of classes `rows` (1 <= rows <= CB).
template <int K, int CB, bool kTransposed>
CONVCRF_TARGET_AVX512 CONVCRF_INLINE void columnBlockFor(int64_t rows, const ColumnRow& row,
                                                         int64_t c0)
{
    if constexpr (CB > 1) {
        if (rows < CB) {
            columnBlockFor<K, CB - 1, kTransposed>(rows, row, c0);
            return;
        }
    }
    columnBlock<K, CB, kTransposed>(row, c0);
}

// Output rows [begin, end) of the forward (kTransposed false) or transposed pass, AVX-512.
template <int K, int CB, bool kTransposed>
CONVCRF_TARGET_AVX512 CONVCRF_INLINE void columnRows(const float* input, const float* kernel,
                                                     int64_t c, int64_t h, int64_t w, float* out,
                                                     int64_t begin, int64_t end)
{
    constexpr int64_t L = 16;
    constexpr int r = K / 2, kk = K * K;
    const int64_t plane = h * w;
    const int64_t pad = roundUp(r, L);
    const RowGeometry geo = makeRowGeometry(c, h, w, pad, L);  // paddedStride: multiple of 16
    ColumnRow row;
    row.plane = plane;
    row.w = w;
    row.channelStride = geo.paddedStride;
    row.vw = geo.vectorWidth;
    row.pad = pad;
    row.sumStride = row.vw + 2 * pad;
    // The last vector of a row reads the kernel through lane masks: columns u - dx (forward)
    // or u (transposed) inside [0, w).
    row.tail = (w - 1) / L * L;
    __mmask16 masks[K];
    for (int t = 0; t < K; ++t) {
        const int64_t dx = t - r;
        masks[t] = kTransposed ? laneMask(0, w - row.tail)
                               : laneMask(dx - row.tail, w - row.tail + dx);
    }
    row.masks = masks;
    row.outMask = laneMask(0, w - row.tail);
    row.kRowStep = kTransposed ? -w : 0;
    row.kStep = kTransposed ? plane : plane - 1;
    const Blocks classes(c, CB);
    Scratch& s = tScratch;
    ColumnScratch& cs = tColumns;
    s.ring.reset(geo, K);
    cs.reset(CB * K * row.sumStride);
    row.sums = cs.sums;
    for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / h, y = task % h;
        const float* kn = kernel + n * kk * plane;
        row.out = out + (n * c * h + y) * w;
        if (kTransposed) {  // window row dy reads input row y - dy
            row.dyBegin = static_cast<int32_t>(std::max<int64_t>(-r, y - (h - 1)));
            row.dyEnd = static_cast<int32_t>(std::min<int64_t>(r, y));
        } else {
            row.dyBegin = static_cast<int32_t>(std::max<int64_t>(-r, -y));
            row.dyEnd = static_cast<int32_t>(std::min<int64_t>(r, h - 1 - y));
        }
        for (int32_t dy = row.dyBegin; dy <= row.dyEnd; ++dy)
            row.rows[dy + r] = s.ring.row(input, n, kTransposed ? y - dy : y + dy) + pad;
        // Kernel vector (dy, t): the forward reads column u - dx = u + r - t of row y, the
        // transposed column u of row y - dy.
        row.kBase = kTransposed ? kn + (y - row.dyBegin) * w : kn + y * w + r;
        if (task + 1 < end && y + 1 < h) {  // the next row's kernel and new input row
            if (kTransposed) {
                for (int32_t dy = -r; dy <= r; ++dy)
                    if (y + 1 - dy >= 0 && y + 1 - dy < h)
                        for (int32_t j = 0; j < K; ++j)
                            prefetchRow(kn + (offsetChannel(dy, -r, r, K) + j) * plane +
                                            (y + 1 - dy) * w, w);
                prefetchPlanes(input, n, c, h, w, y + 1 + r);
            } else {
                prefetchPlanes(kernel, n, kk, h, w, y + 1);
                prefetchPlanes(input, n, c, h, w, y + 1 + r);
            }
        }
        for (int64_t b = 0; b < classes.blocks; ++b)
            columnBlockFor<K, CB, kTransposed>(classes.size(b), row, classes.begin(b));
    }
}

#endif  // CONVCRF_X86_CLONES

// ---- instruction-set clones ------------------------------------------------------------------
// Register blocks (CB rows x XB vectors of accumulators): AVX-512 has 32 registers of 16 floats
// (8 x 2), AVX2 16 registers of 8 floats (6 x 2), x86's baseline SSE2 16 registers of 4 floats
// (3 x 1 eight-float vectors), AArch64 32 Advanced SIMD registers of 4 floats (8 x 2: 16
// accumulators; its FMAs take no memory operand, so the input vectors need registers too).

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

#if defined(__aarch64__)
constexpr int kBaselineRows = 6, kBaselineVectors = 2;
#else
constexpr int kBaselineRows = 3, kBaselineVectors = 1;
#endif

#define CONVCRF_MP_BASELINE(kind, name)                                                           \
    void name##Baseline(const float* a, const float* b, int64_t c, int64_t h, int64_t w,          \
                        int32_t k, float* o, int64_t s, int64_t e)                                \
    {                                                                                             \
        rowsOf<kind, BaselineVec, kBaselineRows, kBaselineVectors>(a, b, c, h, w, k, o, s, e);       \
    }
#define CONVCRF_MP_AVX2(kind, name)                                                               \
    CONVCRF_TARGET_AVX2 void name##Avx2(const float* a, const float* b, int64_t c, int64_t h,     \
                                        int64_t w, int32_t k, float* o, int64_t s, int64_t e)     \
    {                                                                                             \
        rowsOf<kind, FloatVec, 6, 2>(a, b, c, h, w, k, o, s, e);                                  \
    }
#define CONVCRF_MP_X86(kind, name)                                                                \
    CONVCRF_TARGET_AVX512 void name##Avx512(const float* a, const float* b, int64_t c, int64_t h, \
                                            int64_t w, int32_t k, float* o, int64_t s, int64_t e) \
    {                                                                                             \
        rowsOf<kind, FloatVec16, 8, 2>(a, b, c, h, w, k, o, s, e);                                \
    }                                                                                             \
    CONVCRF_MP_AVX2(kind, name)

CONVCRF_MP_BASELINE(Kind::kForward, forwardRowsF32)
CONVCRF_MP_BASELINE(Kind::kTransposed, transposedRowsF32)
CONVCRF_MP_BASELINE(Kind::kKernelGrad, kernelGradRowsF32)
#if CONVCRF_X86_CLONES
// The column sums for k <= 13 (K * CB sums + CB inputs + 1 kernel vector within 32 registers),
// the register block above for larger k.
CONVCRF_MP_AVX2(Kind::kForward, forwardRowsF32)
CONVCRF_MP_AVX2(Kind::kTransposed, transposedRowsF32)

// The column sums for k <= 7 (K * CB sums + CB inputs + 1 kernel vector within 32 registers:
// 3 x 7, 5 x 4, 7 x 3), the register block above for larger k. Measured at 2 threads on the
// 21 x 94 x 125 grid (fastest of 5 runs, ms, column sums / register block): forward k=3
// 0.114 / 0.184, k=5 0.179 / 0.192, k=7 0.340 / 0.355, k=9 0.641 / 0.560, k=11 1.03 / 0.82;
// transposed k=5 0.189 / 0.241, k=7 0.350 / 0.416, k=11 1.01 / 0.99; with the masked last
// vector, 1 thread on 12 rows (in cache): k=9 0.120 / 0.107, k=11 0.177 / 0.152, k=13 0.242 /
// 0.197. From k=9 on only 2 classes fit beside the k sums, so each kernel vector serves 2 FMAs
// and the k shifted reads of the sums no longer pay off.
template <bool kTransposed>
CONVCRF_TARGET_AVX512 CONVCRF_INLINE bool columnRowsFor(int32_t k, const float* a,
                                                        const float* b, int64_t c, int64_t h,
                                                        int64_t w, float* o, int64_t s, int64_t e)
{
    switch (k) {
    case 3: columnRows<3, 7, kTransposed>(a, b, c, h, w, o, s, e); return true;
    case 5: columnRows<5, 4, kTransposed>(a, b, c, h, w, o, s, e); return true;
    case 7: columnRows<7, 3, kTransposed>(a, b, c, h, w, o, s, e); return true;
    default: return false;
    }
}

CONVCRF_TARGET_AVX512 void forwardRowsF32Avx512(const float* a, const float* b, int64_t c,
                                                int64_t h, int64_t w, int32_t k, float* o,
                                                int64_t s, int64_t e)
{
    if (!columnRowsFor<false>(k, a, b, c, h, w, o, s, e))
        rowsOf<Kind::kForward, FloatVec16, 8, 2>(a, b, c, h, w, k, o, s, e);
}

CONVCRF_TARGET_AVX512 void transposedRowsF32Avx512(const float* a, const float* b, int64_t c,
                                                   int64_t h, int64_t w, int32_t k, float* o,
                                                   int64_t s, int64_t e)
{
    if (!columnRowsFor<true>(k, a, b, c, h, w, o, s, e))
        rowsOf<Kind::kTransposed, FloatVec16, 8, 2>(a, b, c, h, w, k, o, s, e);
}

CONVCRF_MP_X86(Kind::kKernelGrad, kernelGradRowsF32)
#endif

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
                              CONVCRF_CLONE(forwardRowsF32),
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
                              CONVCRF_CLONE(transposedRowsF32),
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
                              CONVCRF_CLONE(kernelGradRowsF32),
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
