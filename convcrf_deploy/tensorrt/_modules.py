"""Lazy imports of the optional TensorRT stack (the ``tensorrt`` extra).

``tensorrt`` and ``pycuda`` are imported only when an engine is built or run, so the rest of
the package (and this subpackage's pure logic) imports without them. A missing library raises
:class:`TensorRTUnavailableError`, which names the extra to install.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..install import MissingDependencyError, install_hint

INSTALL_HINT = install_hint("tensorrt")


class TensorRTUnavailableError(MissingDependencyError):
    """The TensorRT Python package (or pycuda) is not installed or cannot be loaded."""


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`TensorRTUnavailableError` naming the fix."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"the TensorRT Python package is not installed or failed to load ({exc}); install "
            f"it with `{INSTALL_HINT}` (needs an NVIDIA GPU, driver and CUDA)") from exc


def import_pycuda_driver() -> ModuleType:
    """``pycuda.driver`` (initialised), or :class:`TensorRTUnavailableError` naming the fix."""
    try:
        driver = importlib.import_module("pycuda.driver")
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"pycuda is not installed or failed to load ({exc}); install it with "
            f"`{INSTALL_HINT}`") from exc
    driver.init()
    return driver


def tensorrt_major(trt: ModuleType) -> int:
    """Major version of the loaded TensorRT (0 when unknown)."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0
