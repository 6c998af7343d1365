// Host test of the CUDA kernels' indexing (no GPU needed).
//
// Runs the per-thread bodies of convcrf_tiles.h on the CPU, emulating each block exactly as
// the kernels in convcrf_kernels.cu schedule it (every thread stages its share of the tile,
// barrier, every thread computes its pixel), over image sizes that are not multiples of the
// tile, and compares with the CPU library (plugins/cpu). Also checks the launchers' argument
// validation paths, which return before any CUDA call.
//
// Usage: convcrf_cuda_host_tests [case]
#include "convcrf_cpu.h"
#include "convcrf_cuda.h"
#include "convcrf_tiles.h"

#include "host_test.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

using namespace convcrf;
using namespace convcrf::cuda;

namespace {

constexpr int kThreads = kTileW * kTileH;

// gaussianKernelTiled, one emulated block at a time.
template <typename T>
void emulateGaussianTiled(const T* f, int64_t n, int64_t d, int64_t h, int64_t w, int32_t k, T* out)
{
    const int r = k / 2;
    const int64_t plane = h * w, kk = int64_t(k) * k;
    std::vector<float> tile(static_cast<size_t>(d) * haloWidth(r) * haloHeight(r));
    for (int64_t img = 0; img < n; ++img)
        for (int64_t y0 = 0; y0 < h; y0 += kTileH)
            for (int64_t x0 = 0; x0 < w; x0 += kTileW) {
                for (int tid = 0; tid < kThreads; ++tid)
                    stageTile(f + img * d * plane, d, h, w, y0, x0, r, tile.data(), tid, kThreads);
                for (int ty = 0; ty < kTileH; ++ty)
                    for (int tx = 0; tx < kTileW; ++tx)
                        gaussianKernelFromTile(tile.data(), d, h, w, k, y0, x0, ty, tx, out + img * kk * plane);
            }
}

// messagePassingTiled, one emulated block and class chunk at a time.
template <typename T>
void emulateMessagePassingTiled(const T* q, const T* kernel, int64_t n, int64_t c, int64_t h, int64_t w,
                                int32_t k, T* out)
{
    const int r = k / 2;
    const int64_t plane = h * w, kk = int64_t(k) * k;
    const int perPass = messagePassingClassesPerPass(c, r);
    if (perPass < 1) {
        std::fprintf(stderr, "  no class fits the tile (k=%d)\n", k);
        ++convcrf::test::failures();
        return;
    }
    std::vector<float> tile(static_cast<size_t>(perPass) * haloWidth(r) * haloHeight(r));
    for (int64_t img = 0; img < n; ++img)
        for (int64_t y0 = 0; y0 < h; y0 += kTileH)
            for (int64_t x0 = 0; x0 < w; x0 += kTileW)
                for (int64_t c0 = 0; c0 < c; c0 += perPass) {
                    const int chunk = static_cast<int>(std::min<int64_t>(c - c0, perPass));
                    for (int tid = 0; tid < kThreads; ++tid)
                        stageTile(q + (img * c + c0) * plane, chunk, h, w, y0, x0, r, tile.data(), tid, kThreads);
                    for (int ty = 0; ty < kTileH; ++ty)
                        for (int tx = 0; tx < kTileW; ++tx)
                            messagePassingFromTile(tile.data(), kernel + img * kk * plane, chunk, c0, h, w, k, y0,
                                                   x0, ty, tx, out + img * c * plane);
                }
}

std::vector<float> randomVector(size_t size, float low, float high, unsigned seed)
{
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(low, high);
    std::vector<float> v(size);
    for (float& x : v)
        x = dist(rng);
    return v;
}

float maxAbsDiff(const std::vector<float>& a, const std::vector<float>& b)
{
    if (a.size() != b.size())
        return INFINITY;
    float m = 0.0f;
    for (size_t i = 0; i < a.size(); ++i)
        m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

struct Size {
    int64_t n, channels, h, w;
    int32_t k;
};

// Sizes straddle tile borders (32 x 8) and cover k = 1 and a halo wider than the tile height.
const Size kSizes[] = {{2, 5, 13, 45, 7}, {1, 2, 9, 70, 3}, {1, 3, 8, 32, 1}, {2, 5, 17, 33, 11}, {1, 40, 9, 35, 3},
                       {1, 1, 5, 7, 31}, {1, 21, 10, 40, 5}};

void gaussian_kernel_tiled_matches_cpu()
{
    unsigned seed = 1;
    for (const Size& s : kSizes) {
        const int64_t plane = s.h * s.w, kk = int64_t(s.k) * s.k;
        auto f = randomVector(size_t(s.n * s.channels * plane), -1.5f, 1.5f, seed++);
        std::vector<float> expected(size_t(s.n * kk * plane), -7.0f), tiled(expected.size(), -7.0f),
            direct(expected.size(), -7.0f);
        EXPECT(convcrf_gaussian_kernel_f32(f.data(), s.n, s.channels, s.h, s.w, s.k, expected.data(), 1) == 0);
        emulateGaussianTiled(f.data(), s.n, s.channels, s.h, s.w, s.k, tiled.data());
        for (int64_t img = 0; img < s.n; ++img)
            for (int64_t p = 0; p < plane; ++p)
                gaussianKernelDirect(f.data() + img * s.channels * plane, s.channels, s.h, s.w, s.k, p,
                                     direct.data() + img * kk * plane);
        const float errTiled = maxAbsDiff(tiled, expected), errDirect = maxAbsDiff(direct, expected);
        if (errTiled > 1e-6f || errDirect > 1e-6f)
            std::fprintf(stderr, "  size n=%lld d=%lld %lldx%lld k=%d: tiled err %g, direct err %g\n",
                         (long long) s.n, (long long) s.channels, (long long) s.h, (long long) s.w, s.k, errTiled,
                         errDirect);
        EXPECT(errTiled <= 1e-6f);
        EXPECT(errDirect <= 1e-6f);
    }
}

void message_passing_tiled_matches_cpu()
{
    unsigned seed = 100;
    for (const Size& s : kSizes) {
        const int64_t plane = s.h * s.w, kk = int64_t(s.k) * s.k;
        auto q = randomVector(size_t(s.n * s.channels * plane), 0.0f, 1.0f, seed++);
        auto kernel = randomVector(size_t(s.n * kk * plane), 0.0f, 1.0f, seed++);
        std::vector<float> expected(q.size(), -7.0f), tiled(q.size(), -7.0f), direct(q.size(), -7.0f);
        EXPECT(convcrf_message_passing_f32(q.data(), kernel.data(), s.n, s.channels, s.h, s.w, s.k, expected.data(),
                                           1) == 0);
        emulateMessagePassingTiled(q.data(), kernel.data(), s.n, s.channels, s.h, s.w, s.k, tiled.data());
        for (int64_t img = 0; img < s.n; ++img)
            for (int64_t p = 0; p < plane; ++p)
                messagePassingDirect(q.data() + img * s.channels * plane, kernel.data() + img * kk * plane,
                                     s.channels, s.h, s.w, s.k, p, direct.data() + img * s.channels * plane);
        // Sums of up to 961 terms of magnitude <= 1, accumulated in the same order.
        const float tol = 1e-5f * float(kk);
        const float errTiled = maxAbsDiff(tiled, expected), errDirect = maxAbsDiff(direct, expected);
        if (errTiled > tol || errDirect > tol)
            std::fprintf(stderr, "  size n=%lld c=%lld %lldx%lld k=%d: tiled err %g, direct err %g\n",
                         (long long) s.n, (long long) s.channels, (long long) s.h, (long long) s.w, s.k, errTiled,
                         errDirect);
        EXPECT(errTiled <= tol);
        EXPECT(errDirect <= tol);
    }
}

void outside_kernel_values_are_ignored()
{
    // K holds NaN where the neighbour is outside the image: the contract makes those terms 0.
    const int64_t c = 3, h = 6, w = 9;
    const int32_t k = 3;
    const int64_t plane = h * w;
    auto q = randomVector(size_t(c * plane), 0.0f, 1.0f, 7);
    std::vector<float> kernel(size_t(k * k * plane), 0.5f);
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
            for (int dy = -1; dy <= 1; ++dy)
                for (int dx = -1; dx <= 1; ++dx)
                    if (!isInside(y + dy, x + dx, h, w))
                        kernel[size_t(offsetChannel(dy, dx, 1, k) * plane + y * w + x)] = NAN;
    std::vector<float> tiled(q.size());
    emulateMessagePassingTiled(q.data(), kernel.data(), 1, c, h, w, k, tiled.data());
    bool finite = true;
    for (float v : tiled)
        finite = finite && std::isfinite(v);
    EXPECT(finite);
}

void half_precision_matches_float_reference()
{
    // fp16 I/O, fp32 accumulation: compare with the fp32 CPU result on the same fp16-rounded
    // inputs; the only extra error is the final rounding to fp16 (relative 2^-11).
    const Size s{1, 5, 11, 37, 7};
    const int64_t plane = s.h * s.w, kk = int64_t(s.k) * s.k;
    auto f = randomVector(size_t(s.channels * plane), -1.0f, 1.0f, 21);
    std::vector<__half> fh(f.size());
    for (size_t i = 0; i < f.size(); ++i) {
        fh[i] = __float2half_rn(f[i]);
        f[i] = __half2float(fh[i]);
    }
    std::vector<float> expected(size_t(kk * plane));
    EXPECT(convcrf_gaussian_kernel_f32(f.data(), 1, s.channels, s.h, s.w, s.k, expected.data(), 1) == 0);
    std::vector<__half> outHalf(expected.size());
    emulateGaussianTiled(fh.data(), 1, s.channels, s.h, s.w, s.k, outHalf.data());
    float err = 0.0f;
    for (size_t i = 0; i < expected.size(); ++i)
        err = std::max(err, std::fabs(__half2float(outHalf[i]) - expected[i]));
    EXPECT(err <= 1e-3f);  // values in [0, 1]: fp16 spacing below 1 is <= 2^-11

    auto q = randomVector(size_t(s.channels * plane), 0.0f, 1.0f, 22);
    std::vector<__half> qh(q.size()), kh(expected.size());
    for (size_t i = 0; i < q.size(); ++i) {
        qh[i] = __float2half_rn(q[i]);
        q[i] = __half2float(qh[i]);
    }
    for (size_t i = 0; i < expected.size(); ++i) {
        kh[i] = __float2half_rn(expected[i]);
        expected[i] = __half2float(kh[i]);
    }
    std::vector<float> messages(q.size());
    EXPECT(convcrf_message_passing_f32(q.data(), expected.data(), 1, s.channels, s.h, s.w, s.k, messages.data(), 1) ==
           0);
    std::vector<__half> messagesHalf(q.size());
    emulateMessagePassingTiled(qh.data(), kh.data(), 1, s.channels, s.h, s.w, s.k, messagesHalf.data());
    float relErr = 0.0f;
    for (size_t i = 0; i < q.size(); ++i)
        relErr = std::max(relErr, std::fabs(__half2float(messagesHalf[i]) - messages[i]) / (std::fabs(messages[i]) + 1e-3f));
    EXPECT(relErr <= 1e-3f);
}

void launcher_validation()
{
    // Every path here returns before touching CUDA, so it runs without a GPU.
    float dummy = 0.0f;
    EXPECT(convcrf_cuda_gaussian_kernel(&dummy, CONVCRF_CUDA_FLOAT32, 1, 1, 4, 4, 4, &dummy, nullptr) ==
           kErrorInvalidFilterSize);
    EXPECT(convcrf_cuda_gaussian_kernel(&dummy, CONVCRF_CUDA_FLOAT32, 1, 1, 4, 4, 33, &dummy, nullptr) ==
           kErrorInvalidFilterSize);
    EXPECT(convcrf_cuda_message_passing(&dummy, &dummy, CONVCRF_CUDA_FLOAT32, 1, 1, 4, 4, 0, &dummy, nullptr) ==
           kErrorInvalidFilterSize);
    EXPECT(convcrf_cuda_gaussian_kernel(&dummy, CONVCRF_CUDA_FLOAT32, -1, 1, 4, 4, 3, &dummy, nullptr) ==
           kErrorInvalidShape);
    EXPECT(convcrf_cuda_message_passing(&dummy, &dummy, CONVCRF_CUDA_FLOAT32, 1, 1, 4, -4, 3, &dummy, nullptr) ==
           kErrorInvalidShape);
    EXPECT(convcrf_cuda_gaussian_kernel(&dummy, 7, 1, 1, 4, 4, 3, &dummy, nullptr) == kErrorUnsupported);
    EXPECT(convcrf_cuda_message_passing(&dummy, &dummy, 2, 1, 1, 4, 4, 3, &dummy, nullptr) == kErrorUnsupported);
    EXPECT(convcrf_cuda_gaussian_kernel(nullptr, CONVCRF_CUDA_FLOAT32, 1, 2, 4, 4, 3, &dummy, nullptr) ==
           kErrorNullPointer);
    EXPECT(convcrf_cuda_message_passing(&dummy, nullptr, CONVCRF_CUDA_FLOAT16, 1, 2, 4, 4, 3, &dummy, nullptr) ==
           kErrorNullPointer);
    // Empty tensors: success without a launch (null pointers are fine then).
    EXPECT(convcrf_cuda_gaussian_kernel(nullptr, CONVCRF_CUDA_FLOAT32, 0, 5, 4, 4, 3, nullptr, nullptr) == 0);
    EXPECT(convcrf_cuda_message_passing(nullptr, nullptr, CONVCRF_CUDA_FLOAT16, 2, 0, 4, 4, 3, nullptr, nullptr) == 0);
    EXPECT(convcrf_cuda_message_passing(nullptr, nullptr, CONVCRF_CUDA_FLOAT32, 2, 3, 0, 4, 3, nullptr, nullptr) == 0);
    // Shared-memory budget: the typical 5 feature planes and a full class chunk fit the 48 KiB
    // tile at k = 7 (tiled path); 5 planes still fit at k = 31.
    EXPECT(gaussianKernelFitsTile(5, 3));
    EXPECT(gaussianKernelFitsTile(5, 15));
    EXPECT(!gaussianKernelFitsTile(64, 15));  // -> global-memory fallback
    EXPECT(messagePassingClassesPerPass(21, 3) == 11);  // two balanced passes, not 16 + 5
    EXPECT(messagePassingClassesPerPass(16, 3) == 16);
    EXPECT(messagePassingClassesPerPass(40, 3) == 14);  // three passes
    EXPECT(messagePassingClassesPerPass(3, 3) == 3);
    EXPECT(messagePassingClassesPerPass(0, 3) == 0);
    const int atK31 = messagePassingClassesPerPass(21, 15);  // fewer classes per pass, still tiled
    EXPECT(atK31 >= 1 && atK31 < kClassChunk && tileBytes(atK31, 15) <= kSharedBudget);
}

const convcrf::test::Case kCases[] = {
    {"gaussian_kernel_tiled_matches_cpu", gaussian_kernel_tiled_matches_cpu},
    {"message_passing_tiled_matches_cpu", message_passing_tiled_matches_cpu},
    {"outside_kernel_values_are_ignored", outside_kernel_values_are_ignored},
    {"half_precision_matches_float_reference", half_precision_matches_float_reference},
    {"launcher_validation", launcher_validation},
};

}  // namespace

int main(int argc, char** argv)
{
    return convcrf::test::run(kCases, argc, argv);
}
