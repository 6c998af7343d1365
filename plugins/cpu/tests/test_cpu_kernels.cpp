// test_cpu_kernels.cpp: the CPU library's C API against brute-force loops of its contract
// (docs/ops.md, convcrf_cpu.h), in C++ so that it runs wherever the library is built: natively
// on x86-64 (every instruction-set clone the CPU has) and, cross-compiled, on aarch64 under
// qemu-user (scripts/ci_native.sh). Label "cpu" in CTest; `test_cpu_kernels CASE` runs one.
//
// Every float kernel is compared with a double evaluation of the formula: odd sizes, images
// smaller than the window, batch 2, 1 to 23 classes, rows of several register blocks (w >= 100,
// where the blocked kernels read in place), k = 3..13.
#include "convcrf_cpu.h"
#include "host_test.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

struct Shape {
    int64_t n, c, h, w;
    int32_t k;
};

// (n, classes, h, w, k): borders, odd sizes, h or w below the window, batch 2, w >= 100.
const Shape kShapes[] = {
    {1, 1, 5, 7, 3},    {2, 21, 9, 13, 7},  {1, 23, 3, 2, 13}, {1, 9, 11, 37, 11},
    {2, 4, 1, 1, 5},    {1, 3, 6, 40, 9},   {1, 21, 7, 17, 13}, {1, 21, 4, 130, 7},
    {1, 5, 5, 101, 11}, {1, 2, 3, 100, 3},  {2, 3, 8, 19, 1},
};

Vec randomVec(size_t size, unsigned seed, float lo, float hi)
{
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    Vec v(size);
    for (float& x : v)
        x = dist(rng);
    return v;
}

// The instruction-set clones this CPU runs (0 baseline, 1 AVX2, 2 AVX-512; aarch64: 0 only).
std::vector<int32_t> clones()
{
    std::vector<int32_t> out;
    for (int32_t isa = 0; isa <= convcrf_cpu_best_isa(); ++isa)
        if (convcrf_cpu_set_isa(isa) == 0)
            out.push_back(isa);
    convcrf_cpu_set_isa(-1);
    return out;
}

// |got - want| <= tol * (scale + 1) for each element; prints the first miss.
bool near(const Vec& got, const DVec& want, const DVec& scale, double tol, const char* what,
          const Shape& s, int32_t isa)
{
    for (size_t i = 0; i < got.size(); ++i) {
        const double bound = tol * (scale.empty() ? 1.0 + std::fabs(want[i]) : scale[i] + 1.0);
        if (!(std::fabs(got[i] - want[i]) <= bound)) {
            std::fprintf(stderr,
                         "  %s, clone %d, n=%lld c=%lld h=%lld w=%lld k=%d: element %zu is %.9g, "
                         "want %.9g\n",
                         what, isa, (long long)s.n, (long long)s.c, (long long)s.h,
                         (long long)s.w, s.k, i, got[i], want[i]);
            return false;
        }
    }
    return true;
}

// a[n, ch, y + dy, x + dx] or 0 outside the image.
double at(const Vec& a, const Shape& s, int64_t channels, int64_t n, int64_t ch, int64_t y,
          int64_t x)
{
    if (y < 0 || y >= s.h || x < 0 || x >= s.w)
        return 0.0;
    return a[static_cast<size_t>(((n * channels + ch) * s.h + y) * s.w + x)];
}

size_t index(const Shape& s, int64_t channels, int64_t n, int64_t ch, int64_t y, int64_t x)
{
    return static_cast<size_t>(((n * channels + ch) * s.h + y) * s.w + x);
}

// ---- the contract, in double ----------------------------------------------------------------

