"""``convcrf-check-env``: what this machine can run, and why not.

Reports Python and library versions (torch, onnxruntime, OpenCV, numpy, onnx), whether the
native CPU/CUDA libraries load, ONNX Runtime's execution providers, whether TensorRT and
pycuda import, whether the ONNX Runtime custom-op library is installed and registers,
whether the ConvCRF TensorRT plugin library is found and loads (it is built
only with ``CONVCRF_WITH_TENSORRT=ON``, not by the ``[tensorrt]`` extra), whether a CUDA GPU
can run the native CUDA library, OpenCV's GUI support
and display, and the camera devices present. Nothing here fails: every check reports.

    convcrf-check-env [--json] [--plugin LIB]
"""
from __future__ import annotations

from .harness import ExitCode, PlainHelpFormatter, command

import argparse
import importlib
import json
import os
import platform
import sys
import warnings
from typing import Any

from ..errors import describe_error

def _version(module_name: str) -> dict[str, Any]:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return {"ok": False, "detail": f"not importable: {exc.__class__.__name__}: {exc}"}
    return {"ok": True, "detail": str(getattr(module, "__version__", "installed"))}


def _native() -> dict[str, dict[str, Any]]:
    from .. import _native

    report = {}
    try:
        with warnings.catch_warnings():   # reported here instead
            warnings.simplefilter("ignore", RuntimeWarning)
            lib = _native.cpu_library()
        editable = _native._editable_finder() is not None
        report["native CPU library"] = (
            {"ok": True, "detail": str(_native.cpu_library_path())
             + (" (editable install)" if editable else "")}
            if lib is not None else
            {"ok": False, "detail": "not built: the PyTorch reference ops are used (slower); "
                                    + (f"an editable install: {_native.EDITABLE_FIX}" if editable
                                       else "rebuild with `pip install .`")})
        if lib is not None:
            # Which clone runs, and the settings of the environment that it read.
            problems = _native.environment_problems()
            report["CPU kernels"] = {
                "ok": not problems,
                "detail": f"{_native.cpu_isa()} (this CPU: "
                          f"{', '.join(_native.supported_cpu_isas())}; "
                          f"${_native.ISA_ENV}={os.environ.get(_native.ISA_ENV, 'unset')})"
                          + "".join(f"; {problem}" for problem in problems)}
    except Exception as exc:
        report["native CPU library"] = {"ok": False, "detail": str(exc)}
    lib = _native.cuda_library()
    if lib is None:
        report["native CUDA library"] = {
            "ok": False, "detail": "not built (needs nvcc at build time; the CUDA runtime is "
                                   "linked in statically)"}
    else:
        # Loading needs nothing (cudart is static); running the kernels needs a GPU and its driver.
        devices, why = cuda_devices()
        report["native CUDA library"] = (
            {"ok": True, "detail": f"loaded; {devices} CUDA GPU(s)"} if devices else
            {"ok": False, "detail": f"built and loadable, but the CUDA kernels cannot run here: "
                                    f"{why}"})
    return report


def cuda_devices() -> tuple[int, str]:
    """``(number of CUDA GPUs, why none)`` from the NVIDIA driver API (no torch needed)."""
    import ctypes

    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
    except OSError:
        return 0, f"no NVIDIA driver ({name} not found): this machine has no usable GPU"
    status = driver.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver reports no usable GPU (cuInit error {status})"
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "the NVIDIA driver reports no GPU"
    return count.value, ""


def _plugin(explicit: str | None) -> dict[str, Any]:
    # The same look-up convcrf-build and the TensorRT backend use (--plugin, $CONVCRF_TRT_PLUGIN,
    # the installed copy), so this reports what they would load.
    from ..tensorrt.plugin import PluginLibraryError, find_plugin_library

    try:
        path = find_plugin_library(explicit)
    except PluginLibraryError as exc:
        return {"ok": False, "detail": str(exc)}
    # Found is not usable: the library links TensorRT's libnvinfer, and a damaged or foreign
    # file does not load at all. Loading it here (in this short-lived process) says which.
    import ctypes
    try:
        ctypes.CDLL(str(path), mode=getattr(os, "RTLD_LOCAL", 0))
    except OSError as exc:
        return {"ok": False, "detail": describe_error(
            exc, f"{path} was found but cannot be loaded", "it needs TensorRT's libraries "
            "(libnvinfer) on the library path and must be built for this TensorRT")}
    return {"ok": True, "detail": f"{path} (loads)"}


