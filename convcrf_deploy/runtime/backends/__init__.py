"""Runtime backends and the registry that picks one for a model.

``create_backend("model.onnx")`` returns an :class:`OnnxRuntimeBackend`, ``"model.engine"`` a
TensorRT backend, ``"demo"`` or ``"model.pt"`` a :class:`TorchBackend`; ``backend="torch"``
(or ``"onnxruntime"``, ``"tensorrt"``) chooses explicitly. Backend modules are imported only
when chosen, so this package needs numpy alone; a backend whose library is missing raises
:class:`BackendUnavailableError` naming the ``pip install`` extra that provides it.

A new backend is a folder here (``loader.py``, ``runner.py`` with a :class:`Backend` subclass
implementing ``_infer`` and, where it can, ``stages`` / ``_infer_unary`` / ``_infer_crf``,
``check_available`` and ``from_model``) plus its :class:`BackendSpec` in
:data:`.registry.BACKENDS` (suffixes, extra, devices, CRF executors, CRF switch, warm start,
command-line options); ``convcrf-run`` and ``convcrf-bench`` then run it as they run the
others. The CRF executor shared by backends that run the unary elsewhere is
:class:`convcrf_deploy.crf.NativeCRF`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ...install import MissingDependencyError, install_hint
from .base import (STAGES, Backend, BackendUnavailableError, INPUT_NAME, InferenceError,
                   InputLimits, OPTIONAL_OUTPUT_NAMES, OUTPUT_NAMES, StageUnavailableError)
from .registry import (ALIASES, BACKENDS, SUFFIXES, BackendSpec, backend_name_for, backend_spec,
                       backends_help)

def backend_class(name: str) -> type[Backend]:
    """The :class:`Backend` subclass registered as ``name`` (an alias is accepted), imported
    now; raises :class:`BackendUnavailableError` naming the extra when its library is missing."""
    spec = backend_spec(name)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {spec.name} backend is not available ({exc}); install it with "
            f"{install_hint(spec.extra)}") from exc
    return getattr(module, spec.class_name)


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
    spec = backend_spec(backend_name_for(model, backend))
    if isinstance(model, (str, Path)) and str(model) != "demo" and not spec.remote \
            and not Path(model).exists():
        raise FileNotFoundError(f"model file {str(model)!r} does not exist")
    cls = backend_class(spec.name)
    try:
        return cls(model, **options)
    except BackendUnavailableError:
        raise
    except MissingDependencyError as exc:  # e.g. TensorRT or pycuda missing at load time
        raise BackendUnavailableError(str(exc)) from exc


__all__ = ["ALIASES", "Backend", "BackendSpec", "BackendUnavailableError", "BACKENDS",
           "INPUT_NAME", "InferenceError", "InputLimits", "OUTPUT_NAMES", "SUFFIXES", "backend_spec", "backends_help",
           "OPTIONAL_OUTPUT_NAMES", "STAGES", "StageUnavailableError", "backend_class",
           "backend_name_for", "create_backend"]
