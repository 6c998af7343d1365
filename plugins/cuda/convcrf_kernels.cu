// convcrf_kernels.cu: CUDA kernels and launchers of the ConvCRF ops (C API in convcrf_cuda.h).
//
// Access pattern: every output pixel reads a k x k window of its neighbours, so neighbouring
// pixels share almost all of their reads. The tiled kernels therefore stage a block's tile of
// the input plus a halo of r = k/2 pixels on each side in shared memory (converted to fp32
// once), with threads laid out along the image width so global loads and stores coalesce.
//
//   gaussian_kernel: all D feature channels of the tile are staged; each thread then walks
//                    the k*k offsets and writes one K channel per offset (coalesced rows).
//   message_passing: classes are processed in balanced chunks of up to kClassChunk; per chunk
//                    the q tile of those classes is staged, and each K value of the pixel is read once per
//                    chunk and applied to all classes of the chunk held in registers.
//
// When the staged tile would not fit into the default 48 KiB of shared memory (many feature
// channels), a plain kernel that reads global memory directly is used instead; message passing
// with a large k stages fewer classes per pass instead.
//
// The per-thread bodies live in convcrf_tiles.h (__host__ __device__), so the host test in
// plugins/cuda/tests runs the tiled indexing on the CPU; all per-element arithmetic (offset
// channel, squared difference, Gaussian weight) comes from plugins/common/convcrf_math.h, the
// same functions the CPU library and its tests run.
#include "convcrf_cuda.h"
#include "convcrf_tiles.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace convcrf {
namespace cuda {
namespace {

constexpr int kMaxGridY = 65535;             // grid y/z limits; larger extents are looped
constexpr int kMaxGridZ = 65535;
constexpr int kDirectThreads = 256;

// ---- tiled kernels: grid (x tiles, y tiles, images), block (kTileW, kTileH) -------------

template <typename T>
__global__ void gaussianKernelTiled(const T* __restrict__ features, int64_t n, int64_t d,
                                    int64_t h, int64_t w, int32_t k, T* __restrict__ kernel)
{
    extern __shared__ float tile[];  // [d][haloHeight][haloWidth]
    const int r = k / 2;
    const int64_t plane = h * w, kk = int64_t(k) * k;
    const int64_t tilesY = (h + kTileH - 1) / kTileH;
    const int64_t x0 = int64_t(blockIdx.x) * kTileW;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x, nThreads = blockDim.x * blockDim.y;
    // Loops instead of a bigger grid: y tiles and images beyond the grid limits.
    for (int64_t img = blockIdx.z; img < n; img += gridDim.z) {
        for (int64_t by = blockIdx.y; by < tilesY; by += gridDim.y) {
            const int64_t y0 = by * kTileH;
            __syncthreads();  // the previous iteration's readers are done with the tile
            stageTile(features + img * d * plane, d, h, w, y0, x0, r, tile, tid, nThreads);
            __syncthreads();
            gaussianKernelFromTile(tile, d, h, w, k, y0, x0, threadIdx.y, threadIdx.x,
                                   kernel + img * kk * plane);
        }
    }
}

template <typename T>
__global__ void messagePassingTiled(const T* __restrict__ q, const T* __restrict__ kernel,
                                    int64_t n, int64_t c, int64_t h, int64_t w, int32_t k,
                                    int classesPerPass, T* __restrict__ messages)
{
    extern __shared__ float tile[];  // [classesPerPass][haloHeight][haloWidth]
    const int r = k / 2;
    const int64_t plane = h * w, kk = int64_t(k) * k;
    const int64_t tilesY = (h + kTileH - 1) / kTileH;
    const int64_t x0 = int64_t(blockIdx.x) * kTileW;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x, nThreads = blockDim.x * blockDim.y;
    for (int64_t img = blockIdx.z; img < n; img += gridDim.z) {
        for (int64_t by = blockIdx.y; by < tilesY; by += gridDim.y) {
            const int64_t y0 = by * kTileH;
            for (int64_t c0 = 0; c0 < c; c0 += classesPerPass) {
                const int chunk = static_cast<int>(c - c0 < classesPerPass ? c - c0 : classesPerPass);
                __syncthreads();
                stageTile(q + (img * c + c0) * plane, chunk, h, w, y0, x0, r, tile, tid, nThreads);
                __syncthreads();
                messagePassingFromTile(tile, kernel + img * kk * plane, chunk, c0, h, w, k, y0,
                                       x0, threadIdx.y, threadIdx.x, messages + img * c * plane);
            }
        }
    }
}

// ---- fallback kernels (no shared memory): grid-stride over all pixels -------------------

template <typename T>
__global__ void gaussianKernelGlobal(const T* __restrict__ features, int64_t n, int64_t d,
                                     int64_t h, int64_t w, int32_t k, T* __restrict__ kernel)
{
    const int64_t plane = h * w, kk = int64_t(k) * k, total = n * plane;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t img = i / plane;
        gaussianKernelDirect(features + img * d * plane, d, h, w, k, i % plane,
                             kernel + img * kk * plane);
    }
}

template <typename T>
__global__ void messagePassingGlobal(const T* __restrict__ q, const T* __restrict__ kernel,
                                     int64_t n, int64_t c, int64_t h, int64_t w, int32_t k,
                                     T* __restrict__ messages)
{
    const int64_t plane = h * w, kk = int64_t(k) * k, total = n * plane;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t img = i / plane;
        messagePassingDirect(q + img * c * plane, kernel + img * kk * plane, c, h, w, k,
                             i % plane, messages + img * c * plane);
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
    if (gaussianKernelFitsTile(d, r)) {
        gaussianKernelTiled<T><<<tiledGrid(n, h, w), dim3(kTileW, kTileH), tileBytes(d, r), stream>>>(
            f, n, d, h, w, k, out);
    } else {
        gaussianKernelGlobal<T><<<directGrid(n * h * w, kDirectThreads), kDirectThreads, 0, stream>>>(
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
    const int classesPerPass = messagePassingClassesPerPass(c, r);
    if (classesPerPass > 0) {
        messagePassingTiled<T><<<tiledGrid(n, h, w), dim3(kTileW, kTileH),
                                 tileBytes(classesPerPass, r), stream>>>(qt, kt, n, c, h, w, k,
                                                                         classesPerPass, out);
    } else {
        messagePassingGlobal<T><<<directGrid(n * h * w, kDirectThreads), kDirectThreads, 0, stream>>>(
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
