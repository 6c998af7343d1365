"""Run statistics of the video runtime: per-stage latency percentiles and segmentation scores.

Memory is bounded: latencies are kept in fixed-size ring buffers (percentiles describe the most
recent :data:`WINDOW` frames; counts, means and maxima cover the whole run), and scores are a
``C x C`` confusion matrix.
"""
from __future__ import annotations

import numpy as np

#: frames over which latency percentiles are computed.
WINDOW = 4096


class LatencyStats:
    """Per-stage latency samples (milliseconds) in fixed-size ring buffers."""

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


class SegmentationScore:
    """Running confusion matrix of predicted vs ground-truth labels (``ignore_index`` skipped).

    Args:
        num_classes: C; predictions and labels are in ``0..C-1``.
        ignore_index: ground-truth value that is not scored (PASCAL VOC's 255 border).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        """Add one ``[H, W]`` prediction and its ``[H, W]`` ground truth."""
        if prediction.shape != ground_truth.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth "
                             f"{ground_truth.shape} differ in shape")
        c = self.num_classes
        valid = ground_truth != self.ignore_index
        truth = ground_truth[valid].astype(np.int64)
        predicted = np.clip(prediction[valid].astype(np.int64), 0, c - 1)
        self.confusion += np.bincount(truth * c + predicted, minlength=c * c)[:c * c].reshape(c, c)

    @property
    def pixel_accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else 0.0

    @property
    def mean_iou(self) -> float:
        """Mean intersection-over-union over classes present in ground truth or prediction."""
        intersection = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - intersection
        present = union > 0
        return float((intersection[present] / union[present]).mean()) if present.any() else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"pixel_accuracy": round(self.pixel_accuracy, 5),
                "miou": round(self.mean_iou, 5)}