// M[n,c,y,x] = sum_o K[n,o,y,x] q[n,c,y+dy,x+dx]; `scale` = sum_o |K q| (rounding bound).
void contractMessages(const Vec& q, const Vec& K, const Shape& s, DVec& out, DVec& scale)
{
    const int32_t r = s.k / 2;
    const int64_t kk = int64_t(s.k) * s.k;
    out.assign(static_cast<size_t>(s.n * s.c * s.h * s.w), 0.0);
    scale = out;
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t c = 0; c < s.c; ++c)
            for (int64_t y = 0; y < s.h; ++y)
                for (int64_t x = 0; x < s.w; ++x)
                    for (int32_t dy = -r; dy <= r; ++dy)
                        for (int32_t dx = -r; dx <= r; ++dx) {
                            const int64_t o = (dy + r) * s.k + (dx + r);
                            const double term =
                                at(K, s, kk, n, o, y, x) * at(q, s, s.c, n, c, y + dy, x + dx);
                            out[index(s, s.c, n, c, y, x)] += term;
                            scale[index(s, s.c, n, c, y, x)] += std::fabs(term);
                        }
}

// G[n,c,y,x] = sum_o K[n,o,y-dy,x-dx] g[n,c,y-dy,x-dx].
void contractTransposed(const Vec& g, const Vec& K, const Shape& s, DVec& out, DVec& scale)
{
    const int32_t r = s.k / 2;
    const int64_t kk = int64_t(s.k) * s.k;
    out.assign(static_cast<size_t>(s.n * s.c * s.h * s.w), 0.0);
    scale = out;
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t c = 0; c < s.c; ++c)
            for (int64_t y = 0; y < s.h; ++y)
                for (int64_t x = 0; x < s.w; ++x)
                    for (int32_t dy = -r; dy <= r; ++dy)
                        for (int32_t dx = -r; dx <= r; ++dx) {
                            const int64_t o = (dy + r) * s.k + (dx + r);
                            const double term = at(K, s, kk, n, o, y - dy, x - dx) *
                                                at(g, s, s.c, n, c, y - dy, x - dx);
                            out[index(s, s.c, n, c, y, x)] += term;
                            scale[index(s, s.c, n, c, y, x)] += std::fabs(term);
                        }
}

// gK[n,o,y,x] = sum_c g[n,c,y,x] q[n,c,y+dy,x+dx] (zero when the neighbour is outside).
void contractKernelGrad(const Vec& g, const Vec& q, const Shape& s, DVec& out, DVec& scale)
{
    const int32_t r = s.k / 2;
    const int64_t kk = int64_t(s.k) * s.k;
    out.assign(static_cast<size_t>(s.n * kk * s.h * s.w), 0.0);
    scale = out;
    for (int64_t n = 0; n < s.n; ++n)
        for (int32_t dy = -r; dy <= r; ++dy)
            for (int32_t dx = -r; dx <= r; ++dx) {
                const int64_t o = (dy + r) * s.k + (dx + r);
                for (int64_t y = 0; y < s.h; ++y)
                    for (int64_t x = 0; x < s.w; ++x)
                        for (int64_t c = 0; c < s.c; ++c) {
                            const double term =
                                at(g, s, s.c, n, c, y, x) * at(q, s, s.c, n, c, y + dy, x + dx);
                            out[index(s, kk, n, o, y, x)] += term;
                            scale[index(s, kk, n, o, y, x)] += std::fabs(term);
                        }
            }
}

// K[n,o,y,x] = exp(-0.5 sum_d (F[d,y,x] - F[d,y+dy,x+dx])^2), zero at the centre and outside.
void contractGaussian(const Vec& f, int64_t d, const Shape& s, DVec& out)
{
    const int32_t r = s.k / 2;
    const int64_t kk = int64_t(s.k) * s.k;
    out.assign(static_cast<size_t>(s.n * kk * s.h * s.w), 0.0);
    for (int64_t n = 0; n < s.n; ++n)
        for (int32_t dy = -r; dy <= r; ++dy)
            for (int32_t dx = -r; dx <= r; ++dx)
                for (int64_t y = 0; y < s.h; ++y)
                    for (int64_t x = 0; x < s.w; ++x) {
                        if ((dy == 0 && dx == 0) || y + dy < 0 || y + dy >= s.h || x + dx < 0 ||
                            x + dx >= s.w)
                            continue;
                        double d2 = 0.0;
                        for (int64_t ch = 0; ch < d; ++ch) {
                            const double diff =
                                at(f, s, d, n, ch, y, x) - at(f, s, d, n, ch, y + dy, x + dx);
                            d2 += diff * diff;
                        }
                        out[index(s, kk, n, (dy + r) * s.k + (dx + r), y, x)] = std::exp(-0.5 * d2);
                    }
}

