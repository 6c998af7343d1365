"""ctypes binding of the native CPU library ``libconvcrf_cpu`` (C API in plugins/cpu/convcrf_cpu.h).

numpy-only (no torch): the PyTorch ops, the ONNX reference evaluator of the export and C++
users all share this one library. Functions take raw pointers; callers pass contiguous arrays
and have validated shapes already, and the library validates them again before touching memory.

The library is looked up in this order: ``$CONVCRF_CPU_LIBRARY``, then the package's ``_lib``
folders (:func:`library_dirs`): the one beside this file (where ``pip install`` puts it), and
for an editable install (``pip install -e .``, scikit-build-core) the ``_lib`` that its
import redirect names, in site-packages, since the package itself is imported from the source
tree. When it is absent, :func:`cpu_library` returns ``None`` and callers fall back to the
pure-PyTorch/NumPy reference implementations; an editable install without it says so once
(``RuntimeWarning``).

:func:`ort_ops_library` locates the ONNX Runtime custom-op library built beside it
(plugins/onnxruntime), which ONNX Runtime itself loads.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

from ._warnings import warn
from .errors import describe_error

API_VERSION = 4

#: status codes Python branches on (the full table is in the library: convcrf_status_message,
#: plugins/common/convcrf_math.h).
STATUS_NON_FINITE = 7

LIB_DIR = Path(__file__).resolve().parent / "_lib"


class NativeError(RuntimeError):
    """A native call returned a non-zero status."""


def _editable_finder():
    """scikit-build-core's import redirect of an editable install of this package, or None."""
    for finder in sys.meta_path:
        known = getattr(finder, "known_source_files", None)
        if isinstance(known, dict) and "convcrf_deploy" in known and \
                isinstance(getattr(finder, "dir", None), str):
            return finder
    return None


def library_dirs() -> list[Path]:
    """The folders searched for the native libraries, in order (existing ones only, besides
    :data:`LIB_DIR`): the package's ``_lib`` and, for an editable install, the ``_lib``
    folders its import redirect knows (scikit-build-core >= 0.11 lists them as the namespace
    package ``convcrf_deploy._lib``; older ones by the redirect's install folder)."""
    dirs = [LIB_DIR]
    try:
        spec = importlib.util.find_spec(f"{__package__}._lib")
    except (ImportError, ValueError):
        spec = None
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    finder = _editable_finder()
    if finder is not None:
        locations.append(os.path.join(finder.dir, "convcrf_deploy", "_lib"))
    for location in locations:
        path = Path(location).resolve()
        if path not in dirs and path.is_dir():
            dirs.append(path)
    return dirs


#: how to rebuild an editable install's native libraries.
EDITABLE_FIX = ("reinstall it so that the library is built: pip install -e . (with cmake and "
                "a C++17 compiler), or point CONVCRF_CPU_LIBRARY at a libconvcrf_cpu you built")


def find_library(stem: str) -> Path | None:
    """The first ``lib<stem>.so`` (platform name) in :func:`library_dirs`, or ``None``."""
    for folder in library_dirs():
        path = folder / library_filename(stem)
        if path.exists():
            return path
    return None


def library_filename(stem: str) -> str:
    if sys.platform == "win32":
        return f"{stem}.dll"
    if sys.platform == "darwin":
        return f"lib{stem}.dylib"
    return f"lib{stem}.so"


