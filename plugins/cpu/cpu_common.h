// cpu_common.h: what every kernel file of the CPU library shares: the instruction-set clones,
// vector types, unaligned loads/stores and the denormal guard.
//
// Instruction sets: each hot kernel is written once as an always-inline template over a GCC
// vector type and instantiated in three clones, AVX-512 (x86-64-v4, 16 lanes), AVX2+FMA
// (x86-64-v3, 8 lanes) and baseline x86-64 (8 lanes split by the compiler). isa.cpp picks one at
// load time from the CPU (or $CONVCRF_CPU_ISA, or convcrf_cpu_set_isa) and every entry point
// dispatches on activeIsa(). Explicit clones rather than GCC's target_clones so that tests can
// force each clone on a CPU that has several.
#pragma once

#if defined(__GNUC__)
// Vector values are passed between always-inlined helpers; GCC's note that the by-value ABI of
// 32/64-byte vectors differs without AVX never applies to inlined code.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include "../common/convcrf_math.h"

#include <cstdint>
#include <cstring>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CONVCRF_NO_MULTIVERSION)
#define CONVCRF_X86_CLONES 1
#define CONVCRF_TARGET_AVX512 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define CONVCRF_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#else
#define CONVCRF_X86_CLONES 0
#define CONVCRF_TARGET_AVX512
#define CONVCRF_TARGET_AVX2
#endif

// Kernel bodies are forced inline into the per-ISA clones: a separately compiled body would
// only get the baseline instruction set.
#if defined(__GNUC__)
#define CONVCRF_INLINE inline __attribute__((always_inline))
#define CONVCRF_LAMBDA_INLINE __attribute__((always_inline))
#else
#define CONVCRF_INLINE inline
#define CONVCRF_LAMBDA_INLINE
#endif

namespace convcrf {

// Instruction sets of the clones (values of the C API's convcrf_cpu_isa).
enum Isa : int32_t {
    kIsaBaseline = 0,
    kIsaAvx2 = 1,    // x86-64-v3: AVX2 + FMA
    kIsaAvx512 = 2,  // x86-64-v4: AVX-512 F/BW/DQ/VL
};

Isa activeIsa();        // the clone every entry point runs now (isa.cpp)
Isa bestSupportedIsa(); // the widest one this CPU supports
Status setActiveIsa(int32_t isa);  // -1: the best supported; kErrorIsaUnavailable if missing

// The clone of a kernel for the active instruction set: every entry point dispatches here.
template <typename Fn>
Fn pickClone(Fn avx512, Fn avx2, Fn baseline)
{
#if CONVCRF_X86_CLONES
    switch (activeIsa()) {
    case kIsaAvx512:
        return avx512;
    case kIsaAvx2:
        return avx2;
    default:
        break;
    }
#else
    (void)avx512;
    (void)avx2;
#endif
    return baseline;
}

#if defined(__GNUC__)
// The integer vector of the same width as a float vector (for expPolyGeneric).
template <typename F> struct IntOf;
template <> struct IntOf<float> { using type = int32_t; };
template <> struct IntOf<FloatVec> { using type = IntVec; };
template <> struct IntOf<FloatVec16> { using type = IntVec16; };
#endif

template <typename F>
constexpr int64_t lanesOf()
{
    return static_cast<int64_t>(sizeof(F) / sizeof(float));
}

// Unaligned load/store of F (float or a float vector).
template <typename F>
CONVCRF_INLINE F loadAs(const float* p)
{
    F v;
    std::memcpy(&v, p, sizeof(F));
    return v;
}

template <typename F>
CONVCRF_INLINE void storeAs(float* p, F v)
{
    std::memcpy(p, &v, sizeof(F));
}

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

// Round n up to a multiple of m (m > 0).
constexpr int64_t roundUp(int64_t n, int64_t m)
{
    return (n + m - 1) / m * m;
}

}  // namespace convcrf
