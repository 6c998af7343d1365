// convcrf_kernels.cu: CUDA kernels and launchers of the ConvCRF ops (C API in convcrf_cuda.h).
//
// Access pattern: every output pixel reads a k x k window of its neighbours, so neighbouring
// pixels share almost all of their reads. The tiled kernels therefore stage a block's tile of
// the input plus a halo of r = k/2 pixels on each side in shared memory (converted to fp32
// once), with threads laid out along the image width so global loads and stores coalesce.
//
//   gaussian_kernel: all D feature channels of the tile are staged; each thread then walks
//                    the k*k offsets and writes one K channel per offset (coalesced rows).
//   message_passing: classes are processed in chunks of kClassChunk; per chunk the q tile of
//                    those classes is staged, and each K value of the pixel is read once per
//                    chunk and applied to all classes of the chunk held in registers.
//
// When the staged tile would not fit into the default 48 KiB of shared memory (many feature
// channels), a plain kernel that reads global memory directly is used instead.
//
// All per-element arithmetic (offset channel, squared difference, Gaussian weight) comes from
// plugins/common/convcrf_math.h, the same functions the CPU library and its tests run.
#include "convcrf_cuda.h"

#include "../common/convcrf_math.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace convcrf {
namespace cuda {
namespace {

constexpr int kTileW = 32;                   // threads along x: one warp per row, coalesced
constexpr int kTileH = 8;                    // rows per block: 256 threads
constexpr int kClassChunk = 8;               // classes accumulated in registers at once
constexpr size_t kSharedBudget = 48 * 1024;  // default dynamic shared memory limit
constexpr int kMaxGridY = 65535;             // grid y/z limits; larger extents are looped
constexpr int kMaxGridZ = 65535;

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}

__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);

template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}

template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

// Width and height of the staged tile including the halo.
__host__ __device__ inline int haloWidth(int radius)
{
    return kTileW + 2 * radius;
}

__host__ __device__ inline int haloHeight(int radius)
{
    return kTileH + 2 * radius;
}

// Copy `channels` planes of the tile (plus halo) starting at `src` (a [channels, h, w] slice)
// into `tile` as fp32; pixels outside the image become 0 (they are never weighted anyway).
template <typename T>
__device__ void stageTile(const T* __restrict__ src, int64_t channels, int64_t h, int64_t w,
                          int64_t y0, int64_t x0, int radius, float* __restrict__ tile)
{
    const int tw = haloWidth(radius), th = haloHeight(radius);
    const int64_t plane = h * w;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nThreads = blockDim.x * blockDim.y;
    const int perChannel = tw * th;
    for (int64_t c = 0; c < channels; ++c) {
        const T* s = src + c * plane;
        float* t = tile + c * perChannel;
        // Consecutive threads take consecutive x of one halo row: coalesced global reads.
        for (int i = tid; i < perChannel; i += nThreads) {
            const int ty = i / tw, tx = i % tw;
            const int64_t y = y0 - radius + ty, x = x0 - radius + tx;
            t[i] = isInside(y, x, h, w) ? toFloat(s[y * w + x]) : 0.0f;
        }
    }
}

// ---- gaussian kernel -------------------------------------------------------------------

