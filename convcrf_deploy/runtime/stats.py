"""Run statistics of the video runtime: per-stage latency percentiles and segmentation scores.

Memory is bounded: latencies are kept in fixed-size ring buffers (percentiles describe the most
recent :data:`WINDOW` frames; counts, means and maxima cover the whole run), and scores are a
``C x C`` confusion matrix (metrics from :mod:`convcrf_deploy.metrics`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics import IGNORE_INDEX, confusion_matrix, mean_iou, pixel_accuracy

#: frames over which latency percentiles are computed.
WINDOW = 4096

#: the parts of a frame's time (:meth:`LatencyStats.frame_split`): the Segmenter's
#: pre-processing, the backend's unary and CRF (``SegmentationResult.timings``), the rest of
#: the backend's call (``other``: label argmax, copies) and post-processing.
FRAME_PARTS = ("preprocess", "unary", "crf", "other", "postprocess")
#: the same for a backend that runs the model in one piece (no unary/CRF times).
FRAME_PARTS_UNSPLIT = ("preprocess", "inference", "postprocess")


class LatencyStats:
    """Per-stage latency samples (milliseconds) in fixed-size ring buffers.

    Not thread-safe: one per run (``run_video`` owns it); guard it with a lock to share it."""

    def __init__(self, window: int = WINDOW):
        self.window = window
        self._samples: dict[str, np.ndarray] = {}
        self._count: dict[str, int] = {}
        self._total: dict[str, float] = {}
        self._max: dict[str, float] = {}

    def add(self, stage: str, milliseconds: float) -> None:
        if stage not in self._samples:
            self._samples[stage] = np.zeros(self.window, np.float64)
            self._count[stage], self._total[stage], self._max[stage] = 0, 0.0, 0.0
        count = self._count[stage]
        self._samples[stage][count % self.window] = milliseconds
        self._count[stage] = count + 1
        self._total[stage] += milliseconds
        self._max[stage] = max(self._max[stage], milliseconds)

    def add_all(self, timings: dict[str, float]) -> None:
        for stage, milliseconds in timings.items():
            self.add(stage, milliseconds)

    def stages(self) -> list[str]:
        return list(self._samples)

    def recent_mean(self, stage: str, frames: int = 30) -> float:
        """Mean of the last ``frames`` samples of ``stage`` (0 when there are none)."""
        count = self._count.get(stage, 0)
        if count == 0:
            return 0.0
        n = min(frames, count, self.window)
        indices = (np.arange(count - n, count)) % self.window
        return float(self._samples[stage][indices].mean())

    def summary(self, stage: str) -> dict[str, float]:
        """``{"p50", "p95", "max", "mean", "count"}`` of ``stage`` in milliseconds."""
        count = self._count.get(stage, 0)
        if count == 0:
            return {"p50": 0.0, "p95": 0.0, "max": 0.0, "mean": 0.0, "count": 0}
        recent = self._samples[stage][:min(count, self.window)]
        p50, p95 = np.percentile(recent, [50, 95])
        return {"p50": round(float(p50), 3), "p95": round(float(p95), 3),
                "max": round(self._max[stage], 3),
                "mean": round(self._total[stage] / count, 3), "count": count}

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {stage: self.summary(stage) for stage in self._samples}

    def frame_split(self) -> dict[str, Any]:
        """Where a frame's time goes: ``{"frame_ms", "parts": {part: {"mean_ms",
        "percent"}}}`` with the parts of :data:`FRAME_PARTS` when the backend timed the unary
        and the CRF apart, else of :data:`FRAME_PARTS_UNSPLIT`. The frame is ``preprocess +
        inference + postprocess`` (the Segmenter's call); means are over every frame of the
        run (a part a frame did not run, e.g. the CRF while switched off, counts as 0 there).
        Empty before the first frame."""
        frames = self._count.get("inference", 0)
        if frames == 0:
            return {}

        def mean(stage: str) -> float:
            return self._total.get(stage, 0.0) / frames
        frame = mean("preprocess") + mean("inference") + mean("postprocess")
        if "unary" in self._total:
            other = max(0.0, mean("inference") - mean("unary") - mean("crf"))
            parts = {part: other if part == "other" else mean(part) for part in FRAME_PARTS}
        else:
            parts = {part: mean(part) for part in FRAME_PARTS_UNSPLIT}
        return {"frame_ms": round(frame, 3),
                "parts": {part: {"mean_ms": round(ms, 3),
                                 "percent": round(100 * ms / frame, 2) if frame > 0 else 0.0}
                          for part, ms in parts.items()}}


class SegmentationScore:
    """Running VOC pixel accuracy and mIoU of a video (one confusion matrix, constant memory;
    :class:`convcrf_deploy.metrics.SegmentationMetrics` also keeps per-image lists).
    Not thread-safe: ``update`` adds to one matrix in place."""

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        """Add one ``[H, W]`` prediction and its ``[H, W]`` ground truth."""
        self.confusion += confusion_matrix(prediction, ground_truth, self.num_classes,
                                           self.ignore_index)

    @property
    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.confusion)

    @property
    def mean_iou(self) -> float:
        return mean_iou(self.confusion)

    def to_dict(self) -> dict[str, float]:
        return {"pixel_accuracy": round(self.pixel_accuracy, 5), "miou": round(self.mean_iou, 5)}
