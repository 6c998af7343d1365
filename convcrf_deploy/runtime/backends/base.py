"""The interface every runtime backend implements (after Polygraphy's runners).

A backend wraps one loaded model (a PyTorch checkpoint, an ONNX Runtime session, a TensorRT
engine) behind the same small surface:

* ``with backend:`` activates it (allocates sessions, buffers, streams) and deactivates it;
* ``infer({"image": float32 [N, 3, H, W] RGB 0..255})`` returns
  ``{"probabilities": float32 [N, C, H, W], "labels": int64 [N, H, W]}`` as numpy arrays, plus
  ``"unary_labels"`` (int64 [N, H, W], argmax of the unary alone) when the model provides it,
  which lets viewers compare unary and CRF without a second model;
* ``metadata`` describes classes, palette and input convention (:class:`ModelMetadata`);
* ``last_inference_time`` is the wall time of the last ``infer`` in seconds;
* ``stages`` names what can also run on its own: ``infer_unary(image) -> logits`` and
  ``infer_crf(logits, image) -> probabilities`` (what ``infer`` runs, split; ``convcrf-bench``
  times them), and ``describe()`` says how the model runs (providers, CRF executor, threads);
* ``from_model(model, folder, ...)`` creates the backend for an in-memory
  ``SegmentationModel`` (exporting it as the backend needs), which is how ``convcrf-bench``
  builds every backend: a new backend is a new folder, nothing else.

Input constraints: ``infer`` and ``infer_unary`` pad an image that does not meet the model's
(``metadata.pad_multiple`` / ``min_size``) at the bottom and right by repeating its edge
pixels, run the model on it and crop the outputs back (:mod:`convcrf_deploy.runtime.padding`),
so any caller may pass any size; ``infer_crf`` runs at the size given (the CRF has none).

Thread safety: ``infer`` (and the stage calls) may be called from several threads at once.
A backend whose session or buffers are not safe for that sets ``thread_safe = False`` and this
class then runs its calls one at a time under a lock.

Each backend lives in its own folder (``backends/<name>/``) with a ``loader.py`` (how to obtain
the session or engine) and a ``runner.py`` (the :class:`Backend` subclass). Optional libraries
(torch, onnxruntime, tensorrt, pycuda) are imported inside those modules only when the backend
is created, and a missing one raises :class:`BackendUnavailableError` naming the extra to install.
This module imports numpy only.
"""
from __future__ import annotations

import abc
import contextlib
import os
import threading
import time
from typing import Any

import numpy as np

from ...install import MissingDependencyError
from ...metadata import ModelMetadata
from ..padding import crop_outputs, pad_image

INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "labels")
OPTIONAL_OUTPUT_NAMES = ("unary_labels",)


class BackendUnavailableError(MissingDependencyError, RuntimeError):
    """The library a backend needs is not installed or cannot be loaded."""


#: stages of a model that backends may run on their own (``"full"`` is ``infer``).
STAGES = ("unary", "crf", "full")

#: how a backend runs the CRF (``describe()["crf_executor"]``).
CRF_EXECUTORS = {
    "native": "libconvcrf_cpu, the fused native CPU path",
    "graph": "the model's own CRF (the exported graph's nodes)",
    "torch": "PyTorch ops (ConvCRF's differentiable path)",
    "engine": "the TensorRT engine's ConvCRF plugin",
    "none": "no CRF in this model",
}


class StageUnavailableError(NotImplementedError):
    """This backend cannot run that stage of the model on its own."""