template <typename T>
__global__ void gaussianKernelTiled(const T* __restrict__ features, int64_t n, int64_t d,
                                    int64_t h, int64_t w, int32_t k, T* __restrict__ kernel)
{
    extern __shared__ float tile[];  // [d][haloHeight][haloWidth]
    const int r = k / 2;
    const int tw = haloWidth(r), perChannel = tw * haloHeight(r);
    const int64_t plane = h * w, kk = int64_t(k) * k;
    const int64_t tilesY = (h + kTileH - 1) / kTileH;
    const int64_t x0 = int64_t(blockIdx.x) * kTileW;
    for (int64_t img = blockIdx.z; img < n; img += gridDim.z) {
        for (int64_t by = blockIdx.y; by < tilesY; by += gridDim.y) {
            const int64_t y0 = by * kTileH;
            __syncthreads();  // the previous iteration's readers are done with the tile
            stageTile(features + img * d * plane, d, h, w, y0, x0, r, tile);
            __syncthreads();
            const int64_t y = y0 + threadIdx.y, x = x0 + threadIdx.x;
            if (y >= h || x >= w)
                continue;
            const int cy = threadIdx.y + r, cx = threadIdx.x + r;
            T* out = kernel + img * kk * plane + y * w + x;
            for (int dy = -r; dy <= r; ++dy) {
                const bool rowInside = y + dy >= 0 && y + dy < h;
                for (int dx = -r; dx <= r; ++dx) {
                    float value = 0.0f;  // centre and outside neighbours stay zero
                    if (rowInside && (dy != 0 || dx != 0) && x + dx >= 0 && x + dx < w) {
                        float dist = 0.0f;
                        const int centre = cy * tw + cx, other = (cy + dy) * tw + cx + dx;
                        for (int64_t c = 0; c < d; ++c)
                            dist += squaredDifference<float, float>(
                                tile[c * perChannel + centre], tile[c * perChannel + other]);
                        value = gaussianWeight<float>(dist);
                    }
                    out[int64_t(offsetChannel(dy, dx, r, k)) * plane] = fromFloat<T>(value);
                }
            }
        }
    }
}

// Fallback without shared memory: one thread per output pixel, reads global memory.
template <typename T>
__global__ void gaussianKernelDirect(const T* __restrict__ features, int64_t n, int64_t d,
                                     int64_t h, int64_t w, int32_t k, T* __restrict__ kernel)
{
    const int r = k / 2;
    const int64_t plane = h * w, kk = int64_t(k) * k, total = n * plane;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t img = i / plane, p = i % plane, y = p / w, x = p % w;
        const T* f = features + img * d * plane;
        T* out = kernel + img * kk * plane + p;
        for (int dy = -r; dy <= r; ++dy) {
            for (int dx = -r; dx <= r; ++dx) {
                float value = 0.0f;
                if ((dy != 0 || dx != 0) && isInside(y + dy, x + dx, h, w)) {
                    float dist = 0.0f;
                    const int64_t other = p + int64_t(dy) * w + dx;
                    for (int64_t c = 0; c < d; ++c)
                        dist += squaredDifference<T, float>(f[c * plane + p], f[c * plane + other]);
                    value = gaussianWeight<float>(dist);
                }
                out[int64_t(offsetChannel(dy, dx, r, k)) * plane] = fromFloat<T>(value);
            }
        }
    }
}

// ---- message passing -------------------------------------------------------------------

template <typename T>
__global__ void messagePassingTiled(const T* __restrict__ q, const T* __restrict__ kernel,
                                    int64_t n, int64_t c, int64_t h, int64_t w, int32_t k,
                                    T* __restrict__ messages)
{
    extern __shared__ float tile[];  // [kClassChunk][haloHeight][haloWidth]
    const int r = k / 2;
    const int tw = haloWidth(r), perChannel = tw * haloHeight(r);
    const int64_t plane = h * w, kk = int64_t(k) * k;
    const int64_t tilesY = (h + kTileH - 1) / kTileH;
    const int64_t x0 = int64_t(blockIdx.x) * kTileW;
    for (int64_t img = blockIdx.z; img < n; img += gridDim.z) {
        for (int64_t by = blockIdx.y; by < tilesY; by += gridDim.y) {
            const int64_t y0 = by * kTileH;
            const int64_t y = y0 + threadIdx.y, x = x0 + threadIdx.x;
            const bool active = y < h && x < w;
            const T* kPixel = kernel + img * kk * plane + y * w + x;
            for (int64_t c0 = 0; c0 < c; c0 += kClassChunk) {
                const int chunk = static_cast<int>(c - c0 < kClassChunk ? c - c0 : kClassChunk);
                __syncthreads();
                stageTile(q + (img * c + c0) * plane, chunk, h, w, y0, x0, r, tile);
                __syncthreads();
                if (!active)
                    continue;
                float acc[kClassChunk];
#pragma unroll
                for (int j = 0; j < kClassChunk; ++j)
                    acc[j] = 0.0f;
                // Offsets in the same order as the CPU library, so sums associate alike.
                for (int dy = -r; dy <= r; ++dy) {
                    for (int dx = -r; dx <= r; ++dx) {
                        // Outside terms are skipped rather than multiplied by the staged 0:
                        // an arbitrary K may hold inf/NaN there, and the contract says zero.
                        if (!isInside(y + dy, x + dx, h, w))
                            continue;
                        const float weight =
                            toFloat(kPixel[int64_t(offsetChannel(dy, dx, r, k)) * plane]);
                        const int other = (threadIdx.y + r + dy) * tw + threadIdx.x + r + dx;
#pragma unroll
                        for (int j = 0; j < kClassChunk; ++j)
                            if (j < chunk)
                                acc[j] += weight * tile[j * perChannel + other];
                    }
                }
                T* out = messages + (img * c + c0) * plane + y * w + x;
#pragma unroll
                for (int j = 0; j < kClassChunk; ++j)
                    if (j < chunk)
                        out[j * plane] = fromFloat<T>(acc[j]);
            }
        }
    }
}

