// floor_kernels.cpp: plain, sensible implementations of the two hot loops of ConvCRF, compiled
// by benchmarks/bench_crf.py at run time (c++ -O3 -march=native -fopenmp -shared) and timed in
// the same process as the library, as the yardstick its ratios are measured against. Written
// independently of plugins/cpu on purpose: no blocking, no tricks, just what a careful
// engineer writes first. Not part of the library.
#include <algorithm>
#include <cstdint>
#include <vector>
#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

extern "C" {

// M[c,y,x] = sum_o K[o,y,x] * qpad[c, y+dy+r, x+dx+r]: vectorised over x, all classes of a row
// per offset, q already zero-padded by r on every side (qpad [C, H+2r, W+2r]).
void floor_message_passing(const float* qpad, const float* K, int C, int H, int W, int k,
                           float* M, int threads)
{
    const int r = k / 2, HP = H + 2 * r, WP = W + 2 * r;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int y = 0; y < H; ++y) {
        std::vector<float> acc(static_cast<size_t>(C) * W, 0.f);
        for (int dy = -r; dy <= r; ++dy)
            for (int dx = -r; dx <= r; ++dx) {
                const float* kr = K + (static_cast<size_t>((dy + r) * k + dx + r) * H + y) * W;
                for (int c = 0; c < C; ++c) {
                    const float* qr = qpad + (static_cast<size_t>(c) * HP + y + r + dy) * WP + r + dx;
                    float* a = acc.data() + static_cast<size_t>(c) * W;
#pragma omp simd
                    for (int x = 0; x < W; ++x)
                        a[x] += kr[x] * qr[x];
                }
            }
        for (int c = 0; c < C; ++c)
            std::copy(acc.begin() + static_cast<size_t>(c) * W, acc.begin() + static_cast<size_t>(c + 1) * W,
                      M + (static_cast<size_t>(c) * H + y) * W);
    }
}

#if defined(__AVX2__) && defined(__FMA__)
static inline __m256 exp8(__m256 x)
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

// One full-resolution mean-field pass, blur 4: bilinear upsample of mlow [C,HL,WL] (half-pixel),
// add to unary [C,H,W] (W a multiple of 8), softmax over C, 4x4 average pooling into qlow.
// Returns 0, or -1 when C > 64 or W is not a multiple of 8 (the loop keeps C vectors live).
int floor_fused_pass(const float* unary, const float* mlow, int C, int H, int W, float* qlow,
                     int threads)
{
    const int B = 4, HL = (H + B - 1) / B, WL = (W + B - 1) / B;
    if (C > 64 || W % 8 != 0)
        return -1;
#pragma omp parallel num_threads(threads)
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
        __m256 l[64];
#pragma omp for schedule(static)
        for (int i = 0; i < HL; ++i) {
            std::fill(acc.begin(), acc.end(), 0.f);
            for (int s = 0; s < 3; ++s) {
                int row = std::min(HL - 1, std::max(0, i - 1 + s));
                for (int c = 0; c < C; ++c) {
                    const float* m = mlow + (static_cast<size_t>(c) * HL + row) * WL;
                    float* o = hup.data() + (static_cast<size_t>(s) * C + c) * W;
                    for (int x = 0; x < W; ++x)
                        o[x] = m[j0[x]] + lx[x] * (m[j1[x]] - m[j0[x]]);
                }
            }
            for (int y = i * B; y < std::min(H, (i + 1) * B); ++y) {
                float fy = (y + 0.5f) / B - 0.5f;
                int i0 = fy < 0 ? 0 : static_cast<int>(fy);
                i0 = std::min(i0, HL - 1);
                int i1 = std::min(HL - 1, i0 + 1);
                float ly = i1 == i0 ? 0.f : std::max(0.f, fy - i0);
                int s0 = std::max(0, i0 - (i - 1)), s1 = std::min(2, i1 - (i - 1));
                const __m256 vly = _mm256_set1_ps(ly);
                for (int x = 0; x < W; x += 8) {
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
    return 0;
}
#else
int floor_fused_pass(const float*, const float*, int, int, int, float*, int)
{
    return -1;  // the floor pass is written for AVX2+FMA
}
#endif

}  // extern "C"
