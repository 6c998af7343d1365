// floor_kernels.cpp: plain, sensible loops of ConvCRF's hot stages, the yardsticks
// benchmarks/bench_crf.py measures the library against. Written independently of plugins/cpu
// on purpose: no blocking, no tricks, what a careful engineer writes first, in the shape of the
// independent programs of ../shared/limits (message_passing.cpp, fused_pass.cpp), which they
// must match in speed (tests/test_floor_kernels.py checks within 1.1x), plus the two passes
// of training those programs do not cover. Not part of the library.
//
// Built and run like the independent programs, as a program of its own (same flags, same
// OpenMP threads, so the same conditions; benchmarks/floors.py adds jump padding, which moves
// instructions, not which ones run, so that code placement cannot make this floor the slower):
//   g++ -O3 -march=native -fopenmp -Wa,-mbranches-within-32B-boundaries floor_kernels.cpp -o floor_kernels
//   OMP_NUM_THREADS=2 ./floor_kernels STAGE K C H W REPS
// STAGE: mp (message passing), mpT (transposed message passing, the gradient w.r.t. q),
// kgrad (the gradient w.r.t. the kernel), fused (one full-resolution mean-field pass, blur 4,
// H x W at full resolution; K ignored). Prints one line ending in "best <ms> ms".
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;