// Weight of low-resolution index i in bilinear upsampling (half-pixel centres, clamped) of
// full-resolution index `dst` by `blur` (convcrf_math.h upsampleSource, in double).
double upsampleWeight(int64_t dst, int32_t blur, int64_t lowSize, int64_t i)
{
    double src = (dst + 0.5) / blur - 0.5;
    if (src < 0)
        src = 0;
    int64_t i0 = std::min<int64_t>(static_cast<int64_t>(src), lowSize - 1);
    const int64_t i1 = i0 < lowSize - 1 ? i0 + 1 : i0;
    const double lambda = i1 == i0 ? 0.0 : src - static_cast<double>(i0);
    return (i == i0 ? 1.0 - lambda : 0.0) + (i == i1 ? lambda : 0.0);
}

// ---- cases ------------------------------------------------------------------------------------

template <typename Call, typename Contract>
void checkWindowedOp(const char* what, Call call, Contract contract, int64_t outChannels(const Shape&))
{
    for (int32_t isa : clones()) {
        REQUIRE(convcrf_cpu_set_isa(isa) == 0);
        unsigned seed = 1;
        for (const Shape& s : kShapes) {
            const int64_t kk = int64_t(s.k) * s.k, plane = s.h * s.w;
            const Vec a = randomVec(static_cast<size_t>(s.n * s.c * plane), seed++, -1.0f, 1.0f);
            const Vec b = randomVec(static_cast<size_t>(s.n * kk * plane), seed++, 0.0f, 1.0f);
            const Vec b2 = randomVec(static_cast<size_t>(s.n * s.c * plane), seed++, 0.0f, 1.0f);
            Vec got(static_cast<size_t>(s.n * outChannels(s) * plane), NAN);
            EXPECT_EQ(call(a, b, b2, s, got, 2), 0);
            DVec want, scale;
            contract(a, b, b2, s, want, scale);
            EXPECT(near(got, want, scale, 1e-5, what, s, isa));
        }
    }
    convcrf_cpu_set_isa(-1);
}

int64_t classesOf(const Shape& s)
{
    return s.c;
}

int64_t offsetsOf(const Shape& s)
{
    return int64_t(s.k) * s.k;
}

void message_passing_matches_contract()
{
    checkWindowedOp(
        "message passing",
        [](const Vec& q, const Vec& K, const Vec&, const Shape& s, Vec& out, int32_t threads) {
            return convcrf_message_passing_f32(q.data(), K.data(), s.n, s.c, s.h, s.w, s.k,
                                               out.data(), threads);
        },
        [](const Vec& q, const Vec& K, const Vec&, const Shape& s, DVec& want, DVec& scale) {
            contractMessages(q, K, s, want, scale);
        },
        classesOf);
}

void transposed_matches_contract()
{
    checkWindowedOp(
        "transposed message passing",
        [](const Vec& g, const Vec& K, const Vec&, const Shape& s, Vec& out, int32_t threads) {
            return convcrf_message_passing_transposed_f32(g.data(), K.data(), s.n, s.c, s.h, s.w,
                                                          s.k, out.data(), threads);
        },
        [](const Vec& g, const Vec& K, const Vec&, const Shape& s, DVec& want, DVec& scale) {
            contractTransposed(g, K, s, want, scale);
        },
        classesOf);
}

void kernel_grad_matches_contract()
{
    checkWindowedOp(
        "kernel gradient",
        [](const Vec& g, const Vec&, const Vec& q, const Shape& s, Vec& out, int32_t threads) {
            return convcrf_message_passing_kernel_grad_f32(g.data(), q.data(), s.n, s.c, s.h,
                                                           s.w, s.k, out.data(), threads);
        },
        [](const Vec& g, const Vec&, const Vec& q, const Shape& s, DVec& want, DVec& scale) {
            contractKernelGrad(g, q, s, want, scale);
        },
        offsetsOf);
}

