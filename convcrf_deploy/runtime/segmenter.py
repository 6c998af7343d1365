"""`Segmenter`: BGR frame in, labels at the frame's size out (numpy and OpenCV only).

Pre-processing follows the model's :class:`ModelMetadata`: the frame is fed as is
(``resize="none"``), stretched to ``input_size`` (``"stretch"``) or fitted inside it keeping
the aspect ratio and padded (``"letterbox"``), then converted BGR -> RGB float32 ``[1, 3, h,
w]`` in 0..255 (normalisation is inside the model). When the model has input constraints
(``pad_multiple``, ``min_size``), that input is padded at the bottom and right by repeating its
edge pixels (:mod:`convcrf_deploy.runtime.padding`). Post-processing removes the letterbox
and constraint padding and maps labels back to the frame with nearest-neighbour sampling.

Threads: one :class:`Segmenter` may be shared by several threads (e.g. one per camera).
Each thread has its own input buffer and frame geometry, and each call's result is its own;
the backend runs calls concurrently when it is thread-safe (PyTorch, ONNX Runtime, the native
CRF) and one at a time otherwise (TensorRT's single execution context, the torch warm start),
see :attr:`Backend.thread_safe`. The CRF switch (:attr:`Segmenter.crf`) applies to all threads.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..metadata import RESIZE_POLICIES
from .backends import Backend, create_backend
from .padding import replicate_edges


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
        timings: milliseconds per stage: ``preprocess``, ``inference``, ``postprocess``.
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


class Segmenter:
    """Segment video frames with any backend.

    Args:
        model: ``"demo"``, a ``.pt``/``.onnx``/``.engine`` path, a ``SegmentationModel`` or an
            already created :class:`Backend`.
        backend: backend name (chosen from the file type when omitted).
        resize: override the model's resize policy (``"none"``, ``"stretch"``, ``"letterbox"``).
        input_size: override the model's nominal ``(height, width)``.
        return_probabilities: also return ``[C, H, W]`` probabilities at the frame size.
        return_confidence: also return the per-pixel confidence (``result.confidence``, see
            :class:`SegmentationResult`), computed at the model's resolution and resized to
            the frame (cheaper than the probabilities).
        crf: use the CRF's labels (``False``: the unary's). The torch backend then skips the
            CRF; exported graphs always run it and the unary labels are reported instead.
        **backend_options: passed to the backend (``device=``, ``providers=``, ...).

    Example:
        >>> segmenter = Segmenter("model.onnx")
        >>> result = segmenter(frame_bgr, timestamp=stamp)
        >>> result.labels.shape == frame_bgr.shape[:2]
        True
    """

    def __init__(self, model: Any, backend: str | None = None, *, resize: str | None = None,
                 input_size: tuple[int, int] | None = None, return_probabilities: bool = False,
                 return_confidence: bool = False, crf: bool = True, **backend_options: Any):
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
        self.return_probabilities = return_probabilities
        self.return_confidence = return_confidence
        self.label_dtype = np.uint8 if meta.num_classes <= 256 else np.int32
        # Per thread: the last frame geometry and the input buffer reused for it.
        self._local = threading.local()
        self.crf = crf

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
                                else type(frame).__name__))
        shape = frame.shape[:2]
        local = self._local
        geo = getattr(local, "geometry", None)
        if geo is None or geo.frame_shape != shape:
            geo = _geometry(shape, self.resize, self.input_size, self.backend.metadata)
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

    def __call__(self, frame: np.ndarray, timestamp: Any = None) -> SegmentationResult:
        """Segment one BGR uint8 frame ``[H, W, 3]``; ``timestamp`` is passed through."""
        t0 = time.perf_counter()
        image = self.preprocess(frame)
        t1 = time.perf_counter()
        outputs = self.backend.infer({"image": image})
        t2 = time.perf_counter()
        mapped = self.postprocess(outputs)
        t3 = time.perf_counter()
        labels = mapped["labels"]
        has_crf = self.backend.has_crf
        if self.backend.crf_switchable:  # the backend itself skips the CRF
            crf_applied = self._crf and has_crf
        elif not self._crf and "unary_labels" in mapped:
            # Exported graphs always run their CRF: report the unary's labels instead.
            labels, crf_applied = mapped["unary_labels"], False
        else:
            crf_applied = has_crf
        return SegmentationResult(
            labels=labels, unary_labels=mapped.get("unary_labels"),
            probabilities=mapped.get("probabilities"), confidence=mapped.get("confidence"),
            timings={"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                     "postprocess": (t3 - t2) * 1e3},
            timestamp=timestamp, crf=crf_applied)
