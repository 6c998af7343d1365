"""ctypes binding of the native CPU library ``libconvcrf_cpu`` (C API in plugins/cpu/convcrf_cpu.h).

numpy-only (no torch): the PyTorch ops, the ONNX reference evaluator of the export and C++
users all share this one library. Functions take raw pointers; callers pass contiguous arrays
and have validated shapes already, and the library validates them again before touching memory.

The library is looked up in this order: ``$CONVCRF_CPU_LIBRARY``, then the package's ``_lib``
folder (where ``pip install`` puts it). When it is absent, :func:`cpu_library` returns
``None`` and callers fall back to the pure-PyTorch/NumPy reference implementations.
"""
from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache
from pathlib import Path

API_VERSION = 2

_STATUS_MESSAGES = {
    1: "invalid filter_size (must be odd and in 1..31)",
    2: "invalid or mismatched tensor shapes",
    3: "null pointer for a non-empty tensor",
    4: "invalid blur (must be >= 1)",
    5: "CUDA launch failed",
    6: "internal error (out of memory or thread creation failed)",
    7: "NaN or infinite values in the input",
}

STATUS_NON_FINITE = 7

LIB_DIR = Path(__file__).resolve().parent / "_lib"


class NativeError(RuntimeError):
    """A native call returned a non-zero status."""


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
    lib.convcrf_mean_field_step_f32.restype = i32
    lib.convcrf_mean_field_step_f32.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i32, ptr,
                                                ptr, ptr, ptr, ptr, ptr, i32]


@lru_cache(maxsize=None)
def cpu_library() -> ctypes.CDLL | None:
    """The loaded CPU library, or ``None`` when it is not built/installed.

    Raises:
        NativeError: ``$CONVCRF_CPU_LIBRARY`` points at a file that cannot be loaded, or the
            library's API version does not match this Python package (a stale build).
    """
    explicit = os.environ.get("CONVCRF_CPU_LIBRARY")
    path = Path(explicit) if explicit else LIB_DIR / library_filename("convcrf_cpu")
    if not path.exists():
        if explicit:
            raise NativeError(f"CONVCRF_CPU_LIBRARY={explicit} does not exist; unset it to use "
                              "the installed library, or rebuild with `pip install .`")
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeError(f"cannot load the ConvCRF CPU library {path}: {exc}. Rebuild it with "
                          "`pip install --force-reinstall .`") from exc
    version = lib.convcrf_cpu_api_version()
    if version != API_VERSION:
        raise NativeError(f"{path} has C API version {version}, this package expects "
                          f"{API_VERSION}: rebuild with `pip install --force-reinstall .`")
    _declare(lib)
    return lib


@lru_cache(maxsize=None)
def cuda_library() -> ctypes.CDLL | None:
    """The CUDA launcher library ``libconvcrf_cuda`` (plugins/cuda/convcrf_cuda.h), or ``None``.

    Looked up as ``$CONVCRF_CUDA_LIBRARY`` or in the package's ``_lib`` folder; it is built only
    where nvcc is present. Loading it needs the CUDA runtime; a load failure means "not
    available" (the PyTorch reference then runs on CUDA tensors) rather than an error, because
    most CPU-only machines have no libcudart.
    """
    explicit = os.environ.get("CONVCRF_CUDA_LIBRARY")
    path = Path(explicit) if explicit else LIB_DIR / library_filename("convcrf_cuda")
    if not path.exists():
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


#: dtype codes of the CUDA launcher C API.
CUDA_FLOAT32, CUDA_FLOAT16 = 0, 1


def check(status: int, what: str) -> None:
    """Turn a native status code into an exception naming the op."""
    if status != 0:
        raise NativeError(f"{what}: {_STATUS_MESSAGES.get(status, f'status {status}')}")


def default_threads() -> int:
    """Threads for native calls: torch's setting when torch is loaded, else all cores."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return os.cpu_count() or 1