void gaussian_kernel_matches_contract()
{
    for (int32_t isa : clones()) {
        REQUIRE(convcrf_cpu_set_isa(isa) == 0);
        unsigned seed = 100;
        for (const Shape& s : kShapes) {
            const int64_t d = 5, kk = int64_t(s.k) * s.k, plane = s.h * s.w;
            // Features spread so that the kernel spans (0, 1], not only ~0 or ~1.
            const Vec f = randomVec(static_cast<size_t>(s.n * d * plane), seed++, 0.0f, 1.5f);
            Vec got(static_cast<size_t>(s.n * kk * plane), NAN);
            EXPECT_EQ(convcrf_gaussian_kernel_f32(f.data(), s.n, d, s.h, s.w, s.k, got.data(), 2),
                      0);
            DVec want;
            contractGaussian(f, d, s, want);
            EXPECT(near(got, want, {}, 2e-6, "gaussian kernel", s, isa));
            // The pairwise kernel: 0.7 * G(features[:3]) + 0.2 * G(features[3:]).
            Vec pair(got.size(), NAN);
            EXPECT_EQ(convcrf_pairwise_kernel_f32(f.data(), s.n, d, s.h, s.w, s.k, 3, 0.7f, 0.2f,
                                                  pair.data(), 2),
                      0);
            Vec fA, fB;
            for (int64_t n = 0; n < s.n; ++n) {
                const auto base = f.begin() + n * d * plane;
                fA.insert(fA.end(), base, base + 3 * plane);
                fB.insert(fB.end(), base + 3 * plane, base + d * plane);
            }
            DVec wantA, wantB;
            contractGaussian(fA, 3, s, wantA);
            contractGaussian(fB, 2, s, wantB);
            for (size_t i = 0; i < want.size(); ++i)
                want[i] = 0.7 * wantA[i] + 0.2 * wantB[i];
            EXPECT(near(pair, want, {}, 2e-6, "pairwise kernel", s, isa));
        }
    }
    convcrf_cpu_set_isa(-1);
}

struct MeanFieldShape {
    int64_t n, c, h, w;
    int32_t blur;
};

const MeanFieldShape kMeanFieldShapes[] = {
    {2, 21, 19, 45, 4}, {1, 5, 7, 9, 3}, {1, 3, 4, 37, 1}, {1, 7, 1, 2, 4}, {1, 23, 13, 70, 4},
};

// Q = softmax_c(unary + scale[c] * upsample(messagesLow)) and qLow = avg_pool(Q), in double.
void contractMeanField(const Vec& unary, const Vec& messages, const Vec& scale,
                       const MeanFieldShape& m, DVec& qFull, DVec& qLow)
{
    const int64_t hl = (m.h + m.blur - 1) / m.blur, wl = (m.w + m.blur - 1) / m.blur;
    qFull.assign(static_cast<size_t>(m.n * m.c * m.h * m.w), 0.0);
    qLow.assign(static_cast<size_t>(m.n * m.c * hl * wl), 0.0);
    std::vector<double> logits(static_cast<size_t>(m.c));
    for (int64_t n = 0; n < m.n; ++n)
        for (int64_t y = 0; y < m.h; ++y)
            for (int64_t x = 0; x < m.w; ++x) {
                double top = -1e300;
                for (int64_t c = 0; c < m.c; ++c) {
                    double up = 0.0;
                    for (int64_t i = 0; i < hl; ++i)
                        for (int64_t j = 0; j < wl; ++j)
                            up += upsampleWeight(y, m.blur, hl, i) *
                                  upsampleWeight(x, m.blur, wl, j) *
                                  messages[static_cast<size_t>(((n * m.c + c) * hl + i) * wl + j)];
                    logits[c] = unary[static_cast<size_t>(((n * m.c + c) * m.h + y) * m.w + x)] +
                                scale[c] * up;
                    top = std::max(top, logits[c]);
                }
                double sum = 0.0;
                for (int64_t c = 0; c < m.c; ++c)
                    sum += std::exp(logits[c] - top);
                for (int64_t c = 0; c < m.c; ++c) {
                    const double q = std::exp(logits[c] - top) / sum;
                    qFull[static_cast<size_t>(((n * m.c + c) * m.h + y) * m.w + x)] = q;
                    const int64_t i = y / m.blur, j = x / m.blur;
                    const double count =
                        double(std::min<int64_t>(m.h, (i + 1) * m.blur) - i * m.blur) *
                        double(std::min<int64_t>(m.w, (j + 1) * m.blur) - j * m.blur);
                    qLow[static_cast<size_t>(((n * m.c + c) * hl + i) * wl + j)] += q / count;
                }
            }
}

