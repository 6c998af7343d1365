"""`Segmenter`: BGR frame in, labels at the frame's size out (numpy and OpenCV only).

Pre-processing follows the model's :class:`ModelMetadata`: the frame is fed as is
(``resize="none"``), stretched to ``input_size`` (``"stretch"``) or fitted inside it keeping
the aspect ratio and padded (``"letterbox"``), then converted BGR -> RGB float32 ``[1, 3, h,
w]`` in 0..255 (normalisation is inside the model). When the model has input constraints
(``pad_multiple``, ``min_size``), that input is padded at the bottom and right by repeating its
edge pixels (:mod:`convcrf_deploy.runtime.padding`). Post-processing removes the letterbox
and constraint padding and maps labels back to the frame with nearest-neighbour sampling.

Sizes the model cannot take are known when it is loaded (the backend's
:class:`~.backends.InputLimits`: a graph exported with a fixed size, a TensorRT engine's
profile, a Triton model's dims and pixel bound, a fixed batch) and are settled then, not on
the first frame:

* a fixed-size model is fed at its own size: ``input_size`` becomes the graph's, and when its
  metadata says ``resize="none"`` frames are letterboxed to it (one warning); an explicit
  ``resize="none"`` (``convcrf-run --resize none``) or an ``input_size`` it cannot take is
  refused with :class:`InputSizeError`, as is a model that cannot take a batch of one frame;
* with ``resize="none"`` and a range of sizes (an engine's profile, a pixel bound), each new
  frame size is checked and one outside the range raises :class:`InputSizeError` naming the
  range and the fix, instead of the inference library's error.

Threads: one :class:`Segmenter` may be shared by several threads (e.g. one per camera).
Each thread has its own input buffer and frame geometry, and each call's result is its own;
the backend runs calls concurrently when it is thread-safe (PyTorch, ONNX Runtime, the native
CRF) and one at a time otherwise (TensorRT's single execution context, a warm start),
see :attr:`Backend.thread_safe`. The CRF switch (:attr:`Segmenter.crf`) applies to all threads.
A warm start (``warm_start=True``) follows one stream: give each camera its own Segmenter
(a call from a second thread warns once, ``RuntimeWarning``). A call reports in
``result.crf`` whether its own labels include the CRF, also while another thread switches it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .._warnings import warn
from ..metadata import RESIZE_POLICIES, checked_size
from .backends import Backend, InputLimits, create_backend
from .padding import replicate_edges

log = logging.getLogger(__name__)


class InputSizeError(ValueError):
    """The model cannot take these frames at this size or batch (:class:`InputLimits`); the
    message names the model's sizes and the options that fix it."""


@dataclass
class SegmentationResult:
    """What :class:`Segmenter` returns for one frame.

    Attributes:
        labels: ``[H, W]`` class index per frame pixel (uint8 when there are <= 256 classes,
            else int32), after the CRF when it ran.
        unary_labels: ``[H, W]`` labels of the unary alone, when the backend provides them.
        probabilities: ``[C, H, W]`` float32, only with ``return_probabilities=True``.
        confidence: ``[H, W]`` uint8, only with ``return_confidence=True`` (and a backend that
            returns probabilities): the largest class probability per pixel of the backend's
            ``probabilities`` output (the CRF's where the model has one) scaled to 0..255,
            ``round(255 * max_c p_c)``: 255 is certain, ``255 / C`` a uniform guess.
        timings: milliseconds per stage: ``preprocess``, ``inference`` (the backend's call),
            ``postprocess``, and the parts of ``inference`` the backend times apart:
            ``unary`` (the unary network and its labels) and ``crf`` (the CRF and its labels)
            when it runs them apart (:attr:`Backend.last_stage_times`; absent for a TensorRT
            engine, a Triton server, an ONNX graph on a GPU provider; ``crf`` absent when
            the CRF is off).
        timestamp: whatever was passed as ``timestamp=`` (e.g. a ROS header stamp).
        crf: whether ``labels`` include the CRF.
    """

    labels: np.ndarray
    unary_labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    confidence: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    timestamp: Any = None
    crf: bool = True

    #: the stages that add up to a frame's time (``unary`` and ``crf`` are parts of
    #: ``inference``, not more time).
    TOTAL_STAGES = ("preprocess", "inference", "postprocess")

    @property
    def total_ms(self) -> float:
        """Milliseconds of the whole call: preprocess + inference + postprocess."""
        return sum(self.timings.get(stage, 0.0) for stage in self.TOTAL_STAGES)


@dataclass(frozen=True)
class _Geometry:
    """How one frame size maps to the model input: ``(top, left, height, width)`` of the
    resized frame inside the ``input_shape`` model input, whose first ``resized_shape`` rows
    and columns are the resized (letterboxed) frame and the rest padding to the model's
    input constraints."""

    frame_shape: tuple[int, int]
    input_shape: tuple[int, int]
    content: tuple[int, int, int, int]
    resized_shape: tuple[int, int]


