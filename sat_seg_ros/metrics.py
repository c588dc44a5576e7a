"""The report's metrics on boolean masks (pure numpy).

An image is correct when IoU(predicted, true) > 0.5; an image without a satellite is correct
when the prediction is empty. Detection counts are per image: a true positive is a positive
image whose prediction overlaps the satellite.
"""

from __future__ import annotations

from typing import Dict, Iterable, Tuple

import numpy as np

IOU_CORRECT = 0.5


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Return the IoU of two bool masks of the same shape; 1.0 when both are empty."""
    predicted = np.asarray(predicted, bool)
    truth = np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise ValueError('mask shapes differ: predicted %s, truth %s'
                         % (predicted.shape, truth.shape))
    union = np.count_nonzero(predicted | truth)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(predicted & truth) / union)


def image_correct(predicted: np.ndarray, truth: np.ndarray) -> bool:
    """Return the report's per-image criterion (empty/empty is correct, IoU > 0.5 otherwise)."""
    return iou(predicted, truth) > IOU_CORRECT


def summarize(pairs: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, float]:
    """Return accuracy, mean IoU (over images with a satellite), detection precision and recall.

    ``pairs`` yields (predicted, truth) bool masks. Precision is 1.0 and recall is 1.0 when
    there is nothing to detect and nothing was detected (no denominator).
    """
    def outcomes():
        for predicted, truth in pairs:
            predicted = np.asarray(predicted, bool)
            truth = np.asarray(truth, bool)
            yield (bool(truth.any()), iou(predicted, truth), bool(predicted.any()),
                   bool((predicted & truth).any()))

    return summarize_outcomes(outcomes())


def summarize_outcomes(outcomes: Iterable[Tuple[bool, float, bool, bool]]) -> Dict[str, float]:
    """:func:`summarize` from per-image (has a satellite, IoU, detected, overlaps the truth)."""
    correct = positives = negatives = 0
    ious = []
    true_pos = false_pos = false_neg = 0
    for positive, value, detected, overlaps in outcomes:
        correct += value > IOU_CORRECT
        if positive:
            positives += 1
            ious.append(value)
            hit = detected and overlaps
            true_pos += hit
            false_neg += not hit
            false_pos += detected and not hit
        else:
            negatives += 1
            false_pos += detected
    images = positives + negatives
    return {
        'images': images,
        'positives': positives,
        'negatives': negatives,
        'accuracy': correct / images if images else float('nan'),
        'mean_iou': float(np.mean(ious)) if ious else float('nan'),
        'precision': true_pos / (true_pos + false_pos) if true_pos + false_pos else 1.0,
        'recall': true_pos / (true_pos + false_neg) if true_pos + false_neg else 1.0,
    }