void mean_field_step_matches_definition()
{
    for (int32_t isa : clones()) {
        REQUIRE(convcrf_cpu_set_isa(isa) == 0);
        unsigned seed = 200;
        for (const MeanFieldShape& m : kMeanFieldShapes) {
            const int64_t hl = (m.h + m.blur - 1) / m.blur, wl = (m.w + m.blur - 1) / m.blur;
            const Vec unary = randomVec(static_cast<size_t>(m.n * m.c * m.h * m.w), seed++, -6, 6);
            const Vec messages = randomVec(static_cast<size_t>(m.n * m.c * hl * wl), seed++, -4, 4);
            const Vec scale = randomVec(static_cast<size_t>(m.c), seed++, 0, 1);
            Vec qFull(unary.size(), NAN), qLow(messages.size(), NAN);
            EXPECT_EQ(convcrf_mean_field_step_f32(unary.data(), messages.data(), scale.data(), m.n,
                                                  m.c, m.h, m.w, m.blur, nullptr, nullptr,
                                                  nullptr, nullptr, qLow.data(), qFull.data(), 2),
                      0);
            DVec wantFull, wantLow;
            contractMeanField(unary, messages, scale, m, wantFull, wantLow);
            const Shape s{m.n, m.c, m.h, m.w, m.blur};
            EXPECT(near(qFull, wantFull, {}, 3e-6, "mean-field step Q", s, isa));
            EXPECT(near(qLow, wantLow, {}, 3e-6, "mean-field step pooled Q", s, isa));
        }
    }
    convcrf_cpu_set_isa(-1);
}

