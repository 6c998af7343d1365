"""Runtime backends and the registry that picks one for a model.

``create_backend("model.onnx")`` returns an :class:`OnnxRuntimeBackend`, ``"model.engine"`` a
TensorRT backend, ``"demo"`` or ``"model.pt"`` a :class:`TorchBackend`; ``backend="torch"``
(or ``"onnxruntime"``, ``"tensorrt"``) chooses explicitly. Backend modules are imported only
when chosen, so this package needs numpy alone; a backend whose library is missing raises
:class:`BackendUnavailableError` naming the ``pip install`` extra that provides it.

A new backend is a folder here (``loader.py``, ``runner.py`` with a :class:`Backend` subclass
implementing ``_infer`` and, where it can, ``stages`` / ``_infer_unary`` / ``_infer_crf``,
``check_available`` and ``from_model``) plus its line in :data:`BACKENDS` (and
:data:`SUFFIXES` / :data:`EXTRAS`); ``convcrf-run`` and ``convcrf-bench`` then run it as they
run the others. The CRF executor shared by backends that run the unary elsewhere is
:mod:`.native_crf`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ...install import install_hint
from .base import (STAGES, Backend, BackendUnavailableError, INPUT_NAME, OPTIONAL_OUTPUT_NAMES,
                   OUTPUT_NAMES, StageUnavailableError)

#: backend name -> (module, class) imported on demand.
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("convcrf_deploy.runtime.backends.torch", "TorchBackend"),
    "onnxruntime": ("convcrf_deploy.runtime.backends.onnxrt", "OnnxRuntimeBackend"),
    "tensorrt": ("convcrf_deploy.runtime.backends.trt", "TensorRTBackend"),
    # model = the model's name on a Triton server (docs/serving.md), not a file
    "triton": ("convcrf_deploy.runtime.backends.triton", "TritonBackend"),
}

#: accepted spellings of backend names.
ALIASES = {"pytorch": "torch", "pt": "torch", "onnx": "onnxruntime", "ort": "onnxruntime",
           "onnxrt": "onnxruntime", "trt": "tensorrt"}

#: model file suffix -> backend name.
SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
            ".trt": "tensorrt", ".pt": "torch", ".pth": "torch"}

#: pip extra that provides each backend's library.
EXTRAS = {"torch": "torch", "onnxruntime": "gpu", "tensorrt": "tensorrt", "triton": "triton"}

#: backends whose model is a name on a server, not a local file.
REMOTE_BACKENDS = ("triton",)


def backend_name_for(model: Any, backend: str | None = None) -> str:
    """The registry name of the backend to use for ``model`` (a path, ``"demo"`` or an
    in-memory model), honouring an explicit ``backend``; raises ``ValueError`` otherwise."""
    if backend is not None:
        name = ALIASES.get(backend.lower(), backend.lower())
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
        return name
    if not isinstance(model, (str, Path)):
        return "torch"  # an in-memory SegmentationModel
    if str(model) == "demo":
        return "torch"
    suffix = Path(model).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    raise ValueError(f"cannot tell which backend runs {str(model)!r} from its suffix; use a "
                     f"{'/'.join(SUFFIXES)} file, 'demo', or pass backend= one of "
                     f"{sorted(BACKENDS)}")


def backend_class(name: str) -> type[Backend]:
    """The :class:`Backend` subclass registered as ``name`` (an alias is accepted), imported
    now; raises :class:`BackendUnavailableError` naming the extra when its library is missing."""
    name = backend_name_for(None, name)
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {name} backend is not available ({exc}); install it with "
            f"{install_hint(EXTRAS[name])}") from exc
    return getattr(module, class_name)


def create_backend(model: Any, backend: str | None = None, **options: Any) -> Backend:
    """Create (not yet activate) the backend that runs ``model``.

    Args:
        model: ``"demo"``, a checkpoint/ONNX/engine path, or a ``SegmentationModel``.
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``; chosen from the file type
            when omitted.
        **options: passed to the backend's constructor (e.g. ``providers=``, ``device=``).

    Raises:
        BackendUnavailableError: the backend's library is not installed.
        FileNotFoundError: ``model`` is a path that does not exist.
    """
    name = backend_name_for(model, backend)
    if isinstance(model, (str, Path)) and str(model) != "demo" and name not in REMOTE_BACKENDS \
            and not Path(model).exists():
        raise FileNotFoundError(f"model file {str(model)!r} does not exist")
    return backend_class(name)(model, **options)


__all__ = ["Backend", "BackendUnavailableError", "BACKENDS", "INPUT_NAME", "OUTPUT_NAMES",
           "OPTIONAL_OUTPUT_NAMES", "STAGES", "StageUnavailableError", "backend_class",
           "backend_name_for", "create_backend"]