// Fallback without shared memory: one thread per (pixel, class chunk), reads global memory.
template <typename T>
__global__ void messagePassingDirect(const T* __restrict__ q, const T* __restrict__ kernel,
                                     int64_t n, int64_t c, int64_t h, int64_t w, int32_t k,
                                     T* __restrict__ messages)
{
    const int r = k / 2;
    const int64_t plane = h * w, kk = int64_t(k) * k, total = n * plane;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t img = i / plane, p = i % plane, y = p / w, x = p % w;
        const T* kPixel = kernel + img * kk * plane + p;
        for (int64_t ch = 0; ch < c; ++ch) {
            const T* qc = q + (img * c + ch) * plane;
            float acc = 0.0f;
            for (int dy = -r; dy <= r; ++dy)
                for (int dx = -r; dx <= r; ++dx)
                    if (isInside(y + dy, x + dx, h, w))
                        acc += toFloat(kPixel[int64_t(offsetChannel(dy, dx, r, k)) * plane]) *
                               toFloat(qc[p + int64_t(dy) * w + dx]);
            messages[(img * c + ch) * plane + p] = fromFloat<T>(acc);
        }
    }
}

// ---- launch helpers --------------------------------------------------------------------

int32_t checkSizes(int64_t n, int64_t channels, int64_t h, int64_t w, int32_t filterSize)
{
    if (!isValidFilterSize(filterSize))
        return kErrorInvalidFilterSize;
    if (n < 0 || channels < 0 || h < 0 || w < 0)
        return kErrorInvalidShape;
    return kSuccess;
}

int32_t lastLaunchStatus()
{
    return cudaGetLastError() == cudaSuccess ? kSuccess : kErrorCuda;
}

dim3 tiledGrid(int64_t n, int64_t h, int64_t w)
{
    const int64_t tilesX = (w + kTileW - 1) / kTileW;
    const int64_t tilesY = (h + kTileH - 1) / kTileH;
    // The kernels loop over y tiles and images beyond the grid limits.
    return dim3(static_cast<unsigned>(tilesX),
                static_cast<unsigned>(tilesY < kMaxGridY ? tilesY : kMaxGridY),
                static_cast<unsigned>(n < kMaxGridZ ? n : kMaxGridZ));
}

dim3 directGrid(int64_t total, int threads)
{
    const int64_t blocks = (total + threads - 1) / threads;
    constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loop covers the rest
    return dim3(static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks));
}

// Shared memory for `channels` staged planes of a tile with radius r.
size_t tileBytes(int64_t channels, int radius)
{
    return static_cast<size_t>(channels) * haloWidth(radius) * haloHeight(radius) * sizeof(float);
}