// Backward of the training step: g = gradQFull + pool^T(gradQLow),
// gradUnary = Q * (g - <Q, g>_c), gradMessagesLow = upsample^T(gradUnary).
void mean_field_step_backward_matches_definition()
{
    for (int32_t isa : clones()) {
        REQUIRE(convcrf_cpu_set_isa(isa) == 0);
        unsigned seed = 300;
        for (const MeanFieldShape& m : kMeanFieldShapes) {
            const int64_t hl = (m.h + m.blur - 1) / m.blur, wl = (m.w + m.blur - 1) / m.blur;
            const int64_t full = m.n * m.c * m.h * m.w, low = m.n * m.c * hl * wl;
            const Vec unary = randomVec(static_cast<size_t>(full), seed++, -3, 3);
            const Vec messages = randomVec(static_cast<size_t>(low), seed++, -2, 2);
            const Vec ones(static_cast<size_t>(m.c), 1.0f);
            Vec q(static_cast<size_t>(full)), qLow(static_cast<size_t>(low));
            REQUIRE(convcrf_mean_field_step_f32(unary.data(), messages.data(), ones.data(), m.n,
                                                m.c, m.h, m.w, m.blur, nullptr, nullptr, nullptr,
                                                nullptr, qLow.data(), q.data(), 2) == 0);
            const Vec gFull = randomVec(static_cast<size_t>(full), seed++, -1, 1);
            const Vec gLow = randomVec(static_cast<size_t>(low), seed++, -1, 1);
            Vec gradUnary(static_cast<size_t>(full), NAN), gradLow(static_cast<size_t>(low), NAN);
            EXPECT_EQ(convcrf_mean_field_step_backward_f32(q.data(), gFull.data(), gLow.data(),
                                                           m.n, m.c, m.h, m.w, m.blur,
                                                           gradUnary.data(), gradLow.data(), 2),
                      0);
            DVec wantUnary(static_cast<size_t>(full)), wantLow(static_cast<size_t>(low), 0.0);
            for (int64_t n = 0; n < m.n; ++n)
                for (int64_t y = 0; y < m.h; ++y)
                    for (int64_t x = 0; x < m.w; ++x) {
                        const int64_t i = y / m.blur, j = x / m.blur;
                        const double count =
                            double(std::min<int64_t>(m.h, (i + 1) * m.blur) - i * m.blur) *
                            double(std::min<int64_t>(m.w, (j + 1) * m.blur) - j * m.blur);
                        double dot = 0.0;
                        std::vector<double> g(static_cast<size_t>(m.c));
                        for (int64_t c = 0; c < m.c; ++c) {
                            const size_t f = static_cast<size_t>(((n * m.c + c) * m.h + y) * m.w + x);
                            g[c] = gFull[f] +
                                   gLow[static_cast<size_t>(((n * m.c + c) * hl + i) * wl + j)] / count;
                            dot += q[f] * g[c];
                        }
                        for (int64_t c = 0; c < m.c; ++c) {
                            const size_t f = static_cast<size_t>(((n * m.c + c) * m.h + y) * m.w + x);
                            wantUnary[f] = q[f] * (g[c] - dot);
                        }
                    }
            for (int64_t n = 0; n < m.n; ++n)
                for (int64_t c = 0; c < m.c; ++c)
                    for (int64_t y = 0; y < m.h; ++y)
                        for (int64_t x = 0; x < m.w; ++x) {
                            const double gu =
                                wantUnary[static_cast<size_t>(((n * m.c + c) * m.h + y) * m.w + x)];
                            for (int64_t i = 0; i < hl; ++i) {
                                const double wy = upsampleWeight(y, m.blur, hl, i);
                                if (wy == 0.0)
                                    continue;
                                for (int64_t j = 0; j < wl; ++j)
                                    wantLow[static_cast<size_t>(((n * m.c + c) * hl + i) * wl + j)] +=
                                        wy * upsampleWeight(x, m.blur, wl, j) * gu;
                            }
                        }
            const Shape s{m.n, m.c, m.h, m.w, m.blur};
            EXPECT(near(gradUnary, wantUnary, {}, 3e-6, "mean-field backward unary", s, isa));
            EXPECT(near(gradLow, wantLow, {}, 1e-5, "mean-field backward messages", s, isa));
        }
    }
    convcrf_cpu_set_isa(-1);
}

void results_do_not_depend_on_threads()
{
    const Shape s{2, 21, 23, 131, 7};
    const int64_t plane = s.h * s.w, kk = int64_t(s.k) * s.k;
    const Vec q = randomVec(static_cast<size_t>(s.n * s.c * plane), 7, 0, 1);
    const Vec K = randomVec(static_cast<size_t>(s.n * kk * plane), 8, 0, 1);
    for (int32_t isa : clones()) {
        REQUIRE(convcrf_cpu_set_isa(isa) == 0);
        Vec one(q.size()), oneT(q.size()), oneG(K.size());
        REQUIRE(convcrf_message_passing_f32(q.data(), K.data(), s.n, s.c, s.h, s.w, s.k,
                                            one.data(), 1) == 0);
        REQUIRE(convcrf_message_passing_transposed_f32(q.data(), K.data(), s.n, s.c, s.h, s.w,
                                                       s.k, oneT.data(), 1) == 0);
        REQUIRE(convcrf_message_passing_kernel_grad_f32(q.data(), q.data(), s.n, s.c, s.h, s.w,
                                                        s.k, oneG.data(), 1) == 0);
        for (int32_t threads : {2, 3, 0}) {
            Vec many(q.size()), manyT(q.size()), manyG(K.size());
            EXPECT_EQ(convcrf_message_passing_f32(q.data(), K.data(), s.n, s.c, s.h, s.w, s.k,
                                                  many.data(), threads),
                      0);
            EXPECT_EQ(convcrf_message_passing_transposed_f32(q.data(), K.data(), s.n, s.c, s.h,
                                                             s.w, s.k, manyT.data(), threads),
                      0);
            EXPECT_EQ(convcrf_message_passing_kernel_grad_f32(q.data(), q.data(), s.n, s.c, s.h,
                                                              s.w, s.k, manyG.data(), threads),
                      0);
            EXPECT(many == one);
            EXPECT(manyT == oneT);
            EXPECT(manyG == oneG);
        }
    }
    convcrf_cpu_set_isa(-1);
}