def _ort_ops() -> dict[str, Any]:
    # Registering it with a SessionOptions is what a user does; it also proves that this
    # onnxruntime accepts it (ONNX Runtime >= 1.16) and that it finds libconvcrf_cpu.
    from .._native import ort_ops_library

    try:
        path = ort_ops_library()
        import onnxruntime

        onnxruntime.SessionOptions().register_custom_ops_library(path)
    except Exception as exc:
        return {"ok": False, "detail": describe_error(exc)}
    return {"ok": True, "detail": f"{path} (registers)"}


def _providers() -> dict[str, Any]:
    try:
        import onnxruntime
    except Exception as exc:
        return {"ok": False, "detail": f"onnxruntime not importable: {exc}"}
    return {"ok": True, "detail": ", ".join(onnxruntime.get_available_providers())}


def _display() -> dict[str, dict[str, Any]]:
    from ..runtime.streams import available_cameras
    from ..runtime.video import display_available

    report = {}
    try:
        import cv2

        gui = [line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
               if line.strip().startswith("GUI:")]
        report["OpenCV GUI"] = {"ok": bool(gui) and gui[0] not in ("NONE", ""),
                                "detail": gui[0] if gui else "unknown (headless build?)"}
    except Exception as exc:
        report["OpenCV GUI"] = {"ok": False, "detail": describe_error(exc)}
    report["display"] = {"ok": display_available(),
                         "detail": "available" if display_available() else
                         "none (convcrf-run runs headless)"}
    cameras = available_cameras()
    report["cameras"] = {"ok": bool(cameras), "detail": ", ".join(cameras) or "none found"}
    return report


def collect(plugin: str | None = None) -> dict[str, dict[str, Any]]:
    """All checks as ``{name: {"ok": bool, "detail": str}}``."""
    report: dict[str, dict[str, Any]] = {
        "python": {"ok": sys.version_info >= (3, 9),
                   "detail": f"{platform.python_version()} ({sys.executable})"},
        "platform": {"ok": True, "detail": f"{platform.system()} {platform.machine()}, "
                                           f"{os.cpu_count()} CPUs"},
    }
    for name, module in (("numpy", "numpy"), ("opencv", "cv2"), ("onnx", "onnx"),
                         ("onnxruntime", "onnxruntime"), ("torch", "torch")):
        report[name] = _version(module)
    if report["torch"]["ok"]:
        import torch

        report["torch CUDA"] = {"ok": torch.cuda.is_available(),
                                "detail": (torch.cuda.get_device_name(0)
                                           if torch.cuda.is_available() else "not available")}
    report["ONNX Runtime providers"] = _providers()
    report.update(_native())
    report["ONNX Runtime custom-op library"] = _ort_ops()
    report["tensorrt"] = _version("tensorrt")
    report["pycuda"] = _version("pycuda.driver")
    report["TensorRT plugin library"] = _plugin(plugin)
    report.update(_display())
    return report


@command("convcrf-check-env")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convcrf-check-env", description=__doc__.split("\n\n")[0],
                                     formatter_class=PlainHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plugin", metavar="LIB", help="TensorRT plugin library to check")
    args = parser.parse_args(argv)
    report = collect(args.plugin)
    if args.json:
        print(json.dumps(report, indent=2))
        return ExitCode.OK
    width = max(len(name) for name in report)
    for name, entry in report.items():
        print(f"{name:<{width}}  {'ok ' if entry['ok'] else '-- '} {entry['detail']}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
