// thread_pool.cpp: see thread_pool.h for the design.
#include "thread_pool.h"

#include "cpu_common.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

namespace convcrf {
namespace {

// One call's work, on the calling thread's stack.
struct Job {
    int64_t total = 0;
    int64_t chunkSize = 1;
    int64_t chunks = 0;
    RangeFn fn = nullptr;
    void* context = nullptr;
    std::atomic<int64_t> nextChunk{0};
    std::atomic<bool> failed{false};

    void runChunks()
    {
        FlushDenormals flush;
        for (;;) {
            const int64_t chunk = nextChunk.fetch_add(1, std::memory_order_relaxed);
            if (chunk >= chunks || failed.load(std::memory_order_relaxed))
                return;
            const int64_t begin = chunk * chunkSize;
            const int64_t end = std::min(total, begin + chunkSize);
            try {
                fn(context, begin, end);
            } catch (...) {
                failed = true;
            }
        }
    }
};

class ThreadPool {
public:
    // Runs `job` on the caller and up to `helpers` workers. False when workers could not be
    // started (then nothing ran).
    bool run(Job& job, int32_t helpers)
    {
        std::unique_lock<std::mutex> busy(callMutex_, std::try_to_lock);
        if (!busy.owns_lock()) {
            // Another thread's call holds the pool: run this one alone rather than queue.
            job.runChunks();
            return true;
        }
        if (!ensureWorkers(helpers))
            return false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            job_ = &job;
            seats_ = helpers;
        }
        for (int32_t i = 0; i < helpers; ++i)
            wake_.notify_one();
        job.runChunks();
        // Close the call: workers that have not joined yet will not; wait only for those
        // that did (each holds at most one chunk).
        std::unique_lock<std::mutex> lock(mutex_);
        job_ = nullptr;
        seats_ = 0;
        done_.wait(lock, [&] { return running_ == 0; });
        return true;
    }

private:
    bool ensureWorkers(int32_t count)
    {
        while (static_cast<int32_t>(workers_.size()) < count) {
            try {
                workers_.emplace_back([this] { workerLoop(); });
            } catch (...) {  // std::system_error (EAGAIN: memory or process limit), bad_alloc
                return false;
            }
        }
        return true;
    }

    void workerLoop()
    {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return job_ != nullptr && seats_ > 0; });
            Job* job = job_;
            --seats_;
            ++running_;
            lock.unlock();
            job->runChunks();
            lock.lock();
            if (--running_ == 0)
                done_.notify_all();
        }
    }

    std::mutex callMutex_;  // one call at a time uses the workers
    std::mutex mutex_;      // guards job_, seats_, running_
    std::condition_variable wake_, done_;
    Job* job_ = nullptr;
    int32_t seats_ = 0;     // workers still wanted for the current call
    int32_t running_ = 0;   // workers inside the current call
    std::vector<std::thread> workers_;
};

// The pool is created on first use and never destroyed: its workers sleep until the process
// exits (destroying it at exit would race with calls from other static destructors). A child
// of fork() has none of the parent's threads, so it forgets the parent's pool (leaking it: its
// mutexes may have been held at the fork) and starts its own.
std::atomic<ThreadPool*> gPool{nullptr};

void forgetPoolInChild()
{
    gPool.store(nullptr);
}

ThreadPool* pool()
{
    ThreadPool* p = gPool.load();
    if (p)
        return p;
#if defined(__linux__)
    static const bool registered = [] {
        pthread_atfork(nullptr, nullptr, forgetPoolInChild);
        return true;
    }();
    (void)registered;
#endif
    ThreadPool* fresh = new ThreadPool();  // may throw bad_alloc: caught by the caller
    if (!gPool.compare_exchange_strong(p, fresh)) {
        delete fresh;
        return p;
    }
    return fresh;
}

}  // namespace

int32_t availableCpus()
{
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int count = CPU_COUNT(&set);
        if (count > 0)
            return count;
    }
#endif
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int32_t>(hw) : 1;
}

int32_t resolveThreads(int32_t numThreads)
{
    const int32_t threads = numThreads > 0 ? numThreads : availableCpus();
    return std::min(threads, kMaxThreads);
}

Status runParallel(int64_t total, int32_t numThreads, RangeFn fn, void* context)
{
    if (total <= 0)
        return kSuccess;
    Job job;
    job.total = total;
    job.fn = fn;
    job.context = context;
    const int64_t threads = std::min<int64_t>(resolveThreads(numThreads), total);
    // A few chunks per thread: whoever runs takes the next one, so a thread the OS does not
    // schedule delays the call by one chunk at most.
    job.chunks = threads == 1 ? 1 : std::min<int64_t>(total, threads * 4);
    job.chunkSize = (total + job.chunks - 1) / job.chunks;
    job.chunks = (total + job.chunkSize - 1) / job.chunkSize;
    try {
        if (threads == 1)
            job.runChunks();
        else if (!pool()->run(job, static_cast<int32_t>(threads - 1)))
            return kErrorThreadStart;
    } catch (...) {
        return kErrorOutOfMemory;  // bad_alloc creating the pool or its job
    }
    // A chunk that threw (std::bad_alloc of its scratch: nothing else throws in the kernels).
    return job.failed ? kErrorOutOfMemory : kSuccess;
}

}  // namespace convcrf