def _declare(lib: ctypes.CDLL) -> None:
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    lib.convcrf_cpu_api_version.restype = i32
    lib.convcrf_cpu_api_version.argtypes = []
    lib.convcrf_status_message.restype = ctypes.c_char_p
    lib.convcrf_status_message.argtypes = [i32]
    for suffix in ("f32", "f64"):
        for name, args in {
            "gaussian_kernel": [ptr, i64, i64, i64, i64, i32, ptr, i32],
            "gaussian_kernel_backward": [ptr, ptr, ptr, i64, i64, i64, i64, i32, ptr, i32],
            "message_passing": [ptr, ptr, i64, i64, i64, i64, i32, ptr, i32],
            "message_passing_transposed": [ptr, ptr, i64, i64, i64, i64, i32, ptr, i32],
            "message_passing_kernel_grad": [ptr, ptr, i64, i64, i64, i64, i32, ptr, i32],
        }.items():
            fn = getattr(lib, f"convcrf_{name}_{suffix}")
            fn.restype = i32
            fn.argtypes = args
    for name in ("convcrf_cpu_isa", "convcrf_cpu_best_isa", "convcrf_cpu_available_cpus"):
        getattr(lib, name).restype = i32
        getattr(lib, name).argtypes = []
    lib.convcrf_cpu_set_isa.restype = i32
    lib.convcrf_cpu_set_isa.argtypes = [i32]
    lib.convcrf_mean_field_step_f32.restype = i32
    lib.convcrf_mean_field_step_f32.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i32, ptr,
                                                ptr, ptr, ptr, ptr, ptr, i32]
    lib.convcrf_pairwise_kernel_f32.restype = i32
    lib.convcrf_pairwise_kernel_f32.argtypes = [ptr, i64, i64, i64, i64, i32, i64,
                                                ctypes.c_float, ctypes.c_float, ptr, i32]
    f32 = ctypes.c_float
    lib.convcrf_pairwise_kernel_from_image_f32.restype = i32
    lib.convcrf_pairwise_kernel_from_image_f32.argtypes = [ptr, i64, i64, i64, i32, i32, f32, f32,
                                                           f32, f32, f32, ptr, i32]
    lib.convcrf_mean_field_step_backward_f32.restype = i32
    lib.convcrf_mean_field_step_backward_f32.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i32,
                                                         ptr, ptr, i32]


def cpu_library_path() -> Path | None:
    """The CPU library file :func:`cpu_library` loads: ``$CONVCRF_CPU_LIBRARY`` or the first
    found in :func:`library_dirs`; ``None`` when none is there.

    Raises:
        NativeError: ``$CONVCRF_CPU_LIBRARY`` names a file that does not exist.
    """
    explicit = os.environ.get("CONVCRF_CPU_LIBRARY")
    if explicit:
        if not Path(explicit).exists():
            raise NativeError(f"CONVCRF_CPU_LIBRARY={explicit} does not exist; unset it to use "
                              "the installed library, or rebuild with `pip install .`")
        return Path(explicit)
    return find_library("convcrf_cpu")


@lru_cache(maxsize=None)
def cpu_library() -> ctypes.CDLL | None:
    """The loaded CPU library, or ``None`` when it is not built/installed.

    Raises:
        NativeError: ``$CONVCRF_CPU_LIBRARY`` points at a file that cannot be loaded, or the
            library's API version does not match this Python package (a stale build).
    """
    path = cpu_library_path()
    if path is None:
        if _editable_finder() is not None:
            warn("convcrf-deploy is an editable install whose native CPU library was not "
                 f"found (looked in {', '.join(map(str, library_dirs()))}): the slow "
                 f"reference ops run instead; {EDITABLE_FIX}", RuntimeWarning)
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeError(describe_error(exc, f"cannot load the ConvCRF CPU library {path}",
                                         "rebuild it with `pip install --force-reinstall .`")
                          ) from exc
    version = lib.convcrf_cpu_api_version()
    if version != API_VERSION:
        raise NativeError(f"{path} has C API version {version}, this package expects "
                          f"{API_VERSION}: rebuild with `pip install --force-reinstall .`")
    _declare(lib)
    for problem in environment_problems(lib):
        warn(problem, RuntimeWarning)
    return lib


#: the environment variables the CPU library reads when it loads (plugins/cpu/isa.cpp,
#: thread_pool.cpp); a value it cannot use is ignored there, and said here.
ISA_ENV, SPIN_ENV = "CONVCRF_CPU_ISA", "CONVCRF_CPU_SPIN_US"


