// thread_pool.h: the library's one persistent worker pool.
//
// Why a pool, and why this one: starting threads on every call cost tens of microseconds per
// call and, worse, split the work statically, so one worker that the OS did not schedule (a
// busy CPU, PyTorch's OpenMP threads spinning) held the whole call for a scheduler time slice.
// Here workers are started once, sleep on a condition variable between calls (they never
// spin), and claim small chunks of the work from a shared counter, so the calling thread and
// whichever workers actually run finish the call while a descheduled worker holds at most one
// chunk. The caller never waits for a worker that has not started on the call.
//
// Safe to call from several threads: one call uses the pool at a time and the others run on
// their calling thread alone. Safe across fork(): the child starts a fresh pool.
#pragma once

#include "../common/convcrf_math.h"

#include <cstdint>
#include <type_traits>

namespace convcrf {

// Requests above this many threads run on this many (the work is compute-bound: more threads
// than cores only add switching; a request of 10^6 must not try to start 10^6 threads).
constexpr int32_t kMaxThreads = 256;

// CPUs this process may run on (sched_getaffinity on Linux, else hardware_concurrency), >= 1.
int32_t availableCpus();

// Threads a call with `numThreads` uses: <= 0 means availableCpus(); capped at kMaxThreads.
int32_t resolveThreads(int32_t numThreads);

using RangeFn = void (*)(void* context, int64_t begin, int64_t end);

// Run fn(context, begin, end) over contiguous chunks covering [0, total) on up to numThreads
// threads (the caller included), with denormals flushed to zero. Returns kSuccess,
// kErrorThreadStart when workers could not be started (nothing ran then), or kErrorOutOfMemory
// when fn threw (std::bad_alloc; remaining chunks are skipped). Never throws.
Status runParallel(int64_t total, int32_t numThreads, RangeFn fn, void* context);

template <typename Fn>
Status parallelFor(int64_t total, int32_t numThreads, Fn&& fn)
{
    using F = typename std::remove_reference<Fn>::type;
    return runParallel(
        total, numThreads,
        [](void* context, int64_t begin, int64_t end) { (*static_cast<F*>(context))(begin, end); },
        const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace convcrf
