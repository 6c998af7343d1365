// convcrf_tiles.h: the per-thread bodies of the CUDA kernels, as __host__ __device__ functions.
//
// The kernels in convcrf_kernels.cu are thin loops around these functions: stage a tile of the
// input plus its halo into shared memory (every thread copies a strided share), barrier, then
// every thread computes its pixel from the tile. Keeping the bodies here lets the host test
// (plugins/cuda/tests) run the exact indexing of the tiled and fallback kernels on the CPU by
// emulating the block's threads (all stage calls, then all compute calls, which is what the
// barrier guarantees), and compare with the CPU library. Arithmetic comes from convcrf_math.h.
#pragma once

#include "../common/convcrf_math.h"

#include <cuda_fp16.h>

#include <cstddef>

namespace convcrf {
namespace cuda {

// Fully unrolled loops over kClassChunk keep the accumulators in registers on the device.
#if defined(__CUDA_ARCH__)
#define CONVCRF_UNROLL _Pragma("unroll")
#else
#define CONVCRF_UNROLL
#endif

constexpr int kTileW = 32;       // threads along x: one warp per row, coalesced
constexpr int kTileH = 8;        // rows per block: 256 threads
constexpr int kClassChunk = 16;  // most classes accumulated in registers at once

CONVCRF_HD float toFloat(float v)
{
    return v;
}

CONVCRF_HD float toFloat(__half v)
{
    return __half2float(v);
}

template <typename T>
CONVCRF_HD T fromFloat(float v);

template <>
CONVCRF_HD float fromFloat<float>(float v)
{
    return v;
}

template <>
CONVCRF_HD __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

// Width and height of the staged tile including the halo of `radius` pixels on each side.
CONVCRF_HD int haloWidth(int radius)
{
    return kTileW + 2 * radius;
}

CONVCRF_HD int haloHeight(int radius)
{
    return kTileH + 2 * radius;
}

// Bytes of shared memory for `channels` staged fp32 planes of one tile.
inline size_t tileBytes(int64_t channels, int radius)
{
    return static_cast<size_t>(channels) * haloWidth(radius) * haloHeight(radius) * sizeof(float);
}

// Dynamic shared memory a block may use without opting in (cudaFuncSetAttribute); staying
// below it keeps every architecture on the same code path.
constexpr size_t kSharedBudget = 48 * 1024;

// Whether gaussian_kernel stages all `d` feature planes (tiled kernel) or reads global memory.
inline bool gaussianKernelFitsTile(int64_t d, int radius)
{
    return tileBytes(d, radius) <= kSharedBudget;
}

// Classes message_passing stages per pass (1..kClassChunk), or 0 when not even one plane fits
// (then the global-memory kernel runs). Each pass re-reads the pixel's k*k K values, so the
// number of passes is minimal, and the classes are spread evenly over them (21 classes: two
// passes of 11 and 10, not 16 and 5) to keep shared memory per block, and so occupancy, low.
// Large k stages fewer classes rather than none.
inline int messagePassingClassesPerPass(int64_t c, int radius)
{
    if (c <= 0)
        return 0;
    const int64_t fit = static_cast<int64_t>(kSharedBudget / tileBytes(1, radius));
    const int64_t most = fit < kClassChunk ? fit : kClassChunk;
    if (most < 1)
        return 0;
    const int64_t passes = (c + most - 1) / most;
    return static_cast<int>((c + passes - 1) / passes);
}

// Thread `tid` of `nThreads` copies its share of `channels` planes of the tile at (y0, x0)
// plus halo from `src` ([channels, h, w]) into `tile` as fp32. Consecutive threads take
// consecutive x of one halo row (coalesced reads). Outside pixels are staged as 0.
template <typename T>
CONVCRF_HD void stageTile(const T* src, int64_t channels, int64_t h, int64_t w, int64_t y0,
                          int64_t x0, int radius, float* tile, int tid, int nThreads)
{
    const int tw = haloWidth(radius);
    const int perChannel = tw * haloHeight(radius);
    const int64_t plane = h * w;
    for (int64_t c = 0; c < channels; ++c) {
        const T* s = src + c * plane;
        float* t = tile + c * perChannel;
        for (int i = tid; i < perChannel; i += nThreads) {
            const int ty = i / tw, tx = i % tw;
            const int64_t y = y0 - radius + ty, x = x0 - radius + tx;
            t[i] = isInside(y, x, h, w) ? toFloat(s[y * w + x]) : 0.0f;
        }
    }
}

// gaussian_kernel for pixel (y0 + ty, x0 + tx) of one image from its staged tile of all `d`
// feature planes; `kernelImage` is that image's [k*k, h, w] output.
template <typename T>
CONVCRF_HD void gaussianKernelFromTile(const float* tile, int64_t d, int64_t h, int64_t w,
                                       int32_t k, int64_t y0, int64_t x0, int ty, int tx,
                                       T* kernelImage)
{
    const int r = k / 2;
    const int tw = haloWidth(r), perChannel = tw * haloHeight(r);
    const int64_t y = y0 + ty, x = x0 + tx, plane = h * w;
    if (y >= h || x >= w)
        return;
    const int centre = (ty + r) * tw + tx + r;
    T* out = kernelImage + y * w + x;
    for (int dy = -r; dy <= r; ++dy) {
        for (int dx = -r; dx <= r; ++dx) {
            float value = 0.0f;  // centre and outside neighbours stay zero
            if ((dy != 0 || dx != 0) && isInside(y + dy, x + dx, h, w)) {
                const int other = centre + dy * tw + dx;
                float dist = 0.0f;
                for (int64_t c = 0; c < d; ++c)
                    dist += squaredDifference<float, float>(tile[c * perChannel + centre],
                                                            tile[c * perChannel + other]);
                value = gaussianWeight<float>(dist);
            }
            out[int64_t(offsetChannel(dy, dx, r, k)) * plane] = fromFloat<T>(value);
        }
    }
}

// message_passing for pixel (y0 + ty, x0 + tx), classes [c0, c0 + chunk) with chunk <=
// kClassChunk (the last pass may be shorter), from the staged q tile of those classes.
// `kernelImage` is the image's [k*k, h, w] K, `messagesImage` its [C, h, w] output. Each K
// value is read once and applied to every class of the chunk (accumulators in registers). Offsets run in the CPU library's
// order so sums associate alike.
template <typename T>
CONVCRF_HD void messagePassingFromTile(const float* tile, const T* kernelImage, int chunk,
                                       int64_t c0, int64_t h, int64_t w, int32_t k, int64_t y0,
                                       int64_t x0, int ty, int tx, T* messagesImage)
{
    const int r = k / 2;
    const int tw = haloWidth(r), perChannel = tw * haloHeight(r);
    const int64_t y = y0 + ty, x = x0 + tx, plane = h * w;
    if (y >= h || x >= w)
        return;
    const T* kPixel = kernelImage + y * w + x;
    float acc[kClassChunk];
    CONVCRF_UNROLL
    for (int j = 0; j < kClassChunk; ++j)
        acc[j] = 0.0f;
    for (int dy = -r; dy <= r; ++dy) {
        for (int dx = -r; dx <= r; ++dx) {
            // Skipped rather than multiplied by the staged 0: an arbitrary K may hold inf/NaN
            // there, and the contract says outside terms are zero.
            if (!isInside(y + dy, x + dx, h, w))
                continue;
            const float weight = toFloat(kPixel[int64_t(offsetChannel(dy, dx, r, k)) * plane]);
            const int other = (ty + r + dy) * tw + tx + r + dx;
            CONVCRF_UNROLL
            for (int j = 0; j < kClassChunk; ++j)
                if (j < chunk)
                    acc[j] += weight * tile[j * perChannel + other];
        }
    }
    T* out = messagesImage + c0 * plane + y * w + x;
    CONVCRF_UNROLL
    for (int j = 0; j < kClassChunk; ++j)
        if (j < chunk)
            out[j * plane] = fromFloat<T>(acc[j]);
}

// Fallback (no shared memory): gaussian_kernel of pixel p = y * w + x of one image.
template <typename T>
CONVCRF_HD void gaussianKernelDirect(const T* featuresImage, int64_t d, int64_t h, int64_t w,
                                     int32_t k, int64_t p, T* kernelImage)
{
    const int r = k / 2;
    const int64_t plane = h * w, y = p / w, x = p % w;
    T* out = kernelImage + p;
    for (int dy = -r; dy <= r; ++dy) {
        for (int dx = -r; dx <= r; ++dx) {
            float value = 0.0f;
            if ((dy != 0 || dx != 0) && isInside(y + dy, x + dx, h, w)) {
                const int64_t other = p + int64_t(dy) * w + dx;
                float dist = 0.0f;
                for (int64_t c = 0; c < d; ++c)
                    dist += squaredDifference<T, float>(featuresImage[c * plane + p],
                                                        featuresImage[c * plane + other]);
                value = gaussianWeight<float>(dist);
            }
            out[int64_t(offsetChannel(dy, dx, r, k)) * plane] = fromFloat<T>(value);
        }
    }
}

// Fallback (no shared memory): message_passing of pixel p of one image, all classes.
template <typename T>
CONVCRF_HD void messagePassingDirect(const T* qImage, const T* kernelImage, int64_t c, int64_t h,
                                     int64_t w, int32_t k, int64_t p, T* messagesImage)
{
    const int r = k / 2;
    const int64_t plane = h * w, y = p / w, x = p % w;
    for (int64_t ch = 0; ch < c; ++ch) {
        const T* qc = qImage + ch * plane;
        float acc = 0.0f;
        for (int dy = -r; dy <= r; ++dy)
            for (int dx = -r; dx <= r; ++dx)
                if (isInside(y + dy, x + dx, h, w))
                    acc += toFloat(kernelImage[int64_t(offsetChannel(dy, dx, r, k)) * plane + p]) *
                           toFloat(qc[p + int64_t(dy) * w + dx]);
        messagesImage[ch * plane + p] = fromFloat<T>(acc);
    }
}

}  // namespace cuda
}  // namespace convcrf
