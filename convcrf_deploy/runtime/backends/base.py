"""The interface every runtime backend implements (after Polygraphy's runners).

A backend wraps one loaded model (a PyTorch checkpoint, an ONNX Runtime session, a TensorRT
engine) behind the same small surface:

* ``with backend:`` activates it (allocates sessions, buffers, streams) and deactivates it;
* ``infer({"image": float32 [N, 3, H, W] RGB 0..255})`` returns
  ``{"probabilities": float32 [N, C, H, W], "labels": int64 [N, H, W]}`` as numpy arrays, plus
  ``"unary_labels"`` (int64 [N, H, W], argmax of the unary alone) when the model provides it,
  which lets viewers compare unary and CRF without a second model;
* ``metadata`` describes classes, palette and input convention (:class:`ModelMetadata`);
* ``last_inference_time`` is the wall time of the last ``infer`` in seconds.

Each backend lives in its own folder (``backends/<name>/``) with a ``loader.py`` (how to obtain
the session or engine) and a ``runner.py`` (the :class:`Backend` subclass). Optional libraries
(torch, onnxruntime, tensorrt, pycuda) are imported inside those modules only when the backend
is created, and a missing one raises :class:`BackendUnavailableError` naming the extra to install.
This module imports numpy only.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

from ...metadata import ModelMetadata

INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "labels")
OPTIONAL_OUTPUT_NAMES = ("unary_labels",)


class BackendUnavailableError(RuntimeError):
    """The library a backend needs is not installed or cannot be loaded."""


class Backend(abc.ABC):
    """Base class of runtime backends. Subclasses implement ``_activate``, ``_deactivate``
    and ``_infer``; this class handles the context protocol, input checks and timing."""

    #: short name used by ``--backend`` ("torch", "onnxruntime", "tensorrt").
    name: str = "backend"
    #: whether the model runs a CRF (an exported graph without one, a checkpoint without one).
    has_crf: bool = True

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        self.is_active = False
        self.last_inference_time: float | None = None

    # -- context protocol -------------------------------------------------------------------
    def activate(self) -> "Backend":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    # -- inference ------------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``feed[INPUT_NAME]`` (float32 ``[N, 3, H, W]``, RGB 0..255)."""
        import time

        if not self.is_active:
            self.activate()
        if INPUT_NAME not in feed:
            raise ValueError(f"feed must contain {INPUT_NAME!r}, got keys {sorted(feed)}")
        image = np.ascontiguousarray(feed[INPUT_NAME], dtype=np.float32)
        if image.ndim != 4 or image.shape[1] != 3 or 0 in image.shape:
            raise ValueError(f"{INPUT_NAME!r} must be float32 [N, 3, H, W] RGB 0..255 with "
                             f"N, H, W >= 1, got shape {image.shape}")
        start = time.perf_counter()
        outputs = self._infer(image)
        self.last_inference_time = time.perf_counter() - start
        return outputs

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """``image`` float32 [N, 3, H, W] -> {"probabilities": [N,C,H,W] f32, "labels": [N,H,W] i64}."""
