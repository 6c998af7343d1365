"""Segmentation metrics (numpy only): confusion matrix, pixel accuracy and two mIoU flavours.

* ``miou`` — PASCAL VOC's metric: one confusion matrix accumulated over the whole data set,
  IoU per class, mean over the classes whose union is non-empty.
* ``miou_gt_classes`` — the ConvCRF paper's Table 1 metric: for each image, the mean IoU over
  the classes present in that image's ground truth; then the mean over images. A class that
  is predicted but absent from the ground truth lowers the IoU of the classes it steals
  pixels from, but is not itself averaged in.

Pixels whose ground truth equals ``ignore_index`` (255, PASCAL VOC's void border) count in
no metric. Predictions are class indices; they need not be in ``0..num_classes-1`` only if
they are ignored.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: PASCAL VOC's "void" label (object borders, difficult regions).
IGNORE_INDEX = 255

#: One-line explanations printed under every table that shows these figures.
MIOU_LEGEND = {
    "miou": "mIoU VOC: IoU per class from one confusion matrix over all images, averaged over "
            "the classes that occur (PASCAL VOC's metric)",
    "miou_gt_classes": "mIoU GT classes: per image, the mean IoU over the classes in its "
                       "ground truth, averaged over images (the ConvCRF paper's Table 1)",
}


def confusion_matrix(prediction: np.ndarray, ground_truth: np.ndarray, num_classes: int,
                     ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """``[C, C]`` int64 counts, rows = ground truth class, columns = predicted class.

    Args:
        prediction: integer class indices, any shape.
        ground_truth: integer class indices of the same shape; ``ignore_index`` pixels are
            skipped.
        num_classes: C.

    Raises:
        ValueError: on a shape mismatch, or a class index outside ``0..C-1`` in a pixel that
            is not ignored (naming the offending value).
    """
    prediction = np.asarray(prediction)
    ground_truth = np.asarray(ground_truth)
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {ground_truth.shape} "
                         "must have the same shape")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    gt = ground_truth.reshape(-1).astype(np.int64)
    pred = prediction.reshape(-1).astype(np.int64)
    if ignore_index is not None:
        keep = gt != ignore_index
        gt, pred = gt[keep], pred[keep]
    for name, values in (("ground truth", gt), ("prediction", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)][0]
            raise ValueError(f"{name} contains class {bad}, outside 0..{num_classes - 1} "
                             f"(ignore_index={ignore_index}); check num_classes")
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of (non-ignored) pixels labelled correctly; NaN when there are none."""
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """``[C]`` IoU per class: TP / (TP + FP + FN); NaN where the union is empty."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """VOC mIoU: mean IoU over the classes with a non-empty union."""
    iou = per_class_iou(confusion)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def mean_iou_gt_classes(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth (rows with pixels)."""
    present = confusion.sum(axis=1) > 0
    if not present.any():
        return float("nan")
    return float(per_class_iou(confusion)[present].mean())


class SegmentationMetrics:
    """Accumulates metrics over a data set, one image at a time.

    Example:
        >>> metrics = SegmentationMetrics(num_classes=21)
        >>> for prediction, label in pairs:            # [H, W] class indices each
        ...     metrics.update(prediction, label)
        >>> metrics.result()["miou"]
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self._image_miou_gt: list[float] = []
        self._image_accuracy: list[float] = []

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> dict[str, float]:
        """Add one image (``[H, W]`` class indices each); returns that image's metrics."""
        confusion = confusion_matrix(prediction, ground_truth, self.num_classes,
                                     self.ignore_index)
        self.confusion += confusion
        image = {"accuracy": pixel_accuracy(confusion),
                 "miou_gt_classes": mean_iou_gt_classes(confusion),
                 "miou": mean_iou(confusion)}
        # Images whose pixels are all ignored carry no information for the per-image means.
        if confusion.sum():
            self._image_miou_gt.append(image["miou_gt_classes"])
            self._image_accuracy.append(image["accuracy"])
        return image

    @property
    def num_images(self) -> int:
        return len(self._image_accuracy)

    def result(self) -> dict[str, Any]:
        """Metrics so far (fractions in 0..1; NaN before any pixel was counted).

        Keys: ``accuracy`` (pixel accuracy over all pixels), ``miou_gt_classes`` (mean over
        images of the mIoU over each image's ground-truth classes, the paper's Table 1),
        ``miou`` (VOC), ``per_class_iou`` (list, None for classes never seen), ``num_images``,
        ``num_pixels``.
        """
        iou = per_class_iou(self.confusion)
        return {
            "accuracy": pixel_accuracy(self.confusion),
            "miou_gt_classes": (float(np.mean(self._image_miou_gt)) if self._image_miou_gt
                                else float("nan")),
            "miou": mean_iou(self.confusion),
            "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
            "num_images": self.num_images,
            "num_pixels": int(self.confusion.sum()),
        }
