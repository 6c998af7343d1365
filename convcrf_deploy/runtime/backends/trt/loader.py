"""How to obtain a TensorRT engine for the runtime: deserialise a ``.engine``/``.plan`` file or
build one from an exported ``.onnx`` (through the engine cache of
:func:`convcrf_deploy.tensorrt.build_engine`), with the ConvCRF plugin library loaded first.

Also :class:`BufferPool`, the grow-only pinned-host/device buffers the runner copies through.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ....exported_model import ExportedModel
from ....metadata import ModelMetadata
from ....tensorrt import (build_engine, find_plugin_library, import_tensorrt, load_plugin_library,
                          read_metadata)
from .. import SUFFIXES
from ..base import INPUT_NAME, OPTIONAL_OUTPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger(__name__)

#: suffixes of serialised engines (anything else is treated as ONNX and built).
# One list of file types: the registry's (backends/__init__.py).
ENGINE_SUFFIXES = tuple(suffix for suffix, name in SUFFIXES.items() if name == "tensorrt")


@dataclass
class EngineInfo:
    """What the runner needs to know about a deserialised engine."""

    engine: Any
    path: Path                      # the engine file actually loaded
    input_dtype: np.dtype
    output_names: list[str]         # OUTPUT_NAMES plus the optional ones the engine has
    output_dtypes: dict[str, np.dtype]
    num_classes: int | None         # static channel count of "probabilities", if known
    runtime: Any = None             # the trt.Runtime, which must outlive the engine


class EngineLoader:
    """Loads the plugin library and a TensorRT engine.

    Args:
        path: ``.engine``/``.plan`` file, or an ``.onnx`` export to build (cached) first.
        plugin_library: ``libconvcrf_trt_plugin.so`` (default: :func:`find_plugin_library`).
        build_options: keyword arguments for :func:`build_engine` when ``path`` is ONNX
            (``min_shape``, ``opt_shape``, ``max_shape``, ``workspace_mb``,
            ``allow_standard_op_crf``, ...).
    """

    def __init__(self, path: str | os.PathLike, plugin_library: str | os.PathLike | None = None,
                 build_options: dict[str, Any] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {str(self.path)!r} does not exist")
        self.plugin_library = plugin_library
        self.build_options = dict(build_options or {})
        self.is_onnx = self.path.suffix.lower() not in ENGINE_SUFFIXES

    def engine_path(self) -> Path:
        """The engine file, building it from ONNX when needed."""
        if not self.is_onnx:
            return self.path
        # build_engine refuses a network that would not use the ConvCRF plugin (unless
        # build_options has allow_standard_op_crf=True) and reports which implementation it has.
        options = {"report": log.info, **self.build_options}
        return build_engine(self.path, None, plugin_library=self.plugin_library, **options)

    def metadata(self, engine_path: Path) -> ModelMetadata | None:
        """Sidecar ``<engine>.json``, else the ONNX metadata_props when built from ONNX."""
        metadata = read_metadata(engine_path)
        if metadata is None and self.is_onnx:
            metadata = ExportedModel.open(self.path).metadata
        return metadata

    def __call__(self) -> EngineInfo:
        trt = import_tensorrt()
        library = find_plugin_library(self.plugin_library)
        load_plugin_library(trt, library)
        engine_path = self.engine_path()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        # Version-compatible engines embed the plugin library as host code.
        if hasattr(runtime, "engine_host_code_allowed"):
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise ValueError(f"TensorRT could not deserialise {str(engine_path)!r} (see the log "
                             "above): engines only load on the TensorRT version and GPU model "
                             "they were built for; rebuild it with convcrf-build")
        info = describe_engine(trt, engine, engine_path)
        info.runtime = runtime
        return info


def describe_engine(trt, engine, path: Path) -> EngineInfo:
    """Check the engine's I/O against the runtime convention and collect types and names."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if inputs != [INPUT_NAME]:
        raise ValueError(f"{path.name} has inputs {inputs}; convcrf engines take a single "
                         f"{INPUT_NAME!r} input (build them from a convcrf-export part='full' model)")
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise ValueError(f"{path.name} lacks output(s) {missing}; it has {outputs}")
    output_names = [*OUTPUT_NAMES, *(n for n in OPTIONAL_OUTPUT_NAMES if n in outputs)]
    dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in [INPUT_NAME, *output_names]}
    prob_shape = tuple(engine.get_tensor_shape("probabilities"))
    num_classes = int(prob_shape[1]) if len(prob_shape) == 4 and prob_shape[1] > 0 else None
    return EngineInfo(engine, path, dtypes[INPUT_NAME], output_names,
                      {n: dtypes[n] for n in output_names}, num_classes)


class BufferPool:
    """Named pinned-host + device buffer pairs that grow, never shrink.

    ``get(name, shape, dtype)`` returns a host view of exactly ``shape`` and the device pointer
    of a buffer with at least that many bytes; it reallocates only when the request is larger
    than every earlier one for that name, so alternating frame sizes cost no allocations.

    Args:
        host_alloc: ``nbytes -> np.ndarray`` of uint8 (``pycuda.driver.pagelocked_empty``).
        device_alloc: ``nbytes -> allocation`` with ``int(allocation)`` a device pointer and
            ``.free()`` (``pycuda.driver.mem_alloc``).
    """

    def __init__(self, host_alloc: Callable[[int], np.ndarray], device_alloc: Callable[[int], Any]):
        self._host_alloc = host_alloc
        self._device_alloc = device_alloc
        self._buffers: dict[str, tuple[np.ndarray, Any, int]] = {}
        #: number of (re)allocations so far, for tests and statistics.
        self.allocations = 0

    @staticmethod
    def nbytes(shape, dtype) -> int:
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

    def capacity(self, name: str) -> int:
        return self._buffers[name][2] if name in self._buffers else 0

    def get(self, name: str, shape, dtype) -> tuple[np.ndarray, int]:
        shape = tuple(int(v) for v in shape)
        if any(v < 0 for v in shape):
            raise ValueError(f"tensor {name!r} has an unresolved shape {shape}")
        needed = max(1, self.nbytes(shape, dtype))  # zero-byte allocations are invalid in CUDA
        entry = self._buffers.get(name)
        if entry is None or entry[2] < needed:
            if entry is not None:
                entry[1].free()
            host = self._host_alloc(needed)
            device = self._device_alloc(needed)
            entry = (host, device, needed)
            self._buffers[name] = entry
            self.allocations += 1
        host, device, _ = entry
        view = host[:self.nbytes(shape, dtype)].view(np.dtype(dtype)).reshape(shape)
        return view, int(device)

    def release(self) -> None:
        for _, device, _ in self._buffers.values():
            device.free()
        self._buffers.clear()