class Backend(abc.ABC):
    """Base class of runtime backends. Subclasses implement ``_activate``, ``_deactivate``
    and ``_infer`` (and, where they can, ``_infer_unary`` / ``_infer_crf`` with the stages they
    list in ``stages``); this class handles the context protocol, input checks, timing and
    locking."""

    #: short name used by ``--backend`` ("torch", "onnxruntime", "tensorrt").
    name: str = "backend"
    #: whether the model runs a CRF (an exported graph without one, a checkpoint without one).
    has_crf: bool = True
    #: whether ``infer`` may run in several threads at once; when ``False`` the calls are
    #: serialised with a lock (correct, not parallel).
    thread_safe: bool = True
    #: whether this backend can skip the CRF for this model and run the unary alone; then
    #: :attr:`crf_enabled` switches it (``Segmenter.crf``). Others always run the whole model.
    crf_switchable: bool = False
    #: run the CRF (only read when :attr:`crf_switchable`).
    crf_enabled: bool = True

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        self.is_active = False
        self.last_inference_time: float | None = None
        self._activation_lock = threading.RLock()
        self._call_lock = threading.Lock()

    # -- context protocol -------------------------------------------------------------------
    def activate(self) -> "Backend":
        with self._activation_lock:
            if not self.is_active:
                self._activate()
                self.is_active = True
        return self

    def deactivate(self) -> None:
        with self._activation_lock:
            if self.is_active:
                self._deactivate()
                self.is_active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def _serialised(self):
        return contextlib.nullcontext() if self.thread_safe else self._call_lock

    # -- inference ------------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``feed[INPUT_NAME]`` (float32 ``[N, 3, H, W]``, RGB 0..255)."""
        if INPUT_NAME not in feed:
            raise ValueError(f"feed must contain {INPUT_NAME!r}, got keys {sorted(feed)}")
        image, crop = pad_image(self._checked_image(feed[INPUT_NAME]), self.metadata)
        start = time.perf_counter()
        with self._serialised():
            outputs = self._infer(image)
        self.last_inference_time = time.perf_counter() - start
        return crop_outputs(outputs, crop)

    def _checked_image(self, image: np.ndarray) -> np.ndarray:
        if not self.is_active:
            self.activate()
        image = np.ascontiguousarray(image, dtype=np.float32)
        if image.ndim != 4 or image.shape[1] != 3 or 0 in image.shape:
            raise ValueError(f"{INPUT_NAME!r} must be float32 [N, 3, H, W] RGB 0..255 with "
                             f"N, H, W >= 1, got shape {image.shape}")
        return image

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this backend runs on its own, from :data:`STAGES` (always ``"full"``)."""
        return ("full",)

    def infer_unary(self, image: np.ndarray) -> np.ndarray:
        """The unary network alone: ``image`` float32 ``[N, 3, H, W]`` RGB 0..255 -> logits
        float32 ``[N, C, H, W]`` (up to a per-pixel additive constant, to which softmax, the
        CRF and argmax are invariant). Raises :class:`StageUnavailableError` when ``"unary"``
        is not in :attr:`stages`."""
        if "unary" not in self.stages:
            raise StageUnavailableError(f"the {self.name} backend does not run the unary alone")
        image, crop = pad_image(self._checked_image(image), self.metadata)
        with self._serialised():
            logits = self._infer_unary(image)
        return crop_outputs({"logits": logits}, crop)["logits"]

    def infer_crf(self, logits: np.ndarray, image: np.ndarray) -> np.ndarray:
        """The CRF alone, as ``infer`` runs it: ``logits`` float32 ``[N, C, H, W]`` and
        ``image`` float32 ``[N, 3, H, W]`` RGB 0..255 -> probabilities float32
        ``[N, C, H, W]``. Raises :class:`StageUnavailableError` when ``"crf"`` is not in
        :attr:`stages`, ``ValueError`` on mismatched shapes."""
        if "crf" not in self.stages:
            raise StageUnavailableError(f"the {self.name} backend does not run the CRF alone")
        image = self._checked_image(image)
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        if logits.ndim != 4 or logits.shape[0] != image.shape[0] \
                or logits.shape[2:] != image.shape[2:]:
            raise ValueError(f"logits must be float32 [N, C, H, W] matching image "
                             f"{list(image.shape)} in N, H and W, got {list(logits.shape)}")
        with self._serialised():
            return self._infer_crf(logits, image)

    def describe(self) -> dict[str, Any]:
        """How this backend runs the model: ``{"backend", "crf_executor", "crf_executor_detail",
        ...}`` (JSON-serialisable; backends add providers, device, threads). ``crf_executor`` is
        one of :data:`CRF_EXECUTORS`."""
        executor = self.crf_executor
        return {"backend": self.name, "crf_executor": executor,
                "crf_executor_detail": self.crf_executor_detail or CRF_EXECUTORS[executor]}

    @property
    def crf_executor(self) -> str:
        """One of :data:`CRF_EXECUTORS`; backends that choose override it."""
        return "graph" if self.has_crf else "none"

    #: why this executor was chosen, when that is worth saying (e.g. a fallback).
    crf_executor_detail: str | None = None

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`BackendUnavailableError` (naming what to install) when a library this
        backend needs is missing; cheap, so callers check before loading or exporting models."""

    @classmethod
    def from_model(cls, model: Any, folder: str | os.PathLike, **options: Any) -> "Backend":
        """This backend for an in-memory ``SegmentationModel``, converting it (e.g. exporting
        to ONNX into ``folder``) as this backend needs. ``options`` are the benchmark's:
        ``flavor``, ``fp16``, ``threads``, ``device``, ``sizes`` ([(width, height)]),
        ``batch``; each backend uses those that apply to it."""
        raise StageUnavailableError(f"the {cls.name} backend cannot be built from a model")

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """``image`` float32 [N, 3, H, W] -> {"probabilities": [N,C,H,W] f32, "labels": [N,H,W] i64}."""

    def _infer_unary(self, image: np.ndarray) -> np.ndarray:
        raise StageUnavailableError(self.name)

    def _infer_crf(self, logits: np.ndarray, image: np.ndarray) -> np.ndarray:
        raise StageUnavailableError(self.name)
