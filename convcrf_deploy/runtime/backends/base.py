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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import describe_error
from ...install import MissingDependencyError
from ...metadata import ModelMetadata
from ..padding import crop_outputs, pad_image

INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "labels")
OPTIONAL_OUTPUT_NAMES = ("unary_labels",)


class BackendUnavailableError(MissingDependencyError, RuntimeError):
    """The library a backend needs is not installed or cannot be loaded."""


class InferenceError(RuntimeError):
    """The inference library (ONNX Runtime, TensorRT, pycuda, ...) failed on an input; the
    message is its reason without the noise, and what to do (:func:`describe_error`)."""


def _from_inference_library(exc: BaseException) -> bool:
    """Whether ``exc`` is another library's own exception type (ONNX Runtime's pybind errors,
    pycuda's, ...), not Python's or ours, which already say what went wrong."""
    return type(exc).__module__.split(".")[0] not in ("builtins", "convcrf_deploy")


@contextlib.contextmanager
def _inference_errors(backend: "Backend", image: np.ndarray):
    try:
        yield
    except Exception as exc:
        if not _from_inference_library(exc):
            raise
        raise InferenceError(describe_error(
            exc, f"the {backend.name} backend failed on an input of shape "
                 f"{list(image.shape)}")) from exc


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


@dataclass(frozen=True)
class InputLimits:
    """The ``image`` sizes a loaded model accepts, known when it is loaded: a graph exported
    with a fixed size (``convcrf-export --static``), a TensorRT engine's optimisation profile,
    a Triton model's configured dimensions and ``convcrf.max_pixels``. ``Segmenter`` checks
    them when it is created and per new frame size, instead of letting the inference library
    fail on the first frame.

    Attributes:
        min_size, max_size: smallest and largest ``(height, width)``; ``None`` in ``max_size``
            where a side is unbounded. A side with ``min == max`` is fixed.
        max_pixels: most ``height * width`` per frame (``None``: no limit).
        batch: smallest and largest batch (``None``: unbounded); ``Segmenter`` sends 1.
        origin: where the limits come from, for messages (``"its graph's input shape"``).
        widen: what lifts them (``"export it again without --static"``), for messages.
    """

    min_size: tuple[int, int] = (1, 1)
    max_size: tuple[int | None, int | None] = (None, None)
    max_pixels: int | None = None
    batch: tuple[int, int | None] = (1, None)
    origin: str = ""
    widen: str = ""

    @classmethod
    def from_shape(cls, shape: Any, origin: str, widen: str = "") -> "InputLimits":
        """From an ``[N, 3, H, W]`` input shape whose dimensions are ints where fixed
        (others: ``None``, ``-1``, a symbol name)."""
        def fixed(value: Any) -> int | None:
            return int(value) if isinstance(value, (int, np.integer)) and value > 0 else None
        dims = list(shape) + [None] * (4 - len(shape))
        height, width, batch = fixed(dims[2]), fixed(dims[3]), fixed(dims[0])
        return cls((height or 1, width or 1), (height, width),
                   batch=(batch, batch) if batch else (1, None), origin=origin, widen=widen)

    @property
    def fixed_size(self) -> tuple[int | None, int | None]:
        """``(height, width)`` with each fixed side's size, ``None`` for a free one."""
        return tuple(low if low == high else None
                     for low, high in zip(self.min_size, self.max_size))  # type: ignore[return-value]

    def describe(self) -> str:
        """``"320x240 only"``, ``"8x8 .. 32x32"``, ``"at most 8294400 pixels"`` (WxH)."""
        (h0, w0), (h1, w1) = self.min_size, self.max_size
        if self.fixed_size == (h0, w0):
            text = f"{w0}x{h0} frames only"
        elif (h1, w1) != (None, None) or (h0, w0) != (1, 1):
            text = f"frames from {w0}x{h0} to {w1 or 'any'}x{h1 or 'any'}"
        else:
            text = "frames of any size"
        if self.max_pixels is not None:
            text += f" of at most {self.max_pixels} pixels"
        return text + (f" ({self.origin})" if self.origin else "")

    def takes_one_frame(self) -> bool:
        """Whether a batch of one frame (what ``Segmenter`` sends) is accepted."""
        return self.batch[0] <= 1 and (self.batch[1] is None or self.batch[1] >= 1)

    def refusal(self, height: int, width: int) -> str | None:
        """Why a ``height x width`` model input is outside these limits, or ``None``."""
        fits = all(low <= side and (high is None or side <= high) for side, low, high in
                   zip((height, width), self.min_size, self.max_size))
        if fits and (self.max_pixels is None or height * width <= self.max_pixels):
            return None
        return f"{width}x{height} is outside what it takes: {self.describe()}"