void invalid_arguments_are_refused()
{
    float x = 0.0f, y = 0.0f;
    EXPECT_EQ(convcrf_message_passing_f32(&x, &y, 1, 1, 1, 1, 4, &x, 1), 1);   // even k
    EXPECT_EQ(convcrf_message_passing_f32(&x, &y, 1, 1, 1, 1, 33, &x, 1), 1);  // k > 31
    EXPECT_EQ(convcrf_message_passing_f32(&x, &y, 1, -1, 1, 1, 3, &x, 1), 2);  // negative size
    EXPECT_EQ(convcrf_message_passing_f32(nullptr, &y, 1, 1, 1, 1, 3, &x, 1), 3);
    EXPECT_EQ(convcrf_message_passing_transposed_f32(&x, nullptr, 1, 1, 1, 1, 3, &x, 1), 3);
    EXPECT_EQ(convcrf_message_passing_kernel_grad_f32(&x, &y, 1, 1, 1, 1, 3, nullptr, 1), 3);
    EXPECT_EQ(convcrf_message_passing_f32(&x, &y, int64_t(1) << 40, 1 << 20, 1 << 20, 1, 3, &x, 1),
              8);  // the element count overflows int64
    EXPECT_EQ(convcrf_mean_field_step_f32(&x, nullptr, nullptr, 1, 1, 1, 1, 0, nullptr, nullptr,
                                          nullptr, nullptr, &y, nullptr, 1),
              4);  // blur 0
}

void instruction_sets_are_reported()
{
    const int32_t best = convcrf_cpu_best_isa();
#if defined(__aarch64__)
    EXPECT_EQ(best, 0);  // the NEON build has one clone, reported as baseline
#endif
    EXPECT(best >= 0 && best <= 2);
    EXPECT_EQ(convcrf_cpu_set_isa(best + 1), 10);  // an instruction set the CPU lacks: refused
    EXPECT_EQ(convcrf_cpu_set_isa(-1), 0);
    EXPECT_EQ(convcrf_cpu_isa(), best);
    EXPECT(convcrf_cpu_available_cpus() >= 1);
    EXPECT_EQ(convcrf_cpu_api_version(), 4);
    EXPECT(std::strstr(convcrf_status_message(10), "instruction set") != nullptr);
}

const convcrf::test::Case kCases[] = {
    {"message_passing_matches_contract", message_passing_matches_contract},
    {"transposed_matches_contract", transposed_matches_contract},
    {"kernel_grad_matches_contract", kernel_grad_matches_contract},
    {"gaussian_kernel_matches_contract", gaussian_kernel_matches_contract},
    {"mean_field_step_matches_definition", mean_field_step_matches_definition},
    {"mean_field_step_backward_matches_definition", mean_field_step_backward_matches_definition},
    {"results_do_not_depend_on_threads", results_do_not_depend_on_threads},
    {"invalid_arguments_are_refused", invalid_arguments_are_refused},
    {"instruction_sets_are_reported", instruction_sets_are_reported},
};

}  // namespace

int main(int argc, char** argv)
{
    return convcrf::test::run(kCases, argc, argv);
}
