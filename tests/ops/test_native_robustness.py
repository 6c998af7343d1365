"""The native CPU library never crashes, aborts or over-allocates on hostile sizes or limits.

Issue 11 ("Shared use and native robustness"): sizes whose product overflows int64 segfaulted,
``mean_field_step`` allocated ~40 GiB before any check, and a worker thread that could not be
started aborted the process. Each case runs in a child process (numpy + ctypes only), so a
crash fails the test instead of killing the test run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from convcrf_deploy import _native

lib = _native.cpu_library()
pytestmark = pytest.mark.skipif(lib is None, reason="native CPU library not built")

OVERFLOW, THREAD_START = 8, 9

# Loads the library exactly as the package does; `buf` is a small valid buffer for every pointer.
PRELUDE = """
import ctypes, os, resource, sys
import numpy as np
from convcrf_deploy import _native
lib = _native.cpu_library()
buf = np.zeros(1 << 16, np.float32)
P = buf.ctypes.data
"""


def _run(body: str, limit_s: float = 60) -> list[int]:
    """Run PRELUDE + body in a child; body prints one status per line. Returns the statuses."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(_native.__file__)),
                                        env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=limit_s, env=env)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    return [int(v) for v in proc.stdout.split()]


def test_size_products_overflowing_int64_are_refused_by_every_entry_point():
    big, c33, h16 = 1 << 32, 1 << 33, 1 << 16
    statuses = _run(f"""
        for n, c, h, w in ((1, 21, {big}, {big}), (1, {c33}, {h16}, {h16}), (1, 1, 1, 1 << 62)):
            for s in ("f32", "f64"):
                print(getattr(lib, "convcrf_gaussian_kernel_" + s)(P, n, c, h, w, 7, P, 2))
                print(getattr(lib, "convcrf_gaussian_kernel_backward_" + s)(P, P, P, n, c, h, w, 7, P, 2))
                print(getattr(lib, "convcrf_message_passing_" + s)(P, P, n, c, h, w, 7, P, 2))
                print(getattr(lib, "convcrf_message_passing_transposed_" + s)(P, P, n, c, h, w, 7, P, 2))
                print(getattr(lib, "convcrf_message_passing_kernel_grad_" + s)(P, P, n, c, h, w, 7, P, 2))
            print(lib.convcrf_mean_field_step_f32(P, P, None, n, c, h, w, 4, None, None, None,
                                                  None, P, P, 2))
            print(lib.convcrf_mean_field_step_backward_f32(P, P, P, n, c, h, w, 4, P, P, 2))
            print(lib.convcrf_pairwise_kernel_f32(P, n, c, h, w, 7, 0, 1.0, 1.0, P, 2))
            print(lib.convcrf_pairwise_kernel_from_image_f32(P, n * c, h, w, 1, 7, 1.0, 1.0, 1.0,
                                                             1.0, 1.0, P, 2))
    """)
    assert statuses == [OVERFLOW] * len(statuses) and len(statuses) == 42


def test_mean_field_step_validates_before_allocating():
    """c = h = w = 2^31 used to allocate ~40 GiB first; under a 1 GiB address-space limit the
    refusal must come from validation (status 8), not from a failed allocation."""
    statuses = _run("""
        soft = 1 << 30
        used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (used + soft, resource.RLIM_INFINITY))
        s = 1 << 31
        print(lib.convcrf_mean_field_step_f32(P, P, None, 1, s, s, s, 4, None, None, None,
                                              None, P, P, 2))
    """)
    assert statuses == [OVERFLOW]


def test_negative_sizes_are_invalid_shapes():
    n, c, h, w = 1, -3, 4, 4
    assert lib.convcrf_message_passing_f32(None, None, n, c, h, w, 3, None, 1) == 2
    assert lib.convcrf_mean_field_step_f32(None, None, None, n, c, h, w, 4, None, None, None,
                                           None, None, None, 1) == 2


def test_thread_start_failure_returns_a_status_instead_of_aborting():
    """Under an address-space limit that leaves no room for thread stacks, a call asking for
    64 threads returns kErrorThreadStart (it used to abort: 'terminate called ...')."""
    statuses = _run("""
        q = np.random.rand(1, 21, 64, 64).astype(np.float32)
        K = np.random.rand(1, 49, 64, 64).astype(np.float32)
        out = np.zeros_like(q)
        used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (used + (24 << 20), resource.RLIM_INFINITY))
        print(lib.convcrf_message_passing_f32(q.ctypes.data, K.ctypes.data, 1, 21, 64, 64, 7,
                                              out.ctypes.data, 64))
        # One thread needs no worker: still works under the limit.
        print(lib.convcrf_message_passing_f32(q.ctypes.data, K.ctypes.data, 1, 21, 64, 64, 7,
                                              out.ctypes.data, 1))
    """)
    assert statuses == [THREAD_START, 0]


def test_a_million_threads_is_capped_not_fatal():
    rng = np.random.default_rng(0)
    q = rng.random((1, 4, 300, 8), dtype=np.float32)
    K = rng.random((1, 9, 300, 8), dtype=np.float32)
    a, b = np.zeros_like(q), np.zeros_like(q)
    for out, threads in ((a, 1), (b, 10**6)):
        assert lib.convcrf_message_passing_f32(q.ctypes.data, K.ctypes.data, 1, 4, 300, 8, 3,
                                               out.ctypes.data, threads) == 0
    np.testing.assert_array_equal(a, b)


def test_pool_survives_fork_and_concurrent_callers():
    """A child of fork() (DataLoader workers) gets its own pool; several Python threads may call
    at once (ctypes releases the GIL) and each gets its own correct result."""
    statuses = _run("""
        import threading
        q = np.random.rand(1, 21, 40, 50).astype(np.float32)
        K = np.random.rand(1, 49, 40, 50).astype(np.float32)
        def mp(out, threads=2):
            return lib.convcrf_message_passing_f32(q.ctypes.data, K.ctypes.data, 1, 21, 40, 50,
                                                   7, out.ctypes.data, threads)
        want = np.zeros_like(q)
        print(mp(want, 1))
        print(mp(np.zeros_like(q)))  # starts the pool in the parent
        pid = os.fork()
        if pid == 0:
            out = np.zeros_like(q)
            os._exit(0 if mp(out) == 0 and np.array_equal(out, want) else 1)
        print(os.waitpid(pid, 0)[1])
        outs = [np.zeros_like(q) for _ in range(4)]
        codes = [None] * 4
        def work(i):
            for _ in range(20):
                codes[i] = mp(outs[i]) or codes[i]
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(sum(int(not np.array_equal(o, want)) for o in outs) + sum(c or 0 for c in codes))
    """)
    assert statuses == [0, 0, 0, 0]


def test_default_threads_follow_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    assert _native.available_cpus() == len(os.sched_getaffinity(0))
    assert lib.convcrf_cpu_available_cpus() == len(os.sched_getaffinity(0))
    statuses = _run("""
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        print(lib.convcrf_cpu_available_cpus())
        print(_native.available_cpus())
    """)
    assert statuses == [1, 1]


def test_instruction_set_can_be_forced_by_environment():
    env_isa = "baseline"
    code = subprocess.run(
        [sys.executable, "-c", "from convcrf_deploy import _native; print(_native.cpu_isa())"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "CONVCRF_CPU_ISA": env_isa,
             "PYTHONPATH": os.path.dirname(os.path.dirname(_native.__file__))})
    assert code.stdout.strip() == env_isa, code.stderr
