"""Probability map -> mask, connected components -> detections, and overlays (pure numpy + cv2)."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from sat_seg_ros.tiling import to_float_rgb, to_rgb


@dataclasses.dataclass
class Detection:
    """One connected component of the mask.

    ``bbox_xyxy`` is (x0, y0, x1, y1) in pixels with x1/y1 exclusive; ``score`` is the highest
    probability inside the component; ``area_px`` its pixel count.
    """

    bbox_xyxy: Tuple[int, int, int, int]
    score: float
    area_px: int

    def to_dict(self) -> Dict[str, object]:
        """Return the JSON form used by ``detections.json``."""
        return {'bbox_xyxy': [int(v) for v in self.bbox_xyxy],
                'score': round(float(self.score), 6),
                'area_px': int(self.area_px)}


def find_detections(probability: np.ndarray, mask: np.ndarray, min_area_px: int,
                    max_detections: int = 0, seed_threshold: Optional[float] = None
                    ) -> Tuple[List[Detection], np.ndarray]:
    """Return the mask's components of at least ``min_area_px`` pixels, best first, and the mask.

    ``seed_threshold`` (hysteresis, as in Canny's edge linking): a component counts only when
    its highest probability exceeds it, so a low ``threshold`` can draw a satellite's whole
    extent while a faint blob elsewhere is no detection. None (or a value at or below the
    mask's threshold) keeps every component. ``max_detections`` > 0 keeps only that many
    components, highest score first (a scene known to hold at most one satellite uses 1). The
    returned mask keeps exactly the returned components (HxW bool), so the published mask and
    the detections always agree.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                               connectivity=8)
    if count <= 1:
        return [], np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= max(1, min_area_px)) + 1
    if keep.size == 0:
        return [], np.zeros(mask.shape, bool)
    # Highest probability per label in one pass over the (few) mask pixels.
    inside = labels > 0
    peak = np.zeros(count, np.float32)
    np.maximum.at(peak, labels[inside], probability[inside])
    if seed_threshold is not None:
        keep = keep[peak[keep] > seed_threshold]
        if keep.size == 0:
            return [], np.zeros(mask.shape, bool)
    order = sorted(keep, key=lambda label: (-peak[label], -stats[label, cv2.CC_STAT_AREA]))
    if max_detections > 0:
        order = order[:max_detections]
    detections = []
    for label in order:
        x, y, w, h, area = stats[label]
        detections.append(Detection((int(x), int(y), int(x + w), int(y + h)),
                                    float(peak[label]), int(area)))
    kept_mask = mask if len(order) == count - 1 else np.isin(labels, order)
    return detections, kept_mask


def overlay(image: np.ndarray, mask: np.ndarray, color: Tuple[int, int, int] = (255, 0, 0),
            alpha: float = 0.5) -> np.ndarray:
    """Return an HxWx3 uint8 RGB picture of ``image`` with ``mask`` tinted in ``color``.

    Only the masked pixels are blended, so a uint8 frame costs little more than a copy.
    """
    if image.dtype == np.uint8:
        picture = to_rgb(image)
        if np.shares_memory(picture, image):
            picture = picture.copy()
    else:
        picture = np.clip(to_float_rgb(image) + 0.5, 0, 255).astype(np.uint8)
    if mask.any():
        blended = picture[mask] * (1.0 - alpha) + np.asarray(color, np.float32) * alpha
        picture[mask] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return picture