#: ``crf_executor=`` values of backends that let the caller choose who runs the CRF:
#: ``"auto"`` (native when possible), ``"native"`` (required), ``"graph"``.
CRF_EXECUTOR_CHOICES = ("auto", "native", "graph")


#: largest |value| an image may hold (ConvCRF's own bound: a 16-bit image is the most a colour
#: kernel in 0..255 units can mean).
MAX_IMAGE_VALUE = 65535.0


def check_image_values(image: np.ndarray) -> None:
    """Raise ``ValueError`` when ``image`` holds NaN or infinite values or values beyond
    +-:data:`MAX_IMAGE_VALUE` (one line with the range found and the fix)."""
    low, high = float(np.min(image)), float(np.max(image))
    if not (np.isfinite(low) and np.isfinite(high)) or max(-low, high) > MAX_IMAGE_VALUE:
        raise ValueError(f"{INPUT_NAME!r} must hold finite RGB values in 0..255, got values in "
                         f"[{low:.4g}, {high:.4g}]; replace NaN/inf pixels and scale the image "
                         "to 0..255")


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
        self._per_thread = threading.local()  # this thread's stage times of its last infer

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

    def reset(self) -> None:
        """Forget per-stream state, such as a warm start's previous frame (call on a scene
        cut or before another stream); backends without such state do nothing."""

    def _serialised(self):
        return contextlib.nullcontext() if self.thread_safe else self._call_lock

    # -- inference ------------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray], *,
              check_values: bool = True) -> dict[str, np.ndarray]:
        """Run the model on ``feed[INPUT_NAME]`` (float32 ``[N, 3, H, W]``, RGB 0..255).

        Raises ``ValueError`` for another shape, and (unless ``check_values=False``, for
        images made from uint8 frames, as ``Segmenter`` makes them) for NaN or infinite values
        or values beyond +-65535: the conventions of ``ConvCRF``, which every backend follows
        (before, the graph's CRF returned NaN probabilities and label 0, ONNX Runtime took
        1e9; second new-user trial)."""
        if INPUT_NAME not in feed:
            raise ValueError(f"feed must contain {INPUT_NAME!r}, got keys {sorted(feed)}")
        image = self._checked_image(feed[INPUT_NAME])
        if check_values:
            check_image_values(image)
        image, crop = pad_image(image, self.metadata)
        start = time.perf_counter()
        self._per_thread.stage_ms = {}
        # One read of the switch per call: another thread switching the CRF cannot change it
        # halfway, and last_crf_enabled says what this call ran (second new-user trial).
        self._per_thread.crf = bool(self.crf_enabled)
        with self._serialised(), _inference_errors(self, image):
            outputs = self._infer(image)
        self.last_inference_time = time.perf_counter() - start
        return crop_outputs(outputs, crop)

    @property
    def last_crf_enabled(self) -> bool:
        """:attr:`crf_enabled` as this thread's current or last :meth:`infer` read it (what
        ``_infer`` implementations test, and what that call ran)."""
        return getattr(self._per_thread, "crf", bool(self.crf_enabled))

    @property
    def last_stage_times(self) -> dict[str, float]:
        """Milliseconds of the parts of this thread's last :meth:`infer` that the backend
        times on their own: ``"unary"`` (the unary network and its labels) and ``"crf"`` (the
        CRF and its labels) where it runs them apart; empty when it runs the model as one
        piece (a TensorRT engine, a Triton server, an ONNX graph on a GPU provider)."""
        return dict(getattr(self._per_thread, "stage_ms", {}))

    @contextlib.contextmanager
    def _timed(self, stage: str):
        """Inside ``_infer``: time the block as ``stage`` of :attr:`last_stage_times` (the
        block must return only once its work is done, e.g. after a CUDA synchronisation)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if not hasattr(self._per_thread, "stage_ms"):
                self._per_thread.stage_ms = {}
            self._per_thread.stage_ms[stage] = (time.perf_counter() - start) * 1e3

    def _checked_image(self, image: np.ndarray) -> np.ndarray:
        """``image`` as contiguous float32 ``[N, 3, H, W]``, its shape checked."""
        if not self.is_active:
            self.activate()
        image = np.ascontiguousarray(image, dtype=np.float32)
        if image.ndim != 4 or image.shape[1] != 3 or 0 in image.shape:
            raise ValueError(f"{INPUT_NAME!r} must be float32 [N, 3, H, W] RGB 0..255 with "
                             f"N, H, W >= 1, got shape {image.shape}")
        return image

    @property
    def input_limits(self) -> InputLimits:
        """The ``image`` sizes this model accepts (:class:`InputLimits`; default: any)."""
        return InputLimits()

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
        with self._serialised(), _inference_errors(self, image):
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
        with self._serialised(), _inference_errors(self, image):
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
        ``batch``, ``crf_executor``; each backend uses those that apply to it."""
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
