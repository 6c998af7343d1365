// isa.cpp: which instruction-set clone the kernels run (see cpu_common.h).
//
// Chosen once at load time: $CONVCRF_CPU_ISA (baseline | avx2 | avx512 | auto) when it names
// an instruction set this CPU has, else the widest one the CPU has. convcrf_cpu_set_isa changes
// it later (tests force each clone that way).
#include "cpu_common.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace convcrf {
namespace {

bool cpuHas(Isa isa)
{
    switch (isa) {
    case kIsaBaseline:
        return true;
#if CONVCRF_X86_CLONES
    case kIsaAvx2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case kIsaAvx512:
        // x86-64-v4; libgcc also checks that the OS saves the AVX-512 registers (XCR0).
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               cpuHas(kIsaAvx2);
#endif
    default:
        return false;
    }
}

Isa initialIsa()
{
    const Isa best = bestSupportedIsa();
    const char* env = std::getenv("CONVCRF_CPU_ISA");
    if (!env)
        return best;
    Isa wanted = best;
    if (std::strcmp(env, "baseline") == 0)
        wanted = kIsaBaseline;
    else if (std::strcmp(env, "avx2") == 0)
        wanted = kIsaAvx2;
    else if (std::strcmp(env, "avx512") == 0)
        wanted = kIsaAvx512;
    // An unknown name or a missing instruction set falls back to the best one: a library load
    // cannot fail, and convcrf_cpu_isa() tells what runs.
    return cpuHas(wanted) ? wanted : best;
}

std::atomic<int32_t>& activeSlot()
{
    static std::atomic<int32_t> slot{initialIsa()};
    return slot;
}

}  // namespace

Isa bestSupportedIsa()
{
    if (cpuHas(kIsaAvx512))
        return kIsaAvx512;
    if (cpuHas(kIsaAvx2))
        return kIsaAvx2;
    return kIsaBaseline;
}

Isa activeIsa()
{
    return static_cast<Isa>(activeSlot().load(std::memory_order_relaxed));
}

Status setActiveIsa(int32_t isa)
{
    if (isa < 0) {
        activeSlot().store(bestSupportedIsa());
        return kSuccess;
    }
    if (isa > kIsaAvx512 || !cpuHas(static_cast<Isa>(isa)))
        return kErrorIsaUnavailable;
    activeSlot().store(isa);
    return kSuccess;
}

}  // namespace convcrf
