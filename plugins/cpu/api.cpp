// api.cpp: the library-wide part of the C API (version, instruction set, threads).
#include "convcrf_cpu.h"

#include "cpu_common.h"
#include "thread_pool.h"

namespace {
constexpr int32_t kCpuApiVersion = 4;
}  // namespace

extern "C" {

int32_t convcrf_cpu_api_version(void)
{
    return kCpuApiVersion;
}

const char* convcrf_status_message(int32_t status)
{
    return convcrf::statusMessage(status);
}

int32_t convcrf_cpu_isa(void)
{
    return convcrf::activeIsa();
}

int32_t convcrf_cpu_best_isa(void)
{
    return convcrf::bestSupportedIsa();
}

int32_t convcrf_cpu_set_isa(int32_t isa)
{
    return convcrf::setActiveIsa(isa);
}

int32_t convcrf_cpu_available_cpus(void)
{
    return convcrf::availableCpus();
}

}  // extern "C"