def _geometry(frame_shape: tuple[int, int], policy: str, input_size: tuple[int, int],
              metadata) -> _Geometry:
    fh, fw = frame_shape
    if policy == "none":
        resized, content = frame_shape, (0, 0, fh, fw)
    else:
        ih, iw = resized = input_size
        if policy == "stretch":
            content = (0, 0, ih, iw)
        else:
            scale = min(ih / fh, iw / fw)
            h, w = max(1, min(ih, round(fh * scale))), max(1, min(iw, round(fw * scale)))
            content = ((ih - h) // 2, (iw - w) // 2, h, w)
    return _Geometry(frame_shape, metadata.padded_size(*resized), content, tuple(resized))


def _frame_fix(frame: Any) -> str:
    """What turns ``frame`` into a BGR uint8 ``[H, W, 3]`` array, for the error message."""
    if not isinstance(frame, np.ndarray):
        return "; pass the image as a numpy array (cv2.imread gives one)"
    if 0 in frame.shape:
        return "; the frame is empty (a failed read?)"
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return "; grayscale: cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)"
    if frame.ndim == 3 and frame.shape[2] == 4:
        return "; with alpha: cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)"
    if frame.ndim == 3 and frame.shape[0] == 3:
        return "; channels first: frame.transpose(1, 2, 0)"
    if frame.dtype != np.uint8:
        return ("; scale it to 0..255 and convert: np.clip(frame * 255, 0, 255).astype(np.uint8) "
                "for 0..1 images, cv2.convertScaleAbs for others")
    return ""


class Segmenter:
    """Segment video frames with any backend.

    Args:
        model: ``"demo"``, a ``.pt``/``.onnx``/``.engine`` path, a ``SegmentationModel`` or an
            already created :class:`Backend`.
        backend: backend name (chosen from the file type when omitted).
        resize: override the model's resize policy (``"none"``, ``"stretch"``, ``"letterbox"``).
        input_size: override the model's nominal ``(height, width)``: two ints in
            1..16384 (``ValueError`` otherwise).
        return_probabilities: also return ``[C, H, W]`` probabilities at the frame size.
        return_confidence: also return the per-pixel confidence (``result.confidence``, see
            :class:`SegmentationResult`), computed at the model's resolution and resized to
            the frame (cheaper than the probabilities).
        crf: use the CRF's labels (``False``: the unary's). The torch backend then skips the
            CRF; exported graphs always run it and the unary labels are reported instead.
        **backend_options: passed to the backend (``device=``, ``providers=``,
            ``crf_executor=``, ``warm_start=True`` and ``warm_start_iterations=`` for video on
            the torch and ONNX Runtime backends, ...).

    Raises:
        InputSizeError: the model cannot take frames this way (see the module docstring); also
            from a call, for a frame size outside the model's range with ``resize="none"``.

    Example:
        >>> segmenter = Segmenter("model.onnx")
        >>> result = segmenter(frame_bgr, timestamp=stamp)
        >>> result.labels.shape == frame_bgr.shape[:2]
        True
    """

    def __init__(self, model: Any, backend: str | None = None, *, resize: str | None = None,
                 input_size: tuple[int, int] | None = None, return_probabilities: bool = False,
                 return_confidence: bool = False, crf: bool = True, **backend_options: Any):
        if input_size is not None:    # before the model loads: a bad argument fails at once
            input_size = checked_size(input_size, "Segmenter(input_size=...)")
        if isinstance(model, Backend):
            if backend_options:
                raise ValueError("backend options cannot be applied to an existing Backend")
            self.backend = model
        else:
            self.backend = create_backend(model, backend, **backend_options)
        meta = self.backend.metadata
        self.resize = resize or meta.resize
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        self.input_size = tuple(int(v) for v in (input_size or meta.input_size))
        #: the sizes and batches the model takes (checked here and per new frame size).
        self.input_limits: InputLimits = self.backend.input_limits
        self._settle_input_size(resize_given=resize is not None,
                                size_given=input_size is not None)
        self.return_probabilities = return_probabilities
        self.return_confidence = return_confidence
        self.label_dtype = np.uint8 if meta.num_classes <= 256 else np.int32
        # Per thread: the last frame geometry and the input buffer reused for it.
        self._local = threading.local()
        # The one stream a warm start follows (_check_one_stream).
        self._stream_lock = threading.Lock()
        self._stream_thread: int | None = None
        self._warned_streams = False
        self.crf = crf

    def _model_name(self) -> str:
        described = self.backend.describe()
        where = described.get("model") or described.get("engine")
        return f"the model {where}" if where else f"the {self.backend.name} model"

    def _settle_input_size(self, resize_given: bool, size_given: bool) -> None:
        """Fit the resize policy and input size to :attr:`input_limits`, or refuse."""
        limits, name = self.input_limits, self._model_name()
        widen = f"; or {limits.widen}" if limits.widen else ""
        if not limits.takes_one_frame():
            low, high = limits.batch
            batches = f"{low}" if low == high else f"{low}..{high or 'any'}"
            raise InputSizeError(
                f"{name} takes batches of {batches} frames ({limits.origin}), and frames are "
                "segmented one at a time: export it with a dynamic batch or batch 1 "
                "(convcrf-export keeps the batch dynamic; TensorRT: convcrf-build --min "
                "1x3xHxW)")
        fixed = limits.fixed_size
        if any(side is not None for side in fixed):
            if self.resize == "none":
                if resize_given:
                    raise InputSizeError(
                        f"{name} takes {limits.describe()}, and resize 'none' (--resize none) "
                        "feeds frames at their own size: let frames be fitted to it (--resize "
                        f"letterbox or stretch, or leave --resize out){widen}")
                log.warning("%s takes %s; its metadata says resize 'none': frames are "
                            "letterboxed to it (--resize stretch fills it instead)", name,
                            limits.describe())
                self.resize = "letterbox"
            size = tuple(f if f is not None else s for f, s in zip(fixed, self.input_size))
            if size != self.input_size:
                if size_given:
                    raise InputSizeError(
                        f"{name} takes {limits.describe()}, not input_size "
                        f"{self.input_size[1]}x{self.input_size[0]}{widen}")
                log.info("%s: frames are fitted to its fixed input %dx%d (its metadata names "
                         "%dx%d)", name, size[1], size[0], self.input_size[1],
                         self.input_size[0])
                self.input_size = size
        padded = self.backend.metadata.padded_size(*self.input_size)   # pad_multiple, min_size
        if self.resize != "none" and limits.refusal(*padded) is not None:
            height, width = padded
            raise InputSizeError(
                f"{name} takes {limits.describe()}, and frames are resized to its input_size "
                f"{width}x{height} (resize '{self.resize}'){widen}")

    def _check_frame_size(self, shape: tuple[int, int], input_shape: tuple[int, int]) -> None:
        """With resize 'none': refuse a frame size (``input_shape`` once padded to the model's
        input constraints) the model cannot take, in one line."""
        height, width = shape
        if self.input_limits.refusal(*input_shape) is not None:
            widen = f", or {self.input_limits.widen}" if self.input_limits.widen else ""
            raise InputSizeError(
                f"frame {width}x{height}: {self._model_name()} cannot take it with resize "
                f"'none' ({self.input_limits.describe()}): fit frames to the model with "
                f"--resize letterbox or stretch{widen}")

    # -- CRF switch --------------------------------------------------------------------------
    @property
    def crf(self) -> bool:
        return self._crf

    @crf.setter
    def crf(self, enabled: bool) -> None:
        """Turn the CRF on or off: a backend that can skip it (``crf_switchable``) does; the
        others run their whole graph and the unary's labels are reported."""
        self._crf = bool(enabled)
        if self.backend.crf_switchable:
            self.backend.crf_enabled = self._crf

    def describe(self) -> dict[str, Any]:
        """How frames are segmented (JSON-serialisable): the backend's ``describe()``
        (``backend``, ``crf_executor`` one of ``"native"``, ``"graph"``, ``"torch"``,
        ``"engine"``, ``"none"``, ``crf_executor_detail`` saying why, providers/device,
        threads) plus ``crf`` (whether labels include the CRF), ``resize`` and ``input_size``."""
        return {**self.backend.describe(), "crf": self._crf and self.backend.has_crf,
                "resize": self.resize, "input_size": list(self.input_size)}

    @property
    def metadata(self):
        return self.backend.metadata

    def reset(self) -> None:
        """Forget per-stream state (a warm start's previous frame): call on a scene cut, or
        before frames of another stream. Backends without such state ignore it."""
        self.backend.reset()

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> "Segmenter":
        self.backend.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- processing --------------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """BGR uint8 ``[H, W, 3]`` -> float32 ``[1, 3, h, w]`` RGB 0..255: the model input,
        resized by the policy and padded to the model's input constraints.

        The array is this thread's buffer, reused (overwritten) by the thread's next call."""
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 \
                or frame.dtype != np.uint8 or 0 in frame.shape:
            raise ValueError("frame must be a BGR uint8 array [H, W, 3] with H, W >= 1, got "
                             + (f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray)
                                else type(frame).__name__) + _frame_fix(frame))
        shape = frame.shape[:2]
        local = self._local
        geo = getattr(local, "geometry", None)
        if geo is None or geo.frame_shape != shape:
            geo = _geometry(shape, self.resize, self.input_size, self.backend.metadata)
            if self.resize == "none":
                self._check_frame_size(shape, geo.input_shape)
            local.input = np.zeros((1, 3, *geo.input_shape), np.float32)
            local.geometry = geo
        buffer = local.input
        top, left, h, w = geo.content
        if (h, w) != shape:
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        # BGR -> RGB by writing channel planes in reverse order, straight into the buffer.
        for channel in range(3):
            buffer[0, 2 - channel, top:top + h, left:left + w] = frame[:, :, channel]
        if geo.resized_shape != geo.input_shape:
            replicate_edges(buffer, *geo.resized_shape)
        return buffer

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Backend outputs (batch 1) -> labels (and probabilities) at the size of the frame
        this thread preprocessed last."""
        geo = getattr(self._local, "geometry", None)
        if geo is None:
            raise RuntimeError("postprocess needs a frame: call preprocess in this thread first")
        top, left, h, w = geo.content
        fh, fw = geo.frame_shape

        def to_frame(labels: np.ndarray) -> np.ndarray:
            labels = labels[0, top:top + h, left:left + w]
            if self.label_dtype == np.uint8:
                labels = labels.astype(np.uint8)
                if (h, w) != (fh, fw):
                    labels = cv2.resize(labels, (fw, fh), interpolation=cv2.INTER_NEAREST)
                return labels
            rows = np.minimum((np.arange(fh) * h) // fh, h - 1)
            cols = np.minimum((np.arange(fw) * w) // fw, w - 1)
            return labels[rows[:, None], cols[None, :]].astype(np.int32)

        result = {"labels": to_frame(outputs["labels"])}
        if "unary_labels" in outputs:
            result["unary_labels"] = to_frame(outputs["unary_labels"])
        if self.return_probabilities:
            probs = outputs["probabilities"][0, :, top:top + h, left:left + w]
            hwc = np.ascontiguousarray(probs.transpose(1, 2, 0))
            if (h, w) != (fh, fw):
                hwc = cv2.resize(hwc, (fw, fh), interpolation=cv2.INTER_LINEAR)
                hwc = hwc.reshape(fh, fw, -1)
            result["probabilities"] = np.ascontiguousarray(hwc.transpose(2, 0, 1))
        if self.return_confidence and outputs.get("probabilities") is not None:
            best = outputs["probabilities"][0, :, top:top + h, left:left + w].max(axis=0)
            confidence = np.rint(np.clip(best, 0.0, 1.0) * 255.0).astype(np.uint8)
            if (h, w) != (fh, fw):
                confidence = cv2.resize(confidence, (fw, fh), interpolation=cv2.INTER_LINEAR)
            result["confidence"] = confidence
        return result

    def _check_one_stream(self) -> None:
        """A warm start carries the previous frame of one stream: warn once when a second
        thread calls (second new-user trial: two cameras on one warm-started Segmenter mixed
        their streams silently, labels 5.9 % off)."""
        thread = threading.get_ident()
        with self._stream_lock:
            first = self._stream_thread
            if first is None:
                self._stream_thread = thread
                return
            if first == thread or self._warned_streams:
                return
            self._warned_streams = True
        warn("this Segmenter has a warm start, which carries one stream's previous frame, and "
             "is called from a second thread: frames of different streams will mix; give each "
             "camera its own Segmenter (or call reset() between streams)", RuntimeWarning)

    def __call__(self, frame: np.ndarray, timestamp: Any = None) -> SegmentationResult:
        """Segment one BGR uint8 frame ``[H, W, 3]``; ``timestamp`` is passed through."""
        t0 = time.perf_counter()
        crf_wanted = self._crf                     # one read: another thread may switch it
        if getattr(self.backend, "warm_start", None) is not None:
            self._check_one_stream()
        image = self.preprocess(frame)
        t1 = time.perf_counter()
        outputs = self.backend.infer({"image": image}, check_values=False)  # from uint8
        t2 = time.perf_counter()
        parts = self.backend.last_stage_times
        mapped = self.postprocess(outputs)
        t3 = time.perf_counter()
        labels = mapped["labels"]
        has_crf = self.backend.has_crf
        if self.backend.crf_switchable:  # the backend itself skips the CRF: what it ran
            crf_applied = self.backend.last_crf_enabled and has_crf
        elif not crf_wanted and "unary_labels" in mapped:
            # Exported graphs always run their CRF: report the unary's labels instead.
            labels, crf_applied = mapped["unary_labels"], False
        else:
            crf_applied = has_crf
        return SegmentationResult(
            labels=labels, unary_labels=mapped.get("unary_labels"),
            probabilities=mapped.get("probabilities"), confidence=mapped.get("confidence"),
            timings={"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, **parts,
                     "postprocess": (t3 - t2) * 1e3},
            timestamp=timestamp, crf=crf_applied)
