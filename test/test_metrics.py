"""The report's metric: IoU > 0.5 per image; empty prediction on an empty image is correct."""

import numpy as np
import pytest

from sat_seg_ros import metrics


def masks(*boxes, shape=(20, 30)):
    mask = np.zeros(shape, bool)
    for y0, x0, y1, x1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def test_empty_prediction_on_empty_image_is_correct():
    empty = masks()
    assert metrics.iou(empty, empty) == 1.0
    assert metrics.image_correct(empty, empty)


def test_detection_on_empty_image_is_wrong():
    assert metrics.iou(masks((0, 0, 2, 2)), masks()) == 0.0
    assert not metrics.image_correct(masks((0, 0, 2, 2)), masks())


def test_missed_satellite_is_wrong():
    assert metrics.iou(masks(), masks((5, 5, 10, 10))) == 0.0
    assert not metrics.image_correct(masks(), masks((5, 5, 10, 10)))


def test_iou_threshold_is_strict():
    truth = masks((0, 0, 10, 10))  # 100 px
    half = masks((0, 0, 10, 5))  # 50 px inside: IoU exactly 0.5 -> wrong
    assert metrics.iou(half, truth) == 0.5
    assert not metrics.image_correct(half, truth)
    assert metrics.image_correct(masks((0, 0, 10, 6)), truth)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match='shapes differ'):
        metrics.iou(np.zeros((2, 2), bool), np.zeros((3, 3), bool))


def test_summary_counts():
    truth_pos = masks((0, 0, 10, 10))
    pairs = [
        (truth_pos, truth_pos),  # TP, correct, IoU 1
        (masks(), truth_pos),  # FN, wrong, IoU 0
        (masks(), masks()),  # TN, correct
        (masks((15, 20, 18, 25)), masks()),  # FP on an empty image, wrong
        (masks((15, 20, 18, 25)), truth_pos),  # detection that misses: FP and FN, IoU 0
    ]
    summary = metrics.summarize(pairs)
    assert summary['images'] == 5 and summary['positives'] == 3 and summary['negatives'] == 2
    assert summary['accuracy'] == pytest.approx(2 / 5)
    assert summary['mean_iou'] == pytest.approx(1 / 3)
    assert summary['precision'] == pytest.approx(1 / 3)
    assert summary['recall'] == pytest.approx(1 / 3)