def environment_problems(lib: ctypes.CDLL | None = None) -> list[str]:
    """One line per ``$CONVCRF_CPU_*`` setting the CPU library ignores (an unknown
    instruction set, a spin time that is not a whole number of microseconds); empty when all
    are used (second new-user trial: CONVCRF_CPU_ISA=bogus ran avx512 without a word)."""
    problems = []
    isa = os.environ.get(ISA_ENV)
    if isa is not None and isa not in (*CPU_ISAS, "auto"):
        problems.append(f"${ISA_ENV}={isa!r} is not one of {', '.join(CPU_ISAS)}, auto: "
                        "ignored (the widest clone the CPU has runs)")
    elif isa in CPU_ISAS:
        lib = lib or cpu_library()          # ``lib``: while cpu_library() is loading it
        if lib is not None and CPU_ISAS.index(isa) > lib.convcrf_cpu_best_isa():
            problems.append(f"${ISA_ENV}={isa!r}: this CPU lacks it: ignored (the widest "
                            "clone the CPU has runs)")
    spin = os.environ.get(SPIN_ENV)
    if spin not in (None, "") and not (spin.isdigit() and int(spin) <= 100_000):
        problems.append(f"${SPIN_ENV}={spin!r} is not a whole number of microseconds in "
                        "0..100000: ignored (default 200)")
    return problems


@lru_cache(maxsize=None)
def cuda_library() -> ctypes.CDLL | None:
    """The CUDA launcher library ``libconvcrf_cuda`` (plugins/cuda/convcrf_cuda.h), or ``None``.

    Looked up as ``$CONVCRF_CUDA_LIBRARY`` or in the package's ``_lib`` folders
    (:func:`library_dirs`); it is built only
    where nvcc is present and links the CUDA runtime statically (no libcudart needed); running
    its kernels needs a GPU and its driver. A load failure means "not available" (the PyTorch
    reference then runs on CUDA tensors) rather than an error.
    """
    explicit = os.environ.get("CONVCRF_CUDA_LIBRARY")
    path = Path(explicit) if explicit else find_library("convcrf_cuda")
    if path is None or not path.exists():
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    lib.convcrf_cuda_gaussian_kernel.restype = i32
    lib.convcrf_cuda_gaussian_kernel.argtypes = [ptr, i32, i64, i64, i64, i64, i32, ptr, ptr]
    lib.convcrf_cuda_message_passing.restype = i32
    lib.convcrf_cuda_message_passing.argtypes = [ptr, ptr, i32, i64, i64, i64, i64, i32, ptr, ptr]
    return lib


#: Environment variable naming the ONNX Runtime custom-op library to use instead of the installed one.
ORT_OPS_ENV = "CONVCRF_ORT_OPS_LIBRARY"
#: Session configuration entry with the worker threads of the custom ops' CPU kernels (absent or
#: "0": every CPU this process may run on); read when the library is registered, so it must be
#: added to the ``SessionOptions`` before :func:`ort_ops_library` is registered with them.
ORT_OPS_THREADS_KEY = "convcrf.num_threads"