template <typename Fn>
double bestOf(int reps, Fn&& fn)
{
    double best = 1e30;
    for (int rep = 0; rep < reps; ++rep) {
        const auto t0 = Clock::now();
        fn();
        best = std::min(best, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    return best;
}

// Inputs filled as the independent programs fill theirs (values do not change the timing).
void fillKernel(std::vector<float>& K)
{
    for (size_t i = 0; i < K.size(); ++i)
        K[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.f;
}

// A [C, H+2r, W+2r] zero-padded copy of a [C, H, W] pattern.
std::vector<float> paddedPattern(int C, int H, int W, int r)
{
    const int HP = H + 2 * r, WP = W + 2 * r;
    std::vector<float> out(static_cast<size_t>(C) * HP * WP, 0.f);
    for (int c = 0; c < C; ++c)
        for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x)
                out[(static_cast<size_t>(c) * HP + y + r) * WP + x + r] =
                    static_cast<float>(((c * 31 + y * 7 + x) % 97) / 97.0);
    return out;
}

// Accumulator rows [R][W], zeroed: a stack array when R and W are compile-time sizes (as in
// the independent programs), else on the heap.
template <int RT, int WT>
struct Row {
    float data[RT][WT];
    Row(int, int)
    {
        for (int i = 0; i < RT; ++i)
            for (int x = 0; x < WT; ++x)
                data[i][x] = 0.f;
    }
    float* row(int i) { return data[i]; }
};

template <>
struct Row<0, 0> {
    std::vector<float> data;
    int w;
    Row(int rows, int width) : data(static_cast<size_t>(rows) * width, 0.f), w(width) {}
    float* row(int i) { return data.data() + static_cast<size_t>(i) * w; }
};

// Sizes of the loops below: CT, WT > 0 fix the classes and the width at compile time, as the
// independent programs do (their loops ran 1.17x faster than the same loops with run-time
// sizes); 0 takes them at run time. main() picks the bench's default sizes when they apply.

// M[c,y,x] = sum_o K[o,y,x] qpad[c, y+dy+r, x+dx+r]: vectorised over x, all classes of a row
// per window position, accumulators of one row on the stack.
template <int CT, int WT>
double messagePassing(int k, int Cin, int H, int Win, int reps)
{
    const int C = CT > 0 ? CT : Cin, W = WT > 0 ? WT : Win;
    const int r = k / 2, HP = H + 2 * r, WP = W + 2 * r;
    const std::vector<float> qpad = paddedPattern(C, H, W, r);
    std::vector<float> K(static_cast<size_t>(k) * k * H * W), M(static_cast<size_t>(C) * H * W);
    fillKernel(K);
    return bestOf(reps, [&] {
#pragma omp parallel for schedule(static)
        for (int y = 0; y < H; ++y) {
            // The accumulators of one output row: a stack array at compile-time sizes.
            Row<CT, WT> acc(C, W);
            for (int dy = -r; dy <= r; ++dy)
                for (int dx = -r; dx <= r; ++dx) {
                    const float* kr = &K[(static_cast<size_t>((dy + r) * k + dx + r) * H + y) * W];
                    for (int c = 0; c < C; ++c) {
                        const float* qr = &qpad[(static_cast<size_t>(c) * HP + y + r + dy) * WP + r + dx];
                        float* a = acc.row(c);
#pragma omp simd
                        for (int x = 0; x < W; ++x)
                            a[x] += kr[x] * qr[x];
                    }
                }
            for (int c = 0; c < C; ++c)
                std::copy(acc.row(c), acc.row(c) + W, &M[(static_cast<size_t>(c) * H + y) * W]);
        }
    });
}

// G[c,y,x] = sum_o K[o, y-dy, x-dx] g[c, y-dy, x-dx], kernel and g zero-padded by r.
template <int CT, int WT>
double transposedMessagePassing(int k, int Cin, int H, int Win, int reps)
{
    const int C = CT > 0 ? CT : Cin, W = WT > 0 ? WT : Win;
    const int r = k / 2, HP = H + 2 * r, WP = W + 2 * r;
    const std::vector<float> gpad = paddedPattern(C, H, W, r);
    std::vector<float> kpad(static_cast<size_t>(k) * k * HP * WP, 0.f), G(static_cast<size_t>(C) * H * W);
    for (size_t i = 0; i < static_cast<size_t>(k) * k; ++i)
        for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x)
                kpad[(i * HP + y + r) * WP + x + r] =
                    static_cast<float>(((i * H + y) * W + x) * 2654435761u % 1000) / 1000.f;
    return bestOf(reps, [&] {
#pragma omp parallel
        {
            std::vector<float> acc(static_cast<size_t>(C) * W);
#pragma omp for schedule(static)
            for (int y = 0; y < H; ++y) {
                std::fill(acc.begin(), acc.end(), 0.f);
                for (int dy = -r; dy <= r; ++dy)
                    for (int dx = -r; dx <= r; ++dx) {
                        const size_t o = static_cast<size_t>((dy + r) * k + dx + r);
                        const float* kr = &kpad[(o * HP + y - dy + r) * WP + r - dx];
                        for (int c = 0; c < C; ++c) {
                            const float* gr = &gpad[(static_cast<size_t>(c) * HP + y - dy + r) * WP + r - dx];
                            float* a = &acc[static_cast<size_t>(c) * W];
#pragma omp simd
                            for (int x = 0; x < W; ++x)
                                a[x] += kr[x] * gr[x];
                        }
                    }
                for (int c = 0; c < C; ++c)
                    std::copy(&acc[static_cast<size_t>(c) * W], &acc[static_cast<size_t>(c) * W] + W,
                              &G[(static_cast<size_t>(c) * H + y) * W]);
            }
        }
    });
}

// gK[o,y,x] = sum_c g[c,y,x] qpad[c, y+dy+r, x+dx+r]: all window positions of a row per class.
template <int CT, int WT>
double kernelGradient(int k, int Cin, int H, int Win, int reps)
{
    const int C = CT > 0 ? CT : Cin, W = WT > 0 ? WT : Win;
    const int r = k / 2, HP = H + 2 * r, WP = W + 2 * r, kk = k * k;
    const std::vector<float> qpad = paddedPattern(C, H, W, r);
    std::vector<float> g(static_cast<size_t>(C) * H * W), gK(static_cast<size_t>(kk) * H * W);
    fillKernel(g);
    return bestOf(reps, [&] {
#pragma omp parallel
        {
            std::vector<float> acc(static_cast<size_t>(kk) * W);
#pragma omp for schedule(static)
            for (int y = 0; y < H; ++y) {
                std::fill(acc.begin(), acc.end(), 0.f);
                for (int c = 0; c < C; ++c) {
                    const float* gr = &g[(static_cast<size_t>(c) * H + y) * W];
                    for (int dy = -r; dy <= r; ++dy)
                        for (int dx = -r; dx <= r; ++dx) {
                            const float* qr = &qpad[(static_cast<size_t>(c) * HP + y + r + dy) * WP + r + dx];
                            float* a = &acc[static_cast<size_t>((dy + r) * k + dx + r) * W];
#pragma omp simd
                            for (int x = 0; x < W; ++x)
                                a[x] += gr[x] * qr[x];
                        }
                }
                for (int o = 0; o < kk; ++o)
                    std::copy(&acc[static_cast<size_t>(o) * W], &acc[static_cast<size_t>(o) * W] + W,
                              &gK[(static_cast<size_t>(o) * H + y) * W]);
            }
        }
    });
}

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 exp8(__m256 x)  // Cephes-style, ~1e-7 relative
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// One full-resolution mean-field pass, blur 4: bilinear upsample of the [C, H/4, W/4] messages
// (half-pixel), add to the [C, H, W] unary, softmax over C (polynomial exp), 4x4 average
// pooling. W is rounded up to whole AVX2 vectors. Sizes are compile-time at the bench's
// default (21 x 375 x 504), as in the independent program (with an array of 64 vectors for the
// logits of a pixel group this pass ran 1.45x slower than the independent one).
template <int CT, int HT, int WT>
double fusedPass(int Cin, int Hin, int Win, int reps)
{
    const int C = CT > 0 ? CT : Cin, H = HT > 0 ? HT : Hin;
    const int B = 4, W = WT > 0 ? WT : (Win + 7) / 8 * 8, HL = (H + B - 1) / B, WL = (W + B - 1) / B;
    if (C > 64)
        return -1;
    std::vector<float> unary(static_cast<size_t>(C) * H * W), mlow(static_cast<size_t>(C) * HL * WL),
        qlow(static_cast<size_t>(C) * HL * WL);
    for (size_t i = 0; i < unary.size(); ++i)
        unary[i] = static_cast<float>((i * 2654435761u) % 1000) / 250.f - 2.f;
    for (size_t i = 0; i < mlow.size(); ++i)
        mlow[i] = static_cast<float>((i * 40503u) % 1000) / 500.f;
    double best = 1e30;  // the repetition loop of the independent program, read included
    for (int rep = 0; rep < reps; ++rep) {
        const auto t0 = Clock::now();
        std::fill(qlow.begin(), qlow.end(), 0.f);
#pragma omp parallel
        {
            std::vector<float> hup(static_cast<size_t>(3) * C * W), acc(static_cast<size_t>(C) * W);
            std::vector<int> j0(W), j1(W);
            std::vector<float> lx(W);
            for (int x = 0; x < W; ++x) {
                float fx = (x + 0.5f) / B - 0.5f;
                int a = fx < 0 ? 0 : static_cast<int>(fx);
                j0[x] = std::min(a, WL - 1);
                j1[x] = std::min(WL - 1, a + 1);
                lx[x] = j1[x] == j0[x] ? 0.f : std::max(0.f, fx - a);
            }
#pragma omp for schedule(static)
            for (int i = 0; i < HL; ++i) {  // one low row = B full rows
                std::fill(acc.begin(), acc.end(), 0.f);
                for (int s = 0; s < 3; ++s) {  // low rows i-1, i, i+1 upsampled along x
                    int row = std::min(HL - 1, std::max(0, i - 1 + s));
                    for (int c = 0; c < C; ++c) {
                        const float* m = &mlow[(static_cast<size_t>(c) * HL + row) * WL];
                        float* o = &hup[(static_cast<size_t>(s) * C + c) * W];
                        for (int x = 0; x < W; ++x)
                            o[x] = m[j0[x]] + lx[x] * (m[j1[x]] - m[j0[x]]);
                    }
                }
                for (int y = i * B; y < std::min(H, (i + 1) * B); ++y) {
                    float fy = (y + 0.5f) / B - 0.5f;
                    int i0 = std::min(fy < 0 ? 0 : static_cast<int>(fy), HL - 1);
                    int i1 = std::min(HL - 1, i0 + 1);
                    float ly = i1 == i0 ? 0.f : std::max(0.f, fy - i0);
                    int s0 = std::max(0, i0 - (i - 1)), s1 = std::min(2, i1 - (i - 1));
                    const __m256 vly = _mm256_set1_ps(ly);
                    for (int x = 0; x < W; x += 8) {
                        __m256 l[CT > 0 ? CT : 64];  // local to the group: registers for CT > 0
                        __m256 mx = _mm256_set1_ps(-1e30f);
                        for (int c = 0; c < C; ++c) {
                            __m256 a = _mm256_loadu_ps(&hup[(static_cast<size_t>(s0) * C + c) * W + x]);
                            __m256 b = _mm256_loadu_ps(&hup[(static_cast<size_t>(s1) * C + c) * W + x]);
                            __m256 m = _mm256_fmadd_ps(vly, _mm256_sub_ps(b, a), a);
                            l[c] = _mm256_add_ps(_mm256_loadu_ps(&unary[(static_cast<size_t>(c) * H + y) * W + x]), m);
                            mx = _mm256_max_ps(mx, l[c]);
                        }
                        __m256 sum = _mm256_setzero_ps();
                        for (int c = 0; c < C; ++c) {
                            l[c] = exp8(_mm256_sub_ps(l[c], mx));
                            sum = _mm256_add_ps(sum, l[c]);
                        }
                        __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.f), sum);
                        for (int c = 0; c < C; ++c) {
                            float* p = &acc[static_cast<size_t>(c) * W + x];
                            _mm256_storeu_ps(p, _mm256_fmadd_ps(l[c], inv, _mm256_loadu_ps(p)));
                        }
                    }
                }
                for (int c = 0; c < C; ++c)
                    for (int j = 0; j < WL; ++j) {
                        float s = 0;
                        for (int x = j * B; x < std::min(W, (j + 1) * B); ++x)
                            s += acc[static_cast<size_t>(c) * W + x];
                        qlow[(static_cast<size_t>(c) * HL + i) * WL + j] = s / (B * B);
                    }
            }
        }
        best = std::min(best, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        // Untimed, as in the independent program (which times a plain read of the unary
        // between its repetitions): the same cache state before each repetition.
        double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
        for (long i = 0; i < static_cast<long>(unary.size()); i += 8)
            total += _mm256_cvtss_f32(_mm256_loadu_ps(&unary[i]));
        if (total == 12345.f)
            std::printf(" ");
    }
    return best;
}
#else
template <int CT, int HT, int WT>
double fusedPass(int, int, int, int)
{
    return -1;  // written for AVX2 + FMA
}
#endif

}  // namespace

