"""How to obtain a PyTorch ``SegmentationModel`` for the runtime."""
from __future__ import annotations

import os
from typing import Any

from ....install import TORCH_HINT
from ..base import BackendUnavailableError


def import_torch():
    from ...._native import prefer_passive_openmp

    prefer_passive_openmp()  # idle OpenMP threads sleep instead of spinning (issue 9)
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the torch backend needs PyTorch: {TORCH_HINT}") from exc
    return torch


def load_segmentation_model(model: Any, device: str = "cpu", allow_pickle: bool = False,
                            unary_settings: Any = None):
    """``"demo"``, a checkpoint path, a unary file without class code (``.pt2``, TorchScript;
    its CRF and metadata from ``unary_settings``, a :class:`~convcrf_deploy.model.UnarySettings`)
    or a ``SegmentationModel`` -> the model in eval mode on ``device``.

    Checkpoints load with ``allow_pickle=False`` by default (no code from the file runs). An
    architecture the checkpoint names must be registered (import your module first) or
    declared as an entry point (:mod:`convcrf_deploy.user_code`).

    A model whose metadata records no input constraints is probed for them
    (:func:`convcrf_deploy.model.constraints.with_probed_constraints`, as ``convcrf-export``
    does), so that frames are padded as for the exported file; a model passed in is then
    shallow-copied, not changed."""
    torch = import_torch()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device={device!r} but this torch has no usable CUDA; use device='cpu' or install "
            "a CUDA build of torch")
    if isinstance(model, (str, os.PathLike)):
        from ....model import load_any_model

        model = load_any_model(str(model), allow_pickle=allow_pickle, settings=unary_settings)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "forward_unary"):
        raise TypeError(f"model must be 'demo', a checkpoint path or a SegmentationModel, got "
                        f"{type(model).__name__}")
    from ....model.constraints import with_probed_constraints

    return with_probed_constraints(model.to(device).eval())