template <typename T>
int32_t launchGaussianKernel(const void* features, int64_t n, int64_t d, int64_t h, int64_t w,
                             int32_t k, void* kernel, cudaStream_t stream)
{
    const T* f = static_cast<const T*>(features);
    T* out = static_cast<T*>(kernel);
    const int r = k / 2;
    // tilesX above 2^31-1 blocks cannot happen for any realistic w; guard anyway.
    if ((w + kTileW - 1) / kTileW > 0x7fffffff)
        return kErrorInvalidShape;
    const size_t bytes = tileBytes(d, r);
    if (bytes <= kSharedBudget) {
        gaussianKernelTiled<T><<<tiledGrid(n, h, w), dim3(kTileW, kTileH), bytes, stream>>>(
            f, n, d, h, w, k, out);
    } else {
        constexpr int threads = 256;
        gaussianKernelDirect<T><<<directGrid(n * h * w, threads), threads, 0, stream>>>(
            f, n, d, h, w, k, out);
    }
    return lastLaunchStatus();
}

template <typename T>
int32_t launchMessagePassing(const void* q, const void* kernel, int64_t n, int64_t c, int64_t h,
                             int64_t w, int32_t k, void* messages, cudaStream_t stream)
{
    const T* qt = static_cast<const T*>(q);
    const T* kt = static_cast<const T*>(kernel);
    T* out = static_cast<T*>(messages);
    const int r = k / 2;
    if ((w + kTileW - 1) / kTileW > 0x7fffffff)
        return kErrorInvalidShape;
    const int64_t staged = c < kClassChunk ? c : kClassChunk;
    const size_t bytes = tileBytes(staged, r);
    if (bytes <= kSharedBudget) {
        messagePassingTiled<T><<<tiledGrid(n, h, w), dim3(kTileW, kTileH), bytes, stream>>>(
            qt, kt, n, c, h, w, k, out);
    } else {
        constexpr int threads = 256;
        messagePassingDirect<T><<<directGrid(n * h * w, threads), threads, 0, stream>>>(
            qt, kt, n, c, h, w, k, out);
    }
    return lastLaunchStatus();
}

}  // namespace
}  // namespace cuda
}  // namespace convcrf

using namespace convcrf;

extern "C" {

int32_t convcrf_cuda_gaussian_kernel(const void* features, int32_t dtype, int64_t n, int64_t d,
                                     int64_t h, int64_t w, int32_t filterSize, void* kernel,
                                     void* stream)
{
    if (int32_t s = cuda::checkSizes(n, d, h, w, filterSize))
        return s;
    if (dtype != CONVCRF_CUDA_FLOAT32 && dtype != CONVCRF_CUDA_FLOAT16)
        return kErrorUnsupported;
    // K is defined (all zeros) even when there are no feature channels, so only n/h/w make
    // the output empty.
    if (n == 0 || h == 0 || w == 0)
        return kSuccess;
    if ((d > 0 && !features) || !kernel)
        return kErrorNullPointer;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    return dtype == CONVCRF_CUDA_FLOAT32
               ? cuda::launchGaussianKernel<float>(features, n, d, h, w, filterSize, kernel, s)
               : cuda::launchGaussianKernel<__half>(features, n, d, h, w, filterSize, kernel, s);
}

int32_t convcrf_cuda_message_passing(const void* q, const void* kernel, int32_t dtype, int64_t n,
                                     int64_t c, int64_t h, int64_t w, int32_t filterSize,
                                     void* messages, void* stream)
{
    if (int32_t s = cuda::checkSizes(n, c, h, w, filterSize))
        return s;
    if (dtype != CONVCRF_CUDA_FLOAT32 && dtype != CONVCRF_CUDA_FLOAT16)
        return kErrorUnsupported;
    if (n == 0 || c == 0 || h == 0 || w == 0)
        return kSuccess;
    if (!q || !kernel || !messages)
        return kErrorNullPointer;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    return dtype == CONVCRF_CUDA_FLOAT32
               ? cuda::launchMessagePassing<float>(q, kernel, n, c, h, w, filterSize, messages, s)
               : cuda::launchMessagePassing<__half>(q, kernel, n, c, h, w, filterSize, messages, s);
}

}  // extern "C"