int main(int argc, char** argv)
{
    if (argc != 7) {
        std::fprintf(stderr, "usage: %s mp|mpT|kgrad|fused K C H W REPS\n", argv[0]);
        return 2;
    }
    const char* stage = argv[1];
    const int k = std::atoi(argv[2]), C = std::atoi(argv[3]), H = std::atoi(argv[4]),
              W = std::atoi(argv[5]), reps = std::atoi(argv[6]);
    const bool fused = std::strcmp(stage, "fused") == 0;
    if ((!fused && (k < 1 || k % 2 == 0)) || C < 1 || H < 1 || W < 1 || reps < 1) {
        std::fprintf(stderr, "invalid sizes\n");
        return 2;
    }
    // The low-resolution grid of the bench's default (21 classes, 375 x 500, blur 4).
    const bool defaults = C == 21 && W == 125;
    double best = -1;
    if (std::strcmp(stage, "mp") == 0)
        best = defaults ? messagePassing<21, 125>(k, C, H, W, reps) : messagePassing<0, 0>(k, C, H, W, reps);
    else if (std::strcmp(stage, "mpT") == 0)
        best = defaults ? transposedMessagePassing<21, 125>(k, C, H, W, reps)
                        : transposedMessagePassing<0, 0>(k, C, H, W, reps);
    else if (std::strcmp(stage, "kgrad") == 0)
        best = defaults ? kernelGradient<21, 125>(k, C, H, W, reps) : kernelGradient<0, 0>(k, C, H, W, reps);
    else if (fused)
        best = C == 21 && H == 375 && (W + 7) / 8 * 8 == 504 ? fusedPass<21, 375, 504>(C, H, W, reps)
                                                             : fusedPass<0, 0, 0>(C, H, W, reps);
    if (best < 0) {
        std::fprintf(stderr, "stage %s is not available on this CPU or for these sizes\n", stage);
        return 3;
    }
    std::printf("floor %s k=%d C=%d %dx%d, %d threads: best %.4f ms\n", stage, k, C, H, W,
                omp_get_max_threads(), best);
    return 0;
}
