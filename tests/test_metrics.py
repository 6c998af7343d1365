"""Metrics against small examples counted by hand."""
import math

import numpy as np
import pytest

from convcrf_deploy.metrics import (SegmentationMetrics, confusion_matrix, mean_iou,
                                    mean_iou_gt_classes, pixel_accuracy)

# 2 x 4 image, 3 classes, one void pixel (255) that must be ignored.
GT = np.array([[0, 0, 1, 1],
               [0, 2, 1, 255]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 2, 0]])
# Non-void pixels (gt -> pred): 0->0, 0->1, 1->1, 1->1, 0->0, 2->2, 1->2.
# class 0: TP 2, FP 0, FN 1 -> IoU 2/3
# class 1: TP 2, FP 1 (the 0->1), FN 1 (the 1->2) -> IoU 2/4
# class 2: TP 1, FP 1 (the 1->2), FN 0 -> IoU 1/2


def test_confusion_matrix_counts_rows_gt_columns_prediction_and_skips_void():
    expected = np.array([[2, 1, 0],
                         [0, 2, 1],
                         [0, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(PRED, GT, 3), expected)


def test_accuracy_and_miou_by_hand():
    confusion = confusion_matrix(PRED, GT, 3)
    assert pixel_accuracy(confusion) == pytest.approx(5 / 7)
    assert mean_iou(confusion) == pytest.approx((2 / 3 + 2 / 4 + 1 / 2) / 3)


def test_miou_over_gt_classes_leaves_out_classes_only_predicted():
    gt = np.array([[0, 0, 0, 1]])
    pred = np.array([[0, 0, 2, 1]])  # class 2 is predicted but not in the ground truth
    confusion = confusion_matrix(pred, gt, 3)
    # class 0: TP 2, FN 1 -> 2/3; class 1: 1/1; class 2: TP 0, FP 1 -> 0 (VOC counts it).
    assert mean_iou_gt_classes(confusion) == pytest.approx((2 / 3 + 1) / 2)
    assert mean_iou(confusion) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_accumulator_voc_miou_pools_pixels_while_gt_class_miou_averages_images():
    metrics = SegmentationMetrics(num_classes=2)
    first = metrics.update(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 1]]))  # perfect
    second = metrics.update(np.array([[1, 1]]), np.array([[0, 0]]))              # all wrong
    assert first["miou_gt_classes"] == pytest.approx(1.0)
    assert second["miou_gt_classes"] == pytest.approx(0.0)
    result = metrics.result()
    # Pooled: class 0 TP 2, FN 2 -> 2/4; class 1 TP 2, FP 2 -> 2/4.
    assert result["miou"] == pytest.approx(0.5)
    assert result["miou_gt_classes"] == pytest.approx(0.5)  # mean of 1.0 and 0.0
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["num_images"] == 2 and result["num_pixels"] == 6
    assert result["per_class_iou"] == pytest.approx([0.5, 0.5])


def test_empty_accumulator_reports_nan_not_a_crash():
    result = SegmentationMetrics(num_classes=3).result()
    assert math.isnan(result["accuracy"]) and math.isnan(result["miou"])
    assert result["per_class_iou"] == [None, None, None]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(ValueError, match="class 7"):
        confusion_matrix(np.zeros((1, 2), int), np.array([[0, 7]]), 3)
