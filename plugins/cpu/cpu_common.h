// cpu_common.h: what every kernel file of the CPU library shares: the instruction-set clones,
// vector types, unaligned loads/stores and the denormal guard.
//
// Instruction sets: each hot kernel is written once as an always-inline template over a GCC
// vector type. On x86-64 it is instantiated in three clones, AVX-512 (x86-64-v4, 16 lanes),
// AVX2+FMA (x86-64-v3, 8 lanes) and baseline x86-64 (8 lanes split by the compiler); isa.cpp
// picks one at load time from the CPU (or $CONVCRF_CPU_ISA, or convcrf_cpu_set_isa) and every
// entry point dispatches through CONVCRF_CLONE. Explicit clones rather than GCC's
// target_clones so that tests can force each clone on a CPU that has several.
// On aarch64 (and any other target) only the baseline clone exists: AArch64's baseline
// (armv8-a) includes Advanced SIMD (NEON), which the compiler vectorises the same templates for,
// and no x86 clone is compiled. CMake tells the architecture it configured for
// (CONVCRF_ARCH_X86_64 / CONVCRF_ARCH_AARCH64); a compiler that targets another one is an error.
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

#if defined(CONVCRF_ARCH_X86_64) && !defined(__x86_64__)
#error "CMake configured an x86-64 build but the compiler targets another architecture; cross-compile with a toolchain file (cmake/toolchains/)"
#endif
#if defined(CONVCRF_ARCH_AARCH64) && !defined(__aarch64__)
#error "CMake configured an aarch64 build but the compiler targets another architecture; cross-compile with a toolchain file (cmake/toolchains/)"
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CONVCRF_NO_MULTIVERSION)
#define CONVCRF_X86_CLONES 1
#define CONVCRF_TARGET_AVX512 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define CONVCRF_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
// The clone of kernel `name` (functions nameAvx512, nameAvx2, nameBaseline) for the active
// instruction set.
#define CONVCRF_CLONE(name) ::convcrf::pickClone(&name##Avx512, &name##Avx2, &name##Baseline)
#else
#define CONVCRF_X86_CLONES 0
#define CONVCRF_CLONE(name) (&name##Baseline)
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

// Hides a pointer's value from the optimiser (no instruction is emitted): it stays in a
// register of its own instead of being rewritten as an offset from another pointer.
#if defined(__GNUC__)
#define CONVCRF_OPAQUE_POINTER(p) asm("" : "+r"(p))
#else
#define CONVCRF_OPAQUE_POINTER(p) ((void)0)
#endif

namespace convcrf {

// Instruction sets of the clones (values of the C API's convcrf_cpu_isa).
enum Isa : int32_t {
    kIsaBaseline = 0,  // x86-64 baseline (SSE2); on aarch64 the Advanced SIMD (NEON) build
    kIsaAvx2 = 1,    // x86-64-v3: AVX2 + FMA
    kIsaAvx512 = 2,  // x86-64-v4: AVX-512 F/BW/DQ/VL
};

Isa activeIsa();        // the clone every entry point runs now (isa.cpp)
Isa bestSupportedIsa(); // the widest one this CPU supports
Status setActiveIsa(int32_t isa);  // -1: the best supported; kErrorIsaUnavailable if missing

#if CONVCRF_X86_CLONES
// The clone of a kernel for the active instruction set (through CONVCRF_CLONE).
template <typename Fn>
Fn pickClone(Fn avx512, Fn avx2, Fn baseline)
{
    switch (activeIsa()) {
    case kIsaAvx512:
        return avx512;
    case kIsaAvx2:
        return avx2;
    default:
        return baseline;
    }
}
#endif

#if defined(__GNUC__)
// The integer vector of the same width as a float vector (for expPolyGeneric).
template <typename F> struct IntOf;
template <> struct IntOf<float> { using type = int32_t; };
template <> struct IntOf<FloatVec> { using type = IntVec; };
template <> struct IntOf<FloatVec16> { using type = IntVec16; };
template <> struct IntOf<FloatVec4> { using type = IntVec4; };

// The vector type of the baseline clone: eight floats on x86-64 (two SSE2 registers), four on
// aarch64 (one NEON register: GCC lowers 32-byte generic vectors there through the stack).
#if defined(__aarch64__)
using BaselineVec = FloatVec4;
#else
using BaselineVec = FloatVec;
#endif
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
// ran 4x slower on real inputs than on mild ones. Values below 1.2e-38 become 0, on x86
// (MXCSR FTZ | DAZ) and on aarch64 (FPCR.FZ) alike, so results agree across machines.
class FlushDenormals {
public:
    FlushDenormals()
    {
#if defined(__SSE__) || defined(__x86_64__)
        saved_ = _mm_getcsr();
        _mm_setcsr(saved_ | 0x8040);  // FTZ (bit 15) | DAZ (bit 6)
#elif defined(__aarch64__) && defined(__GNUC__)
        asm volatile("mrs %0, fpcr" : "=r"(saved_));
        const uint64_t flushed = saved_ | (uint64_t(1) << 24);  // FZ
        asm volatile("msr fpcr, %0" : : "r"(flushed));
#endif
    }
    ~FlushDenormals()
    {
#if defined(__SSE__) || defined(__x86_64__)
        _mm_setcsr(saved_);
#elif defined(__aarch64__) && defined(__GNUC__)
        asm volatile("msr fpcr, %0" : : "r"(saved_));
#endif
    }
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;

private:
#if defined(__aarch64__)
    uint64_t saved_ = 0;
#else
    unsigned int saved_ = 0;
#endif
};

// Round n up to a multiple of m (m > 0).
constexpr int64_t roundUp(int64_t n, int64_t m)
{
    return (n + m - 1) / m * m;
}

}  // namespace convcrf