def ort_ops_library(cuda: bool = False) -> str:
    """Path of ``libconvcrf_ort_ops``, the ONNX Runtime custom-op library of the ConvCRF ops.

    With it a ``plugin``-flavour export (``trt.plugins::ConvCRFKernel`` and
    ``ConvCRFMessagePassing`` nodes, docs/ops.md) runs in any ONNX Runtime >= 1.16 on the
    native CPU kernels; register it before creating the session::

        options = onnxruntime.SessionOptions()
        options.register_custom_ops_library(convcrf_deploy.ort_ops_library())
        session = onnxruntime.InferenceSession("model.onnx", options)

    (C++: ``Ort::SessionOptions::RegisterCustomOpsLibrary``; Triton: ``model_operations {
    op_library_filename: ... }``; docs/onnxruntime.md.) The library loads the native CPU
    library installed beside it, so both share one thread pool.

    Args:
        cuda: the variant that also runs the ops on ONNX Runtime's CUDA execution provider
            (``libconvcrf_ort_ops_cuda``, built where nvcc was present; its CPU kernels are
            the same).

    Returns:
        The absolute path, as a ``str``: ``$CONVCRF_ORT_OPS_LIBRARY`` when set (for either
        variant), else the file in the package's ``_lib`` folder (:func:`library_dirs`).

    Raises:
        NativeError: the library was not built (``pip install`` found no ONNX Runtime
            headers, or no nvcc for ``cuda=True``), or ``$CONVCRF_ORT_OPS_LIBRARY`` names no
            file. The message says how to build it.
    """
    explicit = os.environ.get(ORT_OPS_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise NativeError(f"{ORT_OPS_ENV}={explicit} is not a file; unset it to use the "
                              "installed library")
        return str(path.resolve())
    stem = "convcrf_ort_ops_cuda" if cuda else "convcrf_ort_ops"
    path = find_library(stem) or LIB_DIR / library_filename(stem)
    if path.is_file():
        return str(path)
    if cuda:
        raise NativeError(
            f"{path.name} is not installed: the CUDA variant of the ONNX Runtime custom-op "
            "library is built only where nvcc (the CUDA toolkit) and the ONNX Runtime headers "
            "are present at install time; reinstall there with `pip install .`, or use "
            "ort_ops_library() (CPU execution provider)")
    raise NativeError(
        f"{path.name} is not installed: this build of convcrf-deploy found no ONNX Runtime "
        "C/C++ API headers (onnxruntime_cxx_api.h, ONNX Runtime >= 1.16). Unpack an ONNX "
        "Runtime release, then `ONNXRUNTIME_INCLUDE_DIR=/path/to/onnxruntime/include pip "
        "install --force-reinstall .` (docs/onnxruntime.md)")


#: dtype codes of the CUDA launcher C API.
CUDA_FLOAT32, CUDA_FLOAT16 = 0, 1


def status_message(status: int) -> str:
    """What a status code of the native libraries means, from the one table in C
    (``convcrf_status_message``; ``"status N"`` when the CPU library is absent)."""
    try:
        lib = cpu_library()
    except NativeError:
        lib = None
    if lib is None:
        return f"status {status}"
    return lib.convcrf_status_message(int(status)).decode()


def check(status: int, what: str) -> None:
    """Turn a native status code into an exception naming the op."""
    if status != 0:
        raise NativeError(f"{what}: {status_message(status)}")


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (``os.sched_getaffinity``), which
    containers, ``taskset`` and robot launchers restrict, not the machine's core count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_threads() -> int:
    """Threads for native calls: torch's setting when torch is loaded (capped at the CPUs
    this process may use), else :func:`available_cpus`."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, min(int(torch.get_num_threads()), available_cpus()))
    return available_cpus()


#: Instruction-set clones of the CPU kernels, by the codes of ``convcrf_cpu_isa``.
CPU_ISAS = ("baseline", "avx2", "avx512")


def cpu_isa() -> str:
    """The instruction-set clone the CPU kernels run now: "baseline", "avx2" or "avx512".

    Chosen when the library loads (the widest the CPU has, or ``$CONVCRF_CPU_ISA``).
    Raises NativeError when the library is not built."""
    return CPU_ISAS[_require_cpu().convcrf_cpu_isa()]


def supported_cpu_isas() -> list[str]:
    """The clones this CPU can run, narrowest first (always includes "baseline")."""
    return list(CPU_ISAS[:_require_cpu().convcrf_cpu_best_isa() + 1])


def set_cpu_isa(name: str) -> None:
    """Run clone ``name`` ("baseline", "avx2", "avx512" or "auto") from now on, process-wide.

    For tests and benchmarks that compare the clones; results agree within fp32 rounding.
    Raises ValueError for an unknown name and NativeError when the CPU lacks the instruction set."""
    if name != "auto" and name not in CPU_ISAS:
        raise ValueError(f"unknown instruction set {name!r}; use one of {CPU_ISAS + ('auto',)}")
    code = -1 if name == "auto" else CPU_ISAS.index(name)
    check(_require_cpu().convcrf_cpu_set_isa(code), f"set_cpu_isa({name!r})")


def _require_cpu() -> ctypes.CDLL:
    lib = cpu_library()
    if lib is None:
        raise NativeError("the native CPU library is not built; reinstall with `pip install .`")
    return lib


def prefer_passive_openmp() -> None:
    """Ask OpenMP (PyTorch's intra-op threads) to put idle threads to sleep, unless the user
    chose a policy. Must run before torch is imported; a no-op afterwards.

    Why: by default GNU OpenMP threads spin for a while after every parallel region. Between
    two PyTorch ops that spin competes with our native worker threads and with any other busy
    process for the same cores; on a 2-core machine with one busy process, ``convcrf-run`` went
    from 15 ms to 350 ms per frame (issue 9, "no collapse when the CPU is shared")."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
